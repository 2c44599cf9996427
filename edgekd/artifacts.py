"""Artifact folders: weights in safetensors, a JSON manifest, sha256 of every file, atomic writes.

Layout of an artifact folder::

    manifest.json          an ``edgekd.manifest.Manifest``: format, kind, classes, input shape,
                           normalisation, members (arch, options, weights file), combine rule,
                           resolved config, data, seed, metrics, timings, library versions, and
                           the sha256 of every other file
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
from edgekd.manifest import Manifest, Member  # noqa: F401  (Member re-exported: the writers build both from here)

MANIFEST = "manifest.json"


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


def numerics() -> dict:
    """What a same-seed rerun must match to train the same weights: on the CPU torch's intra-op thread
    count and the instruction set of its kernels (``benchmarks/determinism.py`` measures both changing
    them); when this process used CUDA, also the GPU, its compute capability, the CUDA and cuDNN
    versions and whether TF32 may stand in for fp32, since each picks other kernels."""
    import torch

    facts = {"torch_threads": torch.get_num_threads(), "cpu_capability": torch.backends.cpu.get_cpu_capability()}
    if torch.cuda.is_initialized():   # only a process that placed work on a GPU: asking would start CUDA
        return facts | _cuda_numerics(torch)
    return facts


def _cuda_numerics(torch) -> dict:
    device = torch.cuda.current_device()
    props = torch.cuda.get_device_properties(device)
    return {"gpu": torch.cuda.get_device_name(device), "gpu_capability": f"{props.major}.{props.minor}",
            "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version(),
            "tf32_matmul": bool(torch.backends.cuda.matmul.allow_tf32), "tf32_cudnn": bool(torch.backends.cudnn.allow_tf32)}


def now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()


def write_json_atomic(path: str | Path, data) -> None:
    """Write JSON to a temporary file beside ``path`` then rename it over (atomic on POSIX)."""
    write_text_atomic(path, json.dumps(data, indent=2, sort_keys=False, default=_json_default) + "\n")


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write text to a temporary file beside ``path`` then rename it over (atomic on POSIX). The temporary
    is named as all of edgekd's are (``.NAME.PID-RANDOM.edgekd-tmp``): one a kill leaves in an output
    folder is told from a user's file."""
    path = Path(path)
    from edgekd.outputs import TEMP_SUFFIX, holding, usual_mode

    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}-", suffix=TEMP_SUFFIX, dir=path.parent)
    with holding(tmp):
        try:
            os.fchmod(fd, usual_mode(folder=False))
            with os.fdopen(fd, "w") as handle:
                handle.write(text)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def _fsync(path: Path) -> None:
    """Flush a written file (or a folder's entries) to disk; file systems that cannot (some network ones) are
    left to their own guarantees."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# safetensors' names of the torch types edgekd writes (the format's own spelling), in the order of its Dtype
# enum, which save_file sorts the tensors by (the last first, then by name)
_SAFETENSORS_DTYPES = {"bool": "BOOL", "uint8": "U8", "int8": "I8", "float8_e5m2": "F8_E5M2", "float8_e4m3fn": "F8_E4M3",
                       "int16": "I16", "uint16": "U16", "float16": "F16", "bfloat16": "BF16", "int32": "I32",
                       "uint32": "U32", "float32": "F32", "float64": "F64", "int64": "I64", "uint64": "U64"}
_DTYPE_RANK = {name: rank for rank, name in enumerate(_SAFETENSORS_DTYPES)}


def save_tensors(path: str | Path, tensors: dict, metadata: dict | None = None) -> str:
    """A safetensors file of ``tensors`` at ``path`` itself, with the mode the umask gives, flushed to disk;
    returns the sha256 of its bytes (hashed as they are written: the file is not read back for it).

    Written here, not by ``safetensors.torch.save_file``: that copies every tensor to ``bytes`` first (the
    weights or a split's logits held twice), writes 0600 (hiding the weights from a serving user who could
    read the manifest beside them), and from safetensors 0.8 writes through a ``.tmpXXXXXX`` of its own
    beside ``path``, which a kill -9 leaves in a folder edgekd must tell from a user's. The layout is the
    format's: an 8-byte little-endian header length, the JSON header (dtype, shape and byte offsets of each
    tensor, after ``__metadata__``) padded with spaces to 8 bytes, then each tensor's bytes in safetensors'
    type order (widest first, so that every tensor starts aligned). Byte for byte what ``save_file`` writes,
    but for the order of the metadata's keys: sorted here, a hash map's there (it changes from run to run)."""
    import torch

    from edgekd.outputs import usual_mode

    cpu = {name: value.detach().contiguous().cpu() for name, value in tensors.items()}
    for name, value in cpu.items():
        if str(value.dtype).removeprefix("torch.") not in _SAFETENSORS_DTYPES:
            raise ArtifactError(f"Cannot save tensor '{name}' of type {value.dtype}: edgekd writes {sorted(_SAFETENSORS_DTYPES)}.")
    order = sorted(cpu, key=lambda name: (-_DTYPE_RANK[str(cpu[name].dtype).removeprefix("torch.")], name))
    if metadata and not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
        raise ArtifactError(f"A safetensors header's metadata maps text to text. Got {metadata!r} instead.")
    header = {"__metadata__": {k: metadata[k] for k in sorted(metadata)}} if metadata else {}
    offset = 0
    for name in order:
        dtype = str(cpu[name].dtype).removeprefix("torch.")
        size = cpu[name].numel() * cpu[name].element_size()
        header[name] = {"dtype": _SAFETENSORS_DTYPES[dtype], "shape": list(cpu[name].shape), "data_offsets": [offset, offset + size]}
        offset += size
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    text += b" " * (-len(text) % 8)
    digest = hashlib.sha256()
    with open(path, "wb") as handle:
        for block in (len(text).to_bytes(8, "little") + text,
                      *(memoryview(cpu[name].reshape(-1).view(torch.uint8).numpy()) for name in order)):
            digest.update(block)   # (the tensor's own memory, one at a time: no copy of the whole)
            handle.write(block)
        handle.flush()
        os.fsync(handle.fileno())
    os.chmod(path, usual_mode(folder=False))
    return digest.hexdigest()


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
    """A loaded, verified artifact folder and its typed manifest."""

    path: Path
    manifest: Manifest

    @property
    def kind(self) -> str:
        return self.manifest.kind

    @property
    def classes(self) -> tuple[str, ...]:
        return self.manifest.classes

    @property
    def input_shape(self) -> tuple[int, ...]:
        return self.manifest.input_shape

    @property
    def fingerprint(self) -> str:
        """sha256 over the manifest's file hashes: changes whenever any weight changes."""
        return hashlib.sha256(json.dumps(self.manifest.files, sort_keys=True).encode()).hexdigest()

    def file(self, name: str) -> Path:
        return _inside(self.path, name)

    def load_tensors(self, name: str) -> dict:
        """The tensors of ``name``, from bytes read once and checked against the manifest read before: an
        artifact swapped in by another command's --overwrite between the two is never half-loaded (the old
        manifest with the new weights)."""
        from safetensors.torch import load

        if name not in self.manifest.files:
            raise ArtifactError(f"Artifact '{self.path}': '{name}' is not listed with a sha256 in its manifest's 'files'; "
                                f"refusing to read unverified weights; re-create the artifact.")
        try:
            data = self.file(name).read_bytes()
        except FileNotFoundError:
            data = None
        if data is None or hashlib.sha256(data).hexdigest() != self.manifest.files[name]:
            raise ArtifactError(self._unlike_its_manifest(name, missing=data is None))
        try:
            return load(data)
        except Exception as exc:  # safetensors raises its own error types for a corrupt header
            raise ArtifactError(f"Artifact '{self.path}': cannot read '{name}' ({exc}); re-create the artifact.") from None

    def _unlike_its_manifest(self, name: str, *, missing: bool) -> str:
        try:
            now = json.loads((self.path / MANIFEST).read_text()).get("files")
        except (OSError, ValueError, AttributeError):
            now = None
        if now != self.manifest.files:
            return (f"Artifact '{self.path}' was replaced while it was being read (another command's --overwrite?); "
                    f"run the command again.")
        what = "is missing" if missing else "does not match its manifest's sha256 (the file is corrupt or was edited)"
        return f"Artifact '{self.path}': '{name}' {what}; re-create the artifact."

    def check_code_trusted(self) -> None:
        """Refuse, before anything is loaded, members of your own architecture (``py:``) that this command
        may not import (``--trust-code``): opening a file never runs its code."""
        from edgekd.models import code_trusted, is_user_arch

        for index, member in enumerate(self.manifest.members):
            if is_user_arch(member.arch) and not code_trusted(member.arch):
                module = member.arch[len("py:"):].rpartition(".")[0]
                raise ArtifactError(f"Artifact '{self.path}': member {index} is your own architecture '{member.arch}'; "
                                    f"loading it would import '{module}' and run it; pass --trust-code if you trust it.")

    def build_members(self, only: int | None = None) -> list:
        """The member models, in eval mode, with their weights loaded (``only``: just that member's, in a list: the
        others are neither built nor read)."""
        from edgekd.errors import ConfigError, ModelTooLargeError
        from edgekd.models import code_trusted, create_model, format_arch, parse_arch, seeded

        self.check_code_trusted()
        models = []
        norm = self.manifest.normalization
        for index, member in enumerate(self.manifest.members):
            if only is not None and index != only:
                continue
            try:   # the options go through the same checks as a command line's
                arch, options = parse_arch(format_arch(member.arch, member.arch_options))
                with seeded(self.manifest.seed_of(member)):   # as training built it: a buffer not saved comes back
                    model = create_model(arch, self.input_shape, member.num_outputs, mean=norm["mean"], std=norm["std"],
                                         options=options, trusted=code_trusted(arch))   # read from a file: not typed by the user
            except ModelTooLargeError as exc:   # the machine's to change, not the artifact
                raise ArtifactError(f"Artifact '{self.path}' cannot be loaded on this machine: {exc}") from None
            except ConfigError as exc:
                raise ArtifactError(f"Artifact '{self.path}': member '{member.arch}' cannot be built ({exc}); "
                                    f"re-create the artifact.") from None
            state = self.load_tensors(member.weights)
            try:
                missing, unexpected = model.load_state_dict(state, strict=False)
            except RuntimeError as exc:   # shapes that do not fit
                raise ArtifactError(f"Artifact '{self.path}': weights in '{member.weights}' do not fit architecture "
                                    f"'{member.arch}' ({str(exc).splitlines()[-1].strip()[:160]}); re-create the artifact.") from None
            if missing or unexpected:
                raise ArtifactError(f"Artifact '{self.path}': weights in '{member.weights}' do not fit architecture "
                                    f"'{member.arch}' (missing {list(missing)[:3]}, unexpected {list(unexpected)[:3]}); re-create the artifact.")
            models.append(model.eval())
        return models


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
    if not path.exists():   # a writer killed between moving the old artifact aside and renaming the new one in
        from edgekd.outputs import restore_interrupted_swap

        restore_interrupted_swap(path)   # its backup put back (a dead process's only), as its next writer would
    if not path.is_dir():
        raise ArtifactError(f"'{path}' is not an artifact folder (no such folder); pass a folder written by edgekd.")
    if not manifest_path.is_file():
        raise ArtifactError(f"'{path}' is not an edgekd artifact: it has no {MANIFEST}; pass a folder written by edgekd.")
    try:
        raw = json.loads(manifest_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ArtifactError(f"Artifact '{path}': {MANIFEST} is corrupt ({exc.__class__.__name__}); re-create the artifact.") from None
    manifest = Manifest.from_json(raw, path)
    for name in manifest.files:
        _inside(path, name)
    if verify:
        for name, expected in manifest.files.items():
            file = _inside(path, name)
            if not file.is_file():
                raise ArtifactError(f"Artifact '{path}': file '{name}' is missing; re-create the artifact.")
            actual = sha256_file(file)
            if actual != expected:
                raise ArtifactError(f"Artifact '{path}': '{name}' has sha256 {actual[:12]}… but the manifest says "
                                    f"{expected[:12]}…; the file is corrupt or was edited; re-create the artifact.")
    return Artifact(path=path, manifest=manifest)


def save_artifact(out_dir: str | Path, manifest: Manifest, tensor_files: dict[str, dict], *,
                  extra_files: dict[str, bytes] | None = None, nested: dict | None = None,
                  overwrite: bool = False) -> Artifact:
    """Write an artifact folder atomically: everything goes to a temporary sibling, then one rename.

    ``tensor_files`` maps a file name to a state dict (written as safetensors); ``extra_files`` maps
    a file name to bytes (a PNG, a JSON report); ``nested`` maps a sub-folder name to
    ``(Manifest, tensor_files)`` of an artifact stored inside this one (a distilled student's
    hard-label baseline), covered by the hash of its manifest. The manifest gains ``files`` (sha256 of
    each), ``versions`` and ``created``.
    """
    from edgekd.outputs import check_output, scratch_folder

    out_dir = Path(out_dir)
    check_output(out_dir, kind="artifact", overwrite=overwrite)   # only an edgekd artifact is ever replaced
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with scratch_folder(out_dir) as tmp:
        extra = dict(extra_files or {})
        for name, (sub_manifest, sub_tensors) in (nested or {}).items():
            _write_folder(tmp / name, sub_manifest, sub_tensors, {})
        full = _write_folder(tmp, manifest, tensor_files, extra, nested=list(nested or {}))
        swap_in_folder(tmp, out_dir)
    return Artifact(path=out_dir, manifest=full)


def _write_folder(folder: Path, manifest: Manifest, tensor_files: dict, extra_files: dict, nested=()) -> Manifest:
    folder.mkdir(exist_ok=True)
    files = {}
    for name, state in tensor_files.items():
        files[name] = save_tensors(folder / name, state)
    for name, payload in extra_files.items():
        (folder / name).write_bytes(payload)
        files[name] = sha256_file(folder / name)
        _fsync(folder / name)
    for name in nested:
        files[f"{name}/{MANIFEST}"] = sha256_file(folder / name / MANIFEST)
    full = manifest.with_files(files, library_versions(), now_iso(), numerics())
    write_json_atomic(folder / MANIFEST, full.to_json())
    _fsync(folder)
    return full


def swap_in_folder(tmp: Path, out_dir: Path) -> None:
    """Replace ``out_dir`` by ``tmp``; an old folder is moved aside (under a name unique to this run)
    first, put back if the rename fails, and removed only after."""
    from edgekd.outputs import OLD_SUFFIX, hold, release, temp_folder

    if out_dir.exists():
        old = temp_folder(out_dir, OLD_SUFFIX)   # an empty folder: rename(2) replaces it
        release(old)
        os.replace(out_dir, old)
        hold(old)   # (the folder now there is the old artifact: held while it is set aside)
        try:
            try:
                os.replace(tmp, out_dir)
            except BaseException:
                os.replace(old, out_dir)
                raise
            _fsync(out_dir.parent)   # the renames on disk before the old artifact goes (a power cut keeps one of the two)
            shutil.rmtree(old, ignore_errors=True)
        finally:
            release(old)
    else:
        os.replace(tmp, out_dir)
