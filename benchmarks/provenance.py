"""The header every committed benchmark result starts with: command line, machine, versions, date."""

from __future__ import annotations

import shlex
import sys
import time


def provenance(started: float) -> dict:
    """The record of a run; its ``revision`` is the code as the run began (this module is imported then):
    in a tree others commit to during an hour-long run, the revision at the end may name code that never ran,
    so that one is recorded apart (``revision_at_end``) when it differs."""
    from benchmarks.timing import machine_facts
    from edgekd.artifacts import library_versions, now_iso

    record = {"command": "python -m " + sys.modules["__main__"].__spec__.name + " " + shlex.join(sys.argv[1:])
              if getattr(sys.modules.get("__main__"), "__spec__", None) else shlex.join(sys.argv),
              "machine": machine_facts(), "versions": library_versions(), "date": now_iso(),
              "run_seconds": round(time.perf_counter() - started, 1), "revision": REVISION_AT_START}
    at_end = code_revision()
    if at_end != REVISION_AT_START:
        record["revision_at_end"] = at_end
    return record


def code_revision() -> str | None:
    """The git commit of the edgekd tree that ran (``+dirty`` with uncommitted changes), None outside git."""
    import subprocess
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=root, capture_output=True, text=True,
                              timeout=10)
        # a new, uncommitted module of the code counts too (untracked files elsewhere do not)
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "edgekd", "export", "specialists", "benchmarks/*.py"],
                               cwd=root, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    if head.returncode != 0:
        return None
    return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


REVISION_AT_START = code_revision()


def header_markdown(title: str, prov: dict) -> list[str]:
    m = prov["machine"]
    versions = ", ".join(f"{k} {v}" for k, v in prov["versions"].items())
    return [f"# {title}", "", f"- command: `{prov['command']}`",
            f"- machine: {m['cpu']}, {m['usable_cores']} usable cores"
            + _numerics_note(m)
            + f", {m['memory_gib']} GiB, {m['os']}",
            f"- versions: {versions}", f"- date: {prov['date']}; run time {prov['run_seconds'] / 60:.1f} min"
            + (f" ({prov['run_note']})" if prov.get("run_note") else "")
            + (f"; edgekd revision {prov['revision']}" if prov.get("revision") else "")
            + (f" (the tree was at {prov['revision_at_end']} when it ended)" if prov.get("revision_at_end") else ""), ""]


def _numerics_note(machine: dict) -> str:
    """E.g. ``(torch 2 threads, AVX512 kernels)``: a same-seed rerun trains the same weights only with both
    the same (``edgekd.artifacts.numerics``), so a reader must see them; older results lack them and show none."""
    parts = []
    if machine.get("torch_threads"):
        n = machine["torch_threads"]
        parts.append(f"torch {n} thread{'s' * (n != 1)}")
    if machine.get("cpu_capability"):
        parts.append(f"{machine['cpu_capability']} kernels")
    return f" ({', '.join(parts)})" if parts else ""


def mean_std(values) -> tuple[float, float]:
    import statistics

    values = list(values)
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def interval95(values) -> tuple[float, float]:
    """Student-t 95% interval of the mean over seeds: mean ± t(0.975, n−1) · s / √n (nan for one value)."""
    from scipy import stats

    values = list(values)
    mean, std = mean_std(values)
    half = stats.t.ppf(0.975, len(values) - 1) * std / len(values) ** 0.5 if len(values) > 1 else float("nan")
    return mean - half, mean + half


def pm(values, scale: float = 100.0, digits: int = 2) -> str:
    """Mean ± std; one value has no spread, so it is shown alone (not "± 0.00")."""
    values = list(values)
    mean, std = mean_std(values)
    return f"{scale * mean:.{digits}f}" + (f" ± {scale * std:.{digits}f}" if len(values) > 1 else "")
