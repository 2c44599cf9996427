"""``export_executorch``: an edgekd artifact -> one verified ExecuTorch program (``.pte``), fp32 or int8.

ExecuTorch is PyTorch's on-device runtime; XNNPACK is its CPU kernel library on Android and iOS. The
steps, all in a temporary folder beside the output (a failed gate leaves nothing behind):

1. ``torch.export`` of the model at a fixed batch (``ExportConfig.batch_size``, default 1: one image per
   call, as a phone runs it) -> ``to_edge_transform_and_lower(partitioner=[XnnpackPartitioner()])``
   -> ``to_executorch()``.
2. int8 (``quantize="int8"``): the PT2E flow — ``prepare_pt2e`` with the ``XNNPACKQuantizer``
   (symmetric, per-channel weights, static activations), calibration on ``calibration_size`` train
   inputs, ``convert_pt2e`` — then the same lowering; ``"dynamic"`` quantizes activations per call.
3. The file is loaded back with ``executorch.runtime`` and gated like the ONNX exports: fp32 must match
   PyTorch on the val split (|logit diff| <= atol + rtol * |logit|, 100% top-1 agreement); int8 may lose at most
   ``max_accuracy_drop`` test accuracy points against the fp32 program.
4. A summary JSON (``<out>.json``) beside it holds what ONNX keeps in ``metadata_props``.

The program takes its input **flattened**, ``(batch, C*H*W)`` float32 in C, H, W order (the same bytes
as an NCHW image) and reshapes inside: ExecuTorch infers a tensor's dim order from its strides, and an
``(N, 1, H, W)`` tensor is NCHW and NHWC at once, which XNNPACK misreads (pytorch/executorch#19153).
The batch is fixed because dynamic batch sizes failed at run time for the cnn (a memory-planned
bound of 15 samples, and ``et_view`` size checks) in executorch 1.4.1.
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
import os
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from edgekd.artifacts import library_versions, now_iso, sha256_file, write_json_atomic
from edgekd.errors import ExportError
from edgekd.outputs import export_summary_path, replaced_sha256, scratch_folder
from edgekd.teachers import source_path
from export.source import (ModelInputs, RawPixels, Source, builder_fingerprint, calibration_inputs, gate_data, load_source,
                           model_input, source_counts)
from export.verify import LazyNoise, accuracy, gate_fp32, gate_int8, pad_rows, parity, predict_in_batches, torch_logits

PTE_PRECISION = {None: "fp32", "int8": "int8-static-xnnpack", "dynamic": "int8-dynamic-xnnpack"}


class FlatInput(nn.Module):
    """``model(x.reshape(batch, *shape))``: the program's input is ``(batch, prod(shape))`` (see the module doc)."""

    def __init__(self, model: nn.Module, shape):
        super().__init__()
        self.model, self.shape = model, tuple(int(d) for d in shape)

    def forward(self, x):
        return self.model(x.reshape(x.shape[0], *self.shape))


def require_executorch():
    """Import ExecuTorch's exporter pieces, or one line saying how to install them."""
    try:
        with quiet():
            import executorch.exir  # noqa: F401
            from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner  # noqa: F401
    except ImportError as exc:
        raise ExportError(f"--executorch needs ExecuTorch, which is not installed ({exc}); "
                          f"pip install -c constraints.txt \"edgekd[mobile]\" (executorch 1.4.1 pairs with torch 2.13).") from None


def export_executorch(model: str | Path, out: str | Path, config=None, *, overwrite: bool = False, data=None,
                      calibration=None):
    """Export the artifact ``model`` to the ExecuTorch program ``out`` (``.pte``), verified; returns an
    ``ExportResult``. ``config`` is an ``ExportConfig`` (``batch_size`` fixes the program's batch); this
    function is the ExecuTorch export, so its ``executorch`` flag is set here whatever it was."""
    from dataclasses import replace

    from export.config import ExportConfig
    from export.onnx_export import ExportResult, check_request

    started = time.perf_counter()
    config = replace(config or ExportConfig(), executorch=True)
    model, out = source_path(model), Path(out)
    summary_path = export_summary_path(out)
    check_request(out, summary_path, config, overwrite=overwrite, model=model)
    require_executorch()
    source = load_source(model)
    data, calibration = gate_data(source, config, data, calibration)
    with scratch_folder(out) as tmp:
        run = _PteRun(source, config, data)
        path, (parities, test_accuracy, drop) = run.fp32(tmp / "model.fp32.pte")
        if config.quantize:
            path, (parities, test_accuracy, drop) = run.quantized(tmp / "model.int8.pte", calibration)
        seconds = {k: round(v, 3) for k, v in {**run.seconds, "total": time.perf_counter() - started}.items()}
        summary = _summary(out, config, source, data, run, path.stat().st_size, seconds)
        summary["model_sha256"] = sha256_file(path)
        summary["replaces_sha256"] = replaced_sha256(out)
        write_json_atomic(tmp / "summary.json", summary)
        # summary first: an export cut between the renames leaves a summary whose hash the old model does
        # not match (edgekd.outputs.export_summary_of), never a new model that --overwrite would not recognise
        os.replace(tmp / "summary.json", summary_path)
        os.replace(path, out)
    return ExportResult(path=out, summary_path=summary_path, format="pte", precision=PTE_PRECISION[config.quantize],
                        opset=None, size_bytes=summary["sizes_bytes"]["model"], parity=tuple(parities),
                        test_accuracy=test_accuracy, reference_test_accuracy=run.reference_accuracy, accuracy_drop=drop,
                        seconds=seconds["total"], summary=summary)


class _PteRun:
    """The stages of one ExecuTorch export and the figures they gather."""

    def __init__(self, source: Source, config, data):
        self.source, self.config, self.batch = source, config, config.batch_size
        self.to_input = lambda x: model_input(x, config.uint8_input, data.spec).reshape(len(x), -1)  # noqa: E731
        self.x_val, self.x_test = (ModelInputs(x, config.uint8_input, data.spec, flat=True) for x in (data.x_val, data.x_test))
        self.y_test = data.y_test.cpu().numpy()
        self.ref_val = torch_logits(source.module, data.x_val)
        module = FlatInput(source.module, source.input_shape).eval()
        self.module = RawPixels(module).eval() if config.uint8_input else module
        self.example = torch.from_numpy(np.ascontiguousarray(pad_rows(np.asarray(self.x_val[:self.batch]), self.batch)))
        self.seconds, self.sizes, self.quant_info = {}, {"source_weights": source.weights_bytes}, None
        self.reference_accuracy = float("nan")
        self.verification = {"data": data.spec, "parity_split": "val", "n_val": len(self.x_val), "accuracy_split": "test",
                             "n_test": len(self.x_test), "atol": config.atol, "rtol": config.rtol, "max_accuracy_drop": config.max_accuracy_drop,
                             "batch_size": self.batch}
        self.noise = LazyNoise(source.module, data.x_val, self.ref_val, self.verification)

    def _measure(self, path: Path):
        program = load_program(path)
        val = run_program(program, self.x_val, self.batch)
        return [parity(self.ref_val, val, self.batch, self.config.rtol)], accuracy(run_program(program, self.x_test, self.batch), self.y_test)

    def fp32(self, path: Path):
        tick = time.perf_counter()
        path.write_bytes(lower(self.module, self.example))
        self.seconds["export"] = time.perf_counter() - tick
        self.sizes["fp32_pte"] = path.stat().st_size
        tick = time.perf_counter()
        parities, test_accuracy = self._measure(path)
        gate_fp32(self.verification, parities, test_accuracy, atol=self.config.atol, rtol=self.config.rtol,
                  what="ExecuTorch fp32 program", reference_model="the fp32 program (equal to PyTorch on val within atol)",
                  noise=self.noise)
        self.reference_accuracy = test_accuracy
        self.seconds["verify_fp32"] = time.perf_counter() - tick
        return path, (parities, test_accuracy, None)

    def quantized(self, path: Path, calibration):
        config = self.config
        tick = time.perf_counter()
        calib = None
        if config.quantize == "int8":
            calib = calibration_inputs(calibration, config.calibration_size, config.seed, self.to_input)
        path.write_bytes(lower(quantize_pt2e(self.module, self.example, calib, self.batch,
                                             dynamic=config.quantize == "dynamic"), self.example))
        self.quant_info = {"tool": "torchao PT2E + XNNPACKQuantizer", "mode": config.quantize, "per_channel": True,
                           "calibration_samples": None if calib is None else len(calib),
                           "calibration_data": None if calib is None else f"{calibration.spec} [train]"}
        self.seconds["quantize"] = time.perf_counter() - tick
        self.sizes["int8_pte"] = path.stat().st_size
        tick = time.perf_counter()
        parities, test_accuracy = self._measure(path)
        drop = gate_int8(self.verification, parities, test_accuracy, self.reference_accuracy,
                         max_drop=config.max_accuracy_drop, what="quantized ExecuTorch program", n=len(self.y_test))
        self.seconds["verify_int8"] = time.perf_counter() - tick
        return path, (parities, test_accuracy, drop)


# --- torch -> .pte --------------------------------------------------------------------------------

def lower(module: nn.Module, example: torch.Tensor) -> bytes:
    """``torch.export`` at the example's shape, lowered to XNNPACK, serialized as a program."""
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    from export.onnx_export import export_failure

    with quiet():
        try:
            if not isinstance(module, torch.fx.GraphModule):  # a PT2E-converted graph has no eval()
                module = module.eval()
            program = torch.export.export(module, (example,))
            return to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()]).to_executorch().buffer
        except Exception as exc:  # torch.export and exir raise many types; all mean "this module does not lower"
            raise ExportError(f"ExecuTorch export failed: {export_failure(exc)}; rerun with --debug for the "
                              f"traceback, or export ONNX instead.") from exc


# rows per calibration call: the activation observers (HistogramObserver) cost about the same per call
# whatever its rows, so 512 samples fed one by one took minutes where 8 calls of 64 take seconds
CALIBRATION_ROWS = 64


def quantize_pt2e(module: nn.Module, example: torch.Tensor, calibration: np.ndarray | None, batch: int, *,
                  dynamic: bool = False) -> nn.Module:
    """PT2E post-training quantization with the XNNPACK quantizer; static mode calibrates on every row of
    ``calibration``, ``CALIBRATION_ROWS`` at a time through a graph exported with a free batch dimension
    (a model that cannot be exported so is calibrated ``batch`` rows at a time, the last chunk padded).
    The converted graph is lowered later at ``example``'s fixed batch."""
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (XNNPACKQuantizer,
                                                                         get_symmetric_quantization_config)
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    from edgekd.models import non_float32_dtypes

    other = non_float32_dtypes((*module.parameters(), *module.buffers()))
    if other:   # the XNNPACK quantizer asserts float32 deep inside convert_pt2e
        raise ExportError(f"--quantize {'dynamic' if dynamic else 'int8'} for ExecuTorch needs a model with float32 "
                          f"weights; this one holds {', '.join(other)}. Make the model float32, or export fp32.")
    with quiet():
        quantizer = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True, is_dynamic=dynamic))
        graph, rows = _calibration_graph(module.eval(), example, calibration, batch)
        prepared = prepare_pt2e(graph.module(), quantizer)
        with torch.no_grad():
            if calibration is not None:
                for start in range(0, len(calibration), rows):
                    chunk = np.asarray(calibration[start:start + rows])
                    prepared(torch.from_numpy(np.ascontiguousarray(chunk if rows != batch else pad_rows(chunk, batch))))
            else:  # dynamic: the weight observers still have to see the weights once (else one scale per tensor)
                prepared(example)
        return convert_pt2e(prepared)


def _calibration_graph(module: nn.Module, example: torch.Tensor, calibration, batch: int):
    """``torch.export`` of ``module`` for calibrating and the rows per call it takes: a free batch dimension
    (``CALIBRATION_ROWS`` rows a call) where the model allows one, else the program's fixed ``batch``."""
    if calibration is not None and len(calibration) > batch:
        rows = min(CALIBRATION_ROWS, len(calibration))
        sample = torch.from_numpy(np.ascontiguousarray(pad_rows(np.asarray(calibration[:rows]), 2)))
        try:   # (an example of 2+ rows: torch.export fixes a dimension whose example is 1)
            return torch.export.export(module, (sample,), dynamic_shapes=({0: torch.export.Dim("batch")},)), rows
        except Exception:   # noqa: BLE001  (a model with its batch built in: calibrate at the program's batch)
            pass
    return torch.export.export(module, (example,)), batch


# --- running a .pte -------------------------------------------------------------------------------

@contextlib.contextmanager
def quiet():
    """ExecuTorch and torchao print import notes and exporter logs; keep them off the terminal."""
    buffer = io.StringIO()
    names = ("torch.export", "torch._export", "executorch", "torchao", "torch.fx.experimental.symbolic_shapes",
             "torch.utils._pytree")
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


@contextlib.contextmanager
def silence_native(fd: int = 2):
    """Native libraries log to a file descriptor directly (ExecuTorch's cpuinfo probing to 2, MNN's CPU
    feature probe to 1), past Python's ``sys.stderr``/``sys.stdout``: point ``fd`` at /dev/null."""
    (sys.stdout if fd == 1 else sys.stderr).flush()
    saved = os.dup(fd)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), fd)
            yield
    finally:
        os.dup2(saved, fd)
        os.close(saved)


def load_program(path: str | Path):
    """The ``forward`` method of the program at ``path`` (``executorch.runtime``)."""
    try:
        with quiet(), silence_native(2):
            from executorch.runtime import Runtime

            return Runtime.get().load_program(str(path)).load_method("forward")
    except ImportError as exc:
        raise ExportError(f"Running a .pte needs ExecuTorch, which is not installed ({exc}); "
                          f"pip install -c constraints.txt \"edgekd[mobile]\".") from None
    except Exception as exc:
        raise ExportError(f"ExecuTorch cannot load '{path}' ({str(exc).strip()[:200] or exc.__class__.__name__}).") from None


def program_input(method) -> tuple[tuple[int, ...], str]:
    """The program's input sizes (batch first) and dtype name ("float32" or "uint8")."""
    meta = method.metadata.input_tensor_meta(0)
    code = meta.dtype()   # executorch 1.4 gives torch's ScalarType as a number (0: Byte, 6: Float), older ones a name
    uint8 = code == 0 if isinstance(code, int) else any(word in str(code).lower() for word in ("byte", "uint8"))
    return tuple(int(d) for d in meta.sizes()), ("uint8" if uint8 else "float32")


def run_program(method, x, batch: int) -> np.ndarray:
    """Logits of all of ``x`` (an array, or ``ModelInputs`` read a slice at a time) through a program of fixed
    ``batch``; the last chunk is padded, then cut (``predict_in_batches``)."""
    # copied (astype): the output lives in the program's planned memory, which the next call overwrites
    return predict_in_batches(
        lambda chunk: method.execute([torch.from_numpy(np.ascontiguousarray(chunk))])[0].numpy().astype(np.float32), x, batch)


def _summary(out, config, source: Source, data, run: _PteRun, size: int, seconds) -> dict:
    sizes = {**run.sizes, "model": size}
    if "int8_pte" in sizes:
        sizes["int8_to_fp32_ratio"] = round(sizes["int8_pte"] / sizes["fp32_pte"], 4)
    flat = math.prod(source.input_shape)
    return {
        "model": str(out), "format": "pte", "precision": PTE_PRECISION[config.quantize], "runtime": "executorch (XNNPACK)",
        "input": {"name": "input", "dtype": "uint8" if config.uint8_input else "float32", "shape": [run.batch, flat],
                  "layout": f"flattened {list(source.input_shape)} (C, H, W order), reshaped inside the program",
                  "image_shape": list(source.input_shape)},
        "output": {"name": "logits", "classes": list(source.classes)},
        "preprocessing": "none: feed raw values as stored; the program normalises (x - mean) / std per channel",
        "normalization": source.normalization, "source": source.describe(), "source_fingerprint": source.fingerprint,
        # what bench counts a program by where its artifact is not at hand (a .pte copied to another machine)
        "counts": source_counts(source),
        "builder": builder_fingerprint(),
        "sizes_bytes": sizes, "verification": run.verification, "quantization": run.quant_info,
        "config": {k: getattr(config, k) for k in config.__dataclass_fields__},
        "seconds": seconds, "versions": {**library_versions(), **mobile_versions()}, "created": now_iso(),
    }


def mobile_versions() -> dict:
    """The installed versions of ExecuTorch and torchao, which write the programs and their int8 forms."""
    import importlib.metadata as md

    found = {}
    for package in ("executorch", "torchao"):
        with contextlib.suppress(md.PackageNotFoundError):
            found[package] = md.version(package)
    return found
