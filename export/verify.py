"""Verification of an exported model against PyTorch on real data, and the gates that reject it.

Parity is measured on the val split at batch 1 and at a larger batch (the batch dimension is
dynamic, so both must work): the maximum and mean absolute logit difference and the top-1 agreement
with the PyTorch model. An fp32 export passes when every logit is within ``atol + rtol * |logit|`` of
PyTorch's (``numpy.allclose``'s rule: a difference of float32 rounding grows with the logit's size) plus
``NOISE_FACTOR`` times PyTorch's own float32 rounding on the same inputs (``float32_noise``: it grows with the
width of the layers summed into a logit), and every top-1 agrees;
a quantized one when its test accuracy drops by at most ``max_accuracy_drop`` points below the fp32
export's.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import copy

import numpy as np
import torch

from edgekd.data import as_float, fill_rows, inference_rows
from edgekd.errors import AccuracyGateError, ExportError

NOISE_FACTOR = 4.0        # an fp32 export may differ from PyTorch by this many times PyTorch's own float32 rounding
NOISE_ROWS = 256          # ... measured on this many val inputs (only when the fixed tolerance alone refuses)
NOISE_CHUNK = 4           # ... this many at a time


@dataclass(frozen=True)
class Parity:
    """Exported model vs PyTorch on ``n`` samples fed ``batch_size`` at a time."""

    batch_size: int
    n: int
    max_abs_diff: float
    mean_abs_diff: float
    top1_agreement: float
    disagreements: int
    max_excess: float | None = None   # max(|diff| - rtol * |reference|): what the gate compares with atol

    def to_dict(self) -> dict:
        return asdict(self)

    def describe(self) -> str:
        return (f"batch {self.batch_size} (n={self.n}): max |diff| {self.max_abs_diff:.2e}, mean {self.mean_abs_diff:.2e}, "
                f"top-1 agreement {100 * self.top1_agreement:.2f}% ({self.disagreements} disagreement"
                f"{'' if self.disagreements == 1 else 's'})")


def open_session(path: str | Path, *, what: str = "exported model"):
    """An onnxruntime CPU session for ``path`` (.onnx or .ort); load failures become ExportError."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types
        first = str(exc).strip().splitlines()[0][:240] if str(exc).strip() else exc.__class__.__name__
        raise ExportError(f"onnxruntime {ort.__version__} cannot load the {what} ({first}); "
                          f"choose another --opset or report the model.") from None


def run_session(session, x, batch_size: int) -> np.ndarray:
    """Logits of ``x`` (an array, or ``ModelInputs`` read a slice at a time) fed ``batch_size`` rows at a time."""
    name = session.get_inputs()[0].name
    outs = [session.run(None, {name: np.asarray(x[i:i + batch_size])})[0] for i in range(0, len(x), batch_size)]
    return np.concatenate(outs).astype(np.float32) if outs else np.zeros((0, 0), np.float32)


def pad_rows(x: np.ndarray, batch: int) -> np.ndarray:
    """``x`` with copies of its last row appended up to a multiple of ``batch`` rows."""
    extra = -len(x) % batch
    return np.concatenate([x, np.repeat(x[-1:], extra, axis=0)]) if extra else x


def predict_in_batches(predict, x, batch: int) -> np.ndarray:
    """``predict`` over all of ``x`` (an array, or ``ModelInputs`` read a slice at a time) for a model made
    for one batch size: chunks of exactly ``batch`` rows, the last padded (``pad_rows``) and the
    padding's outputs dropped."""
    outs = []
    for i in range(0, len(x), batch):
        chunk = np.asarray(x[i:i + batch])
        outs.append(np.asarray(predict(pad_rows(chunk, batch)))[:len(chunk)])
    return np.concatenate(outs) if outs else np.zeros((0, 0), np.float32)


@torch.inference_mode()
def torch_logits(module: torch.nn.Module, x: torch.Tensor, batch_size: int = 256) -> np.ndarray:
    """The reference: the PyTorch model's logits, which must be finite (a NaN reference made the gate say "max
    |diff| inf ... pass a larger --atol", a hint that cannot help); at most ``batch_size`` rows and about
    ``INFERENCE_CHUNK_BYTES`` of float32 inputs a pass (256 rows of 224x224 photos, and the model's copies of them,
    were most of an export's 1.2 GB)."""
    batch_size = inference_rows(x, batch_size)
    module.eval()
    device = next(iter(module.parameters()), torch.empty(0)).device   # the module's, as data may be placed elsewhere
    # written into one table as they come (edgekd.data.fill_rows): with onnxscript imported, every output kept in a
    # list held its input chunk alive (a 224x224 val split's reference took 3.3 GB)
    logits = fill_rows(lambda r: module(as_float(x[r]).to(device)), 0, len(x), batch_size, device="cpu")
    logits = logits.numpy() if logits is not None else np.zeros((0, 0), np.float32)
    broken = int((~np.isfinite(logits)).any(1).sum()) if logits.size else 0
    if broken:
        raise ExportError(f"The model itself gives NaN or Inf outputs in PyTorch on {broken} of {len(logits)} val inputs: "
                          f"its weights are broken, so there is nothing to export; re-create it. Nothing was written.")
    return logits


def float32_noise(module: torch.nn.Module, x, reference: np.ndarray, rows: int = NOISE_ROWS) -> float:
    """PyTorch's own float32 rounding on ``x``: max |float32 logits (``reference``) - float64 logits| over the first
    ``rows`` inputs. Two correct float32 programs sum a layer in different orders, and their difference grows with
    the layer's width and its terms' size, not only with the logit's: an MLP on 224x224x3 photos sums 150,528 terms
    into each first-layer unit, and a fixed atol refused its correct export. 0.0 where the module cannot run in
    float64 (a user's forward that fixes its dtypes): the fixed atol alone applies then."""
    if not len(reference):
        return 0.0
    noise, rows = 0.0, min(rows, len(reference))
    with torch.inference_mode():
        try:
            double = copy.deepcopy(module).to("cpu", torch.float64).eval()
            for start in range(0, rows, NOISE_CHUNK):   # float64 convolutions take a slow path with large buffers
                part = slice(start, min(start + NOISE_CHUNK, rows))
                exact = double(as_float(x[part]).cpu().double()).numpy()
                if exact.shape != reference[part].shape or not np.isfinite(exact).all():
                    return 0.0
                noise = max(noise, float(np.abs(exact - reference[part].astype(np.float64)).max()))
        except (RuntimeError, TypeError, ValueError, NotImplementedError):
            return 0.0
    return noise


class LazyNoise:
    """``float32_noise`` of one export's source, measured on the first call only (when the fixed tolerance refuses:
    ``check_parity``) and recorded as ``verification["float32_noise"]``."""

    def __init__(self, module: torch.nn.Module, x, reference: np.ndarray, verification: dict):
        self.module, self.x, self.reference, self.verification, self.value = module, x, reference, verification, None

    def __call__(self) -> float:
        if self.value is None:
            self.value = float32_noise(self.module, self.x, self.reference)
            self.verification["float32_noise"] = self.value
        return self.value


def parity(reference: np.ndarray, candidate: np.ndarray, batch_size: int, rtol: float = 0.0) -> Parity:
    if reference.shape != candidate.shape:
        raise ExportError(f"The exported model returns logits of shape {candidate.shape} but PyTorch returns "
                          f"{reference.shape}; the export is broken, report it.")
    diff = np.abs(reference.astype(np.float64) - candidate.astype(np.float64))
    agree = reference.argmax(1) == candidate.argmax(1)
    finite = bool(np.isfinite(candidate).all())
    excess = diff - rtol * np.abs(reference.astype(np.float64))
    return Parity(batch_size=batch_size, n=len(reference),
                  max_excess=float(excess.max()) if finite and diff.size else (float("inf") if not finite else 0.0),
                  max_abs_diff=float(diff.max()) if finite and diff.size else (float("inf") if not finite else 0.0),
                  mean_abs_diff=float(diff.mean()) if finite and diff.size else (float("inf") if not finite else 0.0),
                  top1_agreement=float(agree.mean()) if agree.size else 1.0,
                  disagreements=int((~agree).sum()))


def measure_parity(session, x: np.ndarray, reference: np.ndarray, *, batch_sizes=(1, 64),
                   batch1_samples: int = 256, rtol: float = 0.0) -> list[Parity]:
    """Parity at each batch size; batch 1 runs on the first ``batch1_samples`` samples only (it is slow)."""
    results = []
    for batch_size in batch_sizes:
        n = min(len(x), batch1_samples) if batch_size == 1 else len(x)
        results.append(parity(reference[:n], run_session(session, x[:n], batch_size), batch_size, rtol))
    return results


def check_parity(results: list[Parity], *, atol: float, what: str, split: str = "val", rtol: float = 0.0,
                 noise=0.0) -> None:
    """The strict fp32 gate: every ``|diff| <= atol + rtol * |logit| + NOISE_FACTOR * noise`` (``float32_noise``) and
    no top-1 disagreement. ``noise`` may be a function, called only when the fixed tolerance alone refuses (the
    float64 pass costs more than the export on a large model)."""
    excess = lambda p: p.max_excess if p.max_excess is not None else p.max_abs_diff  # noqa: E731
    failing = lambda allowed: [p for p in results if not excess(p) <= allowed or p.disagreements]  # noqa: E731
    bad = failing(atol)
    if bad and callable(noise) and not any(p.disagreements for p in bad):
        noise = noise()
    measured = f"{noise:.1e}" if not callable(noise) else "not measured: a top-1 disagreement fails regardless"
    noise = 0.0 if callable(noise) else noise
    bad = failing(atol + NOISE_FACTOR * noise) if bad else bad
    if bad:
        detail = "; ".join(p.describe() for p in bad)
        raise ExportError(f"The {what} does not match PyTorch on the {split} split: {detail}; the gate needs |diff| "
                          f"<= atol {atol:g} + rtol {rtol:g} x |logit| + {NOISE_FACTOR:g} x PyTorch's own float32 rounding "
                          f"here ({measured}) and 100% top-1 agreement. Nothing was written; report the model, or pass "
                          f"a larger --atol if the difference is expected.")


def accuracy(logits: np.ndarray, y) -> float:
    y = np.asarray(y)
    return float((logits.argmax(1) == y).mean()) if len(y) else float("nan")


def check_accuracy_drop(before: float, after: float, *, max_drop: float, what: str, n: int) -> float:
    """The quantization gate: ``100 * (before - after) <= max_drop`` points. Returns the drop."""
    drop = 100.0 * (before - after)
    if drop > max_drop:
        raise AccuracyGateError(f"The {what} loses {drop:.2f} accuracy points on the test split (n={n}): {100 * before:.2f}% "
                          f"in fp32, {100 * after:.2f}% after; --max-accuracy-drop allows {max_drop:g}. Nothing was "
                          f"written; use more --calibration-size, --quantize dynamic, or export fp32.")
    return drop


def gate_fp32(verification: dict, parities: list[Parity], test_accuracy: float, *, atol: float, rtol: float, what: str,
              reference_model: str, noise=0.0) -> None:
    """Record an fp32 file's figures in ``verification`` and apply the strict gate (``noise``: as ``check_parity``
    takes it); on passing, its test accuracy becomes the reference the int8 gate compares with."""
    verification["fp32"] = {"parity": [p.to_dict() for p in parities], "test_accuracy": test_accuracy}
    check_parity(parities, atol=atol, rtol=rtol, what=what, noise=noise)
    verification["reference_test_accuracy"] = test_accuracy
    verification["reference_model"] = reference_model


def gate_int8(verification: dict, parities: list[Parity], test_accuracy: float, reference_accuracy: float, *,
              max_drop: float, what: str, n: int) -> float:
    """Record a quantized file's figures in ``verification`` and apply the accuracy-drop gate; returns the drop."""
    verification["int8"] = {"parity": [p.to_dict() for p in parities], "test_accuracy": test_accuracy,
                            "accuracy_drop_points": 100.0 * (reference_accuracy - test_accuracy)}
    return check_accuracy_drop(reference_accuracy, test_accuracy, max_drop=max_drop, what=what, n=n)
