"""Issue 3's figures: specialists (paper section 5) on Fashion-MNIST.

    python -m benchmarks.specialists_fmnist --teacher runs/fmnist/generalist --data fashion-mnist \\
        --out benchmarks/results/specialists_fmnist [--distill-seeds 3]
    python -m benchmarks.specialists_fmnist --smoke          # digits, seconds

Reports: the clusters found (and, to check the clustering choices on real data, the clusters and
the K picked by cosine and by Euclidean silhouette at several temperatures); generalist vs
generalist + specialists on the test split (all classes, covered classes, per cluster, the paper's
Table 4 view); the time to build the specialists relative to training the generalist (from the
generalist's manifest if it records it, else one generalist epoch measured here times its epochs);
and with ``--distill-seeds N`` a student distilled from the specialist ensemble vs from the
generalist alone, same budget, mean ± std over N seeds.

Writes ``<out>.md``, ``<out>.json`` and ``<out>.png`` (the covariance heatmap); artifacts go to
``--work`` and are reused or resumed on a rerun.
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import sys
import time
from pathlib import Path

from benchmarks.provenance import header_markdown, mean_std, pm, provenance
from benchmarks.scenario_common import run_script
from specialists.report import sign_test


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--teacher", default="runs/fmnist/generalist", help="The generalist: an artifact of one model.")
    p.add_argument("--member", type=int, default=None, help="With an ensemble teacher: the member to use.")
    p.add_argument("--data", default="fashion-mnist")
    p.add_argument("--train-limit", type=int, default=None)
    p.add_argument("--work", default="runs/specialists_fmnist", help="Folder for the artifacts.")
    p.add_argument("--clusters", default="auto")
    p.add_argument("--cluster-temperature", type=float, default=4.0)
    p.add_argument("--top-n", type=int, default=1)
    p.add_argument("--also-top-n", type=lambda v: [int(x) for x in v.split(",") if x], default=[2],
                   help="Comma-separated gatings to re-score the same specialists with (no training).")
    p.add_argument("--special-fraction", type=float, default=0.5)
    p.add_argument("--epochs", type=int, default=3, help="Epochs per specialist.")
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--patience", type=int, default=2)
    p.add_argument("--jitter", type=int, default=2)
    p.add_argument("--distill-seeds", type=int, default=0, help="Students per teacher (0: no distillation).")
    p.add_argument("--student", default="mlp")
    p.add_argument("--student-epochs", type=int, default=20)
    p.add_argument("--temperature", type=float, default=4.0)
    p.add_argument("--alpha", type=float, default=0.9)
    p.add_argument("--out", default="benchmarks/results/specialists_fmnist")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="Where every training runs.")
    p.add_argument("--smoke", action="store_true", help="digits, tiny budget, seconds")
    args = p.parse_args(argv)
    if args.smoke:
        args.data, args.epochs, args.jitter, args.patience = "digits", 1, 0, 0
        args.distill_seeds = args.distill_seeds or 1
        args.student, args.student_epochs = "mlp:hidden=16", 1
        if args.teacher == p.get_default("teacher"):
            args.teacher = None   # trained here
    return args


# --- the generalist's training time -------------------------------------------------------------------

def _generalist_train_config(manifest) -> dict:
    """Epochs, jitter, batch size and lr the generalist was trained with, from its manifest's config
    (the CLI records ``params``, the library ``teacher.train``)."""
    config = manifest.config
    params = config.get("params") or (config.get("teacher") or {}).get("train") or {}
    return {key: params.get(key) for key in ("epochs", "jitter", "batch_size", "lr")}


def generalist_time(generalist_dir, data, fallback_jitter: int, device: str = "cpu") -> dict:
    """Seconds to train the generalist: recorded in its manifest, else one epoch measured now x epochs."""
    import torch

    from edgekd.artifacts import load_artifact
    from edgekd.models import create_model
    from edgekd.teacher_training import cross_entropy_loss, supervised_batches
    from edgekd.training import TrainConfig, fit
    from specialists.build import generalist_train_seconds

    manifest = load_artifact(generalist_dir).manifest
    recorded = generalist_train_seconds(manifest)
    config = _generalist_train_config(manifest)
    if recorded is not None:
        members = len(manifest.members)
        source = "generalist manifest" + (f" (the teacher's {members} members took {recorded * members:.0f} s)" if members > 1 else "")
        return {"seconds": recorded, "source": source, **config}
    member = manifest.members[0]
    jitter = config["jitter"] if config["jitter"] is not None else fallback_jitter
    torch.manual_seed(0)
    model = create_model(member.arch, data.input_shape, data.num_classes, mean=data.mean, std=data.std,
                         options=member.arch_options)
    pixels = jitter if len(data.input_shape) == 3 else 0
    fitted = fit(model, n_train=len(data.y_train), make_batch=supervised_batches(data.x_train, data.y_train, pixels),
                 loss_fn=cross_entropy_loss, val=(data.x_val[:256], data.y_val[:256]),
                 config=TrainConfig(epochs=1, batch_size=config["batch_size"] or 128, jitter=pixels, device=device),
                 store=None, name="timing")
    epochs = config["epochs"] or 1
    return {"seconds": fitted.seconds_per_epoch * epochs, "seconds_per_epoch": fitted.seconds_per_epoch,
            "source": f"one epoch measured here x {epochs} epochs" + ("" if config["epochs"] else " (epochs unknown)"),
            **config, "jitter": jitter}


# --- clustering choices on real data ----------------------------------------------------------------

def clustering_checks(train_logits, classes, temperatures=(1.0, 2.0, 4.0, 8.0)) -> list[dict]:
    """For each T: the K that cosine and Euclidean silhouette pick, and the clusters at the cosine K."""
    import torch

    from specialists.clustering import choose_k, class_covariance, kmeans_labels, labels_to_clusters

    rows = []
    for t in temperatures:
        cov = class_covariance(torch.softmax(train_logits.double() / t, -1).numpy())
        k_cos, s_cos = choose_k(cov, metric="cosine")
        k_euc, s_euc = choose_k(cov, metric="euclidean")
        rows.append({"temperature": t, "k_cosine": k_cos, "k_euclidean": k_euc,
                     "silhouette_cosine": s_cos, "silhouette_euclidean": s_euc,
                     "clusters_cosine_k": [[classes[c] for c in s] for s in labels_to_clusters(kmeans_labels(cov, k_cos))],
                     "clusters_euclidean_k": [[classes[c] for c in s] for s in labels_to_clusters(kmeans_labels(cov, k_euc))]})
    return rows


def _cached(path: Path, key: str, compute) -> dict:
    """``compute()``, remembered in ``path`` under ``key`` (the generalist's fingerprint)."""
    if path.is_file():
        saved = json.loads(path.read_text())
        if saved.get("key") == key:
            return saved["value"]
    value = compute()
    path.write_text(json.dumps({"key": key, "value": value}, indent=2) + "\n")
    return value


def specialist_config(args):
    """The specialists' settings this scenario's arguments ask for."""
    from edgekd.training import TrainConfig
    from specialists.build import SpecialistConfig
    from specialists.clustering import parse_clusters

    return SpecialistConfig(clusters=parse_clusters(args.clusters), cluster_temperature=args.cluster_temperature,
                            top_n=args.top_n, special_fraction=args.special_fraction, member=args.member,
                            train=TrainConfig(epochs=args.epochs, lr=args.lr, patience=args.patience, jitter=args.jitter,
                                              device=args.device))


def _reusable(spec_dir: Path, config, generalist, data) -> bool:
    """True when ``spec_dir`` holds specialists trained from this generalist, data and training
    settings (a rerun then re-scores them with the combination settings instead of retraining). A
    training setting added since the run counts as the same while ``config`` holds its default
    (``same_settings``)."""
    from dataclasses import replace

    from benchmarks.scenario_common import same_settings
    from edgekd.artifacts import is_artifact, load_artifact

    if not is_artifact(spec_dir):
        return False
    manifest = load_artifact(spec_dir).manifest
    recorded = json.loads(json.dumps(manifest.config, default=list)).get("specialists")
    if not isinstance(recorded, dict):
        return False
    # the combination is redone on reuse, so the recorded one need not match
    combination = {k: recorded[k] for k in ("top_n", "tol", "max_steps", "module_steps") if k in recorded}
    here = json.loads(json.dumps(data.describe(), default=list))
    shared = set(manifest.data) & set(here)   # (records from before the held-out rows' sha256 lack those keys)
    return (manifest.generalist["fingerprint"] == generalist.teacher.fingerprint
            and all(manifest.data[k] == here[k] for k in shared) and {"spec", "n_train"} <= shared
            and same_settings(recorded, replace(config, **combination)))


# --- the scenario ----------------------------------------------------------------------------------------

def main(argv=None) -> int:
    from edgekd.artifacts import is_artifact
    from edgekd.cache import LogitCache
    from edgekd.data import load_dataset
    from edgekd.device import resolve_device
    from edgekd.distill import DistillConfig, distill, teacher_logits
    from edgekd.teacher_training import TeacherConfig, train_teachers
    from edgekd.teachers import load_teacher
    from edgekd.training import TrainConfig
    from specialists.build import build_specialists, open_generalist, regate_specialists

    args = parse_args(argv)
    started = time.perf_counter()
    out = Path(args.out)
    work = Path(args.work) if not args.smoke else out.parent / (out.name + "-work")
    work.mkdir(parents=True, exist_ok=True)
    data = load_dataset(args.data, train_limit=args.train_limit)
    cache = LogitCache(work / "cache")
    if args.teacher is None:
        args.teacher = str(work / "generalist")
        if not is_artifact(args.teacher):
            train_teachers(data, TeacherConfig(arch="cnn:width=8,fc=32", ensemble=1, train=TrainConfig(epochs=3, lr=3e-3, device=args.device)),
                           args.teacher, overwrite=True)
    generalist = open_generalist(args.teacher, args.member, device=resolve_device(args.device))

    spec_dir = work / "specialists"
    config = specialist_config(args)
    tick = time.perf_counter()
    reused = _reusable(spec_dir, config, generalist, data)
    if reused:   # same specialists: only the combination and its evaluation are redone, with today's code
        regate_specialists(spec_dir, data, spec_dir, top_n=config.top_n, tol=config.tol, max_steps=config.max_steps,
                           module_steps=config.module_steps, cache=cache, overwrite=True, device=args.device)
    else:
        build_specialists(args.teacher, data, config, spec_dir, cache=cache, overwrite=True,
                          resume=spec_dir.with_name(spec_dir.name + ".partial").exists())
    report = json.loads((spec_dir / "report.json").read_text())
    build_seconds = report["timings_s"]["total"] if reused else time.perf_counter() - tick
    gating = []
    for top_n in sorted(set(args.also_top_n) - {args.top_n}):
        regated = regate_specialists(spec_dir, data, work / f"specialists-top{top_n}", top_n=top_n, tol=config.tol,
                                     max_steps=config.max_steps, cache=cache, overwrite=True, device=args.device)
        gating.append({"top_n": top_n, **json.loads((regated.path / "report.json").read_text())["test"]})
    gen_time = _cached(work / "generalist_time.json", generalist.teacher.fingerprint,
                       lambda: generalist_time(args.teacher, data, args.jitter, args.device))
    checks = clustering_checks(teacher_logits(generalist.teacher, data, "train", cache), data.classes,
                               temperatures=(1.0, 4.0) if args.smoke else (1.0, 2.0, 4.0, 8.0))

    students = []
    if args.distill_seeds:
        teachers = {"specialist ensemble": load_teacher(spec_dir).to(resolve_device(args.device)), "generalist alone": generalist.teacher}
        for label, teacher in teachers.items():
            runs = []
            for seed in range(args.distill_seeds):
                path = work / f"student-{'spec' if label.startswith('spec') else 'gen'}-s{seed}"
                cfg = DistillConfig(student=args.student, temperature=args.temperature, alpha=args.alpha, search_methods=(),
                                    train=TrainConfig(epochs=args.student_epochs, seed=seed, device=args.device))
                r = distill(teacher, data, cfg, path, cache=cache, overwrite=True,
                            resume=path.with_name(path.name + ".partial").exists())
                runs.append({"seed": seed, "test_accuracy": r.student_test_accuracy, "test_nll": r.student_test_nll,
                             "teacher_test_accuracy": r.teacher_test_accuracy, "seconds_per_epoch": r.seconds_per_epoch})
            students.append({"teacher": label, "runs": runs})

    record = provenance(started)
    record["command"] = "python -m benchmarks.specialists_fmnist " + shlex.join(sys.argv[1:] if argv is None else argv)
    result = {"provenance": record, "args": vars(args), "data": data.describe(),
              "specialists": report, "build_seconds_wall": build_seconds, "generalist_training": gen_time,
              "clustering_checks": checks, "students": students, "artifact": str(spec_dir),
              "specialists_reused": reused, "other_gating": gating}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    shutil.copyfile(spec_dir / "covariance.png", out.with_suffix(".png"))
    out.with_suffix(".md").write_text(render(result, out.with_suffix(".png").name))
    print(out.with_suffix(".md").read_text())
    return 0


def _p(v) -> str:
    return f"{100 * v:.2f}" if v is not None else "-"


def _r(v) -> str:
    return f"{100 * v:+.2f}%" if v is not None else "-"


def render(result: dict, png_name: str) -> str:
    rep, args = result["specialists"], result["args"]
    test = rep["test"]
    lines = header_markdown(f"Specialists on `{result['data']['spec']}` (paper section 5)", result["provenance"])
    lines += [f"Train {result['data']['n_train']} / val {result['data']['n_val']} / test {result['data']['n_test']}. "
              f"Generalist: {rep['generalist']['description']}. Specialists: its architecture and weights, a new "
              f"|S|+1 head, {args['epochs']} epoch(s) at lr {args['lr']:g} (patience {args['patience']}), "
              f"±{args['jitter']} px jitter, {args['special_fraction']:g} of the data from S; dustbin logit corrected "
              f"for the oversampling; top-{args['top_n']} gating; KL combination (section 5.4).", "",
              "## Clusters found", "",
              f"Confusion clustering at T={rep['clustering']['temperature']:g}, K={', '.join(map(str, rep['clustering']['k']))}"
              + (" (auto: best cosine silhouette over K=2..8)" if rep["clustering"]["silhouette"] else "") + ":", ""]
    for row in test["per_cluster"]:
        lines.append(f"- {{{', '.join(row['class_names'])}}}" + ("" if row["specialist"] else " (one class: no specialist)"))
    lines += ["", f"![covariance]({png_name})", "", "Check of the clustering choices on this generalist "
              "(K chosen by silhouette over 2..8, cosine vs Euclidean distance between covariance columns):", "",
              "| T | K (cosine) | clusters at that K | K (Euclidean) | clusters at that K |", "|---|---|---|---|---|"]
    for c in result["clustering_checks"]:
        fmt = lambda cl: " ".join("{" + ", ".join(s) + "}" for s in cl)  # noqa: E731
        lines.append(f"| {c['temperature']:g} | {c['k_cosine']} | {fmt(c['clusters_cosine_k'])} | {c['k_euclidean']} | "
                     f"{fmt(c['clusters_euclidean_k'])} |")
    lines += ["", "## Test accuracy (%)", "", "| classes | n | generalist | + specialists | relative change |",
              "|---|---|---|---|---|",
              f"| all | {test['n_test']} | {_p(test['generalist']['accuracy'])} | {_p(test['ensemble']['accuracy'])} | {_r(test['relative_change'])} |",
              f"| **covered by specialists** | {test['covered']['n_test']} | {_p(test['covered']['generalist_accuracy'])} | "
              f"{_p(test['covered']['ensemble_accuracy'])} | **{_r(test['covered']['relative_change'])}** |"]
    for row in test["per_cluster"]:
        if row["specialist"]:
            lines.append(f"| {', '.join(row['class_names'])} | {row['n_test']} | {_p(row['generalist_accuracy'])} | "
                         f"{_p(row['ensemble_accuracy'])} | {_r(row['relative_change'])} |")
    for other in result.get("other_gating", []):
        lines.append(f"| covered, same specialists with top-{other['top_n']} gating | {other['covered']['n_test']} | "
                     f"{_p(other['covered']['generalist_accuracy'])} | {_p(other['covered']['ensemble_accuracy'])} | "
                     f"{_r(other['covered']['relative_change'])} |")
        lines.append(f"| all, top-{other['top_n']} gating | {other['n_test']} | {_p(other['generalist']['accuracy'])} | "
                     f"{_p(other['ensemble']['accuracy'])} | {_r(other['relative_change'])} |")
    detail = sign_test(test)   # not recorded by reports from before it was added
    lines += ["", f"Top-{args['top_n']} gating changed {test['changed_predictions']} test predictions"
              + (f": {detail} (two-sided, fixed vs broken)" if detail else "") + ". One generalist, one training run of the specialists.",
              "", "The paper: +4.4% relative top-1 on JFT's covered classes (61 specialists, 15,000 classes).", "",
              "By number of specialists covering the correct class (the paper's Table 4):", "",
              "| specialists covering | test examples | change in correct | relative accuracy change |", "|---|---|---|---|"]
    for row in test["by_coverage"]:
        lines.append(f"| {row['specialists_covering']} | {row['n_test']} | {row['delta_correct']:+d} | {_r(row['relative_change'])} |")
    g = result["generalist_training"]
    spec_train = sum(s["seconds"] for s in rep["specialists"])
    lines += ["", "## Time", "",
              f"- generalist training: {g['seconds']:.1f} s ({g['source']})",
              f"- building the specialists: {result['build_seconds_wall']:.1f} s wall (clustering "
              f"{rep['timings_s']['clustering']:.1f} s, training {rep['timings_s']['training']:.1f} s for "
              f"{len(rep['specialists'])} specialist(s), evaluation {rep['timings_s']['evaluation']:.1f} s)"
              + (" [reused from an earlier run]" if result.get("specialists_reused") else "") + ": "
              f"**{result['build_seconds_wall'] / g['seconds']:.2f}×** the generalist's training time; one specialist "
              f"{spec_train / max(1, len(rep['specialists'])):.1f} s on average ({spec_train / max(1, len(rep['specialists'])) / g['seconds']:.2f}×; "
              f"the specialists are independent and could train in parallel).", ""]
    if result["students"]:
        lines += ["## Distilling the specialist ensemble into one student", "",
                  f"Student `{args['student']}`, {args['student_epochs']} epochs, T={args['temperature']:g}, "
                  f"alpha={args['alpha']:g}, teacher logits cached on the train split; mean ± std over "
                  f"{args['distill_seeds']} seed(s).", "", "| teacher | teacher test % | student test % |", "|---|---|---|"]
        for s in result["students"]:
            accs = [r["test_accuracy"] for r in s["runs"]]
            lines.append(f"| {s['teacher']} | {_p(s['runs'][0]['teacher_test_accuracy'])} | {pm(accs)} |")
        if len(result["students"]) == 2:
            a, b = (mean_std([r["test_accuracy"] for r in s["runs"]])[0] for s in result["students"])
            lines += ["", f"Difference (specialist ensemble − generalist): {100 * (a - b):+.2f} points."]
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    run_script(main)
