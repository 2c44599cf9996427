"""``export_onnx``: an edgekd artifact -> one verified ONNX (or ORT-format) file, fp32 or int8.

The steps, all in a temporary folder beside the output:

1. ``torch.onnx.export`` with the dynamo exporter (onnxscript), a dynamic batch dimension, input
   ``input`` (raw values as stored; ``uint8`` pixels with ``uint8_input``) and output ``logits``; the
   opset is checked against the one asked for, then ``onnx.checker`` runs its full check.
2. Parity with PyTorch on the val split at batch 1 and a larger batch (``verify.py``), gated strictly.
3. Optionally int8 quantization (``quantize.py``), gated on the test-split accuracy drop.
4. ``metadata_props`` (classes, input shape and dtype, normalization, edgekd version, the source
   artifact's fingerprint, the verification figures) are added to the saved file.
5. Optionally the ORT format (``mobile.py``), loaded back and verified the same way.
6. Only then are the model and its JSON summary (``<out>.json``) renamed into place: a failed gate
   leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from edgekd.artifacts import library_versions, now_iso, sha256_file, write_json_atomic
from edgekd.data import inference_rows
from edgekd.errors import ConfigError, ExportError
from edgekd.outputs import export_summary_path, replaced_sha256, scratch_folder
from edgekd.teachers import source_path
from edgekd.validation import check_output_file
from export.config import DEFAULT_OPSET, ExportConfig
from export.quantize import precision_name, quantize_model
from export.source import (ModelInputs, RawPixels, Source, builder_fingerprint, calibration_inputs, gate_data, load_source,
                           model_input, source_counts)
from export.verify import (LazyNoise, Parity, accuracy, check_accuracy_drop, check_parity, gate_fp32, gate_int8,
                           measure_parity, open_session, parity, run_session, torch_logits)

INPUT_NAME = "input"
OUTPUT_NAME = "logits"
METADATA_PREFIX = "edgekd."
_JSON_KEYS = ("classes", "input_shape", "normalization", "verification", "quantization", "source")


@dataclass(frozen=True)
class ExportResult:
    """What ``export_onnx`` wrote and measured; ``summary`` is the JSON saved beside the model."""

    path: Path
    summary_path: Path
    format: str                 # "onnx", "ort" or "pte"
    precision: str              # "fp32", "int8-static-qdq" or "int8-dynamic"
    opset: int | None           # None for a .pte
    size_bytes: int
    parity: tuple[Parity, ...]  # the written file vs PyTorch on the val split
    test_accuracy: float        # the written file
    reference_test_accuracy: float  # the fp32 export, before quantization (it matches PyTorch on val)
    accuracy_drop: float | None  # points, for quantized exports
    seconds: float
    summary: dict = field(repr=False)

    def to_dict(self) -> dict:
        return self.summary


# --- the export ----------------------------------------------------------------------------------

def export_onnx(model: str | Path, out: str | Path, config: ExportConfig = ExportConfig(), *,
                overwrite: bool = False, data=None, calibration=None) -> ExportResult:
    """Export the artifact ``model`` to ``out`` (``.onnx``, or ``.ort`` with ``config.ort``), verified.

    ``data`` / ``calibration`` may pass already loaded ``Dataset`` objects instead of the specs in
    ``config``. Raises ``ExportError`` (and writes nothing) when a gate fails.
    """
    started = time.perf_counter()
    if config.executorch:   # (this writes ONNX: an ONNX graph named .pte fails far from here, on the device)
        raise ConfigError("export_onnx writes ONNX; call export.export_executorch for an ExecuTorch program (.pte). "
                          "Got a config with executorch=True.")
    model, out = source_path(model), Path(out)
    summary_path = export_summary_path(out)
    check_request(out, summary_path, config, overwrite=overwrite, has_calibration=calibration is not None, model=model)
    source = load_source(model)
    data, calibration = gate_data(source, config, data, calibration)

    with scratch_folder(out) as tmp:   # unique per run; one left by a killed export is removed by the next
        run = _Run(source, config, data, tmp)
        final_onnx, final = run.fp32()
        if config.quantize:
            final_onnx, final = run.quantized(final_onnx, calibration)
        precision = precision_name(config.quantize, config.quant_format)
        final_path, fmt = tmp / "model.onnx", "onnx"
        write_metadata(final_onnx, final_path, build_metadata(source, config, data, precision, run.verification, run.quant_info))
        if config.ort:
            final_path, fmt, final = tmp / "model.ort", "ort", run.ort_format(final_path, tmp / "model.ort")
        _check_metadata_readable(final_path)
        run.sizes["model"] = final_path.stat().st_size
        run.seconds["total"] = time.perf_counter() - started
        summary = _summary(out, fmt, precision, config, source, data, run.sizes, run.verification, run.quant_info,
                           {k: round(v, 3) for k, v in run.seconds.items()})
        summary["model_sha256"] = sha256_file(final_path)
        summary["replaces_sha256"] = replaced_sha256(out)
        write_json_atomic(tmp / "summary.json", summary)
        # summary first: an export cut between the renames leaves a summary whose hash the old model does
        # not match (edgekd.outputs.export_summary_of), never a new model that --overwrite would not recognise
        os.replace(tmp / "summary.json", summary_path)
        os.replace(final_path, out)
    parities, test_accuracy, drop = final
    return ExportResult(path=out, summary_path=summary_path, format=fmt, precision=precision, opset=config.opset,
                        size_bytes=run.sizes["model"], parity=tuple(parities), test_accuracy=test_accuracy,
                        reference_test_accuracy=run.reference_accuracy, accuracy_drop=drop,
                        seconds=run.seconds["total"], summary=summary)


class _Run:
    """The stages of one export in a temporary folder, and the figures they gather. Each stage returns
    ``(parities vs PyTorch on val, test accuracy, accuracy drop or None)`` of the file it made."""

    def __init__(self, source: Source, config: ExportConfig, data, tmp: Path):
        self.source, self.config, self.tmp = source, config, tmp
        self.to_input = lambda x: model_input(x, config.uint8_input, data.spec)  # noqa: E731
        self.x_val, self.x_test = (ModelInputs(x, config.uint8_input, data.spec) for x in (data.x_val, data.x_test))
        self.y_test = data.y_test.cpu().numpy()
        self.ref_val = torch_logits(source.module, data.x_val)
        self.seconds, self.sizes, self.quant_info = {}, {"source_weights": source.weights_bytes}, None
        self.reference_accuracy = float("nan")
        self.verification = {"data": data.spec, "parity_split": "val", "n_val": len(self.x_val), "accuracy_split": "test",
                             "n_test": len(self.x_test), "atol": config.atol, "rtol": config.rtol,
                             "max_accuracy_drop": config.max_accuracy_drop}
        self.noise = LazyNoise(source.module, data.x_val, self.ref_val, self.verification)
        if source.kind == "specialist-ensemble":  # the graph runs a fixed number of solver steps: how close to the solver?
            solver = parity(source.teacher.logits(data.x_val).cpu().numpy(), self.ref_val, len(self.ref_val))
            self.verification["fixed_steps_vs_solver"] = {"max_abs_diff": solver.max_abs_diff,
                                                          "top1_agreement": solver.top1_agreement}

    def _measure(self, path: Path, what: str):
        session = open_session(path, what=what)
        parities = measure_parity(session, self.x_val, self.ref_val, batch_sizes=(1, self.config.verify_batch_size),
                                  batch1_samples=self.config.batch1_samples, rtol=self.config.rtol)
        return parities, accuracy(run_session(session, self.x_test, inference_rows(self.x_test.x, 256)), self.y_test)

    def fp32(self):
        tick = time.perf_counter()
        path = self.tmp / "model.fp32.onnx"
        module = RawPixels(self.source.module).eval() if self.config.uint8_input else self.source.module
        x = np.asarray(self.x_val[:2])
        x = x if len(x) >= 2 else np.concatenate([x, x])
        torch_to_onnx(module, torch.as_tensor(x), path, self.config.opset)
        self.seconds["export"] = time.perf_counter() - tick
        self.sizes["fp32_onnx"] = path.stat().st_size
        tick = time.perf_counter()
        parities, test_accuracy = self._measure(path, "exported fp32 model")
        # accuracy "before" quantization: the fp32 export, just shown equal to PyTorch (a PyTorch pass
        # over the test split would cost as much as the export itself on a big teacher)
        gate_fp32(self.verification, parities, test_accuracy, atol=self.config.atol, rtol=self.config.rtol,
                  what="exported fp32 model", reference_model="the fp32 export (equal to PyTorch on val within atol)",
                  noise=self.noise)
        self.reference_accuracy = test_accuracy
        self.seconds["verify_fp32"] = time.perf_counter() - tick
        return path, (parities, test_accuracy, None)

    def quantized(self, fp32_path: Path, calibration):
        config = self.config
        tick = time.perf_counter()
        path = self.tmp / "model.int8.onnx"
        calib = calibration_inputs(calibration, config.calibration_size, config.seed, self.to_input) if config.quantize == "int8" else None
        self.quant_info = quantize_model(fp32_path, path, config.quantize, calibration=calib, workdir=self.tmp,
                                         quant_format=config.quant_format)
        if calib is not None:
            self.quant_info["calibration_data"] = f"{calibration.spec} [train]"
        _full_check(path)
        self.seconds["quantize"] = time.perf_counter() - tick
        self.sizes["int8_onnx"] = path.stat().st_size
        tick = time.perf_counter()
        parities, test_accuracy = self._measure(path, "quantized model")
        drop = gate_int8(self.verification, parities, test_accuracy, self.reference_accuracy,
                         max_drop=config.max_accuracy_drop, what="quantized model", n=len(self.y_test))
        self.seconds["verify_int8"] = time.perf_counter() - tick
        return path, (parities, test_accuracy, drop)

    def ort_format(self, onnx_path: Path, path: Path):
        from export.mobile import to_ort_format

        tick = time.perf_counter()
        to_ort_format(onnx_path, path, self.config.ort_optimization)
        parities, test_accuracy = self._measure(path, "ORT-format model")
        self.verification["ort"] = {"optimization": self.config.ort_optimization, "parity": [p.to_dict() for p in parities], "test_accuracy": test_accuracy}
        drop = None
        if self.config.quantize:
            drop = check_accuracy_drop(self.reference_accuracy, test_accuracy, max_drop=self.config.max_accuracy_drop,
                                       what="ORT-format quantized model", n=len(self.y_test))
        else:
            check_parity(parities, atol=self.config.atol, rtol=self.config.rtol, what="ORT-format model", noise=self.noise)
        self.seconds["ort"] = time.perf_counter() - tick
        self.sizes["ort"] = path.stat().st_size
        return parities, test_accuracy, drop


def check_request(out: Path, summary_path: Path, config: ExportConfig, *, overwrite: bool, has_calibration: bool = False,
                  model=None) -> None:
    """Everything that can be checked before any work: the output path (and its summary beside it: an
    existing pair is replaced only if edgekd exported it, never an input) and the options."""
    from edgekd.outputs import data_paths

    check_output_file(out, overwrite=overwrite,
                      inputs=[model], data=[*data_paths(config.data), *data_paths(config.calibration_data)])
    suffix = out.suffix.lower()
    if config.executorch:
        if suffix != ".pte":
            raise ConfigError(f"With --executorch the output is an ExecuTorch program whose name must end in .pte. Got '{out.name}' instead.")
        return
    if suffix == ".pte":
        raise ConfigError(f"A .pte output is an ExecuTorch program; pass --executorch. Got '{out.name}' without it.")
    if config.ort and suffix != ".ort":
        raise ConfigError(f"With --ort the output is an ORT-format file whose name must end in .ort. Got '{out.name}' instead.")
    if not config.ort and suffix != ".onnx":
        hint = "; pass --ort for the ORT format" if suffix == ".ort" else ""
        raise ConfigError(f"The output of an ONNX export must end in .onnx. Got '{out.name}' instead{hint}.")
    # int8 without --calibration-data calibrates on the train split of the data the artifact records


# --- torch -> onnx -------------------------------------------------------------------------------

def torch_to_onnx(module: nn.Module, example: torch.Tensor, path: Path, opset: int) -> None:
    """Dynamo export with a dynamic batch dimension, saved to ``path``, opset checked, full onnx check."""
    with _quiet_exporter():
        try:
            program = torch.onnx.export(module.eval(), (example,), dynamo=True, opset_version=opset,
                                        dynamic_shapes=({0: torch.export.Dim("batch")},),
                                        input_names=[INPUT_NAME], output_names=[OUTPUT_NAME], verbose=False)
            program.save(str(path))
        except ImportError as exc:   # not the model: an exporter package missing or too old for this torch
            raise ExportError(f"torch.onnx.export cannot run: {exc}; install the tested versions with "
                              f"pip install -c constraints.txt -e . (onnxscript and onnx-ir).") from exc
        except Exception as exc:  # the exporter raises many types; all mean "this module does not export"
            raise ExportError(f"torch.onnx.export (dynamo) failed: {export_failure(exc)}; rerun with --debug for the "
                              f"traceback.") from exc
    got = model_opset(path)
    if got != opset:
        raise ExportError(f"Asked for opset {opset} but the exporter produced opset {got}; choose --opset {got} "
                          f"(the dynamo exporter writes {DEFAULT_OPSET} natively).")
    _full_check(path)


def export_failure(exc: BaseException) -> str:
    """What made an export fail, in a line: the innermost cause's first line (the exporter wraps it in a
    message whose first line is the same boilerplate for every model), with the usual fix for Python control flow
    on tensor values, which torch.export cannot trace."""
    root = exc
    while root.__cause__ is not None and root.__cause__ is not root:
        root = root.__cause__
    lines = [line.strip() for line in str(root).splitlines() if line.strip()]
    text = f"{type(root).__name__}: {lines[0] if lines else ''}"[:240]
    if "data-dependent" in str(root) or type(root).__name__.startswith("GuardOnDataDependent"):
        text += " (Python control flow on a tensor's value in forward: use torch.where or torch.cond)"
    return text


def model_opset(path: Path) -> int:
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    return next((int(o.version) for o in proto.opset_import if o.domain in ("", "ai.onnx")), -1)


def _full_check(path: Path) -> None:
    import onnx

    try:
        onnx.checker.check_model(onnx.load(str(path)), full_check=True)
    except Exception as exc:  # onnx.checker.ValidationError, shape inference errors
        text = (str(exc).strip() or exc.__class__.__name__).splitlines()[0][:240]
        raise ExportError(f"The exported model fails onnx.checker's full check ({text}); report the model.") from None


@contextlib.contextmanager
def _quiet_exporter():
    """The exporter prints progress and warns about torchvision ops, and on a failure writes the graphs it
    traced to stderr; keep that off the terminal."""
    buffer = io.StringIO()
    names = ("torch.onnx", "torch.export", "torch._export", "onnxscript", "onnx_ir", "torch.fx.experimental.symbolic_shapes")
    loggers = [logging.getLogger(name) for name in names]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(buffer), contextlib.redirect_stderr(buffer):
            warnings.simplefilter("ignore")
            yield buffer
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


# --- metadata ------------------------------------------------------------------------------------

def build_metadata(source: Source, config: ExportConfig, data, precision: str, verification: dict,
                   quantization: dict | None) -> dict[str, str]:
    import edgekd

    dtype = "uint8" if config.uint8_input else "float32"
    props = {
        "version": edgekd.__version__,
        "classes": json.dumps(list(source.classes)),
        "input_name": INPUT_NAME,
        "output_name": OUTPUT_NAME,
        "input_shape": json.dumps(["batch", *source.input_shape]),
        "input_dtype": dtype,
        "preprocessing": ("none: feed raw values as stored (pixels 0-255); the graph "
                          + ("casts uint8 to float32, then " if config.uint8_input else "")
                          + "normalises (x - mean) / std per channel"),
        "normalization": json.dumps(source.normalization),
        "precision": precision,
        "opset": str(config.opset),
        "source": json.dumps(source.describe()),
        "source_fingerprint": source.fingerprint,
        "data": data.spec,
        "trained_on": json.dumps(source.trained_on),
        "verification": json.dumps(verification),
        "created": now_iso(),
    }
    if quantization:
        props["quantization"] = json.dumps(quantization)
    for key, value in source_counts(source).items():   # bench reads them (benchmarks.modelinfo): int8 keeps the MACs
        props[key] = str(value)
    return {METADATA_PREFIX + key: value for key, value in props.items()}


def write_metadata(src: Path, dst: Path, props: dict[str, str]) -> None:
    """Copy ``src`` to ``dst`` with ``props`` set in ``metadata_props`` (the proto is loaded from the
    saved file: ``ONNXProgram.model_proto`` builds a new proto on every access)."""
    import onnx

    proto = onnx.load(str(src))
    kept = [(p.key, p.value) for p in proto.metadata_props if p.key not in props]
    del proto.metadata_props[:]
    for key, value in [*kept, *props.items()]:
        proto.metadata_props.add(key=key, value=value)
    proto.doc_string = (f"edgekd {props.get(METADATA_PREFIX + 'precision', '')} export of "
                        f"{json.loads(props[METADATA_PREFIX + 'source'])['description']}; raw inputs in, logits out.")
    onnx.checker.check_model(proto, full_check=True)
    onnx.save(proto, str(dst))


def read_metadata(path: str | Path) -> dict:
    """The ``edgekd.*`` metadata of an exported .onnx/.ort file, read through onnxruntime, JSON decoded."""
    if not Path(path).is_file():   # (onnxruntime's own words blame the export: "choose another --opset")
        raise ConfigError(f"File '{path}' not found; pass a .onnx or .ort file written by 'edgekd export'.")
    session = open_session(path)
    meta = session.get_modelmeta().custom_metadata_map
    result = {}
    for key, value in meta.items():
        if not key.startswith(METADATA_PREFIX):
            continue
        name = key[len(METADATA_PREFIX):]
        result[name] = json.loads(value) if name in _JSON_KEYS else value
    return result


def _check_metadata_readable(path: Path) -> None:
    meta = read_metadata(path)
    if "classes" not in meta or "verification" not in meta:
        raise ExportError(f"The written model lost its metadata ({sorted(meta)}); report this.")


def _summary(out, fmt, precision, config, source, data, sizes, verification, quant_info, seconds) -> dict:
    sizes = dict(sizes)
    if "int8_onnx" in sizes:
        sizes["int8_to_fp32_ratio"] = round(sizes["int8_onnx"] / sizes["fp32_onnx"], 4)
    return {
        "model": str(out), "format": fmt, "precision": precision, "opset": config.opset,
        "input": {"name": INPUT_NAME, "dtype": "uint8" if config.uint8_input else "float32",
                  "shape": ["batch", *source.input_shape]},
        "output": {"name": OUTPUT_NAME, "classes": list(source.classes)},
        "normalization": source.normalization, "source": source.describe(), "builder": builder_fingerprint(),
        "sizes_bytes": sizes, "verification": verification, "quantization": quant_info,
        "config": {k: getattr(config, k) for k in config.__dataclass_fields__},
        "seconds": seconds, "versions": library_versions(), "created": now_iso(),
    }
