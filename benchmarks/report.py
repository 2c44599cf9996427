"""``report.json`` is the data; ``report.md``, ``latency.png`` and ``pareto.png`` are rendered from it
(and only from it, so ``edgekd bench --from report.json`` re-renders the same Markdown)."""

from __future__ import annotations

import json
import shutil
import statistics
from pathlib import Path

from edgekd.errors import EdgekdError

FILES = {"report_json": "report.json", "report_md": "report.md", "latency_png": "latency.png", "pareto_png": "pareto.png"}


def write_report(report, out_dir: str | Path) -> dict[str, Path]:
    """Write ``report.json`` (from a ``BenchReport`` or its dict) and render the rest from that file."""
    from edgekd.artifacts import write_json_atomic

    from edgekd.outputs import check_output

    out_dir = Path(out_dir)
    check_output(out_dir, kind="report", overwrite=True)   # an earlier report is replaced, a user's folder never
    data = report.to_dict() if hasattr(report, "to_dict") else report

    def write(folder: Path) -> None:
        write_json_atomic(folder / FILES["report_json"], data)
        render_files(load_report(folder / FILES["report_json"]), folder)

    return _published(write, out_dir)


def _published(write, out_dir: Path) -> dict[str, Path]:
    """``write(folder)`` into a new temporary folder beside ``out_dir``, then that folder renamed in as
    ``out_dir`` (``swap_in_folder``, as an artifact is): a report stopped while it is written is the old one
    whole or the new one whole, never a new report.json beside old plots."""
    from edgekd.artifacts import swap_in_folder
    from edgekd.outputs import scratch_folder

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with scratch_folder(out_dir) as tmp:
        write(tmp)
        swap_in_folder(tmp, out_dir)
    return {key: out_dir / name for key, name in FILES.items()}


def rerender(json_path: str | Path, out_dir: str | Path | None = None, *, overwrite: bool = False) -> dict[str, Path]:
    """Render ``report.md`` and the plots again from a ``report.json`` (into its folder by default).

    In the report's own folder the rendered files are replaced (they are made from that JSON); another
    folder that already holds files needs ``overwrite`` and must be an edgekd report folder.
    """
    from edgekd.outputs import check_output

    json_path = Path(json_path)
    data = load_report(json_path)
    in_place = out_dir is None or Path(out_dir).resolve() == json_path.parent.resolve()
    out_dir = json_path.parent if out_dir is None else Path(out_dir)
    if in_place:
        if json_path.name != FILES["report_json"]:
            raise EdgekdError(f"'{json_path}' is not named report.json, so its folder is not a report folder edgekd "
                              f"wrote; pass --out NEW_FOLDER to render it there.")
        check_output(out_dir, kind="report", overwrite=True)
    else:
        check_output(out_dir, kind="report", overwrite=overwrite, inputs=[json_path])
    try:   # render once before anything is written: a report edgekd cannot render leaves no partial output
        render_markdown(data)
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
        raise EdgekdError(f"'{json_path}' says it is an edgekd benchmark report but cannot be rendered "
                          f"({exc.__class__.__name__}: {str(exc)[:80]}); pass a report.json written by 'edgekd bench', "
                          f"unedited.") from None
    def write(folder: Path) -> None:
        shutil.copyfile(json_path, folder / FILES["report_json"])
        render_files(data, folder)

    return _published(write, out_dir)


def load_report(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise EdgekdError(f"Benchmark report '{path}' not found; pass the report.json written by 'edgekd bench'.")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise EdgekdError(f"'{path}' is not valid JSON ({exc.__class__.__name__}); pass the report.json written by 'edgekd bench'.") from None
    if not isinstance(data, dict) or data.get("format") != "edgekd.bench":
        raise EdgekdError(f"'{path}' is not an edgekd benchmark report (no format 'edgekd.bench'); "
                          f"pass the report.json written by 'edgekd bench'.")
    return data


def render_files(data: dict, out_dir: Path) -> dict[str, Path]:
    paths = {key: out_dir / name for key, name in FILES.items()}
    paths["report_md"].write_text(render_markdown(data))
    plot_latency(data, paths["latency_png"])
    plot_pareto(data, paths["pareto_png"])
    return paths


# --- numbers ------------------------------------------------------------------------------------------

def fmt_ms(value) -> str:
    if value is None:
        return "-"
    for bound, digits in ((100, 0), (10, 1), (1, 2), (0.1, 3), (0.001, 4)):
        if value >= bound:
            return f"{value:.{digits}f}"
    return f"{value:.1e}" if value else "0"


def fmt_x(value) -> str:
    if value is None:
        return "-"
    return f"{value:.0f}x" if value >= 100 else f"{value:.1f}x" if value >= 10 else f"{value:.2f}x"


def fmt_int(value) -> str:
    return f"{value:,}" if value is not None else "-"


def fmt_bytes(value) -> str:
    if value is None:
        return "-"
    for unit, scale in (("MB", 1e6), ("kB", 1e3)):
        if value >= scale:
            return f"{value / scale:.1f} {unit}"
    return f"{value} B"


def fmt_frac(value, digits=4) -> str:
    return f"{value:.{digits}f}" if value is not None else "-"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return lines


# --- selections -------------------------------------------------------------------------------------

def _ok(data: dict) -> list[dict]:
    return [r for r in data["rows"] if r["status"] == "ok"]


def _order(data: dict):
    models = [m["name"] for m in data["models"]]
    runtimes = data["config"]["runtimes"]

    def key(row):
        return (row["threads"] or 0, row["batch_size"] or 0, models.index(row["model"]) if row["model"] in models else 99,
                runtimes.index(row["runtime"]) if row["runtime"] in runtimes else -1)
    return key


def headline_rows(data: dict) -> list[dict]:
    """Per model: its fastest runtime at the smallest batch size and fewest threads (normally batch 1, 1 thread)."""
    batch, threads = min(data["config"]["batch_sizes"]), min(data["config"]["threads"])
    models = {m["name"]: m for m in data["models"]}
    reference = models.get(data["reference"]["model"], {})
    out = []
    for name, model in models.items():
        rows = [r for r in _ok(data) if r["model"] == name and r["batch_size"] == batch and r["threads"] == threads]
        if not rows:
            continue
        best = min(rows, key=lambda r: r["p50_ms"])
        acc, on = accuracy_of(model, best["runtime"])
        ref_acc = reference.get("accuracy")
        out.append({"model": name, "runtime": best["runtime"], "batch_size": batch, "threads": threads,
                    "p50_ms": best["p50_ms"], "p99_ms": best["p99_ms"], "speedup": best["speedup"],
                    "accuracy": acc, "accuracy_runtime": on,
                    "accuracy_delta": acc - ref_acc if acc is not None and ref_acc is not None else None})
    return out


def _evaluated_with(model: dict) -> str:
    first = model.get("evaluated_with")
    if first is None:
        return f"error: {model.get('error')}"
    others = [f"{name} {fmt_frac(acc)}" for name, acc in (model.get("accuracy_by_runtime") or {}).items() if name != first]
    return first + (f" ({', '.join(others)})" if others else "")


def accuracy_of(model: dict, runtime: str) -> tuple:
    """(accuracy, runtime that measured it): the runtime's own where it measured one, else the file's
    evaluating runtime's (results written before each runtime measured its own, or one that failed to)."""
    own = (model.get("accuracy_by_runtime") or {}).get(runtime)
    if own is not None:
        return own, runtime
    return model.get("accuracy"), model.get("evaluated_with")


def spread_note(data: dict) -> str | None:
    """Median p99/p50 at each thread count: multi-thread tails blow up on a busy machine."""
    threads = data["config"]["threads"]
    if len(threads) < 2:
        return None
    medians = {}
    for t in threads:
        ratios = [r["p99_ms"] / r["p50_ms"] for r in _ok(data) if r["threads"] == t and r["p50_ms"] > 0]
        if ratios:
            medians[t] = statistics.median(ratios)
    if len(medians) < 2:
        return None
    parts = ", ".join(f"{t} thread{'s' if t > 1 else ''}: {v:.2f}" for t, v in medians.items())
    return (f"Spread (median p99/p50 over the rows): {parts}. Multi-thread tails grow when other work shares "
            f"the cores, so the {min(threads)}-thread figures are the headline.")


# --- Markdown -----------------------------------------------------------------------------------------

def render_markdown(data: dict) -> str:
    m, cfg = data["machine"], data["config"]
    ref = data["reference"]
    versions = ", ".join(f"{k} {v}" for k, v in data["versions"].items())
    extra = data.get("extra") or {}
    lines = [f"# {extra.get('title') or 'edgekd benchmark on `' + data['data']['spec'] + '`'}", "",
             f"- command: `{data['command']}`",
             f"- date: {data['created']} (benchmark took {data['wall_seconds']:.1f} s)",
             f"- machine: {m['cpu']}, {m['usable_cores']} usable of {m['logical_cores']} logical cores, "
             f"{m['memory_gib']} GiB, {', '.join(m['simd']) or 'no listed SIMD'}; {m['os']}; "
             f"load average at start {m['load_average_at_start']}",
             f"- versions: {versions}",
             f"- reference model: `{ref['model']}` on {ref['runtime'] or '-'}; speed-ups are reference p50 / row p50 "
             f"at the same batch size and threads", ""]
    if extra.get("summary"):
        lines += ["## Headline figure", "", extra["summary"], ""]
    lines += _headline_section(data)
    lines += ["", "## Models", "",
              *_table(["model", "format", "description", "weights", "parameters", "MACs / sample", "accuracy", "NLL", "ECE",
                       f"agreement with `{ref['model']}`", "evaluated with"],
                      [[f"`{x['name']}`", x.get("format", "-"), x.get("description", "-"), fmt_bytes(x.get("file_bytes")),
                        fmt_int(x.get("parameters")), fmt_int(x.get("macs")), fmt_frac(x.get("accuracy")),
                        fmt_frac(x.get("nll")), fmt_frac(x.get("ece")), fmt_frac(x.get("agreement")),
                        _evaluated_with(x)] for x in data["models"]]),
              "", f"Accuracy, NLL and ECE on the {cfg['split']} split ({data['data'].get('n_' + cfg['split'], '?')} samples); "
                  "other runtimes that read a file give their own accuracy in brackets."]
    for t in cfg["threads"]:
        lines += _latency_section(data, t)
    lines += _floor_section(data)
    lines += _parity_section(data)
    lines += _error_section(data)
    lines += ["", "## Plots", "", "![latency by batch size](latency.png)", "",
              "![accuracy against batch-1 latency](pareto.png)", ""]
    lines += _method_section(data)
    return "\n".join(lines) + "\n"


def accuracy_on(h: dict) -> str:
    """' (on onnxruntime)' when a headline's accuracy was measured with another runtime than its latency."""
    on = h.get("accuracy_runtime")
    return f" (on {on})" if on and h["accuracy"] is not None and on != h["runtime"] else ""


def _headline_section(data: dict) -> list[str]:
    head = headline_rows(data)
    if not head:
        return ["## Headline", "", "No successful measurement."]
    b, t = head[0]["batch_size"], head[0]["threads"]
    lines = [f"## Headline: batch {b}, {t} thread{'s' if t > 1 else ''}, each model on its fastest runtime", "",
             *_table(["model", "runtime", "p50 ms", "p99 ms", "speed-up", "accuracy", "accuracy vs reference"],
                     [[f"`{h['model']}`", h["runtime"], fmt_ms(h["p50_ms"]), fmt_ms(h["p99_ms"]), fmt_x(h["speedup"]),
                       fmt_frac(h["accuracy"]) + accuracy_on(h), _signed(h["accuracy_delta"])] for h in head])]
    note = spread_note(data)
    return lines + (["", note] if note else [])


def _signed(value) -> str:
    return f"{100 * value:+.2f} pt" if value is not None else "-"


def _latency_section(data: dict, threads: int) -> list[str]:
    rows = sorted([r for r in _ok(data) if r["threads"] == threads], key=_order(data))
    gflops = data["peak_gflops"].get(str(threads))
    gops = (data.get("peak_int8_gops") or {}).get(str(threads))
    plural = "s" if threads > 1 else ""
    title = f"## Latency at {threads} thread{plural}"
    peaks = f"Peak GEMM measured at {threads} thread{plural}: fp32 {gflops:.1f} GFLOP/s" if gflops else ""
    if gflops and gops:
        peaks += f", int8 {gops:.1f} GOP/s (each row's compute floor divides by the peak of its precision)."
    lines = ["", title, "", peaks, ""]
    if not rows:
        return lines + ["No successful measurement."]
    warm = any(r.get("warm_p50_ms") is not None for r in rows)
    lines += _table(["model", "runtime", "batch", "p50 ms", *(["warm p50 ms"] if warm else []), "p90 ms", "p99 ms",
                     "mean ms", "samples/s", "speed-up", "compute floor ms", "runtime floor ms", "p50 / floor",
                     "p99 / p50", "runs"],
                    [[f"`{r['model']}`", r["runtime"], r["batch_size"], fmt_ms(r["p50_ms"]),
                      *([fmt_ms(r.get("warm_p50_ms"))] if warm else []), fmt_ms(r["p90_ms"]),
                      fmt_ms(r["p99_ms"]), fmt_ms(r["mean_ms"]), f"{r['samples_per_s']:,.0f}", fmt_x(r["speedup"]),
                      fmt_ms(r["compute_floor_ms"]) + (" (int8)" if r.get("compute_peak") == "int8" else ""),
                      fmt_ms(r["runtime_floor_ms"]), fmt_x(r["latency_over_floor"]), f"{r['p99_ms'] / r['p50_ms']:.2f}",
                      r["runs"]] for r in rows])
    return lines


def _floor_section(data: dict) -> list[str]:
    floors = [f for f in data["floors"] if f["status"] == "ok"]
    lines = ["", "## Runtime per-call floor (identity graph, timed like the models)", ""]
    if floors:
        lines += _table(["runtime", "batch", "threads", "p50 µs", "p99 µs", "runs"],
                        [[f["runtime"], f["batch_size"], f["threads"], f"{1e3 * f['p50_ms']:.1f}",
                          f"{1e3 * f['p99_ms']:.1f}", f["runs"]] for f in floors])
    failed = [f for f in data["floors"] if f["status"] != "ok"]
    lines += [f"- {f['runtime']} ({f['threads']} threads, batch {f['batch_size'] or '-'}): {f['error']}" for f in failed]
    return lines


def _parity_section(data: dict) -> list[str]:
    if not data["parity"]:
        return []
    lines = ["", "## Parity across runtimes (logits on the first test samples)", ""]
    return lines + _table(["model", "runtime", "compared with", "samples", "max abs logit diff", "top-1 agreement"],
                          [[f"`{p['model']}`", p["runtime"], p["reference_runtime"], p["samples"],
                            f"{p['max_abs_diff']:.2e}" if p["max_abs_diff"] is not None else f"error: {p['error']}",
                            fmt_frac(p["agreement"])] for p in data["parity"]])


def _error_section(data: dict) -> list[str]:
    rows = [r for r in data["rows"] if r["status"] != "ok"]
    if not rows:
        return []
    lines = ["", "## Errors and skipped measurements", ""]
    return lines + _table(["model", "runtime", "batch", "threads", "status", "reason"],
                          [[f"`{r['model']}`", r["runtime"] or "-", r["batch_size"] or "all", r["threads"] or "all",
                            r["status"], r["error"].replace("|", "/")] for r in rows])


def _method_section(data: dict) -> list[str]:
    cfg = data["config"]
    lines = ["## Method", "",
             f"- Every model is evaluated once on the {cfg['split']} split with the first selected runtime that reads it.",
             f"- For each thread count ({', '.join(map(str, cfg['threads']))}) and batch size "
             f"({', '.join(map(str, cfg['batch_sizes']))}), every model/runtime pair is warmed up for "
             f"{cfg['warmup_seconds']} s, then timed for {cfg['seconds']} s in {cfg['rounds']} round-robin slices "
             f"(the first pair rotates each round), at least {cfg['min_runs']} calls; the garbage collector is paused "
             f"inside a slice. One call is one batch; throughput = batch / mean latency.",
             "- Compute floor = MACs x batch / measured peak GEMM rate at that thread count, fp32 (torch.mm) for fp32 "
             "models and int8 (onnxruntime MatMulInteger) for int8 ones (1 MAC = 2 ops; the higher of a probe before "
             "and one after the timings). Runtime floor = p50 of an "
             f"identity graph on that runtime (timed {cfg['floor_seconds']} s alongside the models). p50 / floor uses "
             "their sum.",
             *([f"- Warm p50: each pair timed alone for {cfg['warm_seconds']} s right after its own warm-up, after the "
                "round-robin slices (which start with caches another model has just used)."]
               if cfg.get("warm_seconds") else []),
             "- Runtime settings:"]
    lines += [f"  - {r['name']} {r['version'] or ''} on {r.get('device', 'cpu')}: {r['settings']}"
              + ("" if r["available"] else f" (unavailable: {r['reason']})")
              for r in data["runtimes"]]
    conversions = [(r["name"], Path(path).name, c) for r in data["runtimes"] for path, c in (r.get("conversions") or {}).items()]
    if conversions:   # ncnn and MNN run their own format, converted from the .onnx once and cached by its hash
        lines.append("- Conversions:")
        lines += [f"  - {name}: `{file}` by {c.get('tool', '?')} {c.get('version') or ''}, {c.get('seconds', 0):.2f} s"
                  + (" (from the cache this run)" if c.get("cached") else "") for name, file, c in conversions]
    return lines


# --- plots --------------------------------------------------------------------------------------------

def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> None:
    fig.savefig(path, dpi=110, bbox_inches="tight", metadata={"Software": None})
    _pyplot().close(fig)


def plot_latency(data: dict, path: Path) -> None:
    """p50 latency (line) and p50-p99 band by batch size, one panel per thread count."""
    plt = _pyplot()
    threads = data["config"]["threads"]
    fig, axes = plt.subplots(1, len(threads), figsize=(5.5 * len(threads), 4.2), squeeze=False, sharey=True)
    for ax, t in zip(axes[0], threads):
        pairs = dict.fromkeys((r["model"], r["runtime"]) for r in sorted(_ok(data), key=_order(data)) if r["threads"] == t)
        for model, runtime in pairs:
            rows = sorted((r for r in _ok(data) if r["threads"] == t and r["model"] == model and r["runtime"] == runtime),
                          key=lambda r: r["batch_size"])
            xs = [r["batch_size"] for r in rows]
            line, = ax.plot(xs, [r["p50_ms"] for r in rows], marker="o", label=f"{model} ({runtime})")
            ax.fill_between(xs, [r["p50_ms"] for r in rows], [r["p99_ms"] for r in rows], color=line.get_color(), alpha=0.07)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xticks(data["config"]["batch_sizes"], [str(b) for b in data["config"]["batch_sizes"]])
        ax.set_xlabel("batch size")
        ax.set_title(f"{t} thread{'s' if t > 1 else ''}")
        ax.grid(True, which="both", alpha=0.3)
        _plain_log_ticks(ax.yaxis)
    axes[0][0].set_ylabel("latency per call, ms (p50; band to p99)")
    handles, labels = axes[0][0].get_legend_handles_labels()
    if handles:   # beside the panels, where it covers no axis label
        fig.legend(handles, labels, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8, frameon=False)
    _save(fig, path)


def _plain_log_ticks(axis) -> None:
    """Plain numbers at the decades only: log axes otherwise label minor ticks until they collide."""
    from matplotlib.ticker import FuncFormatter, NullFormatter

    axis.set_major_formatter(FuncFormatter(lambda value, _pos: f"{value:g}"))
    axis.set_minor_formatter(NullFormatter())


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats on both (lower latency, higher accuracy), by latency."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1]))
    front, best = [], float("-inf")
    for i in order:
        if points[i][1] > best:
            front.append(i)
            best = points[i][1]
    return front


def plot_pareto(data: dict, path: Path) -> None:
    """Accuracy against batch-1 (smallest batch), 1-thread (fewest threads) p50 latency, Pareto front marked."""
    plt = _pyplot()
    batch, threads = min(data["config"]["batch_sizes"]), min(data["config"]["threads"])
    models = {m["name"]: m for m in data["models"]}
    # each row at its own runtime's accuracy, as the headline reads it (an int8 kernel may round otherwise)
    accuracy = {(r["model"], r["runtime"]): accuracy_of(models[r["model"]], r["runtime"])[0]
                for r in _ok(data) if r["model"] in models}
    rows = [r for r in sorted(_ok(data), key=_order(data))
            if r["batch_size"] == batch and r["threads"] == threads and accuracy.get((r["model"], r["runtime"])) is not None]
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    points = [(r["p50_ms"], accuracy[(r["model"], r["runtime"])]) for r in rows]
    for r, (x, y) in zip(rows, points):
        ax.scatter([x], [y], s=30, label=f"{r['model']} ({r['runtime']})")
    front = pareto_front(points)
    if front:
        ax.step([points[i][0] for i in front], [points[i][1] for i in front], where="post", color="black",
                linewidth=1, label="Pareto front")
        ax.scatter([points[i][0] for i in front], [points[i][1] for i in front], s=90, facecolors="none",
                   edgecolors="black")
        for i in front:
            ax.annotate(rows[i]["model"], points[i], fontsize=7, xytext=(4, 4), textcoords="offset points")
    if rows:
        ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=7, frameon=False)
    ax.set_xscale("log")
    _plain_log_ticks(ax.xaxis)
    ax.set_xlabel(f"p50 latency at batch {batch}, {threads} thread{'s' if threads > 1 else ''} (ms)")
    ax.set_ylabel(f"{data['config']['split']} accuracy")
    ax.set_title(f"accuracy vs latency on {data['data']['spec']}")
    ax.grid(True, which="both", alpha=0.3)
    _save(fig, path)
