"""``edgekd bench``: latency, throughput and accuracy of models on the CPU and mobile runtimes, as a report."""

from __future__ import annotations

import shlex

from pathlib import Path

import click

from benchmarks.config import BenchConfig
from edgekd.clicommon import common_options, data_of_models, data_options, data_spec, echo_json, load_data
from edgekd.config import defaults

BENCH = defaults(BenchConfig)


def _command_line(params: dict) -> str:
    parts = ["edgekd", "bench"]
    for model in params["model"]:
        parts += ["--model", model]
    parts += ["--data", data_spec(params), "--val-fraction", f"{params['val_fraction']:g}"]   # image flags in the spec
    if params["train_limit"]:
        parts += ["--train-limit", str(params["train_limit"])]
    if params.get("device") not in (None, "auto"):
        parts += ["--device", params["device"]]
    parts += ["--out", params["out"], "--batch-sizes", params["batch_sizes"], "--threads", params["threads"],
              "--runtimes", params["runtimes"], "--seconds", f"{params['seconds']:g}", "--rounds", str(params["rounds"])]
    return " ".join(shlex.quote(p) for p in parts)


@click.command("bench")
@click.option("--model", multiple=True, help="Model to time: artifact folder, .onnx, .ort or .pte (repeatable; NAME=PATH names it). "
                                             "The first is the reference of the speed-ups and agreement.")
@data_options
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="Report folder: report.json, report.md, latency.png, pareto.png.")
@click.option("--batch-sizes", default=",".join(map(str, BENCH["batch_sizes"])), show_default=True, help="Comma-separated batch sizes.")
@click.option("--threads", default="1,all" if BENCH["threads"] is None else ",".join(map(str, BENCH["threads"])), show_default=True, help="Comma-separated thread counts ('all' = every usable core).")
@click.option("--runtimes", default="all" if BENCH["runtimes"] is None else ",".join(BENCH["runtimes"]), show_default=True,
              help="Comma-separated runtimes: pytorch, onnxruntime, openvino, tract, opencv, executorch, ncnn, mnn (or all).")
@click.option("--seconds", type=click.FloatRange(min=0, min_open=True), default=BENCH["seconds"], show_default=True,
              help="Timed seconds per model x runtime x batch size x thread count (after warm-up).")
@click.option("--rounds", type=click.IntRange(min=1), default=BENCH["rounds"], show_default=True,
              help="Round-robin slices each measurement is split into (interleaves the models).")
@click.option("--from", "from_json", type=click.Path(dir_okay=False), default=None,
              help="Re-render report.md and the plots from this report.json (no measuring); --out defaults to its folder.")
@click.option("--overwrite", is_flag=True, help="Write into a non-empty --out.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary (files, headline, errors).")
@common_options
@click.pass_context
def bench_cmd(ctx, **params):
    """Time models on the CPU and mobile runtimes and write a Markdown + JSON + PNG report.

    \b
    edgekd bench --model runs/teacher --model runs/student --model runs/export/student.onnx \\
        --data fashion-mnist --out reports/fmnist
    edgekd bench --from reports/fmnist/report.json      # re-render from the data
    """
    from edgekd.clicommon import refuse_unused, register_stage_kinds
    from edgekd.errors import ConfigError

    register_stage_kinds()
    measuring = ("batch_sizes", "threads", "runtimes", "seconds", "rounds", "data", "image_size", "channels",
                 "test_fraction", "train_limit", "val_fraction", "device")
    refuse_unused([*((name, not params["from_json"], "when measuring (--from re-renders a report)")
                     for name in measuring if name in params),
                   ("seed", False, "to commands that draw at random (bench measures every sample in order)")])

    if params["from_json"]:
        if params["model"]:
            raise ConfigError("--from re-renders an existing report; do not pass --model with it.")
        from benchmarks.report import load_report, rerender
        from edgekd.outputs import output_lock

        # in place, the lock sits beside the report's folder, not inside it among the report's files
        with output_lock(params["out"] or Path(params["from_json"]).parent):
            paths = rerender(params["from_json"], params["out"], overwrite=params["overwrite"])
        _print(load_report(paths["report_json"]), paths, params["as_json"])
        return
    if not params["model"]:
        raise ConfigError("Pass at least one --model (an artifact folder, an .onnx or an .ort file), or --from report.json.")
    if not params["out"]:
        raise ConfigError("Pass --out DIR, the folder the report is written to.")
    from benchmarks.harness import BenchConfig, check_models_fit, parse_int_list, readable_models, run_benchmark
    from benchmarks.modelinfo import model_format, parse_model_args
    from benchmarks.report import write_report
    from benchmarks.runtimes import parse_runtimes
    from edgekd.outputs import data_paths, output_lock
    from edgekd.validation import check_output_dir

    config = BenchConfig(batch_sizes=parse_int_list("batch_sizes", params["batch_sizes"]),
                         threads=parse_int_list("threads", params["threads"], allow_all=True),
                         runtimes=parse_runtimes(params["runtimes"]), seconds=params["seconds"], rounds=params["rounds"],
                         device=params["device"])
    models = [path for _, path in parse_model_args(params["model"])]
    for path in models:
        model_format(path)
    infos = readable_models(params["model"])   # a damaged model is refused before any output or timing
    data_of_models(ctx, params, models)
    check_output_dir(params["out"], kind="report", overwrite=params["overwrite"], inputs=models, data=data_paths(params["data"]))
    with output_lock(params["out"]):
        data = load_data(params)
        check_models_fit(infos, data)
        echo = None if params["quiet"] else (lambda msg: click.echo(msg, err=True))
        report = run_benchmark(list(params["model"]), data, config, command=_command_line(params), echo=echo)
        paths = write_report(report, params["out"])
    _print(report.to_dict(), paths, params["as_json"])
    if not any(row["status"] == "ok" for row in report.rows):   # a report of reasons only: not a success
        from edgekd.errors import EdgekdError

        reasons = sorted({row["error"] for row in report.rows if row.get("error")})
        raise EdgekdError(f"Nothing could be measured ({'; '.join(reasons[:2]) or 'no runtime read any model'}); the "
                          f"reasons are in {paths['report_md']}. Pass models and --runtimes that can run them.")


def _print(data: dict, paths: dict, as_json: bool) -> None:
    from benchmarks.report import accuracy_on, fmt_ms, fmt_x, headline_rows

    head = headline_rows(data)
    errors = [r for r in data["rows"] if r["status"] != "ok"]
    if as_json:
        echo_json({"files": {k: str(v) for k, v in paths.items()}, "headline": head,
                   "errors": [{k: r[k] for k in ("model", "runtime", "batch_size", "threads", "status", "error")} for r in errors],
                   "wall_seconds": data["wall_seconds"]})
        return
    if head:
        click.echo(f"batch {head[0]['batch_size']}, {head[0]['threads']} thread(s), fastest runtime per model:")
        for h in head:
            acc = (f"{h['accuracy']:.4f}" if h["accuracy"] is not None else "-") + accuracy_on(h)
            click.echo(f"  {h['model']:<28} {h['runtime']:<12} p50 {fmt_ms(h['p50_ms']):>8} ms  "
                       f"speed-up {fmt_x(h['speedup']):>7}  accuracy {acc}")
    if errors:
        click.echo(f"{len(errors)} error/skipped row(s); see the report.")
    click.echo(f"report: {paths['report_md']}")
