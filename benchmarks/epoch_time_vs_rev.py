"""Is this tree's training loop slower on the CPU than an earlier revision's? Side by side in one run.

    python -m benchmarks.epoch_time_vs_rev --against 05dcadb --out benchmarks/results/epoch_time_vs_05dcadb

Both revisions (``--this``, default HEAD, and ``--against``) are checked out into temporary git
worktrees, so edits in the working tree cannot leak into a measurement; each measurement is a fresh
process (``PYTHONPATH`` pointing at one tree or the other) that loads the data and times one epoch of
edgekd's own ``fit``: the ``mlp`` student on hard labels, and distilled from cached teacher logits on
jittered views (the spine's recipe). Runs alternate between the trees so drift hits both alike; the
result is the ratio of medians, this tree over the earlier one.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from statistics import median as _median   # of an even count, the mean of the middle two

from benchmarks.provenance import header_markdown, provenance
from benchmarks.scenario_common import run_script, write_result

ROOT = Path(__file__).resolve().parent.parent

# One epoch in a fresh process; written against the API both trees share (fit, supervised_batches)
# and the distillation batch maker under its old or new name.
PROBE = r"""
import json, sys, time, torch
from edgekd.data import load_dataset
from edgekd.models import create_model
from edgekd.teacher_training import cross_entropy_loss, supervised_batches
from edgekd.training import TrainConfig, fit, jitter_shifts
import edgekd.distill as d
kind, spec, data_spec, views, pixels = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
batches = getattr(d, "distill_batches", None) or getattr(d, "_distill_batches")
loss = getattr(d, "distill_loss_fn", None) or getattr(d, "_distill_loss")
data = load_dataset(data_spec)
n = len(data.y_train)
torch.manual_seed(0)
model = create_model(spec, data.input_shape, data.num_classes, mean=data.mean, std=data.std)
if kind == "hard":
    make_batch, loss_fn = supervised_batches(data.x_train, data.y_train, pixels), cross_entropy_loss
else:
    g = torch.Generator().manual_seed(1)
    logits = torch.randn((views, n, data.num_classes), generator=g) * 3
    shifts = torch.stack([torch.zeros((n, 2), dtype=torch.long)] + [jitter_shifts(n, pixels, g) for _ in range(views - 1)])
    make_batch, loss_fn = batches(data.x_train, data.y_train, logits, shifts, pixels, None), loss(4.0, 0.9)
r = fit(model, n_train=n, make_batch=make_batch, loss_fn=loss_fn, val=(data.x_val[:256], data.y_val[:256]),
        config=TrainConfig(epochs=1, seed=0), store=None, name="timing")
print(json.dumps({"seconds_per_epoch": r.seconds_per_epoch}))
"""


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--against", required=True, help="The earlier git revision.")
    p.add_argument("--this", default="HEAD", help="The revision to measure (committed: a worktree of it is timed).")
    p.add_argument("--data", default="fashion-mnist")
    p.add_argument("--student", default="mlp")
    p.add_argument("--views", type=int, default=2)
    p.add_argument("--jitter", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", default="benchmarks/results/epoch_time_vs_rev")
    p.add_argument("--smoke", action="store_true", help="digits, one repeat")
    args = p.parse_args(argv)
    if args.smoke:
        args.data, args.repeats, args.jitter = "digits", 1, 1
    return args


def _probe(tree: Path, kind: str, args) -> float:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    done = subprocess.run([sys.executable, "-c", PROBE, kind, args.student, args.data, str(args.views), str(args.jitter)],
                          capture_output=True, text=True, env=env, cwd=tree, timeout=1800)
    if done.returncode != 0:
        raise SystemExit(f"probe failed in {tree}: {done.stderr.strip().splitlines()[-1:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])["seconds_per_epoch"]


def main(argv=None):
    args = parse_args(argv)
    started = time.perf_counter()
    def short(rev):
        return subprocess.run(["git", "rev-parse", "--short", rev], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()

    rev, head = short(args.against), short(args.this)
    seconds = {"this": {"hard": [], "distill": []}, "earlier": {"hard": [], "distill": []}}
    with tempfile.TemporaryDirectory(prefix="edgekd-rev-") as tmp:
        trees = {"earlier": Path(tmp) / "earlier", "this": Path(tmp) / "this"}
        try:
            for name, commit in (("earlier", rev), ("this", head)):
                subprocess.run(["git", "worktree", "add", "--detach", str(trees[name]), commit], cwd=ROOT,
                               capture_output=True, check=True)
            for repeat in range(args.repeats):
                for kind in ("hard", "distill"):
                    # the trees take turns going first: a fixed order would lend the second one a warmer machine
                    for name in (("earlier", "this") if repeat % 2 == 0 else ("this", "earlier")):
                        seconds[name][kind].append(_probe(trees[name], kind, args))
        finally:
            for tree in trees.values():
                subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=ROOT, capture_output=True)
    ratios = {kind: _median(seconds["this"][kind]) / _median(seconds["earlier"][kind]) for kind in ("hard", "distill")}
    # each repeat ran the two trees side by side: the median of their per-repeat ratios keeps that pairing
    paired = {kind: _median([t / e for t, e in zip(seconds["this"][kind], seconds["earlier"][kind])])
              for kind in ("hard", "distill")}
    spine = {name: _median(seconds[name]["distill"]) / _median(seconds[name]["hard"]) for name in seconds}
    result = {"args": vars(args), "earlier": rev, "this": head, "seconds": seconds, "this_over_earlier": ratios,
              "paired_this_over_earlier": paired, "distill_over_hard": spine, "provenance": provenance(started)}
    write_result(args, result, render(result))


def render(result: dict) -> str:
    a = result["args"]
    lines = header_markdown(f"CPU epoch time: {result['this']} against {result['earlier']}", result["provenance"])
    lines += [f"`{a['student']}` on `{a['data']}`, one epoch of `edgekd.training.fit` per fresh process, "
              f"{a['repeats']} alternated repeats per tree; distillation from cached logits on {a['views']} views, ±{a['jitter']} px.", "",
              f"| labels | {result['earlier']} s (each) | {result['this']} s (each) | this / earlier (medians) | "
              f"median of the paired ratios |", "|---|---|---|---|---|"]
    paired = result.get("paired_this_over_earlier") or {}   # results from before it was recorded lack it
    for kind in ("hard", "distill"):
        old, new = result["seconds"]["earlier"][kind], result["seconds"]["this"][kind]
        lines.append(f"| {kind} | {', '.join(f'{v:.2f}' for v in old)} | {', '.join(f'{v:.2f}' for v in new)} | "
                     f"**{result['this_over_earlier'][kind]:.2f}×** | "
                     + (f"{paired[kind]:.2f}× |" if kind in paired else "- |"))
    r = result["distill_over_hard"]
    lines += ["", f"The spine's epoch-time ratio (distillation / hard labels, medians): {r['earlier']:.2f}× before, "
              f"{r['this']:.2f}× now (aim ≤ 1.15×).", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    run_script(main)
