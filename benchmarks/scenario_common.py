"""What the paper-reproduction scenarios share: arguments, the teacher (trained once, reused)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable


WORK = "runs/fmnist"


class Refused(SystemExit):
    """A benchmark's bad argument or input: ``run_script`` prints it as one line and exits 2, like edgekd's CLI.

    ``str(exc)`` is the message (a ``SystemExit`` of a string, as tests and callers that import ``main`` see it).
    """


def run_script(main: Callable[[], object]) -> None:
    """Run a benchmark's ``main``: a ``Refused`` or an edgekd user error is one line on stderr and exit 2, the
    exit code otherwise ``main``'s (``None`` is 0)."""
    from edgekd.errors import EdgekdError   # light: no torch

    try:
        code = main()
    except (Refused, EdgekdError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    sys.exit(code)


def base_parser(description: str, out: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="fashion-mnist")
    p.add_argument("--work", default=WORK, help="Folder of the teacher (trained there if missing) and students "
                   "(with --smoke and no other folder given: beside --out).")
    p.add_argument("--teacher-arch", default="cnn")
    p.add_argument("--ensemble", type=int, default=3)
    p.add_argument("--teacher-epochs", type=int, default=6)
    p.add_argument("--jitter", type=int, default=2, help="Teacher's training jitter (pixels).")
    p.add_argument("--teacher-flip", action="store_true", help="The teacher also trains on a mirrored random half of "
                   "each batch (edgekd's --flip): a teacher that must judge mirrored images should have seen them.")
    p.add_argument("--train-limit", type=int, default=None)
    p.add_argument("--out", default=out)
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="Where every training runs.")
    p.add_argument("--smoke", action="store_true", help="digits, tiny budget, seconds")
    return p


def apply_smoke(args) -> None:
    args.data, args.teacher_arch, args.ensemble, args.teacher_epochs, args.jitter = "digits", "cnn:width=4,fc=16", 2, 2, 1
    if args.work == WORK:
        args.work = str(Path(args.out).parent / f"{Path(args.out).name}-smoke-work")


def prepare(args):
    """(data, teacher, teacher manifest metrics, cache, work folder); trains the teacher if missing."""
    from edgekd.artifacts import is_artifact, load_artifact
    from edgekd.cache import LogitCache
    from edgekd.data import load_dataset
    from edgekd.device import resolve_device
    from edgekd.teacher_training import TeacherConfig, train_teachers
    from edgekd.teachers import load_teacher
    from edgekd.training import TrainConfig

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    data = load_dataset(args.data, train_limit=args.train_limit)
    teacher_dir = work / "teacher"
    config = TeacherConfig(arch=args.teacher_arch, ensemble=args.ensemble,
                           train=TrainConfig(epochs=args.teacher_epochs, lr=2e-3, jitter=args.jitter, device=args.device,
                                             flip=args.teacher_flip))
    if is_artifact(teacher_dir):
        check_teacher_matches(load_artifact(teacher_dir).manifest, config, data.describe(), teacher_dir)
    else:
        train_teachers(data, config, teacher_dir, resume=(work / "teacher.partial").exists())
    return data, load_teacher(teacher_dir).to(resolve_device(args.device)), load_artifact(teacher_dir).manifest.metrics, LogitCache(work / "cache"), work


def check_teacher_matches(manifest, config, data: dict, teacher_dir: Path) -> None:
    """Refuse a teacher in the work folder that was trained with other settings or data than asked for
    (a figure would otherwise be credited to a teacher it did not use)."""
    recorded = (manifest.config or {}).get("teacher")
    asked = {"arch": config.arch, "ensemble": config.ensemble, "epochs": config.train.epochs, "jitter": config.train.jitter,
             "lr": config.train.lr, "flip": config.train.flip, "data": data["spec"], "train_limit": data["train_limit"]}
    if recorded is None:
        params = (manifest.config or {}).get("params", {})
        found = {k: params.get(k) for k in ("arch", "ensemble", "epochs", "jitter", "lr")} | {"flip": params.get("flip", False)}
    else:
        found = {"arch": recorded["arch"], "ensemble": recorded["ensemble"], **{k: recorded["train"][k] for k in ("epochs", "jitter", "lr")},
                 "flip": recorded["train"].get("flip", False)}   # teachers trained before flip did not mirror
    found |= {"data": manifest.data["spec"], "train_limit": manifest.data.get("train_limit")}
    differs = {k: (found[k], v) for k, v in asked.items() if found[k] != v}
    if differs:
        what = ", ".join(f"{k} {a!r} (asked {b!r})" for k, (a, b) in differs.items())
        raise Refused(f"The teacher in '{teacher_dir}' was trained with {what}; pass another --work folder or "
                      "remove that teacher to train the one asked for.")


# fields whose default, when they were added, changed what a run does, with the value that a record made
# before them means (``DistillConfig.search_methods``: until then the student tried no other soft term)
ABSENT_MEANS = {"search_methods": ()}


def same_settings(recorded: dict | None, config) -> bool:
    """Whether a run's recorded settings (``asdict`` of a config dataclass, as its manifest keeps them)
    are ``config``'s. A setting the record lacks (a field added since the run, e.g. ``train.mixup``)
    counts as the same when ``config`` holds that field's default (or, for a field in ``ABSENT_MEANS``,
    the value a record without it means), so a study made before it can still be reused and rendered;
    any other difference, or a setting removed since, means not the same."""
    import dataclasses
    import json

    def plain(value):
        return json.loads(json.dumps(dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value, default=list))

    if not isinstance(recorded, dict):
        return False
    fields = dataclasses.fields(config)
    for field in fields:
        value = getattr(config, field.name)
        if field.name not in recorded:
            meant = ABSENT_MEANS.get(field.name, field.default)
            if meant is dataclasses.MISSING or plain(value) != plain(meant):
                return False
        elif dataclasses.is_dataclass(value):
            if not same_settings(recorded[field.name], value):
                return False
        elif plain(recorded[field.name]) != plain(value):
            return False
    return set(recorded) <= {field.name for field in fields}


# what decides a seed's weights besides the code (benchmarks/determinism.py): the CPU's kernels and torch's threads, and
# the CPU itself (an AMD and an Intel with the same AVX-512 extensions train other weights from one seed)
# the kernels torch chose count too: a run forced to AVX2 kernels on an AVX-512 CPU trains other weights
MACHINE_KEYS = {"cpu": "CPU", "simd": "vector extensions", "torch_threads": "torch threads", "cpu_capability": "kernels"}


def machine_difference(earlier: dict, ours: dict) -> str:
    """'CPU AMD EPYC; this run CPU Intel(R) Xeon(R) Processor' for the ``MACHINE_KEYS`` in which two runs'
    machines differ (a key one of them did not record is not counted); '' when none does."""
    differ = [key for key in MACHINE_KEYS if earlier.get(key) is not None and ours.get(key) is not None
              and earlier[key] != ours[key]]

    def show(m):
        return "; ".join(f"{MACHINE_KEYS[k]} " + (", ".join(m[k]) if isinstance(m[k], list) else str(m[k])) for k in differ)

    return f"{show(earlier)}; this run {show(ours)}" if differ else ""


def shown_path(path: str) -> str:
    """``path`` relative to the working folder when it lies inside it (a result names its sources as a clone would)."""
    import os

    relative = os.path.relpath(os.path.abspath(path))
    return path if relative.startswith("..") else relative


def earlier_result(path: str, args, ignored: set, added: dict | None = None) -> tuple[dict, dict]:
    """An earlier result of the same benchmark (its .json) whose runs ``--reuse`` may take, and where it came from
    (path, revision, date, ``MACHINE_KEYS``); exits in one line when it cannot be read as one, or naming the first
    argument (outside ``ignored``) it was made with otherwise. ``added``: arguments added since, with the value a
    result without them ran with."""
    import json

    try:
        earlier = json.loads(Path(path).read_text())
        earlier["args"], earlier["provenance"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise Refused(f"--reuse expects a result .json of this benchmark; '{path}' could not be read as one "
                      f"({type(e).__name__}: {e}). Pass the .json beside a committed result, or leave --reuse out.") from None
    ours = vars(args)
    for key in sorted((set(earlier["args"]) | set(ours)) - ignored):
        theirs = earlier["args"].get(key, (added or {}).get(key))
        if theirs != ours.get(key) and str(theirs) != str(ours.get(key)):   # older results stored some options as numbers
            raise Refused(f"--reuse needs a result made with the same arguments; {path} has {key}="
                          f"{theirs!r}, this run {ours.get(key)!r}. Pass a matching result or leave --reuse out.")
    machine = earlier["provenance"].get("machine") or {}
    return earlier, {"path": shown_path(path), "revision": earlier["provenance"].get("revision"),
                     "date": earlier["provenance"].get("date"), "machine": {key: machine.get(key) for key in MACHINE_KEYS}}


def write_result(args, result: dict, markdown: str, *, quiet: bool = False) -> None:
    import json

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    out.with_suffix(".md").write_text(markdown)
    if not quiet:
        print(markdown)


# How each side of a comparison could pick among its tries: edgekd's rule (``distill._keep_best``), another
# that can be evaluated from the records, and test itself, an oracle that bounds what any rule could add.
SELECTION_RULES = {"val accuracy, then NLL (edgekd's rule)": lambda r: (r["val_accuracy"], -r["val_nll"]),
                   "val NLL alone": lambda r: -r["val_nll"],
                   "test accuracy (an oracle, not a rule)": lambda r: r["test_accuracy"]}


def judged(pairs: list[tuple[list, list]]) -> list[dict]:
    """Per selection rule (``SELECTION_RULES``), over (distilled student's tries, baseline's tries) pairs,
    one per seed: the mean gain in points had both sides kept the try that rule prefers, and how often
    each side's pick was also its best try on test. Only pairs whose tries all record their test accuracy
    (recorded after the choice, never read by it: ``edgekd.distill``) count; none gives no rows. It
    measures how noisy a judge val is, on runs already made."""
    usable = [(s, b) for s, b in pairs if s and b and all("test_accuracy" in r for r in (*s, *b))]
    rows = []
    for rule, key in SELECTION_RULES.items() if usable else ():
        picks = [(max(s, key=key), max(b, key=key), s, b) for s, b in usable]
        gains = [100 * (ps["test_accuracy"] - pb["test_accuracy"]) for ps, pb, _, _ in picks]
        rows.append({"rule": rule, "cells": len(usable), "mean_gain": sum(gains) / len(gains),
                     "student_best_on_test": sum(ps["test_accuracy"] == max(r["test_accuracy"] for r in s) for ps, _, s, _ in picks),
                     "baseline_best_on_test": sum(pb["test_accuracy"] == max(r["test_accuracy"] for r in b) for _, pb, _, b in picks)})
    return rows


def judge_lines(groups: dict[str, list[tuple[list, list]]]) -> list[str]:
    """A markdown table of ``judged`` for each labelled group of pairs (a candidate, a student); nothing when
    no pair records its tries' test accuracy (results made before it was recorded)."""
    rows = [(label, r) for label, pairs in groups.items() for r in judged(pairs)]
    if not rows:
        return []
    lines = ["", "How good a judge val is: each try's test accuracy is recorded after the choice and never read by it. "
             "Mean gain had both sides kept the try a rule prefers, and in how many seeds that try was also the side's "
             "best on test:", "",
             "| of | rule | seeds | mean gain | student's pick best on test | baseline's pick best on test |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {label} | {r['rule']} | {r['cells']} | {r['mean_gain']:+.2f} | "
              f"{r['student_best_on_test']}/{r['cells']} | {r['baseline_best_on_test']}/{r['cells']} |" for label, r in rows]
    return lines
