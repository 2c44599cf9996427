"""The measured facts behind edgekd's defaults (docs/findings.md), each from edgekd's own library calls.

    python -m benchmarks.findings_fmnist                        # every check; the README's teacher in runs/fmnist
    python -m benchmarks.findings_fmnist --checks cluster,mirror
    python -m benchmarks.findings_fmnist --smoke                # digits, seconds

The teacher is the README's (3 x `cnn`, 6 epochs, +-2 px), trained in --work if missing. Checks:

- ``cluster``: k-means (K=4, n_init=10, seed 0) on the columns of the class covariance of the teacher's
  probabilities on the train split, softmax(z/T) for T in --cluster-temperatures, and on the correlation matrix
  (the covariance normalised by its diagonal) at T=1 and T=4: why ``--cluster-temperature`` defaults to 4;
- ``jitter``: the hard-label student (``edgekd teacher train --arch S --epochs 20 --lr 3e-3``) with and without
  +-2 px jitter, per seed: why ``distill --baseline`` chooses the baseline's jitter on val;
- ``fixed``: the student on the teacher's logits cached on the un-augmented train split (no jitter, no recipe
  search): plain KD (T=8, alpha=0.5) at 20 and 60 epochs beside its hard-label twin (the same loop, seed and
  budget), and logit standardization (T=2 and T=4, alpha=0.5) at 20: what fixed targets give;
- ``mirror``: the teacher, trained without ``--flip``, on the test images mirrored left to right;
- ``tta``: a 1-member, 6-epoch `cnn` teacher on a 10,000-image subset, its test accuracy plain and with its
  logits averaged over every +-1 and +-2 px shift of each test image (test-time augmentation).
"""

from __future__ import annotations

import time
from dataclasses import asdict

from benchmarks.provenance import header_markdown, provenance
from benchmarks.scenario_common import Refused, apply_smoke, base_parser, prepare, run_script, write_result

CHECKS = ("cluster", "jitter", "fixed", "mirror", "tta")


def parse_args(argv=None):
    p = base_parser(__doc__, "benchmarks/results/findings_fmnist")
    p.add_argument("--checks", default=",".join(CHECKS), help=f"Comma-separated, of {', '.join(CHECKS)}.")
    p.add_argument("--student", default="mlp", help="The student of the jitter and fixed checks.")
    p.add_argument("--seeds", type=int, default=1, help="Seeds of the jitter check.")
    p.add_argument("--hard-epochs", type=int, default=20, help="The jitter check's budget.")
    p.add_argument("--epochs", default="20,60", help="The fixed check's budgets: KD at each, standardization at the first.")
    p.add_argument("--cluster-temperatures", default="1,2,4,6,10")
    p.add_argument("--tta-limit", type=int, default=10000, help="The tta check's train subset.")
    p.add_argument("--tta-epochs", type=int, default=6)
    args = p.parse_args(argv)
    args.checks = [c.strip() for c in args.checks.split(",") if c.strip()]
    unknown = sorted(set(args.checks) - set(CHECKS))
    if unknown or not args.checks:
        raise Refused(f"--checks must name some of {', '.join(CHECKS)}. Got {', '.join(unknown) or 'none'}; pass e.g. --checks "
                      "cluster,mirror.")
    if args.smoke:
        apply_smoke(args)
        args.student, args.epochs, args.hard_epochs, args.tta_limit, args.tta_epochs = "mlp:hidden=32", "2,3", 3, 600, 2
    try:
        args.epochs = [int(e) for e in args.epochs.split(",")]
        args.cluster_temperatures = [float(t) for t in args.cluster_temperatures.split(",")]
    except ValueError as exc:
        raise Refused(f"--epochs and --cluster-temperatures take comma-separated numbers ({exc}); pass e.g. "
                      "--epochs 20,60 --cluster-temperatures 1,4.") from None
    return args


def main(argv=None):
    args = parse_args(argv)
    started = time.perf_counter()
    data, teacher, t_metrics, cache, work = prepare(args)
    result = {"provenance": None, "args": vars(args), "data": data.describe(),
              "teacher": {"arch": args.teacher_arch, "members": args.ensemble, "epochs": args.teacher_epochs,
                          "test_accuracy": t_metrics["test_accuracy"]}, "checks": {}}
    runs = {"cluster": lambda: cluster_check(teacher, data, cache, args.cluster_temperatures),
            "jitter": lambda: jitter_check(data, args, work),
            "fixed": lambda: fixed_check(teacher, data, cache, args, work),
            "mirror": lambda: mirror_check(teacher, data, cache),
            "tta": lambda: tta_check(args, work)}
    for name in args.checks:   # written after each check: a stopped run keeps what it measured
        began = time.perf_counter()
        result["checks"][name] = runs[name]() | {"seconds": round(time.perf_counter() - began, 1)}
        result["provenance"] = provenance(started)
        write_result(args, result, render(result), quiet=name != args.checks[-1])


def cluster_check(teacher, data, cache, temperatures) -> dict:
    import numpy as np

    from edgekd.distill import teacher_logits
    from specialists.clustering import kmeans_labels, labels_to_clusters, logit_covariance

    logits = teacher_logits(teacher, data, "train", cache)
    rows = []
    for t in temperatures:
        cov = logit_covariance(logits, t)
        rows.append({"matrix": "covariance", "temperature": t, "clusters": labels_to_clusters(kmeans_labels(cov, 4))})
    for t in (1.0, 4.0):
        cov = logit_covariance(logits, t)
        scale = np.sqrt(np.diag(cov))
        rows.append({"matrix": "correlation", "temperature": t,
                     "clusters": labels_to_clusters(kmeans_labels(cov / np.outer(scale, scale), 4))})
    return {"rows": rows, "classes": list(data.classes)}


def jitter_check(data, args, work) -> dict:
    from edgekd.teacher_training import TeacherConfig, train_teachers
    from edgekd.training import TrainConfig

    runs = []
    for seed in range(args.seeds):
        for jitter in (0, 2):
            config = TeacherConfig(arch=args.student, ensemble=1,
                                   train=TrainConfig(epochs=args.hard_epochs, lr=3e-3, jitter=jitter, seed=seed,
                                                     device=args.device))
            r = train_teachers(data, config, work / f"findings-hard-{_slug(args.student)}-j{jitter}-s{seed}", overwrite=True)
            runs.append({"seed": seed, "jitter": jitter, "epochs": config.train.epochs,
                         "test_accuracy": r.ensemble_test_accuracy})
    return {"runs": runs}


def fixed_check(teacher, data, cache, args, work) -> dict:
    from edgekd.distill import DistillConfig, distill
    from edgekd.training import TrainConfig

    runs = []
    plan = [("kd", 8.0, e, True) for e in args.epochs] + [("kd-ls", t, args.epochs[0], False) for t in (2.0, 4.0)]
    for method, t, epochs, twin in plan:
        config = DistillConfig(student=args.student, temperature=t, alpha=0.5, method=method, recipe_search=False,
                               search_methods=(), baseline=twin, baseline_jitter=0 if twin else None,
                               train=TrainConfig(epochs=epochs, jitter=0, seed=0, device=args.device))
        out = work / f"findings-fixed-{_slug(args.student)}-{method}-T{t:g}-e{epochs}"
        r = distill(teacher, data, config, out, cache=cache, overwrite=True)
        runs.append({"method": method, "temperature": t, "alpha": 0.5, "epochs": epochs,
                     "test_accuracy": r.student_test_accuracy, "hard_label_test_accuracy": r.baseline_test_accuracy,
                     "config": asdict(config)})
    return {"runs": runs}


def mirror_check(teacher, data, cache) -> dict:
    from benchmarks.spine_fmnist import mirrored_accuracy
    from edgekd.distill import teacher_logits
    from edgekd.training import accuracy_and_nll

    plain = accuracy_and_nll(teacher_logits(teacher, data, "test", cache), data.y_test)[0]
    return {"test_accuracy": plain, "mirrored_test_accuracy": mirrored_accuracy(teacher, data)}


def tta_check(args, work) -> dict:
    import torch

    from benchmarks.scenario_common import same_settings
    from edgekd.artifacts import is_artifact, load_artifact
    from edgekd.data import load_dataset
    from edgekd.device import resolve_device
    from edgekd.targets import sharded_logits
    from edgekd.teacher_training import TeacherConfig, train_teachers
    from edgekd.teachers import load_teacher
    from edgekd.training import TrainConfig, accuracy_and_nll

    data = load_dataset(args.data, train_limit=args.tta_limit)
    config = TeacherConfig(arch=args.teacher_arch, ensemble=1,
                           train=TrainConfig(epochs=args.tta_epochs, lr=2e-3, jitter=args.jitter, device=args.device))
    out = work / f"findings-tta-k1-e{args.tta_epochs}-n{args.tta_limit}"
    manifest = load_artifact(out).manifest if is_artifact(out) else None
    if not (manifest and same_settings((manifest.config or {}).get("teacher"), config)
            and manifest.data.get("spec") == data.spec and manifest.data.get("train_limit") == args.tta_limit):
        train_teachers(data, config, out, overwrite=True)
    teacher = load_teacher(out).to(resolve_device(args.device))
    n = len(data.y_test)
    accuracy = {"plain": accuracy_and_nll(sharded_logits(teacher.logits, data.x_test), data.y_test)[0]}
    for pixels in (1, 2):
        total = None
        for dy in range(-pixels, pixels + 1):
            for dx in range(-pixels, pixels + 1):
                shift = torch.tensor([dy, dx]).expand(n, 2)
                z = sharded_logits(teacher.logits, data.x_test, None, shift, pixels)
                total = z if total is None else total + z
        accuracy[f"mean over the {(2 * pixels + 1) ** 2} shifts of ±{pixels} px"] = accuracy_and_nll(total, data.y_test)[0]
    return {"train_limit": args.tta_limit, "epochs": args.tta_epochs, "test_accuracy": accuracy}


def _slug(spec: str) -> str:
    return spec.replace(":", "_").replace(",", "_").replace("=", "")


def render(result: dict) -> str:
    a, t = result["args"], result["teacher"]
    lines = header_markdown(f"Measured facts behind edgekd's defaults on `{result['data']['spec']}`", result["provenance"])
    lines += [f"Teacher: {t['members']} × `{t['arch']}`, {t['epochs']} epochs, ±{a['jitter']} px: "
              f"**{100 * t['test_accuracy']:.2f}%** on test. One seed each unless said.", ""]
    checks = result["checks"]
    for name in CHECKS:
        if name in checks:
            lines += RENDER[name](checks[name], a) + [f"({checks[name]['seconds'] / 60:.1f} min)", ""]
    return "\n".join(lines)


def _render_cluster(c, a) -> list[str]:
    names = c["classes"]
    lines = ["## Clusters of confusable classes (k-means, K=4)", "",
             "| matrix | T | clusters |", "|---|---|---|"]
    for r in c["rows"]:
        groups = " ".join("{" + ", ".join(str(i) if names[i] == str(i) else f"{i} {names[i]}" for i in g) + "}"
                          for g in r["clusters"])
        lines.append(f"| {r['matrix']} | {r['temperature']:g} | {groups} |")
    return lines + [""]


def _render_jitter(c, a) -> list[str]:
    lines = [f"## Jitter and the hard-label `{a['student']}`", "",
             f"`edgekd teacher train --arch {a['student']} --epochs {a['hard_epochs']} --lr 3e-3` with `--jitter 0` and `--jitter 2`:", "",
             "| seed | ±0 px | ±2 px |", "|---|---|---|"]
    for seed in sorted({r["seed"] for r in c["runs"]}):
        acc = {r["jitter"]: r["test_accuracy"] for r in c["runs"] if r["seed"] == seed}
        lines.append(f"| {seed} | {100 * acc[0]:.2f}% | {100 * acc[2]:.2f}% |")
    return lines + [""]


def _render_fixed(c, a) -> list[str]:
    lines = [f"## `{a['student']}` on fixed targets (the teacher's logits on the un-augmented train split)", "",
             "No jitter and no recipe search; seed 0; the hard-label twin trains in the same loop with the same budget.", "",
             "| soft term | T | alpha | epochs | distilled (test) | hard-label twin (test) |", "|---|---|---|---|---|---|"]
    for r in c["runs"]:
        hard = "" if r["hard_label_test_accuracy"] is None else f"{100 * r['hard_label_test_accuracy']:.2f}%"
        lines.append(f"| {r['method']} | {r['temperature']:g} | {r['alpha']:g} | {r['epochs']} | "
                     f"{100 * r['test_accuracy']:.2f}% | {hard} |")
    return lines + [""]


def _render_mirror(c, a) -> list[str]:
    return ["## The teacher on mirrored images", "",
            f"Trained without `--flip`: {100 * c['test_accuracy']:.2f}% on the test images, "
            f"**{100 * c['mirrored_test_accuracy']:.2f}%** on the same images mirrored left to right.", ""]


def _render_tta(c, a) -> list[str]:
    lines = [f"## Test-time shifts of a 1-member, {c['epochs']}-epoch `{a['teacher_arch']}` teacher "
             f"({c['train_limit']:,} train images)", "", "Logits averaged over the shifts of each test image.", "",
             "| test images | test accuracy |", "|---|---|"]
    lines += [f"| {name} | {100 * acc:.2f}% |" for name, acc in c["test_accuracy"].items()]
    return lines + [""]


RENDER = {"cluster": _render_cluster, "jitter": _render_jitter, "fixed": _render_fixed, "mirror": _render_mirror,
          "tta": _render_tta}


if __name__ == "__main__":
    run_script(main)
