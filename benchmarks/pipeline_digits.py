"""The quickstart's own distillation: does ``edgekd pipeline`` on ``digits`` distil a student that beats
its hard-label baseline, and which student budget and recipe should it use?

    python -m benchmarks.pipeline_digits --out benchmarks/results/pipeline_digits
    python -m benchmarks.pipeline_digits --smoke --out /tmp/pipeline_digits

The teacher is the pipeline's own (``edgekd.pipeline.teacher_config`` of ``PipelineConfig()``: 3 x
``cnn``, 15 epochs, +-1 px), trained once. For each student budget (``--epochs``), student jitter
(``--student-jitters``) and seed, the pipeline's distill stage (``edgekd.pipeline.distill_config``:
T chosen on val, alpha 0.5, consistent teaching when the student is jittered) trains the distilled
student and its hard-label baseline with the same budget. The recommended setting is the one whose
distilled student has the best mean *val* accuracy (a tie keeps the pipeline's current setting);
test accuracy is reported, not used to choose.
The pipeline distils from the better of the teacher and the generalist + specialists on val; on
``digits`` that is the teacher, which this study uses throughout.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

from benchmarks.provenance import header_markdown, mean_std, pm, provenance
from benchmarks.scenario_common import check_teacher_matches, run_script, write_result


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--epochs", default="30,60", help="Student budgets to compare.")
    p.add_argument("--student-jitters", default="0,1", help="Student shifts (pixels) to compare.")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="Where every training runs.")
    p.add_argument("--work", default="runs/pipeline_digits")
    p.add_argument("--out", default="benchmarks/results/pipeline_digits")
    p.add_argument("--smoke", action="store_true", help="a 1-member 2-epoch teacher, 2-epoch students, 1 seed")
    args = p.parse_args(argv)
    if args.smoke:
        args.epochs, args.seeds = "2", 1
        args.work = str(Path(args.out).parent / (Path(args.out).name + "-work"))
    return args


def run(args) -> dict:
    from edgekd.artifacts import is_artifact, load_artifact
    from edgekd.cache import LogitCache
    from edgekd.config import PipelineConfig
    from edgekd.data import load_dataset
    from edgekd.device import resolve_device
    from edgekd.distill import distill
    from edgekd.pipeline import distill_config, teacher_config
    from edgekd.teacher_training import train_teachers
    from edgekd.teachers import load_teacher

    base = PipelineConfig()
    device = str(resolve_device(args.device))
    if args.smoke:
        base = dataclasses.replace(base, teacher_arch="cnn:width=4,fc=16", ensemble=1, teacher_epochs=2)
    work = Path(args.work)
    data = load_dataset(base.data, val_fraction=base.val_fraction)
    teacher_dir = work / "teacher"
    if is_artifact(teacher_dir):   # reused only when it is the teacher asked for
        check_teacher_matches(load_artifact(teacher_dir).manifest, teacher_config(base, device), data.describe(), teacher_dir)
    else:
        train_teachers(data, teacher_config(base, device), teacher_dir, overwrite=True)
    teacher = load_teacher(teacher_dir).to(device)
    cache = LogitCache(work / "cache")
    cells = []
    for epochs in [int(e) for e in args.epochs.split(",")]:
        for jitter in [int(j) for j in args.student_jitters.split(",")]:
            for seed in range(args.seeds):
                config = dataclasses.replace(base, epochs=epochs, student_jitter=jitter, seed=seed)
                out = work / f"student-e{epochs}-j{jitter}-s{seed}"
                distill(teacher, data, distill_config(config, device), out, cache=cache, overwrite=True)
                m = load_artifact(out).manifest
                chosen = next(r for r in m.metrics["baseline_search"] if r["chosen"])
                cells.append({"epochs": epochs, "student_jitter": jitter, "seed": seed,
                              "method": m.config.get("method"),   # the soft term this seed kept (the search may keep kd)
                              "temperature": m.config["temperature"], "val": m.metrics["val_accuracy"],
                              "test": m.metrics["test_accuracy"], "baseline_val": chosen["val_accuracy"],
                              "baseline_jitter": chosen["jitter"],
                              "baseline_test": m.metrics["baseline_test_accuracy"],
                              "teacher_test": m.metrics["teacher_test_accuracy"], "gap_closed": m.metrics["gap_closed"]})
                print(f"epochs {epochs} jitter {jitter} seed {seed}: distilled {cells[-1]['test']:.4f} "
                      f"hard {cells[-1]['baseline_test']:.4f} (T={cells[-1]['temperature']})", flush=True)
    return {"teacher": {"config": dataclasses.asdict(teacher_config(base, device)),
                        "test_accuracy": load_artifact(teacher_dir).manifest.metrics.get("test_accuracy")},
            "data": data.describe(), "student": base.student,
            "method": ", ".join(sorted({c["method"] for c in cells if c.get("method")})) or distill_config(base, device).method,
            "alpha": base.alpha, "cells": cells, "settings": summarize(cells)}


def summarize(cells) -> list[dict]:
    rows = []
    for key in sorted({(c["epochs"], c["student_jitter"]) for c in cells}):
        group = [c for c in cells if (c["epochs"], c["student_jitter"]) == key]
        gains = [c["test"] - c["baseline_test"] for c in group]
        rows.append({"epochs": key[0], "student_jitter": key[1], "seeds": len(group),
                     "val_mean": mean_std(c["val"] for c in group)[0],
                     "distilled_test": pm(c["test"] for c in group), "hard_test": pm(c["baseline_test"] for c in group),
                     "gain_points": 100 * mean_std(gains)[0], "wins": sum(g > 0 for g in gains),
                     "losses": sum(g < 0 for g in gains)})
    # 143 val images make ties likely; a tie keeps the pipeline's current setting, so a default moves
    # only for a setting that is better on val
    from edgekd.config import PipelineConfig

    current = (PipelineConfig.epochs, PipelineConfig.student_jitter)
    top = max(r["val_mean"] for r in rows)
    tied = [r for r in rows if abs(r["val_mean"] - top) < 1e-9]
    best = next((r for r in tied if (r["epochs"], r["student_jitter"]) == current), tied[0])
    for row in rows:
        row["chosen"] = row is best
    return rows


def render(result: dict, prov: dict) -> str:
    lines = header_markdown("The quickstart's distillation on digits: student budget and jitter", prov)
    t = result["teacher"]
    lines += [f"Teacher: the pipeline's ({t['config']['ensemble']} x `{t['config']['arch']}`, "
              f"{t['config']['train']['epochs']} epochs, +-{t['config']['train']['jitter']} px), test accuracy "
              f"{100 * (t['test_accuracy'] or 0):.2f}%. Student `{result['student']}`, method kept `{result.get('method', 'kd-ls')}`, "
              f"T chosen on val, alpha {result['alpha']}; the hard-label baseline picks its own jitter on val with the same budget.", "",
              "| epochs | student jitter | seeds | distilled val (mean) | distilled test | hard-label test | "
              "gain (points) | wins / losses | chosen on val |", "|---|---|---|---|---|---|---|---|---|"]
    for r in result["settings"]:
        lines.append(f"| {r['epochs']} | {r['student_jitter']} | {r['seeds']} | {100 * r['val_mean']:.2f} | "
                     f"{r['distilled_test']} | {r['hard_test']} | {r['gain_points']:+.2f} | {r['wins']} / {r['losses']} | "
                     f"{'yes' if r['chosen'] else ''} |")
    best = next(r for r in result["settings"] if r["chosen"])
    verdict = (f"gains {best['gain_points']:.2f} points over its baseline" if best["gain_points"] >= 0.005
               else f"loses to its baseline by {-best['gain_points']:.2f} points" if best["gain_points"] <= -0.005
               else "ties its baseline")
    lines += ["", f"At the setting chosen on val ({best['epochs']} epochs, student jitter {best['student_jitter']}) "
              f"distillation {verdict} on test (mean of {best['seeds']} seeds; the test split "
              "has 359 images, so one image is 0.28 points).", ""]
    return "\n".join(lines)


def main(argv=None):
    args = parse_args(argv)
    started = time.perf_counter()
    result = run(args)
    prov = provenance(started)
    result["provenance"] = prov
    write_result(args, result, render(result, prov))


if __name__ == "__main__":
    run_script(main)
