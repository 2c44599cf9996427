"""The mobile runtimes a benchmark can time: ExecuTorch (``.pte``), ncnn and MNN (from a verified ``.onnx``).

They come with ``pip install -c constraints.txt "edgekd[mobile]"``; one that is not installed gives a
skipped row with the reason, like the desktop runtimes in ``runtimes.py``.

- **executorch** runs an ExecuTorch program exported by ``edgekd export --executorch`` (XNNPACK, the
  kernels used on Android and iOS). Its batch is fixed at export: other batch sizes are skipped rows.
- **ncnn** (Tencent) and **MNN** (Alibaba) read their own formats, converted here from the ``.onnx`` file
  given to the benchmark (``pnnx`` and MNN's converter). Conversions are cached under
  ``$EDGEKD_CACHE/convert/`` keyed by the ONNX file's SHA-256 and the converter's version, so a changed
  file is converted anew and never served stale; the conversion time is recorded with the runtime.
  The converters run in a subprocess: MNN's aborts the process on graphs it cannot read.
- **int8**: an int8 QDQ ``.onnx`` cannot be converted by either: ``pnnx`` leaves its QuantizeLinear
  nodes as layers ncnn cannot run, and the ncnn wheel ships no ``ncnn2table``/``ncnn2int8``; MNN's
  converter aborts on QDQ graphs and its calibrating quantizer (``mnnquant``, MNN 3.6.1) aborts with
  ``std::length_error`` (its weight-only ``--weightQuantBits 8`` shrinks the file but computes in
  fp32, so it is no int8 row). Those rows are skipped with that reason. MNN's Python tools also send usage
  logs to Alibaba's log service when run as commands; edgekd calls the converter's native entry point
  (``_tools.mnnconvert``) directly, which sends nothing.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks.runtimes import (Runner, Runtime, RuntimeSkipped, RuntimeUnavailable, package_version, register_runtime,
                                 require_module)
from edgekd.cachedir import touch
from edgekd.outputs import holding

CONVERT_TIMEOUT_S = 600
_MOBILE_HINT = "pip install -c constraints.txt \"edgekd[mobile]\""


def _require(module: str, package: str):
    return require_module(module, package, hint=_MOBILE_HINT)


# --- ExecuTorch -------------------------------------------------------------------------------------

@register_runtime("executorch", formats=("pte",), package="executorch",
                  description="ExecuTorch runtime (executorch.runtime) with the XNNPACK delegate, threadpool set to "
                              "threads (the program reloaded after a change); the program's batch is fixed at "
                              "export (other batch sizes are skipped); timed with Method.execute")
class ExecuTorchRuntime(Runtime):
    def _import(self):
        from edgekd.errors import ExportError

        try:
            from export.executorch_export import quiet

            with quiet():
                import executorch.runtime  # noqa: F401
                from executorch.extension.pybindings import portable_lib
        except ImportError as exc:
            raise RuntimeUnavailable(f"executorch is not installed ({exc}); {_MOBILE_HINT}") from None
        except ExportError as exc:
            raise RuntimeUnavailable(str(exc)) from None
        self.portable = portable_lib

    def load(self, path, threads):
        return _PteRunner(lambda: _load_pte(path), threads, self.portable)

    def identity(self, identity_onnx, threads):
        return _PteIdentity(_onnx_input_shape(identity_onnx), threads, self.portable)


def _load_pte(path):
    from export.executorch_export import load_program

    return load_program(path)


class _PteRunner(Runner):
    """A program run at one thread count. ExecuTorch's threadpool is process-wide, and a program loaded
    under one pool size corrupts memory when executed after ``_unsafe_reset_threadpool`` (seen with
    executorch 1.4.1): so ``activate`` resets the pool only when the count differs, then reloads."""

    def __init__(self, open_method, threads, portable):
        from export.executorch_export import program_input

        self.open_method, self.threads, self.portable = open_method, threads, portable
        self._reset_pool()
        self.method = open_method()
        self.shape, self.dtype = program_input(self.method)
        self.batch = self.shape[0]

    def _reset_pool(self) -> bool:
        if self.portable._threadpool_get_thread_count() == self.threads:
            return False
        with _silence(2):
            self.portable._unsafe_reset_threadpool(self.threads)
        return True

    @contextlib.contextmanager
    def activate(self):
        if self._reset_pool():
            self.method = self.open_method()
        yield

    def bind(self, x):
        import torch

        if len(x) != self.batch:
            raise RuntimeSkipped(f"the .pte was exported for batch {self.batch}; export one for batch {len(x)} with "
                                 f"'edgekd export --executorch --batch-size {len(x)}'")
        inputs = [torch.from_numpy(np.ascontiguousarray(x.reshape(len(x), -1)))]
        return lambda: self.method.execute(inputs)   # looked up per call: activate() may have reloaded it

    def predict(self, x):
        from export.executorch_export import run_program

        with self.activate():
            return run_program(self.method, np.ascontiguousarray(x.reshape(len(x), -1)), self.batch)


class _PteIdentity(Runner):
    """The runtime's per-call floor: a program that returns a copy of its input, made per batch size."""

    def __init__(self, shape, threads, portable):
        self.shape, self.threads, self.portable, self._runners = shape, threads, portable, {}

    def bind(self, x):
        batch = len(x)
        if batch not in self._runners:
            folder = _cache_dir() / "executorch-identity"
            folder.mkdir(parents=True, exist_ok=True)
            path = folder / f"identity-{batch}x{int(np.prod(self.shape))}-{package_version('executorch')}.pte"
            if not path.is_file():
                _write_atomic(path, _identity_program(batch, int(np.prod(self.shape))))
            self._runners[batch] = _PteRunner(lambda: _load_pte(path), self.threads, self.portable)
        return self._runners[batch].bind(x)

    @contextlib.contextmanager
    def activate(self):
        with contextlib.ExitStack() as stack:
            for runner in self._runners.values():
                stack.enter_context(runner.activate())
            yield


def _identity_program(batch: int, size: int) -> bytes:
    """A program returning ``x + 0`` for a ``(batch, size)`` input (a bare ``return x`` is folded away)."""
    import torch

    from export.executorch_export import lower

    class Copy(torch.nn.Module):
        def forward(self, x):
            return x + 0.0

    return lower(Copy(), torch.zeros(batch, size))


# --- ncnn ---------------------------------------------------------------------------------------------

@register_runtime("ncnn", formats=("onnx",), package="ncnn",
                  description="ncnn (Tencent), converted from the .onnx with pnnx (fp32 weights, fp16=0); "
                              "opt.num_threads=threads, fp16/bf16 storage and arithmetic off (fp32 rows); an "
                              "Extractor takes one sample, so batch b = b extractions per call; timed with "
                              "create_extractor + input + extract")
class NcnnRuntime(Runtime):
    def __init__(self):
        super().__init__()
        self.conversions = {}   # .onnx path -> conversion record, for the report

    def _import(self):
        self.ncnn = _require("ncnn", "ncnn")
        _require("pnnx", "pnnx")

    def settings(self):
        return super().settings() + f" (pnnx {package_version('pnnx')})"

    def load(self, path, threads):
        _refuse_int8(path, "ncnn", "pnnx leaves an int8 ONNX graph's quantize nodes as layers ncnn cannot run, and the "
                                  "ncnn wheel ships no ncnn2table/ncnn2int8 to make an ncnn int8 model; fp32 rows only")
        folder, record = convert_cached(path, "ncnn", _pnnx_convert)
        self.conversions.setdefault(str(path), record)   # the first load's: later ones hit the cache it made
        return _NcnnRunner(self.ncnn, folder / "model.ncnn.param", folder / "model.ncnn.bin", threads)

    def identity(self, identity_onnx, threads):
        folder = _cache_dir() / "ncnn-identity"
        folder.mkdir(parents=True, exist_ok=True)
        param = folder / "identity.param"
        if not param.is_file():
            _write_atomic(param, b"7767517\n2 2\nInput in0 0 1 in0\nNoop noop 1 1 in0 out0\n")
        return _NcnnRunner(self.ncnn, param, None, threads)


class _NcnnRunner(Runner):
    def __init__(self, ncnn, param: Path, weights: Path | None, threads: int):
        self.ncnn, self.threads = ncnn, threads
        net = ncnn.Net()
        opt = net.opt
        opt.num_threads = threads
        opt.use_fp16_packed = opt.use_fp16_storage = opt.use_fp16_arithmetic = opt.use_bf16_storage = False
        if net.load_param(str(param)) != 0 or (weights is not None and net.load_model(str(weights)) != 0):
            raise RuntimeUnavailable(f"ncnn cannot load the converted model '{param}'")
        self.net = net

    def bind(self, x):
        ncnn, net = self.ncnn, self.net
        samples = [np.ascontiguousarray(row, dtype=np.float32) for row in x]

        def run():
            outs = []
            for sample in samples:
                extractor = net.create_extractor()
                extractor.input("in0", ncnn.Mat(sample).clone())  # the Mat must own its data (a view crashes)
                status, out = extractor.extract("out0")
                if status != 0:
                    raise RuntimeError(f"ncnn extract returned {status}")
                outs.append(np.array(out).reshape(-1))
            return outs
        return run

    def _output(self, result):
        return np.stack(result).astype(np.float32)


def _pnnx_convert(onnx_path: Path, folder: Path) -> dict:
    shape = _onnx_input_shape(onnx_path)
    dims = ",".join(str(d) for d in (1, *shape))
    names = {"pnnxparam": "model.pnnx.param", "pnnxbin": "model.pnnx.bin", "pnnxpy": "model_pnnx.py",
             "pnnxonnx": "model.pnnx.onnx", "ncnnparam": "model.ncnn.param", "ncnnbin": "model.ncnn.bin",
             "ncnnpy": "model_ncnn.py"}
    args = [str(onnx_path), f"inputshape=[{dims}]", "fp16=0", *[f"{k}={folder / v}" for k, v in names.items()]]
    import pnnx

    _run_tool([pnnx.EXEC_PATH, *args], "pnnx", cwd=folder)
    param = (folder / "model.ncnn.param").read_text()
    unsupported = sorted({line.split()[0] for line in param.splitlines()[2:] if line.split() and "." in line.split()[0]})
    if unsupported:
        raise RuntimeUnavailable(f"pnnx left layers ncnn cannot run: {', '.join(unsupported)}")
    return {"tool": "pnnx", "version": package_version("pnnx"), "options": ["fp16=0", f"inputshape=[{dims}]"]}


# --- MNN ----------------------------------------------------------------------------------------------

@register_runtime("mnn", formats=("onnx",), package="MNN",
                  description="MNN (Alibaba) Express module, converted from the .onnx with MNN's converter "
                              "(_tools.mnnconvert); CPU backend, numThread=threads, precision=high (fp32); dynamic "
                              "batch; timed with forward + read")
class MnnRuntime(Runtime):
    def __init__(self):
        super().__init__()
        self.conversions = {}

    def _import(self):
        with _silence(1):
            self.mnn = _require("MNN", "MNN")

    def load(self, path, threads):
        _refuse_int8(path, "MNN", "MNN's converter aborts on int8 ONNX graphs and its calibrating quantizer (mnnquant, MNN "
                                 "3.6.1) aborts with std::length_error; --weightQuantBits 8 stores int8 weights but "
                                 "computes in fp32; fp32 rows only")
        folder, record = convert_cached(path, "mnn", _mnn_convert)
        self.conversions.setdefault(str(path), record)   # the first load's: later ones hit the cache it made
        return _MnnRunner(self.mnn, folder / "model.mnn", threads)

    def identity(self, identity_onnx, threads):
        folder, _ = convert_cached(Path(identity_onnx), "mnn", _mnn_convert)
        return _MnnRunner(self.mnn, folder / "model.mnn", threads, names=("x", "y"))


class _MnnRunner(Runner):
    def __init__(self, mnn, path: Path, threads: int, names=("input", "logits")):
        self.mnn, self.threads = mnn, threads
        with _silence(1):
            manager = mnn.nn.create_runtime_manager(({"backend": "CPU", "numThread": threads, "precision": "high"},))
            self.module = mnn.nn.load_module_from_file(str(path), [names[0]], [names[1]], runtime_manager=manager)
        if self.module is None:
            raise RuntimeUnavailable(f"MNN cannot load the converted model '{path}'")

    def bind(self, x):
        expr, module = self.mnn.expr, self.module
        x = np.ascontiguousarray(x)
        shape = list(x.shape)
        layout = expr.NCHW if x.ndim == 4 else expr.NHWC  # NHWC is MNN's plain row-major layout for other ranks

        def run():
            return module.forward([expr.const(x, shape, layout)])[0].read()
        return run

    def _output(self, result):
        return np.asarray(result, dtype=np.float32).reshape(len(result), -1)


def _mnn_convert(onnx_path: Path, folder: Path) -> dict:
    code = ("import sys, _tools; _tools.mnnconvert(['mnnconvert', '-f', 'ONNX', '--modelFile', sys.argv[1], "
            "'--MNNModel', sys.argv[2], '--bizCode', 'edgekd'])")
    _run_tool([sys.executable, "-c", code, str(onnx_path), str(folder / "model.mnn")], "MNN's converter", cwd=folder)
    if not (folder / "model.mnn").is_file():
        raise RuntimeUnavailable("MNN's converter wrote no model")
    return {"tool": "MNN _tools.mnnconvert", "version": package_version("MNN"), "options": ["-f ONNX"]}


# --- shared: conversion cache, QDQ detection ---------------------------------------------------------

def _cache_dir() -> Path:
    from edgekd.cache import default_cache_dir

    return default_cache_dir() / "convert"


def _model_key(graph: Path, extra: list) -> str:
    """The graph's sha256, or with external weight files that of all their hashes (a graph alone keeps its old key)."""
    if not extra:
        return _sha256(graph)
    return hashlib.sha256("".join(_sha256(f) for f in [graph, *extra]).encode()).hexdigest()


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def convert_cached(onnx_path: Path, runtime: str, convert) -> tuple[Path, dict]:
    """``convert(onnx_path, folder)`` into ``$EDGEKD_CACHE/convert/<runtime>-<sha256>-<version>``, once.
    Returns the folder and its record (source hash, tool, seconds; ``cached`` when it was already there)."""
    from edgekd.teachers import external_data_files

    onnx_path = Path(onnx_path)
    extra = external_data_files(onnx_path)   # weights kept beside the graph are the model too: in the key, and copied
    digest = _model_key(onnx_path, extra)
    version = package_version({"ncnn": "pnnx", "mnn": "MNN"}[runtime]) or "unknown"
    folder = _cache_dir() / f"{runtime}-{digest[:32]}-{version}"
    done = _finished(folder, digest)
    if done is not None:
        touch(folder)   # used now: `edgekd cache prune --older-than` keeps it
        return folder, {**done, "cached": True}
    # hidden, and unique to this process even where two containers' jobs are both pid 1 on one cache
    tmp = folder.with_name(f".{folder.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")
    tmp.mkdir(parents=True)
    with holding(tmp):   # another container's `cache prune` must not take it for a dead writer's
        # the converter gets a private copy: pnnx writes `<input>.pnnxsim.onnx` beside its input, which
        # must never be the user's folder; the copy is also exactly the bytes the key was hashed from
        source = tmp / "source.onnx"
        shutil.copyfile(onnx_path, source)
        for f in extra:   # under the names the graph gives them, beside the copy
            shutil.copyfile(f, tmp / f.name)
        if _model_key(source, [tmp / f.name for f in extra]) != digest:
            shutil.rmtree(tmp)
            raise RuntimeUnavailable(f"'{onnx_path}' changed while it was being converted; run again")
        tick = time.perf_counter()
        try:
            record = convert(source, tmp)
        except BaseException:   # a failed conversion leaves nothing in the cache
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        finally:
            for leftover in [*tmp.glob("source.*onnx"), *(tmp / e.name for e in extra)]:
                leftover.unlink(missing_ok=True)   # the copies and pnnx's simplified one: the cache keeps outputs only
        record.update(source=str(onnx_path), source_sha256=digest, seconds=round(time.perf_counter() - tick, 3))
        (tmp / "conversion.json").write_text(json.dumps(record, indent=1))
        if _finished(folder, digest) is not None:   # another process converted the same model meanwhile: its folder, in use, is kept
            shutil.rmtree(tmp, ignore_errors=True)
            return folder, {**record, "cached": False}
        if folder.exists():
            shutil.rmtree(folder)
        try:
            os.replace(tmp, folder)
        except OSError:   # one made it between the check and the rename: the same conversion, kept
            shutil.rmtree(tmp, ignore_errors=True)
            if _finished(folder, digest) is None:
                raise
        return folder, {**record, "cached": False}


def _finished(folder: Path, digest: str) -> dict | None:
    """The record of the finished conversion of the model hashed ``digest`` in ``folder``, or None."""
    try:
        record = json.loads((folder / "conversion.json").read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and record.get("source_sha256") == digest else None


def _run_tool(command: list[str], what: str, *, cwd: Path) -> None:
    try:
        done = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=CONVERT_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise RuntimeUnavailable(f"{what} did not finish within {CONVERT_TIMEOUT_S} s") from None
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or [f"exit code {done.returncode}"]
        raise RuntimeUnavailable(f"{what} failed: {tail[0][:200]}")


def _onnx_input_shape(path) -> tuple[int, ...]:
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    dims = proto.graph.input[0].type.tensor_type.shape.dim[1:]
    if not all(d.HasField("dim_value") for d in dims):
        raise RuntimeUnavailable(f"'{path}' has a symbolic input dimension besides the batch")
    return tuple(int(d.dim_value) for d in dims)


def _refuse_int8(path, runtime: str, reason: str) -> None:
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    ops = {n.op_type for n in proto.graph.node}
    if ops & {"QuantizeLinear", "DequantizeLinear", "QLinearConv", "QLinearMatMul", "MatMulInteger", "ConvInteger",
              "DynamicQuantizeLinear"}:
        raise RuntimeSkipped(f"int8 on {runtime}: {reason}")
    if proto.graph.input[0].type.tensor_type.elem_type != onnx.TensorProto.FLOAT:
        raise RuntimeSkipped(f"{runtime} rows take float32 inputs; export without --uint8-input for {runtime}")


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _silence(fd: int):
    from export.executorch_export import silence_native   # imports torch: only when a runtime is used

    return silence_native(fd)
