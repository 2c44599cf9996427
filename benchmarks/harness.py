"""``run_benchmark``: latency of every model x runtime x batch size x thread count, and accuracy,
size and cost of every model, as one JSON-ready report.

Method (also written into every report):

- every model is evaluated once on the test split (or its first ``eval_samples``: accuracy, NLL, ECE, top-1 agreement with the
  first model, the *reference*) with the first selected runtime that reads its format; every other
  selected runtime that reads it measures its own accuracy on the same samples (``accuracy_by_runtime``);
- for each thread count and batch size, every (model, runtime) pair and every runtime's identity
  graph is warmed up, then timed for ``seconds`` split into ``rounds`` slices, taken round-robin
  (the starting pair rotates each round) so that drift of the machine hits all alike;
- one call = one batch; latency percentiles are over calls, throughput = batch / mean latency;
- compute floor = MACs x batch / the machine's measured peak GEMM rate at that thread count: fp32
  (``torch.mm``) for fp32 models, int8 (onnxruntime ``MatMulInteger``) for int8 ones (1 MAC = 2 ops);
  runtime floor = p50 of the identity graph on that runtime; floor = their sum; the rows give
  p50 / floor, and the speed-up = reference p50 / row p50 (same batch and threads);
- with ``warm_seconds``, every pair is then also timed alone for that long right after its own
  warm-up (``warm_p50_ms``): round-robin slices start with caches another model has just used.

A runtime that is missing, cannot load a model, or fails while timing gives a row with
``status`` "error" (or "skipped") and the reason; it never stops the benchmark.
"""

from __future__ import annotations

import math
import os
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from benchmarks.modelinfo import ModelInfo, describe_model, model_format, parse_model_args, unique_names
from benchmarks.runtimes import (RuntimeSkipped, RuntimeUnavailable, get_runtime, parse_runtimes,
                                 write_identity_onnx)
from benchmarks.timing import (machine_facts, peak_gemm_flops, peak_int8_ops, summarize, time_calls, usable_cores,
                               warm_up)
from edgekd.data import inference_rows, same_layout
from edgekd.teachers import Teacher, source_path
from edgekd.errors import ConfigError, EdgekdError
from benchmarks.config import BenchConfig  # noqa: F401  (the harness's config, imported from here too)

REPORT_FORMAT = "edgekd.bench"
REPORT_VERSION = 1


# bounds: thread counts up to 4x the cores (more only thrashes; 100000 crashes onnxruntime), batches up to 65536
_MAX_LIST_VALUE = {"threads": 4 * (os.cpu_count() or 1), "batch_sizes": 1 << 16}


def parse_int_list(name: str, value: str, *, allow_all: bool = False) -> tuple[int, ...]:
    """``"1,8,64"`` -> ``(1, 8, 64)``; with ``allow_all``, ``all`` means every usable core."""
    out = []
    for part in str(value).split(","):
        part = part.strip().lower()
        if allow_all and part in ("all", "n", "max"):
            out.append(usable_cores())
        elif part.isdigit() and 1 <= int(part) <= _MAX_LIST_VALUE.get(name, 1 << 16):
            out.append(int(part))
        else:
            raise ConfigError(f"The '{name}' parameter must be a comma-separated list of integers in "
                              f"[1, {_MAX_LIST_VALUE.get(name, 1 << 16)}]"
                              f"{' or all' if allow_all else ''}, e.g. {'1,all' if allow_all else '1,8,64'}. "
                              f"Got {value!r} instead.")
    return tuple(dict.fromkeys(out))


@dataclass(frozen=True)
class BenchReport:
    """The benchmark's data; ``to_dict()`` is what ``report.json`` holds."""

    created: str
    command: str
    data: dict
    machine: dict
    versions: dict
    config: dict
    runtimes: list
    peak_gflops: dict
    reference: dict
    models: list
    rows: list
    floors: list
    parity: list
    wall_seconds: float
    format: str = REPORT_FORMAT
    format_version: int = REPORT_VERSION
    extra: dict = field(default_factory=dict)
    peak_int8_gops: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)

    def ok_rows(self) -> list[dict]:
        return [r for r in self.rows if r["status"] == "ok"]

    def error_rows(self) -> list[dict]:
        return [r for r in self.rows if r["status"] != "ok"]


@dataclass
class _Model:
    info: ModelInfo | None
    name: str
    path: Path
    x: np.ndarray | None = None  # test inputs in the model's shape
    logits: np.ndarray | None = None
    reference_runtime: str | None = None  # what the parity rows compare with (see _parity_reference)
    reference_logits: np.ndarray | None = None
    record: dict = field(default_factory=dict)


def _reason(exc: BaseException) -> str:
    text = (str(exc).strip().splitlines() or [""])[0][:300]
    return f"{exc.__class__.__name__}: {text}" if not isinstance(exc, RuntimeUnavailable) else text


def readable_models(models: Sequence[str | Path]) -> list[ModelInfo]:
    """Each ``--model`` described, or a ``ConfigError`` naming the first that cannot be read. ``run_benchmark``
    records such a model as an error row and goes on (a report of many models); a command given one it
    cannot read refuses it before anything is timed."""
    infos = []
    for arg, (name, path) in zip(models, parse_model_args(models)):
        try:
            infos.append(describe_model(path, name or path.name))
        except EdgekdError:
            raise
        except Exception as exc:   # a damaged ONNX or .pte raises whatever its parser raises
            raise ConfigError(f"--model '{arg}' cannot be read ({_reason(exc)}); pass an edgekd artifact folder or an "
                              f".onnx, .ort or .pte file as edgekd wrote it.") from None
    return infos


def check_models_fit(infos: Sequence[ModelInfo], data) -> None:
    """Every model's declared input size, and an artifact's number of classes, must match ``data``'s."""
    from edgekd.artifacts import load_artifact

    for info in infos:
        if info.input_shape is not None and not same_layout(info.input_shape, data.input_shape):
            raise ConfigError(f"--model '{info.path}' takes inputs of shape {tuple(info.input_shape)} but dataset "
                              f"'{data.spec}' has {tuple(data.input_shape)}; pass data of the model's input shape.")
        _check_uint8_data(info, data, data.x_test)   # (a raw-pixel model's bytes are never rounded and clipped)
        if info.format == "artifact":
            classes = len(load_artifact(info.path, verify=False).classes)
            if classes != data.num_classes:
                raise ConfigError(f"--model '{info.path}' has {classes} classes but dataset '{data.spec}' has "
                                  f"{data.num_classes}; pass the dataset the model was trained on.")


def _check_uint8_data(info: ModelInfo, data, x) -> None:
    """A model that takes raw pixels as bytes (an ``--uint8-input`` export) needs data of whole pixels in 0..255:
    other values rounded and clipped into bytes would score it on inputs it was never meant to see."""
    if info.input_dtype == "uint8" and str(x.dtype) != "torch.uint8":
        from export.source import check_pixels

        check_pixels(x, data.spec, 4096, who=f"--model '{info.path}' (it takes raw pixels as bytes)",
                     fix="pass the data it was exported with")


def run_benchmark(models: Sequence[str | Path], data, config: BenchConfig = BenchConfig(), *,
                  command: str | None = None, echo: Callable[[str], None] | None = None) -> BenchReport:
    """Benchmark ``models`` (artifact folders, ``.onnx``, ``.ort``; ``NAME=PATH`` names one) on ``data``."""
    from edgekd.artifacts import library_versions, now_iso

    started, created, machine = time.perf_counter(), now_iso(), machine_facts()
    echo = echo or (lambda _msg: None)
    # one model (a path, or a Teacher loaded from one) is a list of one: a text was read a letter at a time
    models = [models] if isinstance(models, (str, Path, Teacher)) else list(models)
    if not models:
        raise ConfigError("Pass at least one model to benchmark (an artifact folder, an .onnx or an .ort file).")
    parsed = parse_model_args([m if isinstance(m, str) else str(source_path(m)) for m in models])
    for _, path in parsed:
        model_format(path)  # a missing path or unknown format is the user's to fix: raise now
    names = unique_names([p for _, p in parsed], [n for n, _ in parsed])
    threads = config.thread_counts()
    runtime_names = config.runtimes or parse_runtimes(None)
    runtimes, runtime_records = _open_runtimes(runtime_names, config.device)
    rows, parity, unlike = [], [], {}
    entries = [_describe(name, path, rows) for name, (_, path) in zip(names, parsed)]

    x_split, y_split = data.split(config.split)
    if config.eval_samples is not None:
        x_split, y_split = x_split[:config.eval_samples], y_split[:config.eval_samples]
    echo(f"evaluating {len(entries)} model(s) on {data.spec} [{config.split}], {len(y_split)} samples")
    # rows held per model for parity and timing: at most about INFERENCE_CHUNK_BYTES of float32 inputs, and never
    # fewer than the largest timed batch (256 rows of 224x224 photos were 154 MB a model)
    kept = max(inference_rows(x_split, max(256, config.check_samples)), *config.batch_sizes)
    for entry in entries:
        _evaluate(entry, data, x_split, y_split, runtime_names, runtimes, max(threads), entries[0], rows, kept)
    reference = {"model": entries[0].name, "runtime": entries[0].record.get("evaluated_with")}

    echo(f"probing peak fp32 and int8 GEMM rates at {', '.join(map(str, threads))} thread(s)")
    peak = {str(t): peak_gemm_flops(t, seconds=config.probe_seconds) for t in threads}
    peak_int8 = {str(t): peak_int8_ops(t, seconds=config.probe_seconds) for t in threads}
    floors = []
    with tempfile.TemporaryDirectory(prefix="edgekd-bench-") as tmp:
        identity = write_identity_onnx(Path(tmp) / "identity.onnx", data.input_shape)
        for entry in entries:
            for name in runtime_names:
                if entry.x is not None and entry.info.format in get_runtime(name).formats and name not in runtimes:
                    rows.append(_error_row(entry.name, name, None, None, runtime_records[name]["reason"], status="skipped"))
        for t in threads:
            runners = _load_runners(entries, runtime_names, runtimes, t, rows, parity if t == threads[0] else None,
                                    config.check_samples, unlike)
            floor_runners = _load_floor_runners(runners, runtimes, identity, t, floors)
            for b in config.batch_sizes:
                echo(f"timing {len(runners)} model/runtime pair(s) at batch {b}, {t} thread(s)")
                _measure(entries, runners, floor_runners, b, t, config, data, (peak[str(t)], peak_int8[str(t)]), rows, floors)
    _probe_again(rows, peak, peak_int8, threads, config, echo)
    _add_speedups(rows, reference)
    for name, runtime in runtimes.items():   # ncnn / MNN: what was converted, how long it took, or that it was cached
        if getattr(runtime, "conversions", None):
            runtime_records[name]["conversions"] = runtime.conversions
    return BenchReport(created=created, command=command or "benchmarks.harness.run_benchmark", data=data.describe(digests=False),
                       machine=machine, versions=_versions(library_versions(), runtime_records),
                       config=_config_record(config, threads, runtime_names), runtimes=list(runtime_records.values()),
                       peak_gflops={t: v / 1e9 for t, v in peak.items()}, reference=reference,
                       peak_int8_gops={t: v / 1e9 for t, v in peak_int8.items()},
                       models=[e.record for e in entries], rows=rows, floors=floors, parity=parity,
                       wall_seconds=round(time.perf_counter() - started, 2))


def _open_runtimes(names, device: str):
    runtimes, records = {}, {}
    for name in names:
        entry = get_runtime(name)
        record = {"name": name, "formats": list(entry.formats), "settings": entry.description}
        try:
            runtimes[name] = entry.cls()
            runtimes[name].place(device)
            record.update(available=True, version=runtimes[name].version(), reason=None, device=runtimes[name].device)
        except RuntimeUnavailable as exc:
            record.update(available=False, version=None, reason=str(exc))
        records[name] = record
    return runtimes, records


def _versions(libraries: dict, runtime_records: dict) -> dict:
    versions = dict(libraries)
    for record in runtime_records.values():
        if record["version"]:
            versions[get_runtime(record["name"]).package or record["name"]] = record["version"]
    return versions


def _config_record(config: BenchConfig, threads, runtime_names) -> dict:
    record = asdict(config)
    record.update(batch_sizes=list(config.batch_sizes), threads=list(threads), runtimes=list(runtime_names))
    return record


def _describe(name: str, path: Path, rows: list) -> _Model:
    try:
        info = describe_model(path, name)
        record = {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(info).items()}
        return _Model(info=info, name=name, path=path, record={**record, "error": None})
    except Exception as exc:
        reason = _reason(exc)
        rows.append(_error_row(name, None, None, None, f"cannot read the model: {reason}"))
        return _Model(info=None, name=name, path=path, record={"name": name, "path": str(path), "error": reason})


def _model_inputs(x_split, shape, uint8: bool, start: int = 0, stop: int | None = None) -> np.ndarray:
    """Rows ``start:stop`` of the split as a model takes them: float32, or raw bytes for a ``--uint8-input``
    export. Converted a slice at a time, so no model holds a float32 copy of the whole split (a split of
    an image folder is a memory-mapped uint8 file that may be larger than memory)."""
    part = x_split[start:stop]
    x = np.ascontiguousarray(part.reshape(len(part), *shape).cpu().numpy(), dtype=np.float32)   # (a placed split: on the GPU)
    return np.clip(np.rint(x), 0, 255).astype(np.uint8) if uint8 else x


def _predict_split(runner, x_split, shape, uint8: bool, fixed: int | None, chunk: int = 512) -> np.ndarray:
    """Logits of the whole split, streamed in chunks of at most ``chunk`` rows and about ``INFERENCE_CHUNK_BYTES`` of
    float32 inputs (512 rows of 224x224 photos, and a runtime's copies of them, took over 1.5 GB), a multiple of a
    fixed batch."""
    chunk = inference_rows(x_split, chunk)
    chunk = fixed * max(1, chunk // fixed) if fixed else chunk
    return np.concatenate([_predict_all(runner, _model_inputs(x_split, shape, uint8, i, i + chunk), chunk, fixed=fixed)
                           for i in range(0, len(x_split), chunk)])


def _evaluate(entry: _Model, data, x_split, y_split, runtime_names, runtimes, threads, reference: _Model, rows,
              kept: int = 256):
    """Accuracy, NLL, ECE and agreement with the reference, with the first runtime that reads the model;
    the model keeps its first ``kept`` inputs for the parity checks and the timing batches. Every other
    runtime that reads the file measures its own accuracy on the same split (``accuracy_by_runtime``):
    a converter or an int8 kernel that rounds differently shows in its own figure."""
    if entry.info is None:
        return
    shape = tuple(entry.info.input_shape or data.input_shape)
    if not same_layout(shape, data.input_shape):
        _model_error(entry, rows, f"the model takes inputs of shape {shape} but dataset '{data.spec}' has "
                                  f"{tuple(data.input_shape)}; pass data of the model's input shape")
        return
    uint8 = entry.info.input_dtype == "uint8"   # an export that takes raw pixels as bytes
    try:
        _check_uint8_data(entry.info, data, x_split)
    except EdgekdError as exc:
        _model_error(entry, rows, str(exc))
        return
    by_runtime = {}
    for name in runtime_names:
        if name not in runtimes or entry.info.format not in get_runtime(name).formats:
            continue
        try:
            logits = _predict_split(_load_any_threads(runtimes[name], entry.path, threads), x_split, shape, uint8,
                                    entry.info.fixed_batch)
        except Exception as exc:   # a runtime that fails after the first scored: its timing rows say so again
            entry.record.setdefault("evaluation_errors", {})[name] = _reason(exc)
            continue
        if logits.shape != (len(x_split), data.num_classes):
            if by_runtime:
                continue
            _model_error(entry, rows, f"the model gives outputs of shape {logits.shape[1:]} but dataset '{data.spec}' "
                                      f"has {data.num_classes} classes (bench reads a graph's first 2-D float output as "
                                      f"its class scores); pass a dataset with the model's classes, or export the "
                                      f"class scores as the graph's first output")
            return
        broken = int((~np.isfinite(logits)).any(1).sum())
        if broken:   # never an accuracy (class 0's share), nor timed: as evaluate refuses it
            entry.record.setdefault("evaluation_errors", {})[name] = (
                f"NaN or Inf outputs on {broken} of {len(logits)} inputs (its weights or graph are broken; re-create or "
                f"re-export it)")
            continue
        if not by_runtime:
            _score(entry, name, logits, x_split, y_split, shape, uint8, data, reference, kept)
            by_runtime[name] = entry.record["accuracy"]
        else:
            by_runtime[name] = float((logits.argmax(1) == np.asarray(y_split)).mean())
    if by_runtime:
        entry.record["accuracy_by_runtime"] = by_runtime
        return
    failures = entry.record.get("evaluation_errors")
    if failures:
        reason = "no selected runtime could run the model: " + "; ".join(f"{k}: {v}" for k, v in failures.items())
    else:
        reason = f"no selected runtime that is installed reads {entry.info.format} models"
    _model_error(entry, rows, reason)


def _score(entry: _Model, name: str, logits, x_split, y_split, shape, uint8: bool, data, reference: _Model, kept: int):
    """The file's figures from the first runtime that ran it: metrics, agreement, the inputs kept for the
    parity checks and timings, and its parity reference."""
    import torch

    from edgekd.evaluate import metrics_from_logits
    from edgekd.teachers import OutputKind

    # a graph of another exporter may end in a softmax: its probabilities are scored as log-probabilities, as
    # evaluate scores them (read as logits, its NLL and ECE were those of a softmax taken twice)
    scores = OutputKind(f"Model '{entry.record.get('path', name)}'")(torch.from_numpy(logits))
    metrics = metrics_from_logits(scores, y_split, data.classes)
    agreement = None
    if reference.logits is not None:
        agreement = float((reference.logits.argmax(1) == logits.argmax(1)).mean())
    elif reference is entry:
        agreement = 1.0
    entry.x, entry.logits = _model_inputs(x_split, shape, uint8, 0, kept), logits
    entry.record.update(evaluated_with=name, n_eval=metrics["n"], accuracy=metrics["accuracy"], nll=metrics["nll"],
                        ece=metrics["ece"], agreement=agreement)
    _parity_reference(entry, name)


def _model_error(entry: _Model, rows, reason: str) -> None:
    entry.record["error"] = reason
    rows.append(_error_row(entry.name, None, None, None, reason))


def _load_any_threads(runtime, path, threads: int):
    try:
        return runtime.load(path, threads)
    except RuntimeSkipped:  # a runtime that cannot run at this thread count still evaluates at 1
        return runtime.load(path, 1)


def _predict_all(runner, x: np.ndarray, chunk: int = 512, *, fixed: int | None = None) -> np.ndarray:
    """Logits of all of ``x`` in chunks. A model exported with a ``fixed`` batch gets chunks of exactly that
    size (``predict_in_batches``: the last padded, the padding's outputs dropped); a model whose fixed batch
    is not declared falls back to one sample at a time when a larger chunk fails."""
    if fixed:
        from export.verify import predict_in_batches

        return predict_in_batches(runner.predict, x, fixed)
    try:
        return np.concatenate([runner.predict(x[i:i + chunk]) for i in range(0, len(x), chunk)])
    except Exception:
        if chunk == 1:
            raise
        return np.concatenate([runner.predict(x[i:i + 1]) for i in range(len(x))])


def _load_runners(entries, runtime_names, runtimes, threads, rows, parity, check_samples, unlike: dict) -> dict:
    """The (model, runtime) pairs to time at ``threads``; a pair whose outputs could not be compared with the
    reference (checked at the first thread count, remembered in ``unlike``) is an error row, never timed."""
    runners = {}
    for entry in entries:
        if entry.x is None:
            continue
        for name in runtime_names:
            if name not in runtimes or entry.info.format not in get_runtime(name).formats:
                continue
            if (entry.name, name) in unlike:
                rows.append(_error_row(entry.name, name, None, threads, unlike[(entry.name, name)]))
                continue
            try:
                runner = runtimes[name].load(entry.path, threads)
            except RuntimeSkipped as exc:
                rows.append(_error_row(entry.name, name, None, threads, str(exc), status="skipped"))
                continue
            except Exception as exc:
                rows.append(_error_row(entry.name, name, None, threads, f"cannot load: {_reason(exc)}"))
                continue
            if parity is not None and (record := _parity(entry, name, runner, check_samples)) is not None:
                parity.append(record)
                if record["error"] is not None:   # outputs that cannot even be compared are not timed
                    unlike[(entry.name, name)] = f"outputs unlike the reference's: {record['error']}"
                    rows.append(_error_row(entry.name, name, None, threads, unlike[(entry.name, name)]))
                    continue
            runners[(entry.name, name)] = runner
    return runners


def _parity_reference(entry: _Model, evaluated_with: str, samples: int = 256) -> None:
    """What every runtime's outputs are compared with: the PyTorch model itself (an artifact), the
    PyTorch artifact an export came from when it is still there, else the evaluation runtime."""
    entry.reference_runtime, entry.reference_logits = evaluated_with, entry.logits
    source = entry.info.source_artifact if entry.info.format != "artifact" else None
    if source is None:
        return
    try:
        import torch

        from edgekd.teachers import load_teacher

        teacher = load_teacher(source)
        x = torch.from_numpy(entry.x[:samples].astype(np.float32))
        entry.reference_logits = teacher.logits(x.reshape(len(x), *teacher.input_shape)).numpy()
        entry.reference_runtime = "pytorch (source artifact)"
    except Exception as exc:   # the export still has its evaluation runtime as reference
        entry.record["parity_reference_error"] = _reason(exc)


def _parity(entry: _Model, runtime: str, runner, check_samples: int) -> dict | None:
    """Largest logit difference and top-1 agreement against the PyTorch reference (``_parity_reference``)
    on a few test samples; ``None`` for the reference itself (a comparison with itself says nothing)."""
    if entry.reference_runtime == runtime:
        return None
    n = int(min(check_samples, len(entry.x), len(entry.reference_logits)))
    record = {"model": entry.name, "runtime": runtime, "reference_runtime": entry.reference_runtime, "samples": n}
    try:
        got = _predict_all(runner, entry.x[:n], fixed=entry.info.fixed_batch)   # a fixed-batch export takes no other
        want = entry.reference_logits[:n]
        if np.shape(got) != np.shape(want):   # a converter that dropped or reshaped a layer: said, not broadcast
            raise ValueError(f"{runtime} returns {np.shape(got)[1:]} values per input where the reference gives "
                             f"{np.shape(want)[1:]}")
        record.update(max_abs_diff=float(np.abs(got - want).max()), agreement=float((got.argmax(1) == want.argmax(1)).mean()),
                      error=None)
    except Exception as exc:
        record.update(max_abs_diff=None, agreement=None, error=_reason(exc))
        return record
    # the same file on the runtime that measured its accuracy: runtimes differ by rounding, not by whole
    # predictions; one that does is computing something else and is not timed (nor can win a headline)
    evaluated = entry.record.get("evaluated_with")
    if evaluated and evaluated != runtime and entry.logits is not None:
        same = float((got.argmax(1) == np.asarray(entry.logits[:n]).argmax(1)).mean())
        record["agreement_with_" + evaluated] = same
        if same < MIN_RUNTIME_AGREEMENT:
            record["error"] = (f"its top-1 agrees with {evaluated}'s on the same file for only {100 * same:.1f}% of {n} "
                               f"samples (at least {100 * MIN_RUNTIME_AGREEMENT:.0f}% expected): wrong outputs")
    return record


MIN_RUNTIME_AGREEMENT = 0.9   # two runtimes on one file; int8 rounding moves a few percent, a broken converter most


def _load_floor_runners(runners, runtimes, identity: Path, threads, floors) -> dict:
    floor_runners = {}
    for name in dict.fromkeys(rt for _, rt in runners):
        try:
            floor_runners[name] = runtimes[name].identity(identity, threads)
        except Exception as exc:
            floors.append({"runtime": name, "batch_size": None, "threads": threads, "status": "error",
                           "error": f"identity graph: {_reason(exc)}"})
    return floor_runners


def _batch(x: np.ndarray, size: int) -> np.ndarray:
    reps = math.ceil(size / len(x))
    return np.ascontiguousarray(np.concatenate([x] * reps)[:size] if reps > 1 else x[:size])


@dataclass
class _Task:
    key: tuple
    runner: object
    fn: Callable | None
    seconds: float
    error: str | None = None
    status: str = "error"   # of a task that cannot run: "error", or "skipped" (e.g. a .pte made for another batch)


def _measure(entries, runners, floor_runners, batch, threads, config: BenchConfig, data, peaks, rows, floors):
    by_name = {e.name: e for e in entries}
    tasks = []
    for (model, runtime), runner in runners.items():
        info = by_name[model].info
        if info and info.format in ("onnx", "ort") and info.fixed_batch not in (None, batch):
            tasks.append(_Task(("model", model, runtime), runner, None, config.seconds, status="skipped",
                               error=f"the model's batch is fixed at {info.fixed_batch} (exported without a dynamic "
                                     f"batch axis); export it with one to time batch {batch}"))
            continue
        tasks.append(_bind(("model", model, runtime), runner, _batch(by_name[model].x, batch), config.seconds, config))
    floor_x = _batch(np.zeros((1, *data.input_shape), dtype=np.float32), batch)
    for runtime, runner in floor_runners.items():
        tasks.append(_bind(("floor", runtime), runner, floor_x, config.floor_seconds, config))
    samples, rounds = _round_robin(tasks, config)
    warm = _warm(tasks, config) if config.warm_seconds > 0 else {}
    floor_p50 = {}
    for task in tasks:
        if task.key[0] != "floor":
            continue
        record = {"runtime": task.key[1], "batch_size": batch, "threads": threads}
        if task.error:
            floors.append({**record, "status": "error", "error": task.error})
        else:
            stats = summarize(samples[task.key], batch)
            floor_p50[task.key[1]] = stats["p50_ms"]
            floors.append({**record, "status": "ok", **stats})
    for task in tasks:
        if task.key[0] != "model":
            continue
        _, model, runtime = task.key
        if task.error:
            rows.append(_error_row(model, runtime, batch, threads, task.error, status=task.status))
            continue
        stats = summarize(samples[task.key], batch)
        info = by_name[model].info
        macs, peak = info.macs, peaks[1] if info.int8 else peaks[0]
        compute = macs * batch * 2 / peak * 1e3 if macs else None
        runtime_floor = floor_p50.get(runtime)
        floor = compute + (runtime_floor or 0.0) if compute is not None else None
        rows.append({"model": model, "runtime": runtime, "device": runners[(model, runtime)].device,
                     "batch_size": batch, "threads": threads, "status": "ok",
                     **stats, "compute_floor_ms": compute, "runtime_floor_ms": runtime_floor, "floor_ms": floor,
                     "latency_over_floor": stats["p50_ms"] / floor if floor else None, "speedup": None, "error": None,
                     "compute_peak": "int8" if info.int8 else "fp32",
                     "warm_p50_ms": warm.get(task.key), "warm_p99_ms": warm.get(("p99", *task.key)),
                     "round_p50_ms": [summarize(r, batch)["p50_ms"] if r else None for r in rounds[task.key]]})


def _probe_again(rows, peak: dict, peak_int8: dict, threads, config: BenchConfig, echo) -> None:
    """The peak GEMM rates probed once more after the timings, the higher of the two kept, and the rows'
    compute floors scaled to it: a probe that ran while the machine was busy reads low, and a floor
    from it lay above the latencies it was meant to bound (p50 / floor 0.74x on a loaded host)."""
    echo("probing the peak GEMM rates again")
    scale = {}
    for t in threads:
        for kind, table, probe in (("fp32", peak, peak_gemm_flops), ("int8", peak_int8, peak_int8_ops)):
            again = probe(t, seconds=config.probe_seconds)
            scale[(kind, t)] = table[str(t)] / max(again, table[str(t)])
            table[str(t)] = max(again, table[str(t)])
    for row in rows:
        if row.get("status") == "ok" and row.get("compute_floor_ms") is not None:
            row["compute_floor_ms"] *= scale[(row["compute_peak"], row["threads"])]
            row["floor_ms"] = row["compute_floor_ms"] + (row["runtime_floor_ms"] or 0.0)
            row["latency_over_floor"] = row["p50_ms"] / row["floor_ms"] if row["floor_ms"] else None


def _bind(key, runner, x, seconds, config) -> _Task:
    try:
        fn = runner.bind(x)
        with runner.activate():
            warm_up(fn, config.warmup_seconds)
        return _Task(key, runner, fn, seconds)
    except RuntimeSkipped as exc:
        return _Task(key, runner, None, seconds, error=str(exc), status="skipped")
    except Exception as exc:
        return _Task(key, runner, None, seconds, error=f"failed at this batch size: {_reason(exc)}")


def _round_robin(tasks: list[_Task], config: BenchConfig) -> tuple[dict, dict]:
    """Each task's time in ``rounds`` slices; round r starts at task r so no pair always goes first.

    Returns every task's samples, and its samples per round: two tasks' slices of one round ran within
    a fraction of a second of each other, so a ratio of their round p50s is paired against machine drift
    (see ``paired_ratio``)."""
    samples = {task.key: [] for task in tasks}
    per_round = {task.key: [[] for _ in range(config.rounds)] for task in tasks}
    min_runs = math.ceil(config.min_runs / config.rounds)
    live = [t for t in tasks if t.error is None]
    for r in range(config.rounds):
        start = r % len(live) if live else 0
        for task in live[start:] + live[:start]:
            if task.error:
                continue
            try:
                with task.runner.activate():
                    timed = time_calls(task.fn, task.seconds / config.rounds, min_runs=min_runs)
                samples[task.key] += timed
                per_round[task.key][r] = timed
            except Exception as exc:
                task.error = f"failed while timing: {_reason(exc)}"
    return samples, per_round


def median_interval(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float, float] | None:
    """A distribution-free interval for the median of ``values``: the order statistics
    ``[x_(k), x_(n+1-k)]`` with the largest ``k`` whose coverage ``1 - 2 P(B <= k-1)``, ``B ~ Binomial(n, 1/2)``,
    is at least ``confidence`` (the sign-test interval; e.g. Hollander & Wolfe, *Nonparametric Statistical
    Methods*, 3.6). No assumption on the shape of the noise, which on a shared machine is bimodal more often
    than not. Returns (low, high, coverage), or None when n is too small for any interval (n < 6 at 95%)."""
    x = sorted(values)
    n = len(x)
    tail, k, best = 0.0, 0, None
    while k < n // 2:
        tail += math.comb(n, k) / 2 ** n   # P(B <= k)
        if 1 - 2 * tail < confidence:
            break
        k += 1
        best = (x[k - 1], x[n - k], 1 - 2 * tail)
    return best


def paired_ratio(slow: dict, fast: dict) -> dict | None:
    """``slow`` row's latency over ``fast`` row's, paired by round: the median over rounds of the ratio
    of their round p50s, with the smallest and largest round ratio and a 95% interval for the median
    (``median_interval``; None below 6 rounds). Machines drift (another tenant, a clock change) between
    rounds; within a round the two slices ran side by side, so the per-round ratio cancels most of the
    drift that the ratio of the pooled p50s keeps."""
    a, b = slow.get("round_p50_ms") or [], fast.get("round_p50_ms") or []
    ratios = sorted(x / y for x, y in zip(a, b) if x and y)
    if not ratios:
        return None
    interval = median_interval(ratios)
    return {"median": float(np.median(ratios)), "min": ratios[0], "max": ratios[-1], "rounds": len(ratios),
            "low": interval[0] if interval else None, "high": interval[1] if interval else None,
            "coverage": interval[2] if interval else None}


def verdict(paired: dict | None, value: float, aim: float, *, higher_is_better: bool = True) -> str:
    """"meets", "misses" or "undecided" for a paired figure against an aim: decided by the median's
    interval when there is one ("undecided" when it straddles the aim: the machine's noise, not the
    models, would pick the answer), by the figure itself when there are too few rounds for one."""
    def good(v):
        return v >= aim if higher_is_better else v <= aim

    if not paired or paired.get("low") is None:
        return "meets" if good(value) else "misses"
    worst, best = (paired["low"], paired["high"]) if higher_is_better else (paired["high"], paired["low"])
    if good(worst):
        return "meets"
    return "undecided" if good(best) else "misses"


def _warm(tasks: list[_Task], config: BenchConfig) -> dict:
    """Each live model task timed alone right after its own warm-up: p50 (and p99 under ("p99", *key))."""
    found = {}
    for task in tasks:
        if task.error or task.key[0] != "model":
            continue
        try:
            with task.runner.activate():
                warm_up(task.fn, config.warmup_seconds)
                stats = summarize(time_calls(task.fn, config.warm_seconds, min_runs=config.min_runs), 1)
        except Exception:  # the round-robin figure stands; the warm one is extra
            continue
        found[task.key], found[("p99", *task.key)] = stats["p50_ms"], stats["p99_ms"]
    return found


def _error_row(model, runtime, batch, threads, reason, *, status="error") -> dict:
    return {"model": model, "runtime": runtime, "batch_size": batch, "threads": threads, "status": status, "error": reason}


def _add_speedups(rows: list[dict], reference: dict) -> None:
    ref = {(r["batch_size"], r["threads"]): r["p50_ms"] for r in rows
           if r["status"] == "ok" and r["model"] == reference["model"] and r["runtime"] == reference["runtime"]}
    for row in rows:
        if row["status"] == "ok" and (row["batch_size"], row["threads"]) in ref:
            row["speedup"] = ref[(row["batch_size"], row["threads"])] / row["p50_ms"]
