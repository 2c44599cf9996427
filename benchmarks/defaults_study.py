"""Which distillation settings should be the default? A grid of candidates against the hard-label
baseline, over teachers and students, on Fashion-MNIST.

    python -m benchmarks.defaults_study --train-limit 10000 --out benchmarks/results/defaults_study_10k
    python -m benchmarks.defaults_study --smoke

``--first-seed`` spreads the seeds over processes that share one ``--work`` (a GPU runs several small
students at once): train the teacher with ``--seeds 0``, run each share, then ``--reuse-only`` reports all.

``--reuse`` takes the cells of an earlier result with the same arguments (e.g. seed 0 of a study whose
later seeds are still to run) instead of training them again, when its teacher is provably this one.

For each teacher (the first k members of one cnn ensemble trained ``--teacher-epochs`` on the same
train split, k in ``--members``), each student and each seed, the student is distilled with every
candidate (one method, T, alpha: ``search_methods=()`` unless the candidate says ``s=kd``;
``--pick`` assembles that method search from two candidates' runs) at the default budget and recipe
of ``edgekd distill`` (20 epochs, no jitter, cached logits), beside its hard-label baseline with the same budget and seed. A default must
not lose: the table gives each candidate's gain over the baseline per cell, its mean and its worst
cell; the candidate whose worst cell is best, among those with a soft weight alpha >= 0.5, is the
recommendation.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import time
from pathlib import Path

from benchmarks.provenance import header_markdown, interval95, provenance
from benchmarks.scenario_common import (earlier_result, judge_lines, machine_difference, Refused, run_script,
                                        write_result)

CANDIDATES = "kd:T=4,a=0.9;kd:T=4,a=0.5;kd:T=8,a=0.5;kd:T=2,a=0.5;kd-ls:T=2,a=0.5;dkd:T=4,a=0.5"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="fashion-mnist")
    p.add_argument("--train-limit", type=int, default=10000, help="Training images (0: the full training set).")
    p.add_argument("--teacher-arch", default="cnn")
    p.add_argument("--members", default="1,3", help="Teachers: the first k members of one ensemble, for each k.")
    p.add_argument("--teacher", default=None,
                   help="An edgekd ensemble artifact to take the members from (e.g. the README's teacher) instead of "
                        "training --teacher-arch for --teacher-epochs; it must have been trained on the same split.")
    p.add_argument("--teacher-epochs", type=int, default=3)
    p.add_argument("--students", default="mlp;mlp:hidden=100;cnn:width=8;dsconv")
    p.add_argument("--candidates", default=CANDIDATES,
                   help="';'-separated METHOD:T=..,a=..[,c=1][,m=A][,s=M][,r=0]; s=M also tries soft term M (--search-methods), c=1 corrects the teacher where it is wrong (--correct-teacher), "
                        "r=0 trains the student's configured recipe only, no jitter search (--no-recipe-search: the consistent views "
                        "cost 25 teacher passes over the transfer set), "
                        "m=A trains with mixup Beta(A, A), the teacher online (--mixup; put it first so that the baseline "
                        "tries mixup too), w=1 also distills from the teacher with the hard-label twin as a member when "
                        "the teacher is no better than it on val (--twin-teacher; put it first: only the first trains the baseline)")
    p.add_argument("--pick", default=None, metavar="A|B",
                   help="Also report, per cell, what the student's method search (DistillConfig.search_methods) keeps: "
                        "the better on val of candidate A's recipes and candidate B's no-jitter one, assembled from their "
                        "runs (both in --candidates, same T and alpha)")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--seeds", type=int, default=1)
    p.add_argument("--first-seed", type=int, default=0,
                   help="Run seeds FIRST..FIRST+SEEDS-1, e.g. to spread seeds over processes sharing one --work (train the "
                        "teacher first with --seeds 0); then --first-seed 0 --seeds ALL --reuse-only reports them all.")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--work", default="runs/defaults_study")
    p.add_argument("--out", default="benchmarks/results/defaults_study")
    p.add_argument("--reuse-only", action="store_true",
                   help="Train nothing: report the cells whose runs are all in --work; the others are listed as not run.")
    p.add_argument("--reuse", metavar="JSON", default=None,
                   help="An earlier result of this study with the same arguments (but --students, --seeds, --work, --out): "
                        "its cells stand for those not finished in --work, when its teacher is this one (the same "
                        "fingerprint; for a result that recorded none, the same CPU kind and teacher test accuracy).")
    p.add_argument("--smoke", action="store_true", help="digits, tiny models, seconds")
    args = p.parse_args(argv)
    args.train_limit = args.train_limit or None
    for name in ("seeds", "first_seed"):
        if getattr(args, name) < 0:
            p.error(f"--{name.replace('_', '-')} must be at least 0; got {getattr(args, name)}. Pass 0 or more.")
    names = args.candidates.split(";")
    if args.pick is not None and (len(args.pick.split("|")) != 2 or not set(args.pick.split("|")) <= set(names)):
        p.error(f"--pick must name two of --candidates as 'A|B'; got {args.pick!r}. Choose among {', '.join(names)}.")
    parsed = {}
    for text in names:
        try:
            parsed[text] = parse_candidate(text)
        except ValueError as e:
            p.error(f"--candidates: {e}")
    if args.pick is not None:
        a, b = (parsed[t] for t in args.pick.split("|"))
        if a["mixup"] or b["mixup"] or (a["temperature"], a["alpha"]) != (b["temperature"], b["alpha"]):
            # distill's method search trains B on the plain transfer set with A's T and alpha
            p.error(f"--pick needs two candidates without m= and with the same T and a (the method search trains the "
                    f"second on the plain transfer set with the first's T and alpha); got {args.pick!r}. Pick two such candidates.")
    if args.smoke:
        args.data, args.train_limit, args.teacher_arch = "digits", None, "cnn:width=4,fc=16"
        if args.members == p.get_default("members"):   # an explicit --members (e.g. with --teacher) stands
            args.members = "1,2"
        if args.candidates == p.get_default("candidates"):   # explicit --candidates (and --pick among them) stand
            args.candidates = "kd:T=4,a=0.9;kd:T=2,a=0.5"
        args.students, args.epochs, args.teacher_epochs = "mlp:hidden=16", 2, 2
        if args.work == p.get_default("work"):   # an explicit --work (shared by --first-seed runs) stands
            args.work = str(Path(args.out).parent / (Path(args.out).name + "-work"))
    return args


def parse_candidate(text: str) -> dict:
    """``METHOD:T=..,a=..[,c=0|1][,m=MIXUP][,s=M1+M2][,r=0|1][,w=0|1]`` -> its settings (s: the student's
    ``search_methods``, none unless given; r=0: no ``recipe_search``; w=1: ``twin_teacher``); a ValueError in
    one line for anything else."""
    from edgekd.config import METHODS

    method, _, rest = text.partition(":")
    try:
        values = dict(item.split("=") for item in rest.split(",") if item)
        parsed = {"method": method, "temperature": float(values.pop("T")), "alpha": float(values.pop("a")),
                  "correct": {"0": False, "1": True}[values.pop("c", "0")], "mixup": float(values.pop("m", "0")),
                  "search": tuple(m for m in values.pop("s", "").split("+") if m),
                  "recipe_search": {"0": False, "1": True}[values.pop("r", "1")],
                  "twin": {"0": False, "1": True}[values.pop("w", "0")], "name": text}
    except (ValueError, KeyError):
        parsed = None
    if parsed is None or values or not {method, *parsed["search"]} <= set(METHODS):
        raise ValueError(f"expected METHOD:T=<float>,a=<float>[,c=0|1][,m=<float>][,s=M1+M2][,r=0|1][,w=0|1] with each M one of {', '.join(METHODS)}; "
                         f"got {text!r}. Fix it like 'kd-ls:T=2,a=0.5,c=1' or 'kd-ls:T=2,a=0.5,m=1'.")
    return parsed


def teachers(args, data):
    """{k: Teacher of the first k members}, from one ensemble trained (or reused) in --work."""
    from edgekd.artifacts import is_artifact, load_artifact
    from edgekd.device import resolve_device
    from edgekd.teacher_training import TeacherConfig, train_teachers
    from edgekd.teachers import EnsembleModule, ModuleTeacher
    from edgekd.training import TrainConfig

    ks = [int(k) for k in args.members.split(",")]
    path = Path(args.teacher or Path(args.work) / "teacher")
    if args.teacher and not is_artifact(path):
        raise Refused(f"--teacher: '{path}' is not an edgekd artifact; pass an ensemble's folder or leave it out to train one.")
    if not is_artifact(path) and args.reuse_only:
        raise Refused(f"--reuse-only: no teacher in '{path}', so no run to report; run the study without it first.")
    if not is_artifact(path):
        train_teachers(data, TeacherConfig(arch=args.teacher_arch, ensemble=max(ks),
                                           train=TrainConfig(epochs=args.teacher_epochs, lr=2e-3, jitter=2, device=args.device)),
                       path, resume=path.with_name("teacher.partial").exists())
    artifact = load_artifact(path)
    members = artifact.build_members()
    made_on, here = artifact.manifest.data or {}, data.describe()
    differs = [k for k in ("spec", "split_seed", "train_limit") if made_on.get(k) != here.get(k)]
    where = "--teacher" if args.teacher else "--work's teacher"
    if differs:   # a teacher that saw this study's val or test images would flatter it; one on other data is another study's
        raise Refused(f"{where}: '{path}' was trained on other data ({', '.join(f'{k} {made_on.get(k)!r}' for k in differs)}; "
                      f"this study: {', '.join(f'{k} {here.get(k)!r}' for k in differs)}). Pass a teacher trained on the "
                      f"same split, or another --work.")
    if not args.teacher:   # the teacher this study would have trained, not another study's left in --work
        made = ((artifact.manifest.config or {}).get("teacher") or {})
        asked = {"arch": args.teacher_arch, "epochs": args.teacher_epochs}
        found = {"arch": made.get("arch"), "epochs": (made.get("train") or {}).get("epochs")}
        if found != asked:
            raise Refused(f"--work's teacher '{path}' is {found['arch']} trained {found['epochs']} epochs; this study asks for "
                          f"{asked['arch']}, {asked['epochs']} epochs. Pass another --work, or --teacher with it on purpose.")
    if max(ks) > len(members):
        raise Refused(f"--members asks for {max(ks)} members; '{path}' has {len(members)}. Pass --members up to {len(members)}.")
    device = resolve_device(args.device)
    out = {}
    for k in ks:
        fingerprint = hashlib.sha256(f"{artifact.fingerprint}:first={k}".encode()).hexdigest()
        out[k] = ModuleTeacher(EnsembleModule(members[:k]).to(device), kind="ensemble", classes=artifact.classes,
                               input_shape=artifact.input_shape, fingerprint=fingerprint,
                               description=f"first {k} of {len(members)} members of {path}")
    return out, teacher_description(artifact.manifest, len(members), str(path))


def teacher_description(manifest, members: int, path: str) -> str:
    """'3 × `cnn` (6 epochs, ±2 px jitter)' from what the artifact's manifest says made it."""
    config = manifest.config or {}
    train = (config.get("teacher") or {}).get("train") or config.get("params") or {}
    arch = (config.get("teacher") or config.get("params") or {}).get("arch", manifest.members[0].arch)
    jitter = f"±{train['jitter']} px jitter" if train.get("jitter") else "no jitter"
    return f"{members} × `{arch}` ({train.get('epochs', '?')} epochs, {jitter}; `{path}`)"


REUSE_IGNORED = {"students", "seeds", "first_seed", "work", "out", "reuse", "reuse_only"}   # what may differ from the result reused


def reused_cells(path: str | None, args) -> tuple[dict, dict | None]:
    """The cells of an earlier result by (members, student, seed), and where they came from, when it was
    made with the same arguments; else exits naming the first argument that differs."""
    if not path:
        return {}, None
    earlier, source = earlier_result(path, args, REUSE_IGNORED)
    return ({(c["members"], c["student"], c["seed"]): c for c in earlier.get("cells") or []},
            {**source, "teacher_fingerprints": earlier.get("teacher_fingerprints"), "cells": []})


def check_reused_settings(cell: dict, args, candidates, student: str, seed: int, path: str) -> None:
    """An earlier cell is taken only when each of its runs recorded the settings this study would distill
    it with: the same arguments mean other settings once edgekd's defaults change (e.g. a recipe search
    added), and a result must not mix them. A cell from before settings were recorded is refused."""
    from benchmarks.scenario_common import same_settings

    for index, cand in enumerate(candidates):
        run = (cell.get("runs") or {}).get(cand["name"]) or {}
        if not same_settings(run.get("config"), _config(args, cand, student, seed, index)):
            made = "recorded no settings" if "config" not in run else "was distilled with other settings"
            raise Refused(f"--reuse needs cells distilled with this study's settings; `{student}` seed {seed} "
                          f"({cand['name']}) in {path} {made}. Leave --reuse out, or run it again with --work.")


def check_reused_teacher(reused_from: dict, cells: list, k: int, teacher, data, cache) -> str:
    """How the earlier result's teacher k is known to be this one, or exits: by its recorded fingerprint, or
    (a result made before fingerprints were recorded) by the same CPU kind, whose training is bitwise
    repeatable (benchmarks/determinism.py), and the same teacher test accuracy, to the image, in every cell."""
    recorded = (reused_from.get("teacher_fingerprints") or {}).get(str(k))
    path = reused_from["path"]
    if recorded is not None:
        if recorded != teacher.fingerprint:
            raise Refused(f"--reuse needs the teacher its cells were distilled from; {path} has teacher k={k} "
                          f"{recorded[:12]}, this run {teacher.fingerprint[:12]}. Pass --teacher with that teacher or leave --reuse out.")
        return "the same teacher fingerprint"
    import torch

    from benchmarks.timing import machine_facts
    from edgekd.distill import teacher_logits

    differ = machine_difference(reused_from.get("machine") or {}, machine_facts())
    if differ:
        raise Refused(f"--reuse: {path} recorded no teacher fingerprint and ran on another machine ({differ}), where the "
                      "same seed trains another teacher. Run it on that kind of CPU or leave --reuse out.")
    logits = teacher_logits(teacher, data, "test", cache)
    right = int((logits.argmax(1).cpu() == torch.as_tensor(data.y_test).cpu()).sum())
    for theirs in {round(c["teacher"] * len(data.y_test)) for c in cells} - {right}:
        raise Refused(f"--reuse needs the teacher its cells were distilled from; in {path} teacher k={k} classifies "
                      f"{theirs} test images right, this run's {right}. Leave --reuse out.")
    return "its teacher retrained on the same CPU kind, with the same test accuracy to the image (no fingerprint recorded then)"


def _complete(args, k, student, seed, candidates, teacher, data) -> bool:
    return all(_reusable(_run_dir(args, k, student, seed, cand, i), _config(args, cand, student, seed, i), teacher, data)
               for i, cand in enumerate(candidates))


def run(args) -> dict:
    from edgekd.cache import LogitCache
    from edgekd.data import load_dataset
    from edgekd.distill import distill

    data = load_dataset(args.data, train_limit=args.train_limit)
    cache = LogitCache(Path(args.work) / "cache")
    candidates = [parse_candidate(c) for c in args.candidates.split(";")]
    cells, missing, read_back, made = [], [], 0, 0
    ensemble, described = teachers(args, data)
    reuse, reused_from = reused_cells(args.reuse, args)
    for k, teacher in ensemble.items():
        matched = None
        for student in args.students.split(";"):
            for seed in range(args.first_seed, args.first_seed + args.seeds):
                cell = {"members": k, "student": student, "seed": seed, "runs": {}}
                earlier = reuse.get((k, student, seed))
                complete = (earlier is not None or args.reuse_only) and _complete(args, k, student, seed, candidates, teacher, data)
                if earlier is not None and not complete:
                    check_reused_settings(earlier, args, candidates, student, seed, reused_from["path"])
                    matched = matched or check_reused_teacher(reused_from, [c for (m, _, _), c in reuse.items() if m == k],
                                                              k, teacher, data, cache)
                    cells.append({**earlier, "reused": True})
                    reused_from["cells"].append({"members": k, "student": student, "seed": seed})
                    reused_from.setdefault("teacher_match", matched)
                    continue
                if args.reuse_only and not complete:
                    missing.append({"members": k, "student": student, "seed": seed})
                    continue
                for index, cand in enumerate(candidates):
                    config = _config(args, cand, student, seed, index)
                    out = _run_dir(args, k, student, seed, cand, index)
                    tick = time.perf_counter()
                    metrics = _reusable(out, config, teacher, data)
                    read_back, made = read_back + (metrics is not None), made + (metrics is None)
                    if metrics is None:   # read back from the run's manifest, as a reused run is
                        distill(teacher, data, config, out, cache=cache, overwrite=True)
                        metrics = _reusable(out, config, teacher, data)
                        if metrics is None:
                            raise RuntimeError(f"{out} was just written but does not read back as this run's settings and teacher")
                    if index == 0:
                        cell["baseline"], cell["teacher"] = metrics["baseline_test_accuracy"], metrics["teacher_test_accuracy"]
                        cell["baseline_jitter"] = chosen_jitter(metrics.get("baseline_search"))
                        cell["baseline_mixup"] = chosen_mixup(metrics.get("baseline_search"))
                        cell["baseline_search"] = list(metrics.get("baseline_search") or [])
                    cell["runs"][cand["name"]] = {"test_accuracy": metrics["test_accuracy"], "seconds": time.perf_counter() - tick,
                                                  "config": dataclasses.asdict(config),   # what --reuse checks
                                                  "jitter": chosen_jitter(metrics.get("student_search")),
                                                  "twin": any(r.get("twin") and r["chosen"] for r in metrics.get("student_search") or []),
                                                  "search": student_records(metrics, cand)}
                cells.append(cell)
                print(f"k={k} {student} seed {seed}: baseline {cell['baseline']:.4f} "
                      + " ".join(f"{n} {v['test_accuracy']:.4f}" for n, v in cell["runs"].items()), flush=True)
    targets = {k: target_profile(teacher, data, cache, candidates) for k, teacher in ensemble.items()}
    unpicked = add_pick(args.pick, candidates, cells) if args.pick else []
    return {"data": data.describe(), "teacher": described, "candidates": candidates, "cells": cells, "not_run": missing,
            "summary": summarize(cells, candidates), "targets": targets, "pick_not_assembled": unpicked,
            "runs_read_back": read_back, "runs_trained": made, "reused_from": reused_from,
            "teacher_fingerprints": {str(k): teacher.fingerprint for k, teacher in ensemble.items()}}


def student_records(metrics: dict, cand: dict) -> list:
    """The distilled student's recipes tried, the one chosen on val marked; a run that tried one recipe
    (``r=0``, or mixup; the study gives students no jitter) records no search, so its one record is rebuilt
    from its val figures (for ``--pick``; none from runs made before the manifest had ``val_nll``)."""
    if metrics.get("student_search"):
        return list(metrics["student_search"])
    if "val_nll" not in metrics:
        return []
    return [{"method": cand["method"], "jitter": 0, "mixup": cand.get("mixup", 0.0),
             "val_accuracy": metrics["val_accuracy"], "val_nll": metrics["val_nll"],
             "test_accuracy": metrics["test_accuracy"], "chosen": True}]


def add_pick(pick: str, candidates: list, cells: list) -> list:
    """Adds the candidate "A or B on val" to ``candidates`` and to every cell: what ``edgekd distill`` keeps
    when A is its method and B is in ``search_methods``. Its search trains A's recipes and B on the plain
    transfer set, and keeps the best on val (accuracy, then NLL). Here it is assembled from the two runs
    already made: B's no-jitter record against A's chosen one. B's test accuracy is known only for its
    chosen recipe, so a cell where B's no-jitter recipe wins but B chose jitter cannot be assembled; such
    cells are returned (and no column is added) rather than guessed."""
    a, b = pick.split("|")
    name = f"{a} or {b} on val"
    picked, unpicked = [], []
    for cell in cells:
        ra, rb = cell["runs"][a], cell["runs"][b]
        best_a = next((r for r in ra["search"] if r["chosen"]), None)
        plain_b = next((r for r in rb["search"] if r["jitter"] == 0 and not r.get("mixup")), None)
        if best_a is None or plain_b is None:
            unpicked.append((cell, "a run records no val figures for its recipes (made before the manifest had val_nll)"))
            continue
        b_wins = (plain_b["val_accuracy"], -plain_b["val_nll"]) > (best_a["val_accuracy"], -best_a["val_nll"])
        if b_wins and not plain_b["chosen"]:
            unpicked.append((cell, "the second candidate's no-jitter recipe won on val where it kept jitter"))
            continue
        picked.append((cell, {**(rb if b_wins else ra), "picked": b if b_wins else a}))
    if unpicked:
        return [{"members": c["members"], "student": c["student"], "seed": c["seed"], "why": why} for c, why in unpicked]
    for cell, run in picked:
        cell["runs"][name] = run
    first = next(c for c in candidates if c["name"] == a)
    candidates.append({**first, "name": name, "derived": True})
    return []


def target_profile(teacher, data, cache, candidates) -> dict:
    """What each candidate asks the student to match, on the un-shifted train split: the teacher's top-1
    accuracy there (the rows ``c=1`` corrects are the rest) and, per candidate, the mean top probability
    and mean true-class probability of its soft targets (``edgekd.losses.target_sharpness``)."""
    import torch

    from edgekd.distill import teacher_logits
    from edgekd.losses import corrected_teacher, target_sharpness

    logits, labels = teacher_logits(teacher, data, "train", cache).float().cpu(), torch.as_tensor(data.y_train).cpu()
    out = {"train_accuracy": float((logits.argmax(-1) == labels).float().mean()), "candidates": {}}
    for cand in candidates:   # (before --pick adds its derived candidate)
        z = corrected_teacher(logits, labels) if cand.get("correct") else logits
        out["candidates"][cand["name"]] = target_sharpness(z, labels, cand["temperature"], cand["method"])
    return out


def chosen_jitter(search) -> int | None:
    """The jitter of the recipe chosen on val, from a run's ``baseline_search`` / ``student_search``
    (None when that side had no choice to make)."""
    return next((c["jitter"] for c in search if c["chosen"]), None) if search and len(search) > 1 else None


def chosen_mixup(search) -> float:
    """The mixup of the baseline's recipe chosen on val (0: none, or records from before mixup)."""
    return next((c.get("mixup", 0.0) for c in search if c["chosen"]), 0.0) if search else 0.0


def _config(args, cand: dict, student: str, seed: int, index: int):
    from edgekd.config import DistillConfig, TrainConfig

    return DistillConfig(student=student, temperature=cand["temperature"], alpha=cand["alpha"], method=cand["method"],
                         correct_teacher=cand.get("correct", False), baseline=index == 0, search_methods=cand.get("search", ()),
                         recipe_search=cand.get("recipe_search", True), twin_teacher=cand.get("twin", False),
                         train=TrainConfig(epochs=args.epochs, seed=seed, device=args.device, mixup=cand.get("mixup", 0.0)))


def _run_dir(args, k: int, student: str, seed: int, cand: dict, index: int) -> Path:
    """One run's folder, named by its candidate (not its place in --candidates, so that a study with
    another list never overwrites these runs); the first candidate's run also trains the baseline."""
    def slug(text):
        return text.replace(":", "_").replace("=", "").replace(",", "_")
    return Path(args.work) / f"s-{k}-{slug(student)}-{seed}-{slug(cand['name'])}{'-baseline' if index == 0 else ''}"


SAME_DATA = ("spec", "split_seed", "train_limit", "n_train", "n_val", "n_test")   # what makes two runs' data one


def _reusable(out: Path, config, teacher, data) -> dict | None:
    """The metrics of a run already in --work made with the same settings, teacher and data (a study is
    resumed run by run), else None: a run on another --train-limit would be reported as this one's."""
    from benchmarks.scenario_common import same_settings
    from edgekd.artifacts import is_artifact, load_artifact

    if not is_artifact(out):
        return None
    manifest = load_artifact(out).manifest
    same = same_settings(manifest.config.get("distill"), config)
    here, made_on = data.describe(), manifest.data or {}
    same_data = all(made_on.get(key) == here[key] for key in SAME_DATA)
    return manifest.metrics if same and same_data and (manifest.teacher or {}).get("fingerprint") == teacher.fingerprint else None


def summarize(cells, candidates) -> list[dict]:
    """Per candidate: gain over the baseline (points) per cell, its mean and worst; the recommendation
    is the best worst cell among candidates with alpha >= 0.5."""
    rows = []
    if not cells:
        return rows
    for cand in candidates:
        gains = [100 * (c["runs"][cand["name"]]["test_accuracy"] - c["baseline"]) for c in cells]
        rows.append({"candidate": cand["name"], "alpha": cand["alpha"], "mean_gain": sum(gains) / len(gains),
                     "worst_gain": min(gains), "wins": sum(g > 0 for g in gains), "cells": len(gains)})
    eligible = [r for r in rows if r["alpha"] >= 0.5]   # still distilling: issue 11's bar for a default
    best = max(eligible, key=lambda r: (r["worst_gain"], r["mean_gain"])) if eligible else None
    for r in rows:
        r["recommended"] = r is best
    return rows


NOT_LOSING = -0.1   # the bar for a default: its mean gain over seeds at most 0.1 point below the baseline


def by_pair(cells, candidates) -> list[dict]:
    """Per (teacher, student) and candidate: the gain's mean, spread and Student-t 95% interval of the mean
    over the seeds, and whether the mean clears ``NOT_LOSING`` (the issue's bar, judged on the mean)."""
    import statistics

    pairs = {}
    for c in cells:
        pairs.setdefault((c["members"], c["student"]), []).append(c)
    rows = []
    for (k, student), group in pairs.items():
        for cand in candidates:
            gains = [100 * (c["runs"][cand["name"]]["test_accuracy"] - c["baseline"]) for c in group]
            mean = statistics.fmean(gains)
            rows.append({"members": k, "student": student, "candidate": cand["name"], "seeds": len(gains),
                         "mean_gain": mean, "std_gain": statistics.stdev(gains) if len(gains) > 1 else None,
                         "interval95": list(interval95(gains)) if len(gains) > 1 else None,
                         "baseline": statistics.fmean(c["baseline"] for c in group), "not_losing": mean >= NOT_LOSING})
    return rows


def _judge_lines(cells, candidates) -> list[str]:
    """How good a judge val was (``scenario_common.judge_lines``) per teacher, student and candidate, from each
    seed's tries."""
    groups = {}
    for cand in (c for c in candidates if not c.get("derived")):
        for c in cells:
            groups.setdefault(f"k={c['members']} `{c['student']}`, `{cand['name']}`", []).append(
                (c["runs"][cand["name"]].get("search") or [], c.get("baseline_search") or []))
    return judge_lines(groups)


def _recipe(jitter, mixup: float = 0.0) -> str:
    mixed = f", mixup {mixup:g}" if mixup else ""
    return "" if jitter is None else (f" (±{jitter}{mixed})" if jitter else f" (0{mixed})")


def _student_recipe(run: dict) -> str:
    """A distilled run's kept recipe: its jitter, or ' (twin)' when the hard-label twin joined the teacher."""
    return " (twin)" if run.get("twin") else _recipe(run.get("jitter"))


def _recipe_source(candidates) -> str:
    """Whose recipe the students train with: edgekd distill's defaults, unless a candidate turns its jitter search off."""
    fixed = [f"`{c['name']}`" for c in candidates if not c.get("recipe_search", True) and not c.get("derived")]
    if not fixed:
        return "the defaults of `edgekd distill`"
    return (f"{', '.join(fixed)} without the student's jitter search (r=0, `--no-recipe-search`): `edgekd distill` "
            "would also try ±2 px on consistent views")


def _mixup_note(candidates) -> str:
    if not any(c.get("mixup") for c in candidates):
        return ""
    first = " It is the first candidate, so the baseline also tries it (hard labels blended alike)." if candidates[0].get("mixup") else ""
    return (f" A candidate with m=A trains on mixup, Beta(A, A) (Zhang et al. 2018), the teacher online on every blended "
            f"batch (function matching, Beyer et al. 2022), its recipe as asked (no search).{first}")


def _twin_note(candidates) -> str:
    if not any(c.get("twin") for c in candidates):
        return ""
    return (" A candidate with w=1 also distills a student from the teacher with the hard-label baseline as an equal member "
            "(probabilities averaged; a born-again step, Furlanello et al. 2018) when the teacher is no better than that "
            "baseline on val, and keeps the better on val; (twin): that student was kept.")


def _pick_note(result: dict) -> str:
    derived = next((c["name"] for c in result["candidates"] if c.get("derived")), None)
    if derived:
        return (f" Each candidate is one soft term (`search_methods=()`). `{derived}` is what `edgekd distill` keeps "
                "when the first is its method and the second in its `search_methods`: per cell, the better on val of the "
                "first's recipes and the second's no-jitter one, assembled from the two runs (no extra training).")
    if result.get("pick_not_assembled"):
        return (" The --pick column could not be assembled from the runs: " + "; ".join(
            f"k={c['members']} `{c['student']}` seed {c['seed']}: {c['why']}"
            for c in result["pick_not_assembled"]) + ".")
    return ""


def reused_list(cells: list) -> str:
    """'k=1 `mlp` seeds 0, 1, 2; k=1 `dsconv` seed 0': the cells taken from an earlier result, by teacher and student."""
    seeds = {}
    for c in cells:
        seeds.setdefault((c["members"], c["student"]), []).append(str(c["seed"]))
    return "; ".join(f"k={k} `{student}` seed{'s' if len(s) > 1 else ''} {', '.join(s)}" for (k, student), s in seeds.items())


def _seed_range(a: dict) -> str:
    first = a.get("first_seed", 0)   # results made before --first-seed ran from seed 0
    return f"{first}..{first + a['seeds'] - 1}" if a["seeds"] else "none"


def render(result: dict) -> str:
    lines = header_markdown(f"Defaults study on `{result['data']['spec']}` ({result['data']['n_train']} training images)",
                            result["provenance"])
    a = result["args"]
    ensemble = result.get("teacher") or (f"{max(int(k) for k in a['members'].split(','))} × `{a['teacher_arch']}` "
                                          f"({a['teacher_epochs']} epochs, ±2 px jitter)")
    searched = any(r.get("jitter") is not None for c in result["cells"] for r in c["runs"].values())
    recipe = ("its recipe chosen on val between no jitter on cached logits and ±2 px on consistent views (the teacher "
              "cached on every shift)" if searched else "no jitter, cached logits")
    lines += [f"Teachers: the first k of {ensemble}, k ∈ {{{a['members']}}}. Every student {a['epochs']} epochs, "
              f"{recipe} ({_recipe_source(result['candidates'])}), seeds {_seed_range(a)}; gain = distilled − "
              "hard-label baseline with the same budget and seed, in test-accuracy points. The baseline keeps the "
              "better on val of ±2 px jitter and none. In brackets: the jitter each side chose (0: none)."
              + _mixup_note(result["candidates"]) + _twin_note(result["candidates"]) + _pick_note(result), "",
              "| teacher (k) | teacher acc | student | seed | baseline | " + " | ".join(c["name"] for c in result["candidates"]) + " |",
              "|---|---|---|---|---|" + "---|" * len(result["candidates"])]
    for c in result["cells"]:
        runs = [c["runs"][cand["name"]] for cand in result["candidates"]]
        lines.append(f"| {c['members']} | {100 * c['teacher']:.2f} | `{c['student']}` | {c['seed']} | "
                     f"{100 * c['baseline']:.2f}{_recipe(c.get('baseline_jitter'), c.get('baseline_mixup', 0.0))} | "
                     + " | ".join(f"{100 * (r['test_accuracy'] - c['baseline']):+.2f}{_student_recipe(r)}" for r in runs) + " |")
    lines += ["", "| candidate | mean gain | worst cell | cells won |", "|---|---|---|---|"]
    for r in result["summary"]:
        mark = " **(recommended)**" if r["recommended"] else ""
        lines.append(f"| `{r['candidate']}`{mark} | {r['mean_gain']:+.2f} | {r['worst_gain']:+.2f} | {r['wins']}/{r['cells']} |")
    pairs = by_pair(result["cells"], result["candidates"])
    if any(r["seeds"] > 1 for r in pairs):
        lines += ["", f"Per teacher and student, over the seeds (a default must not lose: mean gain >= {NOT_LOSING:+.1f}):", "",
                  "| teacher (k) | student | candidate | seeds | baseline (mean) | mean gain | std | 95% interval | not losing |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for r in pairs:
            std = f"{r['std_gain']:.2f}" if r["std_gain"] is not None else "-"
            ci = "{:+.2f} to {:+.2f}".format(*r["interval95"]) if r.get("interval95") else "-"
            lines.append(f"| {r['members']} | `{r['student']}` | `{r['candidate']}` | {r['seeds']} | {100 * r['baseline']:.2f} | "
                         f"{r['mean_gain']:+.2f} | {std} | {ci} | {'yes' if r['not_losing'] else '**no**'} |")
    lines += _judge_lines(result["cells"], result["candidates"])
    for k, profile in (result.get("targets") or {}).items():
        lines += ["", f"What the student is asked to match (teacher k={k} on the un-shifted train split; its top-1 there "
                  f"{100 * profile['train_accuracy']:.2f}%): the soft targets' mean top probability and mean "
                  "true-class probability.", "", "| candidate | mean p_max | mean p(true class) |", "|---|---|---|"]
        lines += [f"| `{name}` | {t['p_max']:.3f} | {t['p_true']:.3f} |" for name, t in profile["candidates"].items()]
    if (r := result.get("reused_from")) and r["cells"]:
        differ = machine_difference(r.get("machine") or {}, result["provenance"]["machine"])
        lines += ["", "Taken from an earlier run with the same arguments (`{}`, revision {}, {}; {}): {}.".format(
            r["path"], r["revision"], r["date"], r.get("teacher_match", ""),
            reused_list(r["cells"]))
            + (f" They ran on another machine ({differ}), where the same seed trains other students: each is still a "
               "side-by-side pair with its baseline." if differ else " The other cells were trained or read back by this one.")]
    if result.get("not_run"):
        lines += ["", "Not run (left for a later session; the table holds only the cells above): "
                  + ", ".join(f"k={c['members']} `{c['student']}` seed {c['seed']}" for c in result["not_run"]) + "."]
    lines.append("")
    return "\n".join(lines)


def main(argv=None):
    args = parse_args(argv)
    started = time.perf_counter()
    result = run(args)
    result["args"] = vars(args)
    result["provenance"] = provenance(started)
    if result["runs_read_back"]:   # their training ran in an earlier invocation; its time is not in this one's
        result["provenance"]["run_note"] = (f"this invocation; {result['runs_read_back']} of "
                                            f"{result['runs_read_back'] + result['runs_trained']} runs read back from --work")
    write_result(args, result, render(result))


if __name__ == "__main__":
    run_script(main)
