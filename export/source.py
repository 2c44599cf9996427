"""The model an export starts from, and the data that verifies it: shared by every export format.

``load_source`` reads an artifact folder (a model, an ensemble, a specialist ensemble) into a torch
module with what the exported file records about it; ``load_data`` / ``check_fits`` give the real data
the gates run on; ``model_input`` turns it into what the exported graph takes (float32, or uint8 pixels
with ``RawPixels``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from edgekd.artifacts import MANIFEST, sha256_file
from edgekd.data import same_layout
from edgekd.errors import ExportError
from edgekd.validation import VAL_FRACTION


# The modules whose code decides what an exported graph holds (architectures, the ensemble's combination,
# the exporters, the quantizer): a file made by other code is stale even when its artifact and settings match.
GRAPH_MODULES = ("edgekd.models", "edgekd.kd_models", "edgekd.teachers", "export.source", "export.onnx_export",
                 "export.executorch_export", "export.quantize", "export.mobile")


def builder_fingerprint() -> str:
    """sha256 over the source of ``GRAPH_MODULES`` and the torch version: recorded in every export summary,
    so that a cache of exports (e.g. ``benchmarks/latency_report.py``) can refuse files another edgekd made."""
    import hashlib
    import importlib.util

    digest = hashlib.sha256(torch.__version__.encode())
    for name in GRAPH_MODULES:
        origin = importlib.util.find_spec(name).origin
        digest.update(name.encode() + b"\0" + Path(origin).read_bytes())
    return digest.hexdigest()


@dataclass(frozen=True)
class Source:
    """The model to export, as read from an artifact folder."""

    path: Path
    kind: str
    module: nn.Module
    classes: tuple[str, ...]
    input_shape: tuple[int, ...]
    normalization: dict
    fingerprint: str
    manifest_sha256: str
    description: str
    members: int
    combine: str
    data_spec: str | None
    val_fraction: float
    split_seed: int
    weights_bytes: int
    teacher: object = field(default=None, repr=False, compare=False)  # the edgekd Teacher it came from
    metrics: dict = field(default_factory=dict, repr=False, compare=False)   # its manifest's (MACs, parameters, ...)
    # the data it was trained on, split as it was (spec, split seed, val and test rows): recorded in its exports,
    # so that an export used as a teacher meets the checks its artifact meets (edgekd.teachers.check_teacher_fits)
    trained_on: dict = field(default_factory=dict, repr=False, compare=False)

    def describe(self) -> dict:
        # the path absolute: bench reads the export's source back from any folder (benchmarks.modelinfo)
        return {"path": str(self.path.resolve()), "kind": self.kind, "description": self.description, "members": self.members,
                "combine": self.combine, "fingerprint": self.fingerprint, "manifest_sha256": self.manifest_sha256,
                "weights_bytes": self.weights_bytes}


def load_source(path: str | Path) -> Source:
    """Read an artifact folder (a model, an ensemble or a specialist ensemble) into a torch module."""
    from edgekd.artifacts import is_artifact, load_artifact
    from edgekd.teachers import EnsembleModule, teacher_from_artifact

    path = Path(path)
    if not path.exists():   # (a writer killed mid-swap: its backup put back, as load_teacher does)
        from edgekd.outputs import restore_interrupted_swap

        restore_interrupted_swap(path)
    if not path.exists():
        raise ExportError(f"Model '{path}' not found; pass an edgekd artifact folder (from 'edgekd teacher train' or 'edgekd distill').")
    if not path.is_dir() or not is_artifact(path):
        what = "an ONNX file already" if path.suffix.lower() == ".onnx" else ("a folder without manifest.json" if path.is_dir() else "a file")
        raise ExportError(f"'{path}' is not an edgekd model: expected an artifact folder with manifest.json "
                          f"(from 'edgekd teacher train' or 'edgekd distill'). Got {what} instead.")
    artifact = load_artifact(path)
    manifest = artifact.manifest
    if artifact.kind == "specialist-ensemble":
        teacher, module = specialist_module(artifact)
        description = teacher.description
    else:
        teacher = teacher_from_artifact(artifact)
        module, description = teacher.module(), teacher.description
        if isinstance(module, EnsembleModule) and len(module.members) == 1:
            module = module.members[0]  # a single model: export it without the ensemble's stack
    data = manifest.data
    params = manifest.config.get("params") or {}
    weights = sum((path / name).stat().st_size for name in manifest.files if name.endswith(".safetensors"))
    return Source(path=path, kind=artifact.kind, module=module.eval(), classes=artifact.classes,
                  input_shape=artifact.input_shape, normalization=dict(manifest.normalization),
                  fingerprint=artifact.fingerprint, manifest_sha256=sha256_file(path / MANIFEST),
                  description=description, members=len(manifest.members),
                  combine=manifest.combine, data_spec=data.get("spec"),
                  val_fraction=float(params.get("val_fraction") or VAL_FRACTION), split_seed=int(data.get("split_seed", 0)),
                  weights_bytes=weights, teacher=teacher, metrics=dict(manifest.metrics),
                  trained_on={k: data[k] for k in ("spec", "split_seed", "n_val", "n_test", "val_sha256", "test_sha256")
                              if k in data})


def specialist_module(artifact):
    """(teacher, module) of a specialist ensemble whose combination has a fixed-size graph form."""
    from edgekd.teachers import teacher_from_artifact

    try:
        teacher = teacher_from_artifact(artifact)
    except ImportError as exc:
        raise ExportError(f"Specialist ensemble '{artifact.path}' needs the 'specialists' package to load ({exc}); "
                          f"install edgekd with its specialists stage, or export its generalist instead.") from None
    module = teacher.module()
    if module is None:
        raise ExportError(f"Specialist ensemble '{artifact.path}' cannot be exported as one graph: its combination "
                          f"solves the paper's KL objective for every input with an iterative solver run to "
                          f"convergence, which has no fixed-size ONNX form. Distil it into a student and export "
                          f"that, or export the generalist artifact alone.")
    return teacher, module


class RawPixels(nn.Module):
    """``model(float(x))`` for uint8 ``x``: the device feeds pixels as they come, the Cast is in the graph."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(x.to(torch.float32))


def load_data(source: Source, spec: str | None, *, val_fraction: float | None, role: str):
    """``spec`` split as the artifact was (its split seed; its val fraction unless one is given)."""
    from edgekd.data import load_dataset

    if not spec:
        raise ExportError(f"Artifact '{source.path}' does not record its data, which the export needs for {role}; pass --data SPEC.")
    return load_dataset(spec, val_fraction=val_fraction or source.val_fraction, split_seed=source.split_seed)


def gate_data(source: Source, config, data=None, calibration=None):
    """``(data, calibration)``: the data the gates run on (given, ``config.data``, else the artifact's)
    and, for static int8, the calibration data (given, ``config.calibration_data``, else the same)."""
    if data is None:
        data = load_data(source, config.data or source.data_spec, val_fraction=config.val_fraction, role="verification")
    check_fits(source, data)
    data = data.shaped(source.input_shape)   # flat data of the right size, read as the model's input
    if config.quantize == "int8" and calibration is None:
        same = config.calibration_data in (None, data.spec)
        calibration = data if same else load_data(source, config.calibration_data, val_fraction=config.val_fraction,
                                                  role="calibration")
        check_fits(source, calibration, flag="--calibration-data")
    if calibration is not None:
        calibration = calibration.shaped(source.input_shape)
    return data, calibration


def check_fits(source: Source, data, flag: str = "--data") -> None:
    """``data`` (given with ``flag``) has the model's input size and classes, and splits to verify on."""
    if not same_layout(data.input_shape, source.input_shape):
        raise ExportError(f"Model '{source.path}' takes inputs of shape {tuple(source.input_shape)} but dataset '{data.spec}' "
                          f"has {tuple(data.input_shape)}; pass the data it was trained on with {flag}.")
    if data.num_classes != len(source.classes):
        raise ExportError(f"Model '{source.path}' has {len(source.classes)} classes but dataset '{data.spec}' has "
                          f"{data.num_classes}; pass the data it was trained on with {flag}.")
    if flag == "--data" and (len(data.x_val) == 0 or len(data.x_test) == 0):   # calibration reads train only
        raise ExportError(f"Dataset '{data.spec}' has an empty val or test split; the export needs real data to verify on.")


def model_input(x: torch.Tensor, uint8: bool, spec: str) -> np.ndarray:
    """Inputs as the exported graph takes them: raw float32, or uint8 pixels."""
    x = x.contiguous().cpu()
    if not uint8:
        return x.numpy().astype(np.float32, copy=False)
    if x.dtype == torch.uint8:   # pixels kept as stored: nothing to check
        return x.numpy().copy()
    check_pixels(x, spec)
    return x.numpy().astype(np.uint8)


def check_pixels(x: torch.Tensor, spec: str, rows: int | None = None, *, who: str = "--uint8-input",
                 fix: str = "export without --uint8-input") -> None:
    """Refuse, naming the whole range, values that are not whole pixels in 0..255; read ``rows`` at a time."""
    rows = rows or max(len(x), 1)
    low, high, whole = math.inf, -math.inf, True
    for i in range(0, len(x), rows):
        chunk = x[i:i + rows]
        low, high = min(low, float(chunk.min())), max(high, float(chunk.max()))
        whole = whole and bool((chunk == chunk.round()).all())
    if low < 0 or high > 255 or not whole:
        raise ExportError(f"{who} needs whole pixel values in 0..255 but dataset '{spec}' has values in "
                          f"[{low:g}, {high:g}]" + ("" if whole else " that are not whole numbers") + f"; {fix}.")


class ModelInputs:
    """A split as the exported graph takes it (``model_input``), converted only when a slice of it is read
    (``np.asarray(inputs[i:j])``): a split of an image folder is a memory-mapped uint8 file that may be
    larger than memory, so the export never holds a float32 copy of it whole. ``flat`` gives (N, C*H*W)."""

    CHECK_ROWS = 4096   # rows read at a time when --uint8-input values are checked up front

    def __init__(self, x: torch.Tensor, uint8: bool, spec: str, *, flat: bool = False, rows: range | None = None):
        self.x, self.uint8, self.spec, self.flat = x, uint8, spec, flat
        self.rows = range(len(x)) if rows is None else rows
        if rows is None and uint8 and x.dtype != torch.uint8:   # refused before anything is exported
            check_pixels(x, spec, self.CHECK_ROWS)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, key: slice) -> "ModelInputs":
        if not isinstance(key, slice) or key.step not in (None, 1):
            raise TypeError("ModelInputs are read by contiguous slices, e.g. inputs[i:j]")
        return ModelInputs(self.x, self.uint8, self.spec, flat=self.flat, rows=self.rows[key])

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        rows = self.rows
        array = model_input(self.x[rows.start:rows.stop], self.uint8, self.spec)
        array = array.reshape(len(array), -1) if self.flat else array
        return array if dtype is None else array.astype(dtype, copy=False)


def calibration_inputs(calibration, size: int, seed: int, to_input) -> np.ndarray:
    """``size`` train inputs, a seeded random sample."""
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(calibration.x_train), generator=generator)[:size]
    return to_input(calibration.x_train[order])


def source_counts(source: Source) -> dict:
    """The source artifact's MACs a sample and parameters, as its manifest records them (counted when it does not)."""
    from edgekd.models import count_macs, count_parameters

    metrics = source.metrics   # read with the artifact in load_source: not loaded and hashed again
    counts = {k: metrics.get(k) for k in ("macs", "parameters") if isinstance(metrics.get(k), int)}
    try:
        counts.setdefault("macs", count_macs(source.module, source.input_shape))
        counts.setdefault("parameters", count_parameters(source.module))
    except Exception:   # a module the counter cannot follow: bench counts the graph instead
        pass
    return counts
