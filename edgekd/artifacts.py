"""Artifact folders: weights in safetensors, a JSON manifest, sha256 of every file, atomic writes.

Layout of an artifact folder::

    manifest.json          format, kind, classes, input shape, normalisation, members (arch, options,
                           weights file), combine rule, resolved config, data spec, seed, metrics,
                           library versions, and the sha256 of every other file
    member-0.safetensors   one file of weights per member

Loading checks every hash and never unpickles; file names in a manifest must stay inside the folder.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import platform
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from edgekd.errors import ArtifactError

FORMAT = "edgekd.artifact"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
KINDS = ("model", "ensemble", "specialist-ensemble")


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def library_versions() -> dict:
    import importlib.metadata as md

    versions = {"python": platform.python_version()}
    for package in ("edgekd", "torch", "numpy", "scikit-learn", "safetensors", "onnx", "onnxruntime", "onnxscript"):
        try:
            versions[package] = md.version(package)
        except md.PackageNotFoundError:
            pass
    return versions


def now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()


def write_json_atomic(path: str | Path, data) -> None:
    """Write JSON to a temporary file beside ``path`` then rename it over (atomic on POSIX)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump(data, handle, indent=2, sort_keys=False, default=_json_default)
            handle.write("\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _json_default(value):
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, (set, tuple)):
        return list(value)
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


@dataclass(frozen=True)
class Artifact:
    """A loaded, verified artifact folder."""

    path: Path
    manifest: dict

    @property
    def kind(self) -> str:
        return self.manifest["kind"]

    @property
    def classes(self) -> tuple[str, ...]:
        return tuple(self.manifest["classes"])

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.manifest["input_shape"])

    @property
    def fingerprint(self) -> str:
        """sha256 over the manifest's file hashes: changes whenever any weight changes."""
        files = self.manifest["files"]
        return hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()

    def file(self, name: str) -> Path:
        return _inside(self.path, name)

    def load_tensors(self, name: str) -> dict:
        from safetensors.torch import load_file

        if name not in self.manifest["files"]:
            raise ArtifactError(f"Artifact '{self.path}': '{name}' is not listed with a sha256 in its manifest's 'files'; "
                                f"refusing to read unverified weights; re-create the artifact.")

        try:
            return load_file(str(self.file(name)))
        except Exception as exc:  # safetensors raises its own error types for a corrupt header
            raise ArtifactError(f"Artifact '{self.path}': cannot read '{name}' ({exc}); re-create the artifact.") from None

    def build_members(self) -> list:
        """The member models, in eval mode, with their weights loaded."""
        from edgekd.errors import ConfigError
        from edgekd.models import create_model, format_arch, parse_arch

        models = []
        norm = self.manifest["normalization"]
        for member in self.manifest["members"]:
            try:   # the options go through the same checks as a command line's
                arch, options = parse_arch(format_arch(member["arch"], _options_from_json(member["options"])))
                model = create_model(arch, self.input_shape, member.get("num_outputs", len(self.classes)),
                                     mean=norm["mean"], std=norm["std"], options=options)
            except ConfigError as exc:
                raise ArtifactError(f"Artifact '{self.path}': member '{member['arch']}' cannot be built ({exc}); "
                                    f"re-create the artifact.") from None
            state = self.load_tensors(member["weights"])
            try:
                missing, unexpected = model.load_state_dict(state, strict=False)
            except RuntimeError as exc:   # shapes that do not fit
                raise ArtifactError(f"Artifact '{self.path}': weights in '{member['weights']}' do not fit architecture "
                                    f"'{member['arch']}' ({str(exc).splitlines()[-1].strip()[:160]}); re-create the artifact.") from None
            if missing or unexpected:
                raise ArtifactError(f"Artifact '{self.path}': weights in '{member['weights']}' do not fit architecture "
                                    f"'{member['arch']}' (missing {list(missing)[:3]}, unexpected {list(unexpected)[:3]}); re-create the artifact.")
            models.append(model.eval())
        return models


def _options_from_json(options: dict) -> dict:
    return {key: tuple(value) if isinstance(value, list) else value for key, value in options.items()}


def _inside(folder: Path, name: str) -> Path:
    """``folder/name``, refusing names that would leave the folder (``..``, absolute paths, links)."""
    candidate = (folder / name).resolve()
    if Path(name).is_absolute() or folder.resolve() not in candidate.parents:
        raise ArtifactError(f"Artifact '{folder}': manifest names file '{name}' outside the artifact folder; refusing to read it.")
    return candidate


def is_artifact(path: str | Path) -> bool:
    return (Path(path) / MANIFEST).is_file()


def load_artifact(path: str | Path, *, verify: bool = True) -> Artifact:
    """Read and verify an artifact folder (every file's sha256 against the manifest)."""
    path = Path(path)
    manifest_path = path / MANIFEST
    if not path.is_dir():
        raise ArtifactError(f"'{path}' is not an artifact folder (no such folder); pass a folder written by edgekd.")
    if not manifest_path.is_file():
        raise ArtifactError(f"'{path}' is not an edgekd artifact: it has no {MANIFEST}; pass a folder written by edgekd.")
    try:
        manifest = json.loads(manifest_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ArtifactError(f"Artifact '{path}': {MANIFEST} is corrupt ({exc.__class__.__name__}); re-create the artifact.") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ArtifactError(f"Artifact '{path}': {MANIFEST} is not an edgekd manifest; re-create the artifact.")
    if manifest.get("format_version", 0) > FORMAT_VERSION:
        raise ArtifactError(f"Artifact '{path}' has format version {manifest.get('format_version')}, newer than this edgekd "
                            f"reads ({FORMAT_VERSION}); upgrade edgekd.")
    for key in ("kind", "classes", "input_shape", "normalization", "members", "files"):
        if key not in manifest:
            raise ArtifactError(f"Artifact '{path}': {MANIFEST} lacks '{key}'; re-create the artifact.")
    if manifest["kind"] not in KINDS:
        raise ArtifactError(f"Artifact '{path}' has unknown kind '{manifest['kind']}'; expected one of {', '.join(KINDS)}.")
    _check_schema(path, manifest)
    if verify:
        for name, expected in manifest["files"].items():
            file = _inside(path, name)
            if not file.is_file():
                raise ArtifactError(f"Artifact '{path}': file '{name}' is missing; re-create the artifact.")
            actual = sha256_file(file)
            if actual != expected:
                raise ArtifactError(f"Artifact '{path}': '{name}' has sha256 {actual[:12]}… but the manifest says "
                                    f"{expected[:12]}…; the file is corrupt or was edited; re-create the artifact.")
    return Artifact(path=path, manifest=manifest)


MAX_INPUT_VALUES = 1 << 24     # values per sample (a 4096x4096 image); more is a crafted manifest
MAX_CLASSES = 100_000


def _check_schema(path: Path, manifest: dict) -> None:
    """Types and bounds of the manifest fields edgekd builds models from; every member's weights file
    must be listed (and so hashed) in ``files``."""
    import math

    def fail(what: str):
        raise ArtifactError(f"Artifact '{path}': {MANIFEST} {what}; re-create the artifact.")

    def numbers(value, n=None):
        return isinstance(value, list) and (n is None or len(value) == n) and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value)

    files = manifest["files"]
    if not isinstance(files, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in files.items()):
        fail("has 'files' that is not a table of file names to sha256 hashes")
    for name in files:
        _inside(path, name)
    classes = manifest["classes"]
    if not isinstance(classes, list) or not 1 <= len(classes) <= MAX_CLASSES or not all(isinstance(c, str) for c in classes):
        fail(f"must list between 1 and {MAX_CLASSES} class names in 'classes'")
    shape = manifest["input_shape"]
    if not (isinstance(shape, list) and 1 <= len(shape) <= 3 and all(isinstance(d, int) and not isinstance(d, bool)
                                                                    and d >= 1 for d in shape)
            and math.prod(shape) <= MAX_INPUT_VALUES):
        fail(f"has 'input_shape' {shape!r}; expected 1 to 3 positive integers with at most {MAX_INPUT_VALUES} values")
    norm = manifest["normalization"]
    if not (isinstance(norm, dict) and numbers(norm.get("mean")) and numbers(norm.get("std"))
            and 1 <= len(norm["mean"]) == len(norm["std"]) <= max(1, shape[0]) and all(v > 0 for v in norm["std"])):
        fail("has a 'normalization' that is not finite per-channel 'mean' and positive 'std' lists")
    members = manifest["members"]
    if not isinstance(members, list) or not members:
        fail("has no 'members'")
    for index, member in enumerate(members):
        if not (isinstance(member, dict) and isinstance(member.get("arch"), str) and isinstance(member.get("options", {}), dict)
                and isinstance(member.get("weights"), str)):
            fail(f"member {index} needs 'arch' (text), 'options' (a table) and 'weights' (a file name)")
        outputs = member.get("num_outputs", len(classes))
        if not isinstance(outputs, int) or isinstance(outputs, bool) or not 1 <= outputs <= MAX_CLASSES + 1:
            fail(f"member {index} has 'num_outputs' {outputs!r}; expected a positive integer")
        if member["weights"] not in files:
            fail(f"names weights file '{member['weights']}' (member {index}) that its 'files' does not list with a sha256")


def save_artifact(out_dir: str | Path, manifest: dict, tensor_files: dict[str, dict], *,
                  extra_files: dict[str, bytes] | None = None, nested: dict | None = None,
                  overwrite: bool = False) -> Artifact:
    """Write an artifact folder atomically: everything goes to a temporary sibling, then one rename.

    ``tensor_files`` maps a file name to a state dict (written as safetensors); ``extra_files`` maps
    a file name to bytes (a PNG, a JSON report); ``nested`` maps a sub-folder name to
    ``(manifest, tensor_files)`` of an artifact stored inside this one (a distilled student's
    hard-label baseline), covered by the hash of its manifest. The manifest gains ``files`` (sha256 of each),
    ``format``, ``versions`` and ``created``.
    """
    from edgekd.outputs import check_output, temp_folder

    out_dir = Path(out_dir)
    check_output(out_dir, kind="artifact", overwrite=overwrite)   # only an edgekd artifact is ever replaced
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_folder(out_dir)
    try:
        extra = dict(extra_files or {})
        for name, (sub_manifest, sub_tensors) in (nested or {}).items():
            _write_folder(tmp / name, sub_manifest, sub_tensors, {})
        full = _write_folder(tmp, manifest, tensor_files, extra, nested=list(nested or {}))
        _swap_in(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return Artifact(path=out_dir, manifest=full)


def _write_folder(folder: Path, manifest: dict, tensor_files: dict, extra_files: dict, nested=()) -> dict:
    from safetensors.torch import save_file

    folder.mkdir(exist_ok=True)
    files = {}
    for name, state in tensor_files.items():
        save_file({k: v.detach().contiguous().cpu() for k, v in state.items()}, str(folder / name))
        files[name] = sha256_file(folder / name)
    for name, payload in extra_files.items():
        (folder / name).write_bytes(payload)
        files[name] = sha256_file(folder / name)
    for name in nested:
        files[f"{name}/{MANIFEST}"] = sha256_file(folder / name / MANIFEST)
    full = {"format": FORMAT, "format_version": FORMAT_VERSION, **manifest,
            "versions": library_versions(), "created": now_iso(), "files": files}
    write_json_atomic(folder / MANIFEST, full)
    return full


def _swap_in(tmp: Path, out_dir: Path) -> None:
    """Replace ``out_dir`` by ``tmp``; an old folder is moved aside (under a name unique to this run)
    first, put back if the rename fails, and removed only after."""
    from edgekd.outputs import OLD_SUFFIX, temp_folder

    if out_dir.exists():
        old = temp_folder(out_dir, OLD_SUFFIX)   # an empty folder: rename(2) replaces it
        os.replace(out_dir, old)
        try:
            os.replace(tmp, out_dir)
        except BaseException:
            os.replace(old, out_dir)
            raise
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, out_dir)
