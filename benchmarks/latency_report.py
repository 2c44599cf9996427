"""Scenario (e): the teacher ensemble against the student, fp32 and int8, on every desktop and mobile
runtime installed, with the accuracy each gives.

    python -m benchmarks.latency_report --teacher runs/fmnist/teacher --student runs/fmnist/student \\
        --data fashion-mnist --exports runs/fmnist/export --out benchmarks/results/latency_fmnist
    python -m benchmarks.latency_report --smoke --out /tmp/latency_smoke   # tiny untrained digits models, seconds

From the two artifacts it exports (into ``--exports``, reusing files whose summary names the same
artifact and settings) every file a user would ship: the teacher ensemble as one ONNX graph and one
ExecuTorch program; the student as fp32 ONNX, int8 QDQ ONNX, int8 QOperator ONNX (the form OpenCV DNN
reads), int8 ``.ort`` at the extended and the basic optimisation level, fp32 / int8 ``.pte``
programs at batch 1 and batch 8 (a program's batch is fixed), and a dynamic-int8 ``.pte`` (activations
quantized per call) at batch 1. ncnn and MNN convert the ONNX files
themselves. Then one ``run_benchmark`` times them all, round-robin, with a warm figure beside each.

The result folder holds ``report.json``, ``report.md`` (command line, date, machine, versions first;
``edgekd bench --from report.json`` re-renders it), ``latency.png`` and ``pareto.png``. Headlines, at
batch 1 and one thread: the int8 student on its fastest *mobile* runtime (ExecuTorch, ncnn, MNN, or an
``.ort`` file on onnxruntime) against the teacher ensemble (a) in PyTorch eager and (b) on the teacher's
own fastest runtime; aims (a) >= 100x and (b) >= 30x, with at most 1 point of test accuracy lost to
quantization against the fp32 student; and each ``.ort`` against the ``.onnx`` it came from (aim <= 1.2x).
"""

from __future__ import annotations

import argparse
import dataclasses
import shlex
import sys
import tempfile
from pathlib import Path
from benchmarks.scenario_common import run_script

AIM_EAGER = 100.0      # (a) against the teacher in PyTorch eager
AIM_FASTEST = 30.0     # (b) against the teacher on its fastest runtime
AIM_QUANT_POINTS = 1.0
AIM_ORT_RATIO = 1.2
MOBILE_RUNTIMES = ("executorch", "ncnn", "mnn")
CONFIRM_ROUNDS = 48    # the headline rows timed again on their own: rounds ...
CONFIRM_SLICE = 0.1    # ... of this many seconds per row

# name -> (source, ExportConfig settings); "student" / "teacher" name the artifact
EXPORTS = {
    "teacher-onnx": ("teacher", "teacher.onnx", {}),
    "teacher-pte": ("teacher", "teacher.pte", {"executorch": True}),
    "student-onnx": ("student", "student.onnx", {}),
    "student-int8": ("student", "student.int8.onnx", {"quantize": "int8"}),
    "student-int8-qop": ("student", "student.int8.qop.onnx", {"quantize": "int8", "quant_format": "qoperator"}),
    "student-int8-ort": ("student", "student.int8.ort", {"quantize": "int8", "ort": True}),
    "student-int8-ort-basic": ("student", "student.int8.basic.ort", {"quantize": "int8", "ort": True,
                                                                     "ort_optimization": "basic"}),
    "student-pte": ("student", "student.pte", {"executorch": True}),
    "student-int8-pte": ("student", "student.int8.pte", {"executorch": True, "quantize": "int8"}),
    "student-int8dyn-pte": ("student", "student.int8dyn.pte", {"executorch": True, "quantize": "dynamic"}),
    "student-pte-b8": ("student", "student.b8.pte", {"executorch": True, "batch_size": 8}),
    "student-int8-pte-b8": ("student", "student.int8.b8.pte", {"executorch": True, "quantize": "int8", "batch_size": 8}),
}
SMOKE_EXPORTS = ("teacher-onnx", "student-onnx", "student-int8", "student-int8-ort", "student-int8-ort-basic")


# --- exports ---------------------------------------------------------------------------------------

def prepare_exports(artifacts: dict, folder: Path, data, names=tuple(EXPORTS), *, echo=print) -> tuple[dict, dict]:
    """Export ``names`` into ``folder`` (reusing a file whose summary names the same artifact and settings).
    Returns ({name: path}, {name: reason}) — the second for exports that could not be made (e.g. ExecuTorch
    not installed), which the report lists."""
    from edgekd.errors import EdgekdError
    from export import ExportConfig, export_executorch, export_onnx
    from export.source import builder_fingerprint, load_source

    folder.mkdir(parents=True, exist_ok=True)
    sources = {role: load_source(path).describe() for role, path in artifacts.items()}
    builder = builder_fingerprint()
    made, failed = {}, {}
    for name in names:
        role, filename, settings = EXPORTS[name]
        config = ExportConfig(calibration_size=512, **settings)
        out = folder / filename
        if _reusable(out, sources[role], builder, config, data.spec):
            made[name] = out
            continue
        echo(f"exporting {name} -> {out}")
        try:
            export = export_executorch if config.executorch else export_onnx
            export(artifacts[role], out, config, overwrite=True, data=data, calibration=data)
            made[name] = out
        except EdgekdError as exc:
            failed[name] = str(exc)
    return made, failed


# the packages that write the graphs and their int8 forms: an upgrade of any makes other files
_GRAPH_MAKERS = ("onnx", "onnxruntime", "onnxscript", "executorch", "torchao")


def _reusable(out: Path, source: dict, builder: str, config, data_spec: str) -> bool:
    """Same source artifact (its weights and its manifest: an ensemble's combine rule, a specialist ensemble's solver
    settings are there, not in the weights), verified and calibrated on the same data, same settings, made by the
    same graph-building code (``builder_fingerprint``) and the same versions of the packages that write the graphs
    (``_GRAPH_MAKERS``); the summary must be that very file's (``export_summary_of``)."""
    from edgekd.artifacts import library_versions
    from edgekd.outputs import export_summary_of
    from export.executorch_export import mobile_versions

    data = export_summary_of(out)
    if data is None:
        return False
    recorded = data.get("config") or {}
    settings = ("quantize", "quant_format", "ort", "ort_optimization", "executorch", "batch_size", "calibration_size")
    made_with = data.get("versions") or {}
    now = {**library_versions(), **mobile_versions()}
    makers = [k for k in _GRAPH_MAKERS if k in made_with or (config.executorch and k in ("executorch", "torchao"))]
    made_from = data.get("source", {})
    return (all(made_from.get(k) == source[k] for k in ("fingerprint", "manifest_sha256"))
            and (data.get("verification") or {}).get("data") == data_spec and data.get("builder") == builder
            and all(recorded.get(k, getattr(config, k)) == getattr(config, k) for k in settings)
            and all(made_with.get(k) == now.get(k) for k in makers))



# --- headlines -------------------------------------------------------------------------------------

def _cell(data: dict):
    return min(data["config"]["batch_sizes"]), min(data["config"]["threads"])


def _ok_rows(data: dict, batch: int, threads: int) -> list[dict]:
    return [r for r in data["rows"] if r["status"] == "ok" and r["batch_size"] == batch and r["threads"] == threads]


def _is_mobile(row: dict, models: dict) -> bool:
    return row["runtime"] in MOBILE_RUNTIMES or models.get(row["model"], {}).get("format") == "ort"


def headlines(data: dict, *, accuracy_from: list | None = None) -> dict:
    """(a) and (b), the quantization cost and the .ort ratios, from a report's data (batch 1, one thread).

    Each ratio is paired by round (``benchmarks.harness.paired_ratio``): the median over the round-robin
    rounds of the two rows' round p50s; the ratio of the pooled p50s is kept beside it. ``accuracy_from``:
    model records whose accuracy stands instead (the full run's, for the confirmation of the same files)."""
    from benchmarks.harness import paired_ratio, verdict

    batch, threads = _cell(data)
    rows = _ok_rows(data, batch, threads)
    models = {m["name"]: m for m in data["models"]}
    if accuracy_from:   # the confirmation times the same files: their accuracy is the full run's
        full = {m["name"]: m for m in accuracy_from}
        models = {name: {**m, **{k: full[name].get(k) for k in ("accuracy", "accuracy_by_runtime", "evaluated_with")}}
                  if name in full else m for name, m in models.items()}
    int8 = [r for r in rows if models.get(r["model"], {}).get("int8") and r["model"].startswith("student")
            and _is_mobile(r, models)]
    teacher = [r for r in rows if r["model"].startswith("teacher")]
    eager = next((r for r in teacher if r["model"] == "teacher" and r["runtime"] == "pytorch"), None)
    fast = min(int8, key=lambda r: r["p50_ms"], default=None)
    out = {"batch_size": batch, "threads": threads, "a": None, "b": None, "quantization": None, "ort": []}
    if fast and eager:
        out["a"] = _versus(fast, eager, models, AIM_EAGER)
    if fast and teacher:
        out["b"] = _versus(fast, min(teacher, key=lambda r: r["p50_ms"]), models, AIM_FASTEST)
    fp32 = models.get("student", {}).get("accuracy")
    if fast and fp32 is not None and models[fast["model"]].get("accuracy") is not None:
        points = 100 * (fp32 - models[fast["model"]]["accuracy"])
        out["quantization"] = {"model": fast["model"], "fp32_accuracy": fp32, "int8_accuracy": models[fast["model"]]["accuracy"],
                               "points_lost": points, "aim": AIM_QUANT_POINTS, "meets": points <= AIM_QUANT_POINTS}
    onnx = {(r["batch_size"], r["threads"]): r for r in data["rows"]
            if r["status"] == "ok" and r["model"] == "student-int8" and r["runtime"] == "onnxruntime"}
    for r in data["rows"]:
        if r["status"] == "ok" and r["model"].startswith("student-int8-ort") and (r["batch_size"], r["threads"]) in onnx:
            base = onnx[(r["batch_size"], r["threads"])]
            paired = paired_ratio(r, base)
            pooled = r["p50_ms"] / base["p50_ms"]
            ratio = paired["median"] if paired else pooled
            out["ort"].append({"model": r["model"], "batch_size": r["batch_size"], "threads": r["threads"],
                               "p50_ms": r["p50_ms"], "onnx_p50_ms": base["p50_ms"],
                               "ratio": ratio, "pooled_ratio": pooled, "paired": paired, "aim": AIM_ORT_RATIO,
                               "verdict": verdict(paired, ratio, AIM_ORT_RATIO, higher_is_better=False)})
    return out


def _versus(fast: dict, slow: dict, models: dict, aim: float) -> dict:
    from benchmarks.harness import paired_ratio, verdict
    from benchmarks.report import accuracy_of

    pooled = slow["p50_ms"] / fast["p50_ms"]
    paired = paired_ratio(slow, fast)
    speedup = paired["median"] if paired else pooled   # the side-by-side figure; the pooled one is shown beside it
    warm = (slow.get("warm_p50_ms") / fast["warm_p50_ms"]) if fast.get("warm_p50_ms") and slow.get("warm_p50_ms") else None
    acc, on = accuracy_of(models[fast["model"]], fast["runtime"])
    ref, _ = accuracy_of(models[slow["model"]], slow["runtime"])
    return {"model": fast["model"], "runtime": fast["runtime"], "reference_model": slow["model"],
            "reference_runtime": slow["runtime"], "p50_ms": fast["p50_ms"], "reference_p50_ms": slow["p50_ms"],
            "speedup": speedup, "pooled_speedup": pooled, "paired": paired, "warm_speedup": warm, "aim": aim,
            "verdict": (decided := verdict(paired, speedup, aim)), "meets": decided == "meets",
            "accuracy": acc, "reference_accuracy": ref, "accuracy_runtime": on,
            "accuracy_cost_points": 100 * (ref - acc) if acc is not None and ref is not None else None,
            "latency_over_floor": fast.get("latency_over_floor")}


def _x(v: float) -> str:
    """A speed-up: one decimal below 100x, so a figure next to its aim never rounds onto it."""
    return f"{v:.1f}x" if v < 100 else f"{v:.0f}x"


def _r(v: float) -> str:
    return f"{v:.2f}x"


def _interval(paired: dict, fmt) -> str:
    if paired.get("low") is None:
        return ""
    return f", {100 * paired['coverage']:.0f}% interval of the median {fmt(paired['low'])}–{fmt(paired['high'])}"


def _verdict_text(v: dict, aim: str) -> str:
    decided = v["verdict"]
    if decided == "undecided":
        return (f"which this machine cannot tell from the aim of {aim}: the interval of the median straddles it, "
                f"so the noise, not the models, would decide")
    return f"which {decided} the aim of {aim}"


def summary_text(extra: dict) -> str:
    """The report's summary: the full run's headlines and, when the headline rows were timed again on
    their own, that run's (a) and (b), on which the aims are judged."""
    text = headline_text(extra["headlines"])
    confirmed = extra.get("confirmed")
    if confirmed and (confirmed.get("a") or confirmed.get("b")):
        rounds = (extra["confirmation"].get("config") or {}).get("rounds")
        text = ("In the full run, every pair round-robin:\n\n" + text + "\n\nThe headline rows timed again on their own "
                f"({rounds} rounds, the rows of a round side by side); the aims are judged here:\n\n"
                + headline_text({**confirmed, "quantization": None, "ort": []}))
    return text


def headline_text(h: dict) -> str:
    from benchmarks.report import accuracy_on

    parts = []
    for key, label in (("a", "the teacher ensemble in PyTorch eager"), ("b", "the teacher on its fastest runtime")):
        v = h.get(key)
        if v is None:
            parts.append(f"({key}) no int8 student row on a mobile runtime, or no {label} row.")
            continue
        warm = f", {_x(v['warm_speedup'])} warm" if v["warm_speedup"] else ""
        paired = v.get("paired")
        spread = (f"median over {paired['rounds']} round-robin rounds of the per-round ratio{_interval(paired, _x)}, "
                  f"range {_x(paired['min'])}–{_x(paired['max'])}; pooled p50s {_x(v['pooled_speedup'])}{warm}"
                  ) if paired else f"pooled p50s{warm}"
        parts.append(f"({key}) **`{v['model']}` on {v['runtime']} runs {_x(v['speedup'])} faster than `{v['reference_model']}` "
                     f"on {v['reference_runtime']}** ({spread}; batch {h['batch_size']}, {h['threads']} thread: p50 "
                     f"{v['p50_ms'] * 1e3:.1f} µs against {v['reference_p50_ms'] * 1e3:.1f} µs), "
                     f"{_verdict_text(v, _x(v['aim']))}; "
                     f"accuracy {v['accuracy']:.4f}{accuracy_on(v)} against {v['reference_accuracy']:.4f}.")
    q = h.get("quantization")
    if q:
        parts.append(f"Quantization costs {q['points_lost']:+.2f} points against the fp32 student ({q['fp32_accuracy']:.4f} -> "
                     f"{q['int8_accuracy']:.4f}), which {'meets' if q['meets'] else 'misses'} the aim of at most "
                     f"{q['aim']:g} point.")
    for o in h.get("ort", []):
        if o["batch_size"] == h["batch_size"] and o["threads"] == h["threads"]:
            paired = o.get("paired")
            spread = (f"paired by round{_interval(paired, _r)}, range {_r(paired['min'])}–{_r(paired['max'])}; "
                      f"pooled p50s {_r(o['pooled_ratio'])}" if paired else "pooled p50s")
            words = {"meets": "within", "misses": "beyond", "undecided": "undecided against"}[o["verdict"]]
            parts.append(f"`{o['model']}` runs {_r(o['ratio'])} the time of the `.onnx` it came from on onnxruntime "
                         f"({spread}; {words} the aim of {o['aim']:g}x).")
    return "\n\n".join(parts)


# --- the run ---------------------------------------------------------------------------------------

def run(teacher, student, data_spec: str, out: Path, *, exports: Path, names=tuple(EXPORTS), config=None,
        command: str, overwrite: bool = False, confirm_rounds: int = CONFIRM_ROUNDS,
        confirm_slice: float = CONFIRM_SLICE, echo=print) -> dict:
    from benchmarks.harness import BenchConfig, run_benchmark
    from benchmarks.report import write_report
    from edgekd.data import load_dataset
    from edgekd.validation import check_output_dir

    check_output_dir(out, kind="report", overwrite=overwrite, inputs=[teacher, student, exports])
    data = load_dataset(data_spec)
    made, failed = prepare_exports({"teacher": Path(teacher), "student": Path(student)}, Path(exports), data, names,
                                   echo=echo)
    paths = {"teacher": Path(teacher), "student": Path(student), **made}
    config = config or BenchConfig()
    report = run_benchmark([f"{name}={path}" for name, path in paths.items()], data, config, command=command, echo=echo)
    heads = headlines(report.to_dict())
    confirmation = confirm(heads, paths, data, config, rounds=confirm_rounds, slice_seconds=confirm_slice, echo=echo)
    extra = {"title": f"Latency: teacher ensemble vs student fp32 vs student int8 on `{data.spec}`, desktop and mobile runtimes",
             "headline": heads["a"], "headlines": heads, "exports_not_made": failed}
    if confirmation is not None:
        extra["confirmation"] = confirmation
        extra["confirmed"] = headlines(confirmation, accuracy_from=report.models)
    extra["summary"] = summary_text(extra)
    report = dataclasses.replace(report, extra=extra)
    written = write_report(report, out)
    return {"paths": {k: str(v) for k, v in written.items()}, "headlines": heads, "confirmed": extra.get("confirmed"),
            "summary": extra["summary"], "exports_not_made": failed}


def confirm(heads: dict, paths: dict, data, config, *, rounds: int, slice_seconds: float, echo=print) -> dict | None:
    """The rows behind headlines (a) and (b) timed again on their own: ``rounds`` rounds of
    ``slice_seconds`` per row, round-robin, so that the rows of one round run within a fraction of a second
    of each other (in the full run a round spans every pair, seconds apart). The aims are judged on this
    run's paired ratios and the interval of their median. Returns its report as a dict, or None when
    there is no headline to confirm or ``rounds`` is 0."""
    from benchmarks.harness import run_benchmark

    found = [v for v in (heads["a"], heads["b"]) if v]
    if rounds <= 0 or not found:
        return None
    pairs = {(v["model"], v["runtime"]) for v in found} | {(v["reference_model"], v["reference_runtime"]) for v in found}
    names = sorted({m for m, _ in pairs}, key=lambda m: (m != "teacher", m))   # the eager teacher stays the reference
    focused = dataclasses.replace(config, batch_sizes=(heads["batch_size"],), threads=(heads["threads"],),
                                  runtimes=tuple(sorted({r for _, r in pairs})), rounds=rounds,
                                  seconds=rounds * slice_seconds, warm_seconds=0.0,
                                  # its accuracy is the full run's (headlines(accuracy_from=...)): evaluate only
                                  # what the parity check and the timed batches take
                                  eval_samples=max(config.check_samples, heads["batch_size"]))
    echo(f"confirming the headlines: {', '.join(f'{m} on {r}' for m, r in sorted(pairs))}, {rounds} rounds")
    report = run_benchmark([f"{name}={paths[name]}" for name in names], data, focused,
                           command="benchmarks.latency_report.confirm", echo=echo)
    return report.to_dict()


def rerender_report(json_path: Path) -> int:
    """Headlines recomputed from a report's measurements, then report.md and the plots made again."""
    from benchmarks.report import load_report, write_report

    data = load_report(json_path)
    extra = dict(data.get("extra") or {})
    extra["headlines"] = heads = headlines(data)
    extra["headline"] = heads["a"]
    if extra.get("confirmation"):
        extra["confirmed"] = headlines(extra["confirmation"], accuracy_from=data["models"])
    extra["summary"] = summary_text(extra)
    data["extra"] = extra
    write_report(data, json_path.parent)
    print(extra["summary"].replace("**", ""))
    return 0


def make_smoke_models(folder: Path, echo=print) -> dict:
    """Randomly initialised tiny models on digits (a 2-member cnn ensemble and an mlp). Their accuracy
    means nothing; their export and timing paths are real."""
    from edgekd.data import load_dataset
    from edgekd.teacher_training import save_untrained

    data = load_dataset("digits")
    echo("smoke: building tiny untrained models on digits")
    return {"teacher": save_untrained(folder / "teacher", "cnn:width=8,fc=32", data, members=2),
            "student": save_untrained(folder / "student", "mlp:hidden=32", data)}


SMOKE_CONFIG = dict(batch_sizes=(1, 8), threads=(1,), seconds=0.1, rounds=2, min_runs=4, warmup_seconds=0.02,
                    floor_seconds=0.03, probe_seconds=0.05, check_samples=64, warm_seconds=0.05,
                    runtimes=("pytorch", "onnxruntime"))
SMOKE_CONFIRM = (6, 0.02)   # rounds, seconds per slice


def main(argv=None) -> int:
    from benchmarks.harness import BenchConfig, parse_int_list
    from edgekd.errors import EdgekdError

    parser = argparse.ArgumentParser(prog="python -m benchmarks.latency_report", description=__doc__.split("\n\n")[0])
    parser.add_argument("--teacher", help="Teacher ensemble artifact folder (the reference).")
    parser.add_argument("--student", help="Student artifact folder.")
    parser.add_argument("--exports", help="Folder for the exported files (reused when they match).")
    parser.add_argument("--data", default="fashion-mnist", help="Data spec for accuracy and verification.")
    parser.add_argument("--out", help="Result folder, e.g. benchmarks/results/latency_fmnist (required unless --render).")
    parser.add_argument("--batch-sizes", default="1,8")
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--runtimes", default="all")
    parser.add_argument("--seconds", type=float, default=1.2, help="Timed seconds per measurement (round-robin).")
    parser.add_argument("--rounds", type=int, default=12, help="Round-robin rounds the seconds are split into; the "
                        "headline ratios are paired by round.")
    parser.add_argument("--warm-seconds", type=float, default=0.3, help="Seconds each pair is also timed alone, warm.")
    parser.add_argument("--confirm-rounds", type=int, default=CONFIRM_ROUNDS, help="Rounds in which the headline rows "
                        "are timed again on their own (0: none); the aims are judged on them.")
    parser.add_argument("--confirm-slice", type=float, default=CONFIRM_SLICE, help="Seconds per row and round there.")
    parser.add_argument("--overwrite", action="store_true")
    parser.add_argument("--device", default="cpu", choices=("auto", "cpu", "cuda"), help="Where the PyTorch rows run.")
    parser.add_argument("--smoke", action="store_true", help="Tiny digits models made on the fly; runs in seconds.")
    parser.add_argument("--render", metavar="REPORT_JSON", help="Only recompute the headlines and render the report "
                        "again from this report.json (no measuring).")
    args = parser.parse_args(argv)
    if args.render:
        return rerender_report(Path(args.render))
    if not args.out:
        parser.error("--out is required (or pass --render)")
    if args.confirm_rounds < 0 or args.confirm_slice <= 0:
        parser.error(f"--confirm-rounds must be >= 0 and --confirm-slice > 0; got {args.confirm_rounds} and "
                     f"{args.confirm_slice}")
    command = "python -m benchmarks.latency_report " + " ".join(shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))
    echo = lambda m: print(m, file=sys.stderr)  # noqa: E731
    try:
        if args.smoke:
            config = BenchConfig(**SMOKE_CONFIG, device=args.device)
            with tempfile.TemporaryDirectory(prefix="edgekd-latency-smoke-") as tmp:
                models = make_smoke_models(Path(tmp), echo=echo)
                result = run(models["teacher"], models["student"], "digits", Path(args.out), exports=Path(tmp) / "export",
                             names=SMOKE_EXPORTS, config=config, command=command, overwrite=args.overwrite,
                             confirm_rounds=SMOKE_CONFIRM[0], confirm_slice=SMOKE_CONFIRM[1], echo=echo)
        else:
            missing = [f"--{n}" for n in ("teacher", "student", "exports") if not getattr(args, n)]
            if missing:
                parser.error(f"{', '.join(missing)} required (or pass --smoke)")
            config = BenchConfig(batch_sizes=parse_int_list("batch_sizes", args.batch_sizes),
                                 threads=parse_int_list("threads", args.threads, allow_all=True),
                                 runtimes=None if args.runtimes == "all" else tuple(args.runtimes.split(",")),
                                 seconds=args.seconds, rounds=args.rounds, warm_seconds=args.warm_seconds,
                                 device=args.device)
            result = run(args.teacher, args.student, args.data, Path(args.out), exports=Path(args.exports), config=config,
                         command=command, overwrite=args.overwrite, confirm_rounds=args.confirm_rounds,
                         confirm_slice=args.confirm_slice, echo=echo)
    except EdgekdError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(result["summary"].replace("**", ""))
    for name, reason in result["exports_not_made"].items():
        print(f"not exported: {name}: {reason}")
    print(f"report: {result['paths']['report_md']}")
    return 0


if __name__ == "__main__":
    run_script(main)
