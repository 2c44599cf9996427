"""The runtimes a benchmark can time, in one registry filled by ``@register_runtime``.

A runtime turns a model file into a ``Runner`` for one thread count. ``Runner.bind(x)`` returns a
zero-argument callable that runs one inference on the batch ``x``: that call, and nothing else, is
what gets timed. ``Runner.activate()`` is entered around every timed slice (it sets per-process
thread counts where a runtime has one). ``Runner.predict(x)`` returns the logits as numpy.

Each runtime also gives an *identity* runner (an empty graph: input copied to output) whose call
time is the runtime's own per-call floor.

Only PyTorch and onnxruntime are required; OpenVINO, tract and OpenCV come with
``pip install "edgekd[runtimes]"``; ExecuTorch, ncnn and MNN (``mobile_runtimes.py``) with
``pip install -c constraints.txt "edgekd[mobile]"``. A runtime that is not installed raises ``RuntimeUnavailable``
and the harness writes an error row with the reason.
"""

from __future__ import annotations

import contextlib
import importlib.metadata as md
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from edgekd.errors import ConfigError

FORMATS = ("artifact", "onnx", "ort", "pte")


class RuntimeUnavailable(Exception):
    """The runtime cannot be used here (not installed, or no way to honour a setting); the message says why."""


class RuntimeSkipped(RuntimeUnavailable):
    """A measurement the runtime cannot make as asked (e.g. a thread count it cannot set)."""


@dataclass(frozen=True)
class RuntimeEntry:
    name: str
    formats: tuple[str, ...]
    description: str
    package: str | None
    cls: type


_RUNTIMES: dict[str, RuntimeEntry] = {}


def register_runtime(name: str, *, formats: Sequence[str], description: str, package: str | None = None):
    """Class decorator: register a ``Runtime`` subclass under ``name`` for the given model formats."""
    def wrap(cls):
        unknown = set(formats) - set(FORMATS)
        if unknown:
            raise ValueError(f"runtime {name!r}: unknown formats {sorted(unknown)}; use {FORMATS}")
        _RUNTIMES[name] = RuntimeEntry(name, tuple(formats), description, package, cls)
        cls.name = name
        return cls
    return wrap


def list_runtimes() -> list[RuntimeEntry]:
    return list(_RUNTIMES.values())


def get_runtime(name: str) -> RuntimeEntry:
    if name not in _RUNTIMES:
        raise ConfigError(f"Unknown runtime {name!r}; choose one of {', '.join(_RUNTIMES)}.")
    return _RUNTIMES[name]


def parse_runtimes(value: str | Sequence[str] | None) -> tuple[str, ...]:
    """``None``, ``""`` or ``"all"``: every registered runtime; else a comma-separated list of names."""
    if value is None or (isinstance(value, str) and value.strip() in ("", "all")):
        return tuple(_RUNTIMES)
    names = [v.strip() for v in (value.split(",") if isinstance(value, str) else value) if v.strip()]
    if not names:
        raise ConfigError(f"The 'runtimes' parameter must name at least one runtime. Got {value!r} instead.")
    for name in names:
        get_runtime(name)
    return tuple(dict.fromkeys(names))


def package_version(package: str | None) -> str | None:
    if package is None:
        return None
    try:
        return md.version(package)
    except md.PackageNotFoundError:
        return None


class Runner:
    """One loaded model (or identity graph) at one thread count."""

    threads: int = 1
    device: str = "cpu"

    def activate(self):
        return contextlib.nullcontext()

    def bind(self, x: np.ndarray) -> Callable[[], object]:
        raise NotImplementedError

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Logits of ``x``, in memory of their own: some runtimes (MNN) hand out a view of a buffer the next
        call overwrites, which would turn every earlier chunk of an evaluation into the last one's."""
        with self.activate():
            return np.array(self._output(self.bind(np.ascontiguousarray(x))()), dtype=np.float32, copy=True)

    def _output(self, result) -> np.ndarray:
        return np.asarray(result[0], dtype=np.float32)


class Runtime:
    """Base class; subclasses are registered with ``@register_runtime``."""

    name = "runtime"
    device = "cpu"   # where this runtime's rows run; only PyTorch can be placed elsewhere

    def __init__(self):
        self._import()

    def place(self, device: str) -> None:
        """Run on ``device`` where the runtime can; the CPU runtimes stay on the CPU (``bench --device``
        applies to the PyTorch rows only)."""

    def _import(self):
        """Import the runtime's module; raise ``RuntimeUnavailable`` with the reason if it cannot be."""

    def version(self) -> str | None:
        return package_version(_RUNTIMES[self.name].package)

    def load(self, path: Path, threads: int) -> Runner:
        raise NotImplementedError

    def identity(self, identity_onnx: Path, threads: int) -> Runner:
        """The per-call floor: by default the identity ONNX graph loaded like any model."""
        return self.load(identity_onnx, threads)

    def settings(self) -> str:
        """How the runtime is configured, for the report's method section."""
        return _RUNTIMES[self.name].description


def require_module(module: str, package: str, *, hint: str | None = None):
    """Import ``module`` or raise ``RuntimeUnavailable`` saying how to install ``package``."""
    try:
        return __import__(module)
    except ImportError as exc:
        hint = hint or f"pip install \"edgekd[runtimes]\" or {package}"
        raise RuntimeUnavailable(f"{package} is not installed ({exc}); {hint}") from None
    except Exception as exc:  # a broken install (missing shared library, ...)
        raise RuntimeUnavailable(f"{package} failed to import ({exc.__class__.__name__}: {str(exc)[:160]})") from None


# --- PyTorch eager --------------------------------------------------------------------------------

@register_runtime("pytorch", formats=("artifact",), package="torch",
                  description="PyTorch eager, torch.inference_mode, torch.set_num_threads(threads) per measurement")
class TorchRuntime(Runtime):
    def load(self, path, threads):
        from edgekd.teachers import load_teacher

        teacher = load_teacher(path)
        module = teacher.module()
        if module is None:
            raise RuntimeUnavailable(f"'{path}' has no PyTorch module to run")
        return _TorchRunner(module.eval(), threads, self.device)

    def identity(self, identity_onnx, threads):
        import torch

        return _TorchRunner(torch.nn.Identity(), threads, self.device)

    def place(self, device: str) -> None:
        from edgekd.device import resolve_device

        self.device = str(resolve_device(device))   # (cuda:N keeps its N)


class _TorchRunner(Runner):
    def __init__(self, module, threads, device: str = "cpu"):
        self.module, self.threads, self.device = module.to(device), threads, device

    @contextlib.contextmanager
    def activate(self):
        import torch

        previous = torch.get_num_threads()
        torch.set_num_threads(self.threads)
        try:
            with torch.inference_mode():
                yield
        finally:
            torch.set_num_threads(previous)

    def bind(self, x):
        import torch

        tensor, module, device = torch.from_numpy(x), self.module, self.device
        if torch.device(device).type == "cuda":
            # the batch in and the logits out inside each call, as every CPU runtime's time includes them;
            # .cpu() waits for the result, so the kernels are timed, not their launch
            return lambda: module(tensor.to(device)).cpu()
        return lambda: module(tensor)

    def _output(self, result):
        return result.float().cpu().numpy()


# --- onnxruntime --------------------------------------------------------------------------------------

@register_runtime("onnxruntime", formats=("onnx", "ort"), package="onnxruntime",
                  description="onnxruntime CPUExecutionProvider, intra_op_num_threads=threads, inter_op_num_threads=1, "
                              "sequential execution, all graph optimizations; timed with plain session.run")
class OnnxRuntime(Runtime):
    def _import(self):
        self.ort = require_module("onnxruntime", "onnxruntime")

    def load(self, path, threads):
        options = self.ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = self.ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = self.ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        session = self.ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        return _OrtRunner(session, threads)


class _OrtRunner(Runner):
    def __init__(self, session, threads):
        self.session, self.threads = session, threads
        self.input_name = session.get_inputs()[0].name
        # the class scores: the first 2-D float output (a converter's (label, probabilities) pair puts the label first)
        outputs = session.get_outputs()
        scores = [o.name for o in outputs if o.type.startswith("tensor(float") and len(o.shape or ()) == 2]
        self.outputs = [scores[0] if scores else outputs[0].name]

    def bind(self, x):
        session, outputs, feed = self.session, self.outputs, {self.input_name: x}
        return lambda: session.run(outputs, feed)


# --- OpenVINO -----------------------------------------------------------------------------------------

@register_runtime("openvino", formats=("onnx",), package="openvino",
                  description="OpenVINO CPU plugin, compiled per batch size (static shape), INFERENCE_NUM_THREADS=threads, "
                              "PERFORMANCE_HINT=LATENCY, NUM_STREAMS=1, INFERENCE_PRECISION_HINT=f32 (no silent bf16); "
                              "timed with InferRequest.infer(share_inputs=True)")
class OpenVinoRuntime(Runtime):
    def _import(self):
        self.ov = require_module("openvino", "openvino")
        self.core = self.ov.Core()

    def load(self, path, threads):
        self.core.read_model(str(path))  # fail early on a model OpenVINO cannot read
        return _OvRunner(self.core, Path(path), threads)


class _OvRunner(Runner):
    def __init__(self, core, path, threads):
        self.core, self.path, self.threads = core, path, threads
        self._compiled = {}

    def _request(self, shape):
        if shape not in self._compiled:
            model = self.core.read_model(str(self.path))
            model.reshape(list(shape))
            config = {"INFERENCE_NUM_THREADS": self.threads, "PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1,
                      "INFERENCE_PRECISION_HINT": "f32"}
            self._compiled[shape] = self.core.compile_model(model, "CPU", config).create_infer_request()
        return self._compiled[shape]

    def bind(self, x):
        request = self._request(tuple(x.shape))
        return lambda: request.infer({0: x}, share_inputs=True)

    def _output(self, result):
        return np.asarray(result[0], dtype=np.float32)   # predict copies it out of the request's buffer


# --- tract --------------------------------------------------------------------------------------------

@register_runtime("tract", formats=("onnx",), package="tract",
                  description="tract (Sonos) ONNX, batch symbol fixed per batch size, optimized runnable; "
                              "single-threaded (its Python API has no thread setting); timed with Runnable.run")
class TractRuntime(Runtime):
    def _import(self):
        self.tract = require_module("tract", "tract")

    def load(self, path, threads):
        if threads != 1:
            raise RuntimeSkipped("tract's Python API cannot set a thread count; it runs on one thread (see the 1-thread rows)")
        self.tract.onnx().load(str(path))  # fail early on a model tract cannot read
        return _TractRunner(self.tract, Path(path))


class _TractRunner(Runner):
    def __init__(self, tract, path):
        self.tract, self.path, self.threads = tract, path, 1
        self._runnables = {}

    def _runnable(self, shape):
        if shape not in self._runnables:
            model = self.tract.onnx().load(str(self.path)).into_model()
            batch_dim = str(model.input_fact(0)).split(",")[0]
            if not batch_dim.isdigit():
                model.transform(self.tract.transform.SetSymbols({batch_dim: int(shape[0])}))
            self._runnables[shape] = model.into_runnable()
        return self._runnables[shape]

    def bind(self, x):
        runnable = self._runnable(tuple(x.shape))
        return lambda: runnable.run([x])

    def _output(self, result):
        return np.asarray(result[0].to_numpy(), dtype=np.float32)


# --- OpenCV DNN ---------------------------------------------------------------------------------------

@register_runtime("opencv", formats=("onnx",), package="opencv-python-headless",
                  description="OpenCV DNN (cv2.dnn.readNetFromONNX, default backend, CPU target), cv2.setNumThreads(threads) "
                              "per measurement; timed with setInput + forward")
class OpenCvRuntime(Runtime):
    def _import(self):
        self.cv2 = require_module("cv2", "opencv-python-headless")

    def version(self):
        return package_version("opencv-python-headless") or package_version("opencv-python") or self.cv2.__version__

    def load(self, path, threads):
        try:
            net = self.cv2.dnn.readNetFromONNX(str(path))
        except Exception as exc:
            if _is_qdq(path):   # say what it rejects and which form it reads, not only the assertion
                first = (str(exc).strip().splitlines() or [""])[-1].rpartition("error: ")[2][:90]
                raise RuntimeUnavailable(
                    f"OpenCV DNN {self.version()} rejects int8 QDQ graphs (Quantize/DequantizeLinear pairs around float "
                    f"ops: {first}); export with --quant-format qoperator (QLinearConv/QLinearMatMul), which it runs") from None
            raise
        return _CvRunner(self.cv2, net, threads)


class _CvRunner(Runner):
    def __init__(self, cv2, net, threads):
        self.cv2, self.net, self.threads = cv2, net, threads

    @contextlib.contextmanager
    def activate(self):
        previous = self.cv2.getNumThreads()
        self.cv2.setNumThreads(self.threads)
        try:
            yield
        finally:
            self.cv2.setNumThreads(previous)

    def bind(self, x):
        net = self.net

        def call():
            net.setInput(x)
            return net.forward()
        return call

    def _output(self, result):
        return np.asarray(result, dtype=np.float32).reshape(len(result), -1)


def _is_qdq(path) -> bool:
    import onnx

    try:
        ops = {n.op_type for n in onnx.load(str(path), load_external_data=False).graph.node}
    except Exception:
        return False
    return "DequantizeLinear" in ops and not ops & {"QLinearConv", "QLinearMatMul", "QGemm"}


def write_identity_onnx(path: Path, input_shape: Sequence[int]) -> Path:
    """An ONNX graph ``y = Identity(x)`` with a symbolic batch: the runtimes' per-call floor."""
    import onnx
    from onnx import TensorProto, helper

    dims = ["batch", *[int(d) for d in input_shape]]
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "identity",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, dims)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, dims)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=8)
    onnx.save(model, str(path))
    return path


# the mobile runtimes register themselves in the same registry (their module imports this one)
import benchmarks.mobile_runtimes  # noqa: E402,F401
