"""The spine's figures (issue 2) and scenario (a), the seed's table: teacher ensemble, students on
hard labels, students distilled, on Fashion-MNIST (full data), mean ± std over seeds.

    python -m benchmarks.spine_fmnist                 # full run (about an hour on 2 cores)
    python -m benchmarks.spine_fmnist --smoke         # digits, seconds

Writes ``<out>.md`` and ``<out>.json``. The teacher ensemble is trained once into ``--work`` (or
reused from there); (T, alpha) are chosen on val by ``--temperature auto --alpha auto`` with seed 0,
then kept for the other seeds, and so is the hard-label baseline's recipe (jitter on or off, and with
``--student-mixup`` mixup on or off, chosen on val with seed 0). Every student run has its hard-label twin with the same budget, seed and transfer set.
``--reuse`` takes the seeds an earlier result of the same arguments measured instead of training them again,
each only if the settings it recorded are the ones this run would use.
"""

from __future__ import annotations

import time
from dataclasses import asdict

import torch

from benchmarks.provenance import header_markdown, interval95, mean_std, pm, provenance
from benchmarks.scenario_common import (apply_smoke, base_parser, earlier_result, judge_lines, machine_difference,
                                        prepare, Refused, run_script, same_settings, write_result)
from edgekd.config import METHODS


def parse_args(argv=None):
    p = base_parser(__doc__, "benchmarks/results/spine_fmnist")
    p.add_argument("--students", default="mlp@20;cnn:width=8@10",
                   help="';'-separated student specs, each with '@EPOCHS' (else --epochs).")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--seeds", type=int, default=None, help="Seeds 0..N-1 (default 3; 2 with --smoke).")
    p.add_argument("--views", default=None, help="Cached jittered teacher views per image (default 4), or 'all': every "
                   "integer shift, so the teacher sees exactly the student's view (consistent teaching).")
    p.add_argument("--temperature-grid", default="2,4,8,16")
    p.add_argument("--alpha-grid", default="0.5,0.9")
    p.add_argument("--method", default=None, choices=METHODS,
                   help="The students' one soft term, without the method search (default: edgekd distill's, with its search).")
    p.add_argument("--student-jitter", type=int, default=None,
                   help="The students' ±px jitter (default: the teacher's --jitter); the hard-label baseline picks its own.")
    p.add_argument("--student-mixup", type=float, default=0.0, metavar="A",
                   help="The students' mixup, Beta(A, A), with the teacher online on every blended batch (function "
                   "matching, Beyer et al. 2022; no cached views); the hard-label baseline also tries it.")
    p.add_argument("--student-flip", action="store_true",
                   help="The students also mirror a random half of each batch left to right, the teacher judging the "
                   "mirrored image (with --views all: cached on every shift, each mirrored too); the hard-label "
                   "baseline also tries it.")
    p.add_argument("--reuse", metavar="JSON", help="An earlier result of this benchmark with the same arguments (but "
                   "--seeds and --out): its seeds are taken as they are, the others trained.")
    p.add_argument("--render", metavar="JSON", help="Only write the report again from a result JSON of this benchmark.")
    args = p.parse_args(argv)
    args.seeds = args.seeds or (2 if args.smoke else 3)
    if args.student_mixup < 0:
        p.error(f"--student-mixup must be >= 0 (0 = off); got {args.student_mixup:g}")
    if args.student_mixup and args.views not in (None, "0"):
        p.error(f"--student-mixup runs the teacher online on every blended batch, so no views are cached; "
                f"got --views {args.views}; leave --views out")
    args.views = args.views or ("0" if args.student_mixup else "4")
    if args.views != "all" and not args.views.isdigit():
        p.error(f"--views must be a count or 'all'; got {args.views!r}")
    if args.smoke:
        apply_smoke(args)
        args.epochs, args.views = 2, "0" if args.student_mixup else "2"
        if args.students == p.get_default("students"):   # explicit students stand, as explicit grids do
            args.students = "mlp:hidden=32@2"
        if (args.temperature_grid, args.alpha_grid) == (p.get_default("temperature_grid"), p.get_default("alpha_grid")):
            args.temperature_grid, args.alpha_grid = "2,8", "0.9"   # explicit grids stand
    return args


def epoch_time_ratio(student_spec, data, teacher_train_logits, repeats: int = 3, device: str = "cpu", online=None) -> dict:
    """Seconds per distillation epoch vs per hard-label epoch (plain), alternated in one run. The
    distillation reads cached logits, or with ``online=(teacher, jitter, mixup)`` runs the teacher on every
    jittered, blended batch (function matching), whose forward passes are then most of the epoch."""
    import torch

    from edgekd.distill import distill_batches, distill_loss_fn
    from edgekd.models import create_model
    from edgekd.teacher_training import cross_entropy_loss, supervised_batches
    from edgekd.training import TrainConfig, fit

    cfg = TrainConfig(epochs=1, seed=0, device=device)
    n = len(data.y_train)
    val = (data.x_val[:256], data.y_val[:256])
    distill_s, hard_s = [], []
    for _ in range(repeats):
        for kind in ("distill", "hard"):
            torch.manual_seed(0)
            model = create_model(student_spec, data.input_shape, data.num_classes, mean=data.mean, std=data.std)
            if kind == "distill":
                batches = (distill_batches(data.x_train, data.y_train, None, None, online[1], online[0], online[2]) if online
                           else distill_batches(data.x_train, data.y_train, teacher_train_logits, None, 0, None))
                r = fit(model, n_train=n, make_batch=batches,
                        loss_fn=distill_loss_fn(4.0, 0.9), val=val, config=cfg, store=None, name="timing",
                        data_device=data.device)
                distill_s.append(r.seconds_per_epoch)
            else:
                r = fit(model, n_train=n, make_batch=supervised_batches(data.x_train, data.y_train, 0),
                        loss_fn=cross_entropy_loss, val=val, config=cfg, store=None, name="timing",
                        data_device=data.device)
                hard_s.append(r.seconds_per_epoch)
    ratios = [d / h for d, h in zip(distill_s, hard_s)]
    return {"student": student_spec, "teacher_online": online is not None, "distill_seconds": distill_s, "hard_seconds": hard_s,
            "ratio_median": sorted(ratios)[len(ratios) // 2], "ratios": ratios}


def run_timings(path) -> dict:
    """The wall-clock record of a distilled student (its manifest's ``timings``): epoch times and the
    cost of the (T, alpha) search and of the baseline recipe not kept."""
    from edgekd.artifacts import load_artifact

    return dict(load_artifact(path, verify=False).manifest.timings or {})


def rerender(path: str) -> None:
    """Write ``<out>.md`` again from ``<out>.json`` (filling timings from the students' manifests)."""
    import json
    from pathlib import Path

    from edgekd.artifacts import is_artifact

    result = json.loads(Path(path).read_text())
    filled = False
    for s in result["students"]:
        for r in s["runs"]:
            # only then, and only from a folder still there: a result re-rendered elsewhere has none (its cost: none)
            if "timings" not in r and is_artifact(Path(r["path"])):
                r["timings"], filled = run_timings(r["path"]), True
    if filled:
        Path(path).write_text(json.dumps(result, indent=2, default=str) + "\n")
    Path(path).with_suffix(".md").write_text(render(result))


REUSE_IGNORED = {"seeds", "out", "reuse", "render"}   # what may differ from the run whose seeds are reused
# arguments added since results were committed, with the value an earlier result (which lacks them) ran with
ADDED_ARGS = {"student_mixup": 0.0, "student_flip": False, "teacher_flip": False}


def reused_runs(path: str | None, args) -> tuple[dict, dict | None]:
    """The runs of an earlier result, by (student, epochs, seed), when it was made with the same arguments;
    else exits naming the first argument that differs."""
    if not path:
        return {}, None
    earlier, source = earlier_result(path, args, REUSE_IGNORED, ADDED_ARGS)
    runs = {(s["student"], s["epochs"], r["seed"]): r for s in earlier["students"] for r in s["runs"]}
    return runs, {**source, "seeds": sorted({seed for (_, _, seed) in runs})}


def reused_machine_note(result: dict) -> str:
    """Where the reused seeds ran on another kind of CPU or thread count than this run: said, since the same seed
    trains other weights there (each seed is still a pair measured side by side on one machine)."""
    differ = machine_difference(result["reused_from"].get("machine") or {}, result["provenance"]["machine"])
    if not differ:
        return ""
    return (f" They ran on another machine ({differ}), where the same seed trains other "
            "weights: each of their seeds is still a side-by-side pair, but not a repeat of this machine's.")


def main(argv=None):
    from edgekd.distill import DistillConfig, distill, teacher_logits
    from edgekd.training import TrainConfig

    args = parse_args(argv)
    if args.render:
        return rerender(args.render)
    started = time.perf_counter()
    reuse, reused_from = reused_runs(args.reuse, args)
    data, teacher, t_metrics, cache, work = prepare(args)
    grid_t = tuple(float(v) for v in args.temperature_grid.split(","))
    grid_a = tuple(float(v) for v in args.alpha_grid.split(","))
    fixed = (grid_t[0], grid_a[0]) if len(grid_t) == len(grid_a) == 1 else None   # one (T, alpha): nothing to search
    teacher_record = {"arch": args.teacher_arch, "members": args.ensemble, "epochs": args.teacher_epochs, "flip": args.teacher_flip,
                      "member_test_accuracy": t_metrics["member_test_accuracy"],
                      "ensemble_test_accuracy": t_metrics["test_accuracy"], "macs": t_metrics["macs"]}
    if args.student_flip:   # the students' teacher judges mirrored images: how well it does on them
        teacher_record["mirrored_test_accuracy"] = mirrored_accuracy(teacher, data)

    def result_so_far(students, timing=None) -> dict:
        return {"provenance": provenance(started), "args": vars(args), "data": data.describe(), "teacher": teacher_record,
                "students": students, "epoch_time": timing, "reused_from": reused_from}

    students = []
    specs = [entry.partition("@")[0] for entry in args.students.split(";")]
    jitter = args.jitter if args.student_jitter is None else args.student_jitter
    for entry in args.students.split(";"):
        spec, _, epochs = entry.partition("@")
        epochs = int(epochs) if epochs else args.epochs
        runs, chosen, recipe = [], fixed, None
        record = {"student": spec, "epochs": epochs, "runs": runs}
        students.append(record)
        # named by budget too when it is not --epochs: a run at another budget must not replace these folders
        suffix = (("" if jitter == args.jitter else f"-j{jitter}") + (f"-m{args.student_mixup:g}" if args.student_mixup else "")
                  + ("-flip" if args.student_flip else "")
                  + (f"-e{epochs}" if epochs != args.epochs or specs.count(spec) > 1 else ""))
        for seed in range(args.seeds):
            out = work / f"student-{spec.replace(':', '_').replace(',', '_').replace('=', '')}{suffix}-s{seed}"
            config = DistillConfig(student=spec, temperature=chosen[0] if chosen else None, alpha=chosen[1] if chosen else None,
                                   temperature_grid=grid_t, alpha_grid=grid_a,
                                   train=TrainConfig(epochs=epochs, jitter=jitter, mixup=args.student_mixup, seed=seed,
                                                     device=args.device, flip=args.student_flip),
                                   views=0 if args.views == "all" else int(args.views), view_grid=args.views == "all",
                                   baseline=True, baseline_jitter=recipe and recipe["jitter"],
                                   baseline_mixup=(recipe and recipe["mixup"]) or None,   # None, as older records mean
                                   baseline_flip=bool(recipe and recipe["flip"]),
                                   **({"method": args.method, "search_methods": ()} if args.method else {}))
            if (spec, epochs, seed) in reuse:
                run = reused_run(reuse[(spec, epochs, seed)], config, args.reuse, teacher, t_metrics["test_accuracy"])
            else:
                r = distill(teacher, data, config, out, cache=cache, overwrite=True, resume=(out.parent / (out.name + ".partial")).exists())
                run = asdict(r) | {"path": str(out), "seed": seed, "timings": run_timings(out), "config": asdict(config),
                                   "teacher_fingerprint": teacher.fingerprint}
            runs.append(run)
            chosen = chosen or (run["temperature"], run["alpha"])
            recipe = recipe or chosen_baseline(run)
            record.update(temperature=chosen[0], alpha=chosen[1], search=runs[0]["search"])
            result = result_so_far(students)   # written after every seed: a stopped run keeps what it measured
            write_result(args, result, render(result), quiet=True)
    online = (teacher, jitter, args.student_mixup) if args.student_mixup else None
    timing = epoch_time_ratio(args.students.split(";")[0].partition("@")[0], data,
                              None if online else teacher_logits(teacher, data, "train", cache),
                              repeats=1 if args.smoke else 3, device=args.device, online=online)
    result = result_so_far(students, timing)
    write_result(args, result, render(result))


def mirrored_accuracy(teacher, data) -> float:
    """The teacher's test accuracy on the test images mirrored left to right (``--student-flip``'s views)."""
    from edgekd.distill import sharded_logits
    from edgekd.training import accuracy_and_nll

    mirror = torch.ones((len(data.y_test), 3), dtype=torch.long) * torch.tensor([0, 0, 1])
    return accuracy_and_nll(sharded_logits(teacher.logits, data.x_test, None, mirror, 0), data.y_test)[0]


def reused_run(run: dict, config, path: str, teacher, teacher_accuracy: float) -> dict:
    """An earlier seed, taken only when the settings it recorded are the ones this run would distill it
    with (the same arguments can mean other settings once edgekd's defaults change, e.g. the student's
    method search, and a result must not mix recipes) and it was distilled from this run's teacher: by
    its recorded fingerprint, or (a seed from before that was recorded) the same test accuracy to the
    image. The gap it closed is computed against this run's teacher."""
    if not same_settings(run.get("config"), config):
        made = "recorded no settings" if "config" not in run else "was distilled with other settings"
        raise Refused(f"--reuse needs seeds distilled with this run's settings; seed {run['seed']} of "
                      f"`{config.student}` in {path} {made}. Leave --reuse out to train it again.")
    recorded = run.get("teacher_fingerprint")
    same_teacher = recorded == teacher.fingerprint if recorded else abs(run["teacher_test_accuracy"] - teacher_accuracy) < 1e-9
    if not same_teacher:
        raise Refused(f"--reuse needs seeds distilled from this run's teacher; seed {run['seed']} of `{config.student}` in "
                      f"{path} was distilled from another (test accuracy {run['teacher_test_accuracy']:.4f}, this "
                      f"teacher {teacher_accuracy:.4f}). Leave --reuse out to train it again.")
    return run | {"reused": True}


def chosen_baseline(run: dict) -> dict | None:
    """The hard-label recipe a run kept on val, ``{"jitter", "mixup", "flip"}`` (mixup 0 and no flip in records made
    before them)."""
    return next(({"jitter": b["jitter"], "mixup": b.get("mixup", 0.0), "flip": b.get("flip", False)}
                 for b in run["baseline_search"] if b["chosen"]), None)


AIMS = {"mlp": ("gap", 0.60), "cnn:width=8": ("accuracy", 0.930)}  # issue 11: >= 60% of the gap; >= 93.0%


def label(s: dict, students: list[dict]) -> str:
    """The student's name, with its budget when the same student was run at several budgets."""
    repeated = sum(o["student"] == s["student"] for o in students) > 1
    return f"`{s['student']}`" + (f" ({s['epochs']} epochs)" if repeated else "")


def strongest_baseline_line(s: dict, students: list[dict], teacher: float) -> str | None:
    """When the same student ran at several budgets, its gap against the best hard-label mean of any of
    them: a longer schedule can hurt the baseline, and the same-budget gap would then flatter distillation."""
    from edgekd.distill import gap_closed

    same = [o for o in students if o["student"] == s["student"]]
    if len(same) < 2:
        return None
    best = max(same, key=lambda o: mean_std(r["baseline_test_accuracy"] for r in o["runs"])[0])
    if best is s:
        return None
    base = mean_std(r["baseline_test_accuracy"] for r in best["runs"])[0]
    dist = mean_std(r["student_test_accuracy"] for r in s["runs"])[0]
    gap = gap_closed(dist, base, teacher)
    return (f"{label(s, students)} distilled against the strongest hard-label student of any budget here "
            f"({best['epochs']} epochs, {100 * base:.2f}%): {gap_words(gap, base, dist, teacher)}.")


def gap_words(gap: float | None, base: float, dist: float, teacher: float) -> str:
    """The share of the baseline->teacher gap in words, each case a whole clause (as ``describe_gain`` says it)."""
    if gap is None:
        return "no share: the teacher is not above that baseline"
    if gap < 0:
        return f"loses by {100 * (base - dist):.2f} points"
    if gap > 1:
        return f"closes all of the gap and ends {100 * (dist - teacher):.2f} points above the teacher"
    return f"closes {100 * gap:.0f}% of the gap"


def aim_line(s: dict, teacher: float, students: list[dict] | None = None) -> str:
    from edgekd.distill import gap_closed

    dist = [r["student_test_accuracy"] for r in s["runs"]]
    base = [r["baseline_test_accuracy"] for r in s["runs"]]
    kind, target = AIMS.get(s["student"], (None, None))
    if len(dist) < 2:   # one seed has no interval, and an aim is not judged on one seed
        text = f"{label(s, students or [s])} distilled: one seed, so no interval and no verdict on the aim"
        return text + (f" (≥ {100 * target:.1f}%; this seed {100 * dist[0]:.2f}%; the ensemble {100 * teacher:.2f}%)."
                       if kind == "accuracy" else ".")
    lo, hi = interval95(dist)
    text = f"{label(s, students or [s])} distilled: 95% interval of the mean over {len(dist)} seeds {100 * lo:.2f}–{100 * hi:.2f}%"
    if kind == "gap":   # judged against the strongest hard-label mean of this student at any budget here
        same = [o for o in (students or [s]) if o["student"] == s["student"]]
        strongest = max(mean_std(r["baseline_test_accuracy"] for r in o["runs"])[0] for o in same)
        gap = gap_closed(mean_std(dist)[0], max(strongest, mean_std(base)[0]), teacher)
        met = gap is not None and gap >= target
        against = " against the strongest hard-label student here" if strongest > mean_std(base)[0] else ""
        text += f"; aim: close ≥ {100 * target:.0f}% of the gap{against}: **{'met' if met else 'missed'}**"
    elif kind == "accuracy":
        (m_d, sd_d), (m_b, sd_b) = mean_std(dist), mean_std(base)
        diff = 100 * (m_d - m_b)
        within = "within" if abs(diff) <= 100 * max(sd_d, sd_b) else "beyond"
        text += (f"; aim: ≥ {100 * target:.1f}%: **{'met' if m_d >= target else 'missed'}**"
                 f"; the ensemble: {100 * teacher:.2f}%; the same student on hard labels {100 * m_b:.2f}%, so distillation "
                 f"adds {diff:+.2f} points ({within} the seed spread)")
    return text + "."


def per_seed_line(s: dict, students: list[dict]) -> str | None:
    """Each seed's distilled and hard-label test accuracy, in seed order."""
    if len(s["runs"]) < 2:
        return None
    return (f"{label(s, students)} per seed, distilled / hard labels: " + ", ".join(
        f"{r['seed']}: {100 * r['student_test_accuracy']:.2f} / {100 * r['baseline_test_accuracy']:.2f}" for r in s["runs"]) + ".")


def recipe_name(c: dict) -> str:
    """A hard-label recipe: "±1 px", "±1 px, mixup 1" or "±1 px, flip"."""
    return f"±{c['jitter']} px" + (f", mixup {c['mixup']:g}" if c.get("mixup") else "") + (", flip" if c.get("flip") else "")


def tried(candidates: list[dict], name=recipe_name) -> str:
    """Recipes tried on val, each named and scored, the kept one marked: "±2 px 89.00 / ±0 px 89.88 (kept)"."""
    return " / ".join(f"{name(c)} {100 * c['val_accuracy']:.2f}" + (" (kept)" if c["chosen"] else "") for c in candidates)


def student_recipe_line(s: dict, students: list[dict]) -> str | None:
    """The distilled student's own recipe search (``DistillConfig.recipe_search``): what each seed tried on
    val, what it kept, and what the recipes not kept cost; None when no seed searched."""
    runs = [r for r in s["runs"] if len(r.get("student_search") or []) > 1]
    if not runs:
        return None

    def view(c):
        if not c["jitter"]:
            return "±0 px"
        return f"±{c['jitter']} px, " + (f"all {(2 * c['jitter'] + 1) ** 2} shifts" if c["view_grid"] else f"{c['views']} views")

    kept = [next(c for c in r["student_search"] if c["chosen"]) for r in runs]
    plain = sum(not c["jitter"] for c in kept)
    cost = sum(r.get("student_search_seconds") or 0.0 for r in runs)
    return (f"Distilled recipe for {label(s, students)}, chosen on val per seed "
            f"({', '.join('seed ' + str(r['seed']) + ': ' + tried(r['student_search'], view) for r in runs)}): no jitter in {plain} of {len(runs)} seeds; "
            f"the recipes not kept cost {cost / 60:.1f} min (reported apart).")


def recipes_phrase(result: dict) -> str:
    tried = {tuple(b["jitter"] for b in s["runs"][0]["baseline_search"]) for s in result["students"]}
    if all(len(t) > 1 for t in tried):
        first = [b for s in result["students"] for b in s["runs"][0]["baseline_search"]]
        return ("jitter on or off" + (" and mixup with the student's jitter" if any(b.get("mixup") for b in first) else "")
                + (" and mirroring with the student's jitter" if any(b.get("flip") for b in first) else "") + ", chosen on val")
    return "here trained without jitter only: this run predates the baseline's own ±2 px recipe"


def recipe_line(s: dict, students: list[dict]) -> str:
    """How the hard-label recipe was chosen: on val per seed, or with seed 0 and kept (as (T, alpha) are);
    results made before the baseline's own recipe search tried one recipe only, and say so."""
    runs = s["runs"]
    if len(runs[0]["baseline_search"]) < 2:
        return (f"Hard-label recipe for {label(s, students)}: {recipe_name(chosen_baseline(runs[0]))} in every seed, "
                f"the only one tried (no search).")
    if all(len(r["baseline_search"]) > 1 for r in runs):
        chosen = [chosen_baseline(r)["jitter"] for r in runs]
        per_seed = ", ".join(f"seed {r['seed']}: {tried(r['baseline_search'])}" for r in runs)
        mixed = sum(any(b["chosen"] and b.get("mixup") for b in r["baseline_search"]) for r in runs)
        return (f"Hard-label recipe for {label(s, students)}, chosen on val per seed ({per_seed}): "
                f"jitter off in {sum(c == 0 for c in chosen)} of {len(chosen)} seeds"
                + (f", mixup in {mixed}" if any(b.get("mixup") for r in runs for b in r["baseline_search"]) else "") + ".")
    return (f"Hard-label recipe for {label(s, students)}, chosen on val with seed {runs[0]['seed']} ({tried(runs[0]['baseline_search'])}) "
            f"and kept for the other seeds, as (T, alpha) are: {recipe_name(chosen_baseline(runs[0]))}.")


def render(result: dict) -> str:
    from edgekd.distill import gap_closed

    t = result["teacher"]
    lines = header_markdown(f"Distillation on `{result['data']['spec']}`: teacher ensemble vs students", result["provenance"])
    lines += [f"Train {result['data']['n_train']} / val {result['data']['n_val']} / test {result['data']['n_test']}. "
              f"Teacher: {t['members']} × `{t['arch']}` ({t['epochs']} epochs, ±{result['args']['jitter']} px jitter"
              f"{', mirrored half of each batch' if t.get('flip') else ''}), "
              f"members {', '.join(f'{100 * a:.2f}' for a in t['member_test_accuracy'])}; "
              f"ensemble (mean of logits) **{100 * t['ensemble_test_accuracy']:.2f}%**, {t['macs']:,} MACs"
              + (f"; on the test images mirrored left to right {100 * t['mirrored_test_accuracy']:.2f}%"
                 if "mirrored_test_accuracy" in t else "") + ".", "",
              "| student | epochs | MACs | share of ensemble MACs | T | alpha | hard labels (test %) | distilled (test %) | "
              "gap closed |", "|---|---|---|---|---|---|---|---|---|"]
    for s in result["students"]:
        base = [r["baseline_test_accuracy"] for r in s["runs"]]
        dist = [r["student_test_accuracy"] for r in s["runs"]]
        gap = gap_closed(mean_std(dist)[0], mean_std(base)[0], t["ensemble_test_accuracy"])
        closed = "no gap (teacher not above baseline)" if gap is None else (
            f"all, {100 * (mean_std(dist)[0] - t['ensemble_test_accuracy']):.2f} points above the teacher" if gap > 1 else
            f"{100 * gap:.0f}%" if gap >= 0 else f"loses by {100 * (mean_std(base)[0] - mean_std(dist)[0]):.2f} points")
        macs = s["runs"][0]["student_macs"]
        lines.append(f"| `{s['student']}` | {s['epochs']} | {macs:,} | 1/{t['macs'] / macs:.0f} | {s['temperature']:g} | {s['alpha']:g} | "
                     f"{pm(base)} | {pm(dist)} | {closed} |")
    students = result["students"]
    lines += [""] + [aim_line(s, t["ensemble_test_accuracy"], students) for s in students]
    lines += [line for s in students if (line := per_seed_line(s, students))]
    lines += [line for s in students if (line := strongest_baseline_line(s, students, t["ensemble_test_accuracy"]))]
    budgets = ", ".join(f"{s['epochs']}" for s in result["students"])
    a = result["args"]
    jitter = a["jitter"] if a.get("student_jitter") is None else a["student_jitter"]
    cached = (f"the teacher cached on all {(2 * jitter + 1) ** 2} shifts: consistent teaching" if str(a["views"]) == "all"
              else f"{a['views']} cached teacher views")
    views = (f"±{jitter} px jitter ({cached})" if jitter else
             "no jitter (teacher logits cached on the un-augmented transfer set)")
    if a.get("student_mixup"):
        views = (f"{f'±{jitter} px jitter and ' if jitter else ''}mixup (Beta({a['student_mixup']:g}, {a['student_mixup']:g})), "
                 "the teacher online on every blended batch: function matching")
    if a.get("student_flip"):
        views += (", a random half mirrored left to right" + (" (the teacher cached on each shift mirrored too)"
                                                                if str(a["views"]) == "all" else ""))
    if a.get("method"):
        views += f", soft term `{a['method']}` alone (`--method`: no method search)"
    seeds = len(result["students"][0]["runs"])
    lines += ["", (f"Mean ± std over {seeds} seeds" if seeds > 1 else "One seed, so no spread") + "; the same seed, budget "
              f"({budgets} epochs), "
              f"and transfer set for both columns; the distilled student trains with {views}. "
              "Gap closed = (distilled − hard) / (ensemble − hard), the paper's measure (it closes 91% on MNIST), against "
              f"the hard-label student's best recipe ({recipes_phrase(result)}); a loss is called a loss.", ""]
    if result.get("reused_from"):
        r = result["reused_from"]
        seeds = f"Seeds {', '.join(map(str, r['seeds']))} are" if len(r["seeds"]) > 1 else f"Seed {r['seeds'][0]} is"
        lines += [f"{seeds} taken from an earlier run with the same arguments "
                  f"(`{r['path']}`, revision {r['revision']}, {r['date']}); the other seeds were trained by this one."
                  + reused_machine_note(result), ""]
    for s in result["students"]:
        lines.append(recipe_line(s, students))
        if line := student_recipe_line(s, students):
            lines.append(line)
        timed = [r.get("timings") or {} for r in s["runs"]]
        if any(timed):
            search = sum(t.get("search_seconds") or 0.0 for t in timed)
            base = sum(t.get("baseline_search_seconds") or 0.0 for t in timed)
            train = sum((t.get("seconds_per_epoch") or 0.0) * s["epochs"] for t in timed)
            targets = [t["teacher_targets_seconds"] for t in timed if t.get("teacher_targets_seconds") is not None]
            online = bool(result["args"].get("student_mixup"))   # no targets made ahead: the teacher runs in every step
            later = f" (later seeds read them from the cache in {min(targets):.1f} s)" if len(targets) > 1 else ""
            once = f"; the teacher's targets {max(targets):.0f} s once{later}" if targets and not online else ""
            teacher = " (the teacher's forward passes included)" if online else ""
            lines.append(f"Cost, all seeds: distilled students {train / 60:.1f} min of training{teacher}; the (T, alpha) search "
                         f"{search / 60:.1f} min; the baseline recipe not kept {base / 60:.1f} min{once} (reported apart, "
                         "not charged to either column).")
        lines.append("")
        if s["search"]:
            lines.append(f"Auto search for {label(s, students)} (seed 0, val accuracy after a short budget): " + ", ".join(
                f"T={c['temperature']:g}/α={c['alpha']:g}: {100 * c['val_accuracy']:.2f}" for c in s["search"]) + ".")
            lines.append("")
    if judge := judge_lines({label(s, students): [(r.get("student_search") or [], r.get("baseline_search") or [])
                                                  for r in s["runs"]] for s in students}):
        lines += judge[1:] + [""]   # the blank line before it is there already
    e = result["epoch_time"]
    if e is None:
        return "\n".join(lines + ["Epoch time: not measured yet (the run was stopped or is still going).", ""])
    source = ("the teacher online on every blended batch (its forward passes included)" if e.get("teacher_online")
              else "cached logits")
    lines += [f"Epoch time, `{e['student']}`, full train split, alternated in one run: distillation with {source} "
              f"{', '.join(f'{v:.2f}' for v in e['distill_seconds'])} s vs hard labels {', '.join(f'{v:.2f}' for v in e['hard_seconds'])} s: "
              f"**{e['ratio_median']:.2f}×** (median ratio" + ("" if e.get("teacher_online") else "; aim ≤ 1.15×") + ").", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    run_script(main)
