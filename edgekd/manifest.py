"""What an artifact folder's ``manifest.json`` holds, as typed, frozen dataclasses: one ``Manifest``
(kind, classes, input shape, normalisation, members, combine rule, resolved config, data, seed,
metrics, timings, files and what each stage adds) and one ``Member`` per network.

``Manifest.from_json`` is the one reader: it checks types and ranges (a malformed manifest is one
``ArtifactError``) and reads format version 1, whose wall-clock timings lived inside ``metrics``
(``metrics.timings_s`` / ``metrics.seconds``): they move to ``timings`` here, so no reader carries a
fallback. ``to_json`` writes format version 2.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path

from edgekd.errors import ArtifactError

FORMAT = "edgekd.artifact"
FORMAT_VERSION = 2
KINDS = ("model", "ensemble", "specialist-ensemble")
MAX_INPUT_VALUES = 1 << 24     # values per sample (a 4096x4096 image); more is a crafted manifest
MAX_CLASSES = 100_000


@dataclass(frozen=True)
class Member:
    """One network of an artifact: its architecture, weights file and (specialists) its role."""

    arch: str
    options: dict
    weights: str
    num_outputs: int
    seed: int | None = None
    role: str | None = None                  # "generalist" | "specialist" in a specialist ensemble
    classes: tuple[int, ...] | None = None   # a specialist's classes (its outputs, then the dustbin)
    class_names: tuple[str, ...] | None = None
    dustbin_bias: float | None = None
    dustbin_bias_applied: bool | None = None
    true_share: float | None = None
    training_share: float | None = None
    val_accuracy: float | None = None
    best_epoch: int | None = None
    epochs_run: int | None = None
    history: tuple = ()

    @property
    def arch_options(self) -> dict:
        """``options`` with JSON lists back as tuples (as ``parse_arch`` gives them)."""
        return {key: tuple(value) if isinstance(value, list) else value for key, value in self.options.items()}


@dataclass(frozen=True)
class Manifest:
    kind: str
    classes: tuple[str, ...]
    input_shape: tuple[int, ...]
    normalization: dict                      # {"mean": [...], "std": [...]} per channel
    members: tuple[Member, ...]
    combine: str = "logits"                  # "logits" | "probs" | "specialists-kl"
    config: dict = field(default_factory=dict)   # the resolved config (command line or library call)
    data: dict = field(default_factory=dict)     # Dataset.describe()
    seed: int = 0
    metrics: dict = field(default_factory=dict)  # deterministic figures
    timings: dict = field(default_factory=dict)  # wall-clock seconds, apart from the metrics
    teacher: dict | None = None              # distill: the teacher's description and fingerprint
    search: tuple = ()                       # distill: the (T, alpha) candidates scored on val
    solver: dict | None = None               # specialists: the KL combination's settings
    clusters: dict | None = None             # specialists: the confusion clustering
    generalist: dict | None = None           # specialists: where the generalist came from
    files: dict = field(default_factory=dict)    # file name -> sha256, written by save
    versions: dict = field(default_factory=dict)
    environment: dict | None = None          # threads, CPU kernels (and GPU, CUDA, cuDNN): what a same-seed rerun must match
    created: str | None = None
    format_version: int = FORMAT_VERSION

    def with_files(self, files: dict, versions: dict, created: str, environment: dict | None = None) -> "Manifest":
        return dataclasses.replace(self, files=dict(files), versions=dict(versions), created=created,
                                   environment=None if environment is None else dict(environment),
                                   format_version=FORMAT_VERSION)

    def seed_of(self, member: Member) -> int:
        """The seed ``member`` was built under: its own, or (recorded before members kept theirs) the artifact's."""
        return member.seed if member.seed is not None else self.seed

    def to_json(self) -> dict:
        """The JSON object written to ``manifest.json`` (fields left at None are left out)."""
        out = {"format": FORMAT}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name == "members":
                value = [_member_json(m) for m in value]
            if value is not None:
                out[f.name] = list(value) if isinstance(value, tuple) else value
        return out

    @classmethod
    def from_json(cls, data, path: str | Path = "?") -> "Manifest":
        """Check and read a manifest (format version 1 or 2); ``ArtifactError`` names what is wrong."""
        path = Path(path)

        def fail(what: str):
            raise ArtifactError(f"Artifact '{path}': manifest.json {what}; re-create the artifact.")

        if not isinstance(data, dict) or data.get("format") != FORMAT:
            fail("is not an edgekd manifest")
        version = data.get("format_version", 1)
        if not isinstance(version, int) or isinstance(version, bool) or version < 1:   # ("2" was called newer)
            fail(f"has 'format_version' {version!r}; expected a whole number from 1")
        if version > FORMAT_VERSION:
            raise ArtifactError(f"Artifact '{path}' has format version {version!r}, newer than this edgekd reads "
                                f"({FORMAT_VERSION}); upgrade edgekd.")
        for key in ("kind", "classes", "input_shape", "normalization", "members", "files"):
            if key not in data:
                fail(f"lacks '{key}'")
        if data["kind"] not in KINDS:
            raise ArtifactError(f"Artifact '{path}' has unknown kind '{data['kind']}'; expected one of {', '.join(KINDS)}.")
        _check_core(data, fail)
        if data["kind"] in ("model", "ensemble"):   # (a specialist's outputs are its classes and a dustbin)
            for index, member in enumerate(data["members"]):
                if "classes" not in member and member.get("num_outputs", len(data["classes"])) != len(data["classes"]):
                    fail(f"lists {len(data['classes'])} classes but member {index} has {member['num_outputs']} outputs")
        for name in ("config", "data", "metrics", "timings", "teacher", "solver", "clusters", "generalist", "versions",
                     "environment"):
            if data.get(name) is not None and not isinstance(data[name], dict):
                fail(f"has '{name}' that is not a table")
        if not isinstance((data.get("config") or {}).get("params", {}), (dict, type(None))):
            fail("has 'config.params' that is not a table")
        split_seed = (data.get("data") or {}).get("split_seed", 0)
        if not isinstance(split_seed, int) or isinstance(split_seed, bool):
            fail("has a 'data.split_seed' that is not an integer")
        data = _from_version_1(data) if version == 1 else data
        known = {f.name for f in dataclasses.fields(cls)} - {"members"}
        if not _is_seed(data.get("seed", 0)) or not isinstance(data.get("search", []), list):
            fail("has a 'seed' that is not an integer in [0, 2**63) or a 'search' that is not a list")
        values = {k: v for k, v in data.items() if k in known and v is not None}
        values.update(classes=tuple(data["classes"]), input_shape=tuple(data["input_shape"]),
                      search=tuple(data.get("search", [])), format_version=FORMAT_VERSION,
                      members=tuple(_member(m, i, fail, len(data["classes"])) for i, m in enumerate(data["members"])))
        return cls(**values)


def _member_json(member: Member) -> dict:
    out = {}
    for f in dataclasses.fields(member):
        value = getattr(member, f.name)
        if value is None or (f.name == "history" and not value):
            continue
        out[f.name] = list(value) if isinstance(value, tuple) else value
    return out


def _member(data: dict, index: int, fail, num_classes: int) -> Member:
    known = {f.name for f in dataclasses.fields(Member)}
    values = {k: v for k, v in data.items() if k in known}
    values.setdefault("options", {})
    values.setdefault("num_outputs", num_classes)
    for key in ("classes", "class_names", "history"):
        if isinstance(values.get(key), list):
            values[key] = tuple(values[key])
    arch = values.get("arch")
    if not isinstance(arch, str) or not arch or any(c.isspace() for c in arch):
        # an architecture is a name: whitespace would let "\tpy:..." pass as a built-in where trust is checked
        fail(f"member {index} has 'arch' {arch!r}, which is not an architecture name")
    if values.get("seed") is not None and not _is_seed(values["seed"]):
        fail(f"member {index} has 'seed' {values['seed']!r}; expected an integer in [0, 2**63)")
    number = (int, float)
    for key in ("dustbin_bias", "true_share", "training_share", "val_accuracy"):
        if values.get(key) is not None and (not isinstance(values[key], number) or isinstance(values[key], bool)):
            fail(f"member {index} has '{key}' that is not a number")
    classes = values.get("classes")
    if classes is not None:
        if not all(isinstance(c, int) and not isinstance(c, bool) for c in classes):
            fail(f"member {index} has 'classes' that are not class indices")
        if len(set(classes)) != len(classes) or not all(0 <= c < num_classes for c in classes):
            fail(f"member {index} has 'classes' {list(classes)[:6]} that are not distinct classes in [0, {num_classes - 1}]")
        if "num_outputs" in data and values["num_outputs"] != len(classes) + 1:
            fail(f"member {index} has {values['num_outputs']!r} outputs for its {len(classes)} classes and a dustbin")
    return Member(**values)


def _is_seed(value) -> bool:
    """What ``torch.manual_seed`` builds a member under: a whole number that fits in 63 bits."""
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2 ** 63


def _from_version_1(data: dict) -> dict:
    """Version 1 kept wall-clock figures inside ``metrics`` (``timings_s``, ``seconds``)."""
    data = dict(data)
    metrics = dict(data.get("metrics") or {})
    timings = dict(data.get("timings") or {})
    timings = {**metrics.pop("timings_s", {}), **timings}
    if "seconds" in metrics:
        timings.setdefault("seconds", metrics.pop("seconds"))
    data.update(metrics=metrics, timings=timings)
    return data


def _check_core(manifest: dict, fail) -> None:
    """Types and bounds of the fields edgekd builds models from; every member's weights file must be
    listed (and so hashed) in ``files``."""
    def numbers(value):
        return isinstance(value, list) and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value)

    files = manifest["files"]
    if not isinstance(files, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in files.items()):
        fail("has 'files' that is not a table of file names to sha256 hashes")
    for name in files:
        if Path(name).is_absolute() or ".." in Path(name).parts:
            fail(f"names file '{name}' outside the artifact folder; refusing to read it")
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
