"""Issue 15's figures: specialists (paper section 5) where they were invented, at many classes.

    python -m benchmarks.specialists_scale --out benchmarks/results/specialists_scale
    python -m benchmarks.specialists_scale --quick --out /tmp/scale      # tiny sizes, about a minute

Data: ``synthetic:`` specs (edgekd/synthetic.py), groups of confusable classes whose true grouping
is known. For each size (``--sizes``, e.g. 100 classes in 10 groups, 1,000 in 50) and difficulty
(``--seps``, the distance between group centres) an mlp generalist is trained, then:

1. clustering against the true groups: adjusted Rand index with K chosen by ``--clusters auto`` and
   with the true K; time and peak memory as C grows (``--cost-sizes``), this tree's clustering
   against the one before issue 15 (np.cov of every probability vector, k-means on the C x C
   columns, auto over K = 2..8); 10,000 classes extrapolated from the measured growth;
2. at the first difficulty: specialists from overlapping clusterings (auto K x 0.7, 1, 1.4 merged)
   against the generalist: overall relative gain and the paper's Table 4 (by number of specialists
   covering the correct class);
3. cost at the largest size: build time for 10 / 50 / 100 specialists (one K each), the KL
   combination's time per example against the number of active specialists (gated against dense),
   its error against an exact solver (L-BFGS on the logits), and the ensemble teacher's logits
   gated (this tree) against dense (every specialist on every input, as before);
   and, with the same clusters (the auto K alone), 1, 2, 4 ... specialists per cluster
   (``--per-cluster``, each with its own seed): coverage that counts independent opinions, with no
   change in the clusters' shapes (overlapping clusterings mix both); and the paper's Table 4 inside
   one ensemble: those clusters, each keeping 1, 2 or 4 of its specialists, drawn per cluster;
4. students distilled from the specialist ensemble and from the generalist alone, ``--seeds`` each.

Resumable: artifacts live in ``--work``; every finished part is kept in ``<work>/parts.json`` and
read back on a rerun with the same settings. Writes ``<out>.json`` and ``<out>.md``.
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import sys
import time
from pathlib import Path

from benchmarks.provenance import header_markdown, mean_std, provenance
from benchmarks.scenario_common import run_script
from edgekd.config import METHODS
from edgekd.errors import ConfigError


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="100:10,1000:50", help="classes:groups, comma-separated; the last is 'the' size.")
    p.add_argument("--cost-sizes", default="100:10,300:15,1000:50,2000:100", help="Sizes for clustering time and memory.")
    p.add_argument("--seps", default="8,5", help="Group separations (difficulty levels); the first is the main one.")
    p.add_argument("--spread", type=float, default=4.0)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--train", type=int, default=100, help="Training examples per class (val split off them).")
    p.add_argument("--test", type=int, default=20, help="Test examples per class.")
    p.add_argument("--seed", type=int, default=0, help="Data seed.")
    p.add_argument("--generalist", default="mlp:hidden=64",
                   help="A generalist short of capacity for C classes, the regime specialists are for.")
    p.add_argument("--gen-epochs", type=int, default=4)
    p.add_argument("--control-epochs", type=int, default=0,
                   help="The control generalist's epochs (default: --student-epochs): the same specialists built on a "
                        "generalist trained longer tell the specialisation from the extra training.")
    p.add_argument("--spec-epochs", type=int, default=10)
    p.add_argument("--spec-lr", type=float, default=3e-3)
    p.add_argument("--overlap", default="0.7,1,1.4", help="Multiples of the auto K merged into overlapping specialists.")
    p.add_argument("--per-cluster", default="1,2,4",
                   help="Specialists per cluster for the controlled coverage table (same clusters: the auto K); '' skips it.")
    p.add_argument("--build-ks", default="10,50,100", help="K for the build-time sweep (largest size).")
    p.add_argument("--student", default="mlp:hidden=64")
    p.add_argument("--student-epochs", type=int, default=8)
    p.add_argument("--parts", choices=("all", "gain"), default="all",
                   help="all: every figure; gain: clustering quality, specialists against the generalist and its "
                        "control, and the students only (no cost sweeps).")
    p.add_argument("--seeds", type=int, default=3, help="Seeds per student (0: no students).")
    p.add_argument("--teacher-per-cluster", type=int, default=0,
                   help="The specialist ensemble that teaches the students: 0, the overlapping build; R, the build "
                        "with R specialists per cluster (one of --per-cluster).")
    p.add_argument("--student-train", type=int, default=0,
                   help="Training examples per class in the students' transfer set: 0, the teachers' own training data; "
                        "N, a fresh draw of N per class from the same classes (same test set), on which the teachers "
                        "were not trained: the paper's soft targets as a regularizer on little data (section 6).")
    p.add_argument("--student-method", default=None, choices=METHODS, help="The students' soft term (default: edgekd distill's).")
    p.add_argument("--student-temperature", type=float, default=None, help="Their T (default: edgekd distill's).")
    p.add_argument("--student-alpha", type=float, default=None, help="Their soft weight (default: edgekd distill's).")
    p.add_argument("--work", default="runs/specialists_scale")
    p.add_argument("--out", default="benchmarks/results/specialists_scale")
    p.add_argument("--quick", action="store_true", help="Tiny sizes and budgets (a smoke test).")
    args = p.parse_args(argv)
    if args.teacher_per_cluster and str(args.teacher_per_cluster) not in [v.strip() for v in args.per_cluster.split(",")]:
        p.error(f"--teacher-per-cluster must be 0 or one of --per-cluster ({args.per_cluster or 'none'}); "
                f"got {args.teacher_per_cluster}. Add it to --per-cluster or pass 0 for the overlapping build.")
    try:   # the students' soft term, checked where its bounds live (DistillConfig), before anything runs
        from edgekd.config import DistillConfig
        DistillConfig(**student_recipe(args))
    except ConfigError as error:
        p.error(f"--student-method/--student-temperature/--student-alpha: {error}")
    if args.student_train and not 2 <= args.student_train <= 100_000:
        p.error(f"--student-train must be 0 (the teachers' data) or 2..100000 examples per class; got {args.student_train}")
    if args.quick:
        args.sizes, args.cost_sizes, args.dim, args.train, args.test = "40:4,80:8", "40:4,80:8", 16, 30, 10
        args.gen_epochs, args.spec_epochs, args.student_epochs = 5, 2, 1
        if args.seeds == p.get_default("seeds"):   # an explicit --seeds (0: no students) stands
            args.seeds = 2
        args.build_ks, args.student, args.generalist = "2,8", "mlp:hidden=16", "mlp:hidden=16"
        args.per_cluster = "1,2" if args.per_cluster == p.get_default("per_cluster") else args.per_cluster
        if args.work == p.get_default("work"):
            args.work = str(Path(args.out).parent / (Path(args.out).name + "-work"))
    return args


def transfer_spec(args, classes: int, groups: int, sep: float) -> str:
    """The students' own draw: ``--student-train`` examples per class, the same classes and test set (the
    synthetic generator draws the test split from its own stream, whatever ``train`` is)."""
    return spec_of(args, classes, groups, sep, train=args.student_train)


def _sizes(text):
    return [tuple(int(v) for v in item.split(":")) for item in text.split(",") if item]


def spec_of(args, classes: int, groups: int, sep: float, *, train: int | None = None) -> str:
    from edgekd.synthetic import SyntheticSpec

    return SyntheticSpec(classes=classes, groups=groups, dim=args.dim, seed=args.seed, sep=sep, spread=args.spread,
                         train=train or args.train, test=args.test).spec()


# --- resumable parts ---------------------------------------------------------------------------------

class Parts:
    """Finished parts of the run, kept in ``<work>/parts.json`` under the settings they were run with."""

    def __init__(self, work: Path, settings: dict):
        self.path, self.key = work / "parts.json", json.dumps(settings, sort_keys=True)
        saved = json.loads(self.path.read_text()) if self.path.is_file() else {}
        same = saved.get("key") == self.key
        self.done = saved.get("parts", {}) if same else {}
        self.seconds = saved.get("seconds", {}) if same else {}   # wall seconds each part took when it ran
        self.read_back: list = []

    def get(self, name: str, compute):
        if name in self.done:
            self.read_back.append(name)
        else:
            print(f"[specialists_scale] {name} ...", flush=True)
            tick = time.perf_counter()
            self.done[name] = compute()
            self.seconds[name] = round(time.perf_counter() - tick, 1)
            print(f"[specialists_scale] {name}: {self.seconds[name]:.1f} s", flush=True)
            self.path.write_text(json.dumps({"key": self.key, "parts": self.done, "seconds": self.seconds},
                                            indent=1, default=_plain) + "\n")
        return self.done[name]


def _plain(value):
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, (tuple, set)):
        return list(value)
    return str(value)


def in_child(func, *args):
    """(result of ``func(*args)``, peak resident memory it added in MiB), run in a forked process so
    the peak is its own."""
    import multiprocessing as mp

    def target(queue):
        try:
            with open("/proc/self/clear_refs", "w") as handle:   # the peak so far becomes the current size
                handle.write("5")
            base = _status_mib("VmRSS")
            result = func(*args)
            queue.put((result, round(_status_mib("VmHWM") - base, 1)))
        except BaseException as exc:   # noqa: BLE001 - reported to the parent, which raises it
            queue.put(RuntimeError(f"{func.__name__} failed in the child process: {exc!r}"))

    ctx = mp.get_context("fork")
    queue = ctx.Queue()
    proc = ctx.Process(target=target, args=(queue,))
    proc.start()
    result = queue.get()
    proc.join()
    if isinstance(result, Exception):
        raise result
    return result


def _status_mib(field: str) -> float:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


# --- generalists and clustering ----------------------------------------------------------------------------

def generalist(args, work: Path, data, name: str, epochs: int | None = None) -> dict:
    from edgekd.artifacts import is_artifact, load_artifact
    from edgekd.teacher_training import TeacherConfig, train_teachers
    from edgekd.training import TrainConfig

    path = work / name
    config = TeacherConfig(arch=args.generalist, ensemble=1,
                           train=TrainConfig(epochs=epochs or args.gen_epochs, lr=3e-3, batch_size=256))
    if not is_artifact(path):
        train_teachers(data, config, path, overwrite=True)
    _made_as_asked(path, "teacher", config, data)
    manifest = load_artifact(path).manifest
    return {"path": str(path), "test_accuracy": manifest.metrics.get("test_accuracy"),
            "train_seconds": manifest.timings.get("seconds"),
            "epochs_run": (manifest.metrics.get("member_epochs_run") or [None])[0],
            "best_epoch": (manifest.metrics.get("member_best_epoch") or [None])[0]}


def _made_as_asked(path: Path, key: str, config, data) -> None:
    """A folder of --work is reused only when it was made with these settings on this data: its name does
    not carry every option (--gen-epochs, --spec-lr, ...), and a stale one would be reported as asked."""
    from benchmarks.scenario_common import Refused, same_settings
    from edgekd.artifacts import load_artifact

    manifest = load_artifact(path).manifest
    if not same_settings((manifest.config or {}).get(key), config) or (manifest.data or {}).get("spec") != data.spec:
        raise Refused(f"'{path}' in --work was made with other settings or data than this run asks for; pass "
                      f"another --work, or remove that folder to make it again.")


def train_logits(path, data, cache):
    from edgekd.distill import teacher_logits
    from edgekd.teachers import load_teacher

    return teacher_logits(load_teacher(path), data, "train", cache).cpu()


def _ari(groups, clusters) -> float:
    import numpy as np
    from sklearn.metrics import adjusted_rand_score

    labels = np.empty(len(groups), dtype=np.int64)
    for i, cluster in enumerate(clusters):
        labels[list(cluster)] = i
    return float(adjusted_rand_score(groups, labels))


def _new_clustering(logits, k):
    import torch

    from specialists.clustering import find_clusters

    torch.set_num_threads(1)
    tick = time.perf_counter()
    found = find_clusters(logits, k)
    return {"seconds": time.perf_counter() - tick, "k": list(found.k), "clusters": [list(c) for c in found.clusters],
            "silhouette_tried": len(found.silhouette or {})}


def _old_clustering(logits, k):
    """Clustering as before issue 15: np.cov of all (N, C) float64 probabilities, k-means on the C x C
    columns, auto over K = 2..8."""
    import torch

    from specialists.clustering import DEFAULT_CLUSTER_TEMPERATURE, choose_k, class_covariance, kmeans_labels, labels_to_clusters

    torch.set_num_threads(1)
    tick = time.perf_counter()
    cov = class_covariance(torch.softmax(logits.double() / DEFAULT_CLUSTER_TEMPERATURE, dim=-1).numpy())
    if k is None:
        k, _ = choose_k(cov, max_k=8, points=cov.T)
    clusters = labels_to_clusters(kmeans_labels(cov, k, points=cov.T))
    return {"seconds": time.perf_counter() - tick, "k": [k], "clusters": [list(c) for c in clusters]}


def clustering_part(args, work, cache, classes, groups, sep, *, old: bool) -> dict:
    from edgekd.data import load_dataset
    from edgekd.synthetic import true_groups

    spec = spec_of(args, classes, groups, sep)
    data = load_dataset(spec)
    gen = generalist(args, work, data, f"generalist-c{classes}-sep{sep:g}")
    logits = train_logits(gen["path"], data, cache)
    truth = true_groups(spec)
    row = {"spec": spec, "classes": classes, "groups": groups, "sep": sep, "n_train": len(data.y_train),
           "generalist": gen}
    for label, k in (("auto", None), ("true_k", (groups,))):
        found, peak = in_child(_new_clustering, logits, k)
        row[label] = {"k": found["k"], "ari": _ari(truth, found["clusters"]), "seconds": found["seconds"],
                      "peak_mib": peak, "k_tried": found.get("silhouette_tried")}
    if old:
        for label, k in (("old_auto", None), ("old_true_k", groups)):
            found, peak = in_child(_old_clustering, logits, k)
            row[label] = {"k": found["k"], "ari": _ari(truth, found["clusters"]), "seconds": found["seconds"],
                          "peak_mib": peak}
    return row


def extrapolate(rows, key: str, field: str, target: int) -> dict:
    """A power law a C^b fitted (least squares in log-log) to the two largest sizes measured."""
    points = sorted((r["classes"], r[key][field]) for r in rows if r.get(key) and r[key][field])
    if len(points) < 2:
        return {}
    (c1, v1), (c2, v2) = points[-2:]
    exponent = math.log(v2 / v1) / math.log(c2 / c1)
    return {"exponent": exponent, "value": v2 * (target / c2) ** exponent, "from": [c1, c2]}


# --- specialists -----------------------------------------------------------------------------------------

def build(args, work, cache, data, gen_path, name, ks, per_cluster: int = 1) -> dict:
    from edgekd.artifacts import is_artifact
    from edgekd.training import TrainConfig
    from specialists.build import SpecialistConfig, build_specialists

    path = work / name
    config = SpecialistConfig(clusters=tuple(ks), train=TrainConfig(epochs=args.spec_epochs, lr=args.spec_lr, patience=3),
                              per_cluster=per_cluster)
    tick = time.perf_counter()
    if not is_artifact(path):
        build_specialists(gen_path, data, config, path, cache=cache, overwrite=True,
                          resume=path.with_name(path.name + ".partial").exists())
    _made_as_asked(path, "specialists", config, data)
    report = json.loads((path / "report.json").read_text())
    test = report["test"]
    return {"path": str(path), "k": list(ks), "per_cluster": per_cluster, "specialists": len(report["specialists"]),
            "seconds_wall": time.perf_counter() - tick, "timings_s": report["timings_s"],
            "generalist_accuracy": test["generalist"]["accuracy"], "ensemble_accuracy": test["ensemble"]["accuracy"],
            "relative_change": test["relative_change"], "covered": test["covered"]["relative_change"],
            "by_coverage": test["by_coverage"], "fixed": test["fixed"], "broken": test["broken"],
            "sign_test_p": test["sign_test_p"], "active": test["active"], "solver": report["solver"]}


def mixed_coverage(args, work, cache, data, opinions) -> dict:
    """The paper's Table 4 inside ONE ensemble, with the clusters held fixed: each cluster of the largest
    per-cluster build keeps its first r copies, r drawn per cluster (a seeded shuffle, equal shares of
    the ``--per-cluster`` levels). Copy j trains with seed + j, so the kept copies are the ones the
    r-per-cluster builds trained: no training, one regate. Beside each level, the same classes' gain in
    the 1-per-cluster build, so a rise that comes from which clusters drew the level shows."""
    import numpy as np

    from edgekd.artifacts import load_artifact
    from specialists.build import regate_specialists

    levels = sorted(o["per_cluster"] for o in opinions)
    top = next(o for o in opinions if o["per_cluster"] == levels[-1])
    one = json.loads((Path(next(o for o in opinions if o["per_cluster"] == 1)["path"]) / "report.json").read_text())["test"]
    copies: dict = {}                       # cluster (its classes) -> member indices, copy 0 first
    for index, member in enumerate(load_artifact(top["path"]).manifest.members[1:]):
        copies.setdefault(tuple(member.classes), []).append(index)
    clusters = list(copies)
    order = np.random.default_rng(args.seed).permutation(len(clusters))
    level_of = {clusters[c]: levels[place * len(levels) // len(clusters)] for place, c in enumerate(order)}
    keep = sorted(i for cluster, indices in copies.items() for i in indices[:level_of[cluster]])
    tick = time.perf_counter()
    result = regate_specialists(top["path"], data, work / f"spec-c{data.num_classes}-mixed", keep=keep, cache=cache,
                                overwrite=True)
    test = json.loads((result.path / "report.json").read_text())["test"]
    by_cov = {row["specialists_covering"]: row for row in test["by_coverage"]}
    rows = []
    for r in sorted(set(level_of.values())):   # fewer clusters than levels: some level is not drawn
        mine = {c for cluster, level in level_of.items() if level == r for c in cluster}
        base = [row for row in one["per_cluster"] if row["specialist"] and set(row["classes"]) <= mine]
        gen = sum(round(row["generalist_accuracy"] * row["n_test"]) for row in base)
        ens = sum(round(row["ensemble_accuracy"] * row["n_test"]) for row in base)
        rows.append({"specialists_covering": r, "clusters": sum(level == r for level in level_of.values()),
                     "n_test": by_cov[r]["n_test"], "delta_correct": by_cov[r]["delta_correct"],
                     "relative_change": by_cov[r]["relative_change"],
                     "one_per_cluster_relative_change": (ens - gen) / gen if gen else None})
    return {"path": str(result.path), "from": top["path"], "k": top["k"], "levels": levels, "specialists": len(keep),
            "seconds_wall": time.perf_counter() - tick, "generalist_accuracy": test["generalist"]["accuracy"],
            "ensemble_accuracy": test["ensemble"]["accuracy"], "relative_change": test["relative_change"],
            "fixed": test["fixed"], "broken": test["broken"], "sign_test_p": test["sign_test_p"],
            "active": test["active"], "rows": rows}


# --- the combination's cost and error ----------------------------------------------------------------------

def solver_timing(classes: int, n_specialists: int, size: int, actives=(1, 2, 4, 8, 16), batch: int = 128) -> list:
    """Seconds per example of the KL combination with exactly a active specialists per input: gated
    (slots for the active ones) against dense ((B, n, C), the others masked), float64, one thread."""
    import torch

    from specialists.combine import solve_kl

    torch.set_num_threads(1)
    gen = torch.Generator().manual_seed(0)
    rows = []
    for a in actives:
        if a > n_specialists:
            continue
        log_pg = torch.log_softmax(torch.randn(batch, classes, generator=gen, dtype=torch.float64) * 3, -1)
        chosen = torch.stack([torch.randperm(n_specialists, generator=gen)[:a] for _ in range(batch)])
        classes_of = torch.stack([torch.randperm(classes, generator=gen)[:size] for _ in range(n_specialists)])
        member = torch.zeros((n_specialists, classes), dtype=torch.bool)
        member[torch.arange(n_specialists)[:, None], classes_of] = True
        # specialists that mostly agree with the generalist: its log-probabilities on S, renormalised, plus noise
        noise = torch.randn(batch, n_specialists, classes, generator=gen, dtype=torch.float64) * 0.5
        dense_t = torch.where(member, log_pg[:, None, :] + noise, -1e30)
        log_pd = torch.log(torch.rand(batch, n_specialists, generator=gen, dtype=torch.float64) * 0.5 + 0.01)
        in_s = torch.logsumexp(dense_t, -1)
        dense_t = dense_t - in_s[..., None] + torch.log1p(-log_pd.exp())[..., None]
        active = torch.zeros((batch, n_specialists), dtype=torch.bool)
        active[torch.arange(batch)[:, None], chosen] = True
        slot_t = torch.gather(dense_t, 1, chosen[..., None].expand(-1, -1, classes))
        slot_pd = torch.gather(log_pd, 1, chosen)
        slot_member = member[chosen]
        timed = {}
        slot_on = torch.ones_like(chosen, dtype=torch.bool)
        for label, call in (("gated", lambda: solve_kl(log_pg, slot_t, slot_pd, slot_member, slot_on)),
                            ("gated_log", lambda: solve_kl(log_pg, slot_t, slot_pd, slot_member, slot_on, log_domain=True)),
                            ("dense", lambda: solve_kl(log_pg, dense_t, log_pd, member, active, log_domain=True))):
            call()
            tick = time.perf_counter()
            result = call()
            timed[label] = (time.perf_counter() - tick) / batch
            timed[label + "_steps"] = float(result.steps.float().mean())
            timed[label + "_q"] = result.log_q
        rows.append({"active": a, "gated_us_per_example": 1e6 * timed["gated"], "dense_us_per_example": 1e6 * timed["dense"],
                     "gated_log_domain_us_per_example": 1e6 * timed["gated_log"],
                     "mean_updates": timed["gated_steps"],
                     "same_answer": float((timed["gated_q"] - timed["dense_q"]).abs().max())})
    return rows


def exact_error(spec_path, data, inputs: int = 24) -> dict:
    """The solver (tol 1e-6) and the exportable module's fixed steps against L-BFGS run to gtol 1e-12
    on the logits, on test inputs of the ensemble with at least two active specialists."""
    import numpy as np
    import torch
    from scipy.optimize import minimize

    from edgekd.teachers import load_teacher
    from specialists.combine import active_specialists, expand_specialist, kl_objective, solve_kl

    teacher = load_teacher(spec_path)
    net = teacher.net
    x = data.x_test[:2000]
    with torch.no_grad():
        log_pg = torch.log_softmax(net.generalist(x).double(), -1)
        active = active_specialists(log_pg, net.membership, teacher.top_n)
    rows = torch.nonzero(active.sum(1) >= 2).flatten()[:inputs]
    if len(rows) == 0:
        rows = torch.nonzero(active.sum(1) >= 1).flatten()[:inputs]
    worst = {"max_abs_prob": 0.0, "max_abs_log_prob_q_gt_1e-6": 0.0, "objective_gap": 0.0,
             "module_max_abs_prob": 0.0, "module_objective_gap": 0.0}
    counts = []
    for i in rows.tolist():
        on = torch.nonzero(active[i]).flatten().tolist()
        counts.append(len(on))
        with torch.no_grad():
            parts = [expand_specialist(torch.log_softmax(net.specialists[m](x[i:i + 1]).double(), -1), net.clusters[m],
                                       data.num_classes) for m in on]
        log_t = torch.stack([p[0] for p in parts], 1)
        log_pd = torch.stack([p[1] for p in parts], 1)
        member = net.membership[on]
        act = torch.ones((1, len(on)), dtype=torch.bool)
        pg = log_pg[i:i + 1]
        ours = solve_kl(pg, log_t, log_pd, member, act).log_q
        module = solve_kl(pg, log_t, log_pd, member, act, fixed_steps=int(net.steps)).log_q

        def f(v):
            z = torch.tensor(v, dtype=torch.float64, requires_grad=True)
            value = kl_objective(torch.log_softmax(z, -1)[None], pg, log_t, log_pd, member, act).sum()
            value.backward()
            return value.item(), z.grad.numpy()

        best = minimize(f, ours[0].numpy(), jac=True, method="L-BFGS-B", options={"gtol": 1e-12, "ftol": 1e-16, "maxiter": 20000})
        exact = torch.log_softmax(torch.tensor(best.x), -1)[None]
        objective = lambda q: float(kl_objective(q, pg, log_t, log_pd, member, act))  # noqa: E731
        big = exact.exp() > 1e-6
        worst["max_abs_prob"] = max(worst["max_abs_prob"], float((ours.exp() - exact.exp()).abs().max()))
        worst["max_abs_log_prob_q_gt_1e-6"] = max(worst["max_abs_log_prob_q_gt_1e-6"], float((ours - exact)[big].abs().max()))
        worst["objective_gap"] = max(worst["objective_gap"], objective(ours) - objective(exact))
        worst["module_max_abs_prob"] = max(worst["module_max_abs_prob"], float((module.exp() - exact.exp()).abs().max()))
        worst["module_objective_gap"] = max(worst["module_objective_gap"], objective(module) - objective(exact))
    return {"inputs": len(counts), "active_per_input": [int(np.min(counts)), int(np.max(counts))] if counts else [],
            "module_steps": int(net.steps), **worst}


def _teacher_logits(spec_path, x, dense: bool):
    import torch

    from edgekd.teachers import load_teacher

    torch.set_num_threads(1)
    teacher = load_teacher(spec_path)
    tick = time.perf_counter()
    with torch.no_grad():
        if dense:
            out = torch.cat([teacher.dense_logits(x[i:i + 256]) for i in range(0, len(x), 256)])
        else:
            out = teacher.logits(x, batch_size=256)
    return {"seconds": time.perf_counter() - tick, "logits": out.numpy()}   # numpy: torch tensors cross processes by fd


def gating_before_after(spec_path, data, inputs: int) -> dict:
    x = data.x_test[:inputs]
    gated, gated_peak = in_child(_teacher_logits, spec_path, x, False)
    dense, dense_peak = in_child(_teacher_logits, spec_path, x, True)
    return {"inputs": len(x), "batch": 256,
            "dense": {"seconds": dense["seconds"], "us_per_example": 1e6 * dense["seconds"] / len(x), "peak_mib": dense_peak},
            "gated": {"seconds": gated["seconds"], "us_per_example": 1e6 * gated["seconds"] / len(x), "peak_mib": gated_peak},
            "max_abs_diff": float(abs(gated["logits"] - dense["logits"]).max())}


def artifact_files_before_after(spec_path, classes) -> dict:
    """clusters.json with and without the covariance as text; the heatmap by class (old) or cluster."""
    from specialists.clustering import Clustering, covariance_png, read_covariance

    saved = json.loads((Path(spec_path) / "clusters.json").read_text())
    cov = read_covariance(Path(spec_path) / "covariance.npy")
    clustering = Clustering(covariance=cov, clusters=tuple(map(tuple, saved["clusters"])))
    old_json = len(json.dumps({**saved, "covariance": cov.tolist()}, indent=2).encode())
    tick = time.perf_counter()
    png = covariance_png(cov, clustering.clusters, classes)
    inches = 1.2 + 0.45 * len(classes)
    return {"classes": len(classes), "clusters_json_bytes_before": old_json,
            "clusters_json_bytes_now": (Path(spec_path) / "clusters.json").stat().st_size,
            "covariance_npy_bytes": (Path(spec_path) / "covariance.npy").stat().st_size,
            "heatmap_before_pixels": round(inches * 110), "heatmap_before_rgba_gib": round((inches * 110) ** 2 * 4 / 2**30, 2),
            "heatmap_now_bytes": len(png), "heatmap_now_seconds": time.perf_counter() - tick}


# --- students ---------------------------------------------------------------------------------------------------

STUDENT_SETTINGS = ("student", "student_epochs", "seeds", "teacher_per_cluster", "student_train", "student_method",
                    "student_temperature", "student_alpha")
PART_NAMED_SETTINGS = (*STUDENT_SETTINGS, "per_cluster")   # each value names its own part: the others are read back


def student_recipe(args) -> dict:
    """The students' soft term: edgekd distill's defaults, or what --student-method/-temperature/-alpha say."""
    from edgekd.config import DistillConfig, defaults

    d = defaults(DistillConfig)
    return {"method": args.student_method or d["method"],
            "temperature": d["temperature"] if args.student_temperature is None else args.student_temperature,
            "alpha": d["alpha"] if args.student_alpha is None else args.student_alpha}


# the recipe that made the parts and folders whose names carry none (edgekd distill's default when they
# were run); any other, today's default included, is named, so no run reuses or resumes another recipe's
UNNAMED_RECIPE = {"method": "kd-ls", "temperature": 2.0, "alpha": 0.5}


def _students_suffix(args) -> str:
    """Names the parts and folders of students on their own transfer set or distilled by a recipe other
    than ``UNNAMED_RECIPE``, so that such a run neither reuses nor resumes another's."""
    r = student_recipe(args)
    return ((f"-t{args.student_train}" if args.student_train else "")
            + ("" if r == UNNAMED_RECIPE else f"-{r['method']}T{r['temperature']:g}a{r['alpha']:g}"))


def _slug(arch: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in arch)


def students(args, work, cache, data, teachers: dict) -> list:
    """Students distilled from each teacher, ``--seeds`` each, at every usable core (no figure here is a time)."""
    import torch

    from benchmarks.timing import usable_cores

    threads = torch.get_num_threads()
    torch.set_num_threads(usable_cores())
    try:
        return _students(args, work, cache, data, teachers)
    finally:
        torch.set_num_threads(threads)


def _students(args, work, cache, data, teachers: dict) -> list:
    from edgekd.config import DistillConfig
    from edgekd.distill import distill, teacher_logits
    from edgekd.teachers import load_teacher
    from edgekd.training import TrainConfig

    rows = []
    _, y_train = data.split("train")
    for label, path in teachers.items():
        teacher = load_teacher(path)
        # the teacher on the transfer set (by default the train split it was fitted to; cached, the students reuse
        # it): where that is far above its test accuracy, its soft targets are close to the hard labels
        transfer = float((teacher_logits(teacher, data, "train", cache).argmax(1) == y_train).float().mean())
        runs = []
        for seed in range(args.seeds):
            # named by its settings too, so a run with other students neither reuses nor resumes this one's folders
            taught_by = f"{label}-r{args.teacher_per_cluster}" if label == "specialists" and args.teacher_per_cluster else label
            out = work / f"student-{taught_by}-{_slug(args.student)}-e{args.student_epochs}-s{seed}{_students_suffix(args)}"
            # the hard-label baseline (the same student and budget, no teacher) trains once, beside the generalist's
            # the named recipe only (no method search): the students compare teachers, not soft terms
            config = DistillConfig(student=args.student, baseline=label == "generalist", **student_recipe(args), search_methods=(),
                                   train=TrainConfig(epochs=args.student_epochs, seed=seed, batch_size=256))
            result = distill(teacher, data, config, out, cache=cache, overwrite=True,
                             resume=out.with_name(out.name + ".partial").exists())
            runs.append({"seed": seed, "test_accuracy": result.student_test_accuracy,
                         "teacher_test_accuracy": result.teacher_test_accuracy,
                         "baseline_test_accuracy": result.baseline_test_accuracy})
        rows.append({"teacher": label, "runs": runs, "teacher_transfer_accuracy": transfer, "transfer_data": data.spec})
    return rows


def target_profiles(args, cache, data, teachers: dict) -> dict:
    """What each teacher asks the students to match on their transfer set: its top-1 there and, for
    edgekd's default soft term and the students' own (where it differs), the mean top probability and
    mean true-class probability of the targets (``edgekd.losses.target_sharpness``), beside 1/C: how far
    from uniform the soft term is (with ``kd-ls`` the teacher's logit scale does not enter)."""
    import torch

    from edgekd.distill import teacher_logits
    from edgekd.losses import target_sharpness
    from edgekd.teachers import load_teacher

    default = student_recipe(argparse.Namespace(student_method=None, student_temperature=None, student_alpha=None))
    recipes = [default] + ([student_recipe(args)] if student_recipe(args) != default else [])
    labels = torch.as_tensor(data.split("train")[1]).cpu()
    out = {"uniform": 1 / data.num_classes, "transfer_data": data.spec, "teachers": {}}
    for label, path in teachers.items():
        logits = teacher_logits(load_teacher(path), data, "train", cache).float().cpu()
        row = {"train_accuracy": float((logits.argmax(1) == labels).float().mean())}
        row["recipes"] = [{**recipe, **target_sharpness(logits, labels, recipe["temperature"], recipe["method"])}
                          for recipe in recipes]
        out["teachers"][label] = row
    return out


# --- the scenario --------------------------------------------------------------------------------------------------

def main(argv=None) -> int:
    import torch

    from edgekd.cache import LogitCache
    from edgekd.data import load_dataset

    from benchmarks.timing import usable_cores

    import sklearn.cluster  # noqa: F401  (imported before any fork, so no child's peak memory counts them)
    import sklearn.metrics  # noqa: F401
    import sklearn.utils.extmath  # noqa: F401

    torch.set_num_threads(1)
    args = parse_args(argv)
    started = time.perf_counter()
    work, out = Path(args.work), Path(args.out)
    work.mkdir(parents=True, exist_ok=True)
    cache = LogitCache(work / "cache")
    # the students' settings name their own part, so changing them leaves the generalists and specialists read back
    settings = {k: v for k, v in vars(args).items() if k not in ("out", "work", *PART_NAMED_SETTINGS)}
    parts = Parts(work, settings)
    sizes, seps = _sizes(args.sizes), [float(s) for s in args.seps.split(",")]
    main_sep = seps[0]
    (big_c, big_g) = sizes[-1]

    every = args.parts == "all"
    generation = parts.get("generation", lambda: [_generation_time(args, c, g, main_sep) for c, g in
                                                  sorted(set(sizes) | set(_sizes(args.cost_sizes)) | {(10 * big_c, 10 * big_g)})]) if every else []
    quality = [parts.get(f"clustering-c{c}-sep{s:g}", lambda c=c, g=g, s=s: clustering_part(args, work, cache, c, g, s,
                                                                                           old=every and s == main_sep))
               for c, g in sizes for s in seps]
    cost = [parts.get(f"clustering-c{c}-sep{main_sep:g}", lambda c=c, g=g: clustering_part(args, work, cache, c, g, main_sep, old=c <= 1000))
            for c, g in _sizes(args.cost_sizes)] if every else []
    target = 10 * big_c
    extrapolated = {f"{key}.{field}": extrapolate(cost, key, field, target)
                    for key in ("auto", "true_k", "old_auto") for field in ("seconds", "peak_mib")}

    specialists = {}
    for c, g in sizes:
        data = load_dataset(spec_of(args, c, g, main_sep))
        row = next(r for r in quality if r["classes"] == c and r["sep"] == main_sep)
        auto_k = row["auto"]["k"][0]
        ks = sorted({max(2, round(auto_k * float(m))) for m in args.overlap.split(",")})
        specialists[c] = parts.get(f"specialists-c{c}", lambda data=data, row=row, ks=ks, c=c:
                                   build(args, work, cache, data, row["generalist"]["path"], f"spec-c{c}-overlap", ks))
    big_data = load_dataset(spec_of(args, big_c, big_g, main_sep))
    big_row = next(r for r in quality if r["classes"] == big_c and r["sep"] == main_sep)
    big_gen = big_row["generalist"]
    opinions = [parts.get(f"opinions-c{big_c}-r{r}", lambda r=r: build(args, work, cache, big_data, big_gen["path"],
                                                                        f"spec-c{big_c}-auto-r{r}", [big_row["auto"]["k"][0]], r))
                for r in (int(v) for v in args.per_cluster.split(",") if v.strip())]
    levels = [o["per_cluster"] for o in opinions]
    mixed = parts.get(f"mixed-c{big_c}-r{'-'.join(map(str, levels))}", lambda: mixed_coverage(
        args, work, cache, big_data, opinions)) if len(levels) >= 2 and 1 in levels else None
    main_spec = specialists[big_c]["path"]
    builds, solver, exact, gating, files, control = [], [], None, None, None, None
    if every:
        builds = [parts.get(f"build-k{k}", lambda k=k: build(args, work, cache, big_data, big_gen["path"], f"spec-c{big_c}-k{k}", [k]))
                  for k in (int(v) for v in args.build_ks.split(","))]
        solver = parts.get("solver-timing", lambda: solver_timing(big_c, 100, max(2, big_c // big_g)))
        exact = parts.get("exact-error", lambda: exact_error(main_spec, big_data))
        gating = parts.get("gating-before-after", lambda: gating_before_after(main_spec, big_data, 512 if args.quick else 2048))
        files = parts.get("files-before-after", lambda: artifact_files_before_after(main_spec, big_data.classes))
    control_epochs = args.control_epochs or args.student_epochs
    if control_epochs != args.gen_epochs:
        control = parts.get(f"control-generalist-e{control_epochs}", lambda: build(
            args, work, cache, big_data, generalist(args, work, big_data, f"generalist-c{big_c}-sep{main_sep:g}-e{control_epochs}",
                                                    control_epochs)["path"],
            f"spec-c{big_c}-overlap-e{control_epochs}", specialists[big_c]["k"]))
    r = args.teacher_per_cluster
    teacher_spec = next(o["path"] for o in opinions if o["per_cluster"] == r) if r else main_spec
    transfer = load_dataset(transfer_spec(args, big_c, big_g, main_sep)) if args.student_train else big_data
    teachers_ = {"specialists": teacher_spec, "generalist": big_gen["path"]}
    targets = parts.get(f"targets-c{big_c}" + (f"-r{r}" if r else "") + _students_suffix(args),
                        lambda: target_profiles(args, cache, transfer, teachers_))
    taught = parts.get(f"students-{args.student}-e{args.student_epochs}-s{args.seeds}" + (f"-r{r}" if r else "")
                       + _students_suffix(args), lambda: students(args, work, cache, transfer, teachers_)) if args.seeds else []

    record = provenance(started)
    if parts.read_back:   # this invocation's time alone would read as the run's
        record["run_note"] = (f"this invocation; {len(set(parts.read_back))} of {len(parts.seconds)} parts were read back "
                              f"from earlier runs, {sum(parts.seconds.values()) / 60:.1f} min of parts in all")
    record["command"] = "python -m benchmarks.specialists_scale " + shlex.join(sys.argv[1:] if argv is None else argv)
    record["threads"] = torch.get_num_threads()
    result = {"provenance": record, "args": vars(args), "generation": generation, "clustering": quality,
              "clustering_cost": cost, "extrapolated_to": target, "extrapolated": extrapolated,
              "specialists": {str(k): v for k, v in specialists.items()}, "builds": builds, "solver_timing": solver,
              "exact_error": exact, "gating": gating, "files": files, "students": taught, "targets": targets,
              "opinions": opinions, "mixed": mixed,
              "control": {"generalist_epochs": control_epochs, **control} if control else None,
              "parts_seconds": parts.seconds, "parts_read_back": parts.read_back,
              "student_threads": usable_cores() if taught else None}
    result["aims"] = aims(result, big_c)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=2, default=_plain) + "\n")
    out.with_suffix(".md").write_text(render(result))
    print(out.with_suffix(".md").read_text())
    return 0


def _generation_time(args, classes, groups, sep) -> dict:
    from edgekd.data import load_dataset

    tick = time.perf_counter()
    data = load_dataset(spec_of(args, classes, groups, sep))
    return {"classes": classes, "groups": groups, "examples": len(data.y_train) + len(data.y_val) + len(data.y_test),
            "seconds": time.perf_counter() - tick}


def aims(result: dict, big_c: int) -> dict:
    spec = result["specialists"][str(big_c)]
    rising = [r["relative_change"] for r in spec["by_coverage"] if r["specialists_covering"] >= 1 and r["relative_change"] is not None]
    big_rows = [r for r in result["clustering"] if r["classes"] == big_c]
    aims_ = {
        "ari_at_least_0.9": {f"{r['classes']} classes, sep {r['sep']:g}, {label}": r[label]["ari"] >= 0.9
                             for r in result["clustering"] for label in ("auto", "true_k")},
        "auto_k_in_the_tens": {f"sep {r['sep']:g}": r["auto"]["k"][0] for r in big_rows},
        "overall_gain_at_least_4.4%": spec["relative_change"] is not None and spec["relative_change"] >= 0.044,
    }
    if result.get("control"):
        aims_["overall_gain_at_least_4.4%_with_the_control_generalist"] = result["control"]["relative_change"] >= 0.044
    aims_["table4_rises_with_coverage"] = len(rising) >= 2 and _rises(rising)
    if result.get("mixed"):
        aims_["table4_rises_with_coverage_in_one_ensemble_same_clusters"] = _rises([row["relative_change"] for row in result["mixed"]["rows"]])
    opinions = [o["relative_change"] for o in result.get("opinions") or []]
    if len(opinions) >= 2:
        aims_["gain_rises_with_specialists_per_cluster"] = _rises(opinions)
    if not result["students"]:
        return aims_
    students_ = {s["teacher"]: [r["test_accuracy"] for r in s["runs"]] for s in result["students"]}
    (m_s, sd_s), (m_g, sd_g) = mean_std(students_["specialists"]), mean_std(students_["generalist"])
    hard = [r.get("baseline_test_accuracy") for s in result["students"] for r in s["runs"] if s["teacher"] == "generalist"]
    aims_["student_wins_by_more_than_spread"] = (m_s - m_g) > max(sd_s, sd_g)
    if all(h is not None for h in hard) and hard:
        m_h, sd_h = mean_std(hard)
        aims_["specialist_taught_student_beats_hard_labels_by_more_than_spread"] = (m_s - m_h) > max(sd_s, sd_h)
    return aims_


def _rises(values) -> bool:
    return all(b > a for a, b in zip(values, values[1:]))


# --- Markdown -----------------------------------------------------------------------------------------------

def _pct(v):
    return f"{100 * v:.2f}" if v is not None else "-"


def _p_value(p):
    return "< 1e-300" if p == 0 else f"= {p:.2g}"   # 0.0 is an underflow, not a certainty


def _rel(v):
    return f"{100 * v:+.2f}%" if v is not None else "-"


def render(result: dict) -> str:
    args = result["args"]
    lines = header_markdown("Specialists at many classes (paper section 5, issue 15)", result["provenance"])
    seconds = result.get("parts_seconds") or {}
    if result.get("parts_read_back"):
        lines += [f"Run in resumable parts; {len(result['parts_read_back'])} of them were read back from earlier runs of the "
                  f"same command and settings. Wall time of all parts as they ran: {sum(seconds.values()) / 60:.1f} min ("
                  + ", ".join(f"{k} {v:.0f} s" for k, v in seconds.items()) + ").", ""]
    student_threads = f" (students: {result['student_threads']})" if result.get("student_threads") else ""
    lines += [f"Threads: {result['provenance']['threads']}{student_threads}. Data: `synthetic:` (edgekd/synthetic.py), {args['dim']} dimensions, "
              f"{args['train']} training examples per class (10% of them val) and {args['test']} test examples per class, "
              f"class spread {args['spread']:g} (distance between two classes of one group, noise std 1), group separation "
              f"`sep` {args['seps']} (the difficulty: smaller is harder). Generalist `{args['generalist']}`, "
              f"{_generalist_budget(result)} (one hidden layer: short of capacity for this many classes, the regime the paper's "
              f"specialists are for); specialists: its architecture and weights, up to {args['spec_epochs']} epochs at lr "
              f"{args['spec_lr']:g} (patience 3), top-1 gating.", "",
              "## Clustering against the true groups", "",
              "| classes | groups | sep | generalist test % | K auto (K tried) | ARI auto | ARI true K | s auto | s true K | before: K auto | before: ARI auto | before: ARI true K |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in result["clustering"]:
        old_a, old_t = r.get("old_auto"), r.get("old_true_k")
        lines.append(f"| {r['classes']} | {r['groups']} | {r['sep']:g} | {_pct(r['generalist']['test_accuracy'])} | "
                     f"{r['auto']['k'][0]} ({r['auto']['k_tried']}) | {r['auto']['ari']:.3f} | {r['true_k']['ari']:.3f} | "
                     f"{r['auto']['seconds']:.1f} | {r['true_k']['seconds']:.1f} | "
                     + (f"{old_a['k'][0]} | {old_a['ari']:.3f} | {old_t['ari']:.3f} |" if old_a else "- | - | - |"))
    lines += ["", ("\"Before\" is the clustering before issue 15 (auto over K = 2..8, np.cov of every probability vector, "
                   "k-means on the C x C columns), run on the same generalist." if any(r.get("old_auto") for r in result["clustering"])
                   else "The clustering before issue 15 was not run here (`--parts gain`)."), ""]
    if result["clustering_cost"]:
        lines += _cost_lines(result)
    lines += _gain_lines(result)
    if result["builds"]:
        lines += _build_lines(result)
    lines += _student_lines(result) if result["students"] else ["", "## Students", "", "Not run (`--seeds 0`)."]
    lines += _target_lines(result)
    lines += ["", "## Aims", ""]
    for name, value in result["aims"].items():
        lines.append(f"- {name}: {json.dumps(value)}")
    lines += ["", "Reading: " + reading(result), ""]
    return "\n".join(lines)


def _generalist_budget(result) -> str:
    args = result["args"]
    big_c = _sizes(args["sizes"])[-1][0]
    gen = next(r for r in result["clustering"] if r["classes"] == big_c)["generalist"]
    best = f", best on val at epoch {gen['best_epoch']} at {big_c:,} classes" if gen.get("best_epoch") else ""
    return f"{args['gen_epochs']} epochs, one-cycle schedule{best}"


def _cost_lines(result) -> list:
    args = result["args"]
    lines = ["### Time and memory as the classes grow", "",
              "| classes | train examples | auto: s | auto: peak MiB | true K: s | true K: peak MiB | before, auto: s | before, auto: peak MiB |",
              "|---|---|---|---|---|---|---|---|"]
    for r in result["clustering_cost"]:
        old = r.get("old_auto")
        lines.append(f"| {r['classes']} | {r['n_train']} | {r['auto']['seconds']:.1f} | {r['auto']['peak_mib']:.0f} | "
                     f"{r['true_k']['seconds']:.1f} | {r['true_k']['peak_mib']:.0f} | "
                     + (f"{old['seconds']:.1f} | {old['peak_mib']:.0f} |" if old else "- | - |"))
    ex = result["extrapolated"]
    target = result["extrapolated_to"]
    said = []
    for key, label in (("auto.seconds", "auto clustering time"), ("auto.peak_mib", "its peak memory"),
                       ("old_auto.seconds", "the clustering before, time")):   # its memory: the analytic figure above
        e = ex.get(key)
        if e:
            unit = "s" if key.endswith("seconds") else "MiB"
            said.append(f"{label} ~{e['value']:,.0f} {unit} (growth C^{e['exponent']:.2f} between {e['from'][0]} and {e['from'][1]} classes)")
    lines += ["", f"Not measured at {target:,} classes: with {args['train']} examples per class the covariance alone is "
              f"N x C^2 = {0.9 * args['train'] * target ** 3:.1e} multiply-adds, and before this issue the (N, C) float64 "
              f"probabilities and their centred copy would need {2 * 0.9 * args['train'] * target ** 2 * 8 / 2**30:,.0f} GiB. "
              f"**Extrapolated** (a power law through the two largest sizes measured): "
              + "; ".join(said) + ". Generating the data: " +
              ", ".join(f"{g['classes']:,} classes {g['seconds']:.1f} s" for g in result["generation"]) + ".", ""]
    return lines


def _gain_lines(result) -> list:
    args = result["args"]
    lines = ["## Specialist ensemble against the generalist", ""]
    for c, s in result["specialists"].items():
        lines += [f"### {int(c):,} classes (sep {args['seps'].split(',')[0]}), overlapping clusterings K = {', '.join(map(str, s['k']))}: "
                  f"{s['specialists']} specialists", "",
                  f"Test accuracy {_pct(s['generalist_accuracy'])}% → {_pct(s['ensemble_accuracy'])}%: **{_rel(s['relative_change'])} "
                  f"relative overall** (the paper: +4.4%); covered classes {_rel(s['covered'])}; {s['fixed']} test inputs fixed, "
                  f"{s['broken']} broken, sign test p {_p_value(s['sign_test_p'])}; {s['active']['mean_active']:.2f} specialists active "
                  f"per input on average (at most {s['active']['max_active']}).", "",
                  "| specialists covering the correct class | test examples | change in correct | relative change |", "|---|---|---|---|"]
        for row in s["by_coverage"]:
            lines.append(f"| {row['specialists_covering']} | {row['n_test']} | {row['delta_correct']:+d} | {_rel(row['relative_change'])} |")
        lines += ["", "The paper's Table 4: +3.4% with one specialist covering the class, rising to +16.6% with ten or more.", ""]
    c = result.get("control")
    if c:
        lines += [f"Control: the same K ({', '.join(map(str, c['k']))}; {c['specialists']} specialists) from a "
                  f"generalist trained {c['generalist_epochs']} epochs instead of {args['gen_epochs']}"
                  + (" (as long as the students below)" if c["generalist_epochs"] == args["student_epochs"] else "")
                  + f": {_pct(c['generalist_accuracy'])}% → {_pct(c['ensemble_accuracy'])}%, **{_rel(c['relative_change'])}** "
                  f"overall; by coverage " + ", ".join(f"{r['specialists_covering']}: {_rel(r['relative_change'])}" for r in c["by_coverage"])
                  + ".", ""]
    return lines + _opinion_lines(result)


def _opinion_lines(result) -> list:
    """Coverage that counts opinions: the same clusters, 1, 2, 4 ... specialists each (own seeds)."""
    rows = result.get("opinions") or []
    if not rows:
        return []
    lines = [f"### The same clusters (K = {rows[0]['k'][0]}), several specialists per cluster", "",
             "Each specialist of a cluster has its own seed (its own oversampled batches and validation mix), all start "
             "from the generalist's weights; every covered class is covered by as many specialists as there are per cluster, "
             "so coverage counts opinions and the clusters' shapes do not change.", "",
             "| specialists per cluster | specialists | test % generalist → ensemble | relative overall | covered classes | fixed / broken | active per input |",
             "|---|---|---|---|---|---|---|"]
    for o in rows:
        lines.append(f"| {o['per_cluster']} | {o['specialists']} | {_pct(o['generalist_accuracy'])} → {_pct(o['ensemble_accuracy'])} | "
                     f"**{_rel(o['relative_change'])}** | {_rel(o['covered'])} | {o['fixed']} / {o['broken']} | "
                     f"{o['active']['mean_active']:.2f} |")
    return lines + [""] + _mixed_lines(result)


def _mixed_lines(result) -> list:
    mixed = result.get("mixed")
    if not mixed:
        return []
    shares = ", ".join(f"{row['clusters']} clusters with {row['specialists_covering']}" for row in mixed["rows"])
    lines = [f"### Table 4 inside one ensemble: the same clusters (K = {mixed['k'][0]}), coverage drawn per cluster", "",
             f"One ensemble of {mixed['specialists']} specialists: each cluster keeps its first r specialists of the "
             f"{mixed['levels'][-1]}-per-cluster build, r drawn per cluster by a seeded shuffle ({shares}). Nothing is "
             f"retrained (copy j trains with seed + j, so these are the copies the r-per-cluster builds trained). "
             f"Test accuracy {_pct(mixed['generalist_accuracy'])}% → {_pct(mixed['ensemble_accuracy'])}%, "
             f"{_rel(mixed['relative_change'])} overall; {mixed['fixed']} fixed, {mixed['broken']} broken; "
             f"{mixed['active']['mean_active']:.2f} specialists active per input on average. The last column is the same "
             "classes' gain with one specialist per cluster: it tells a rise that comes from coverage from one that comes "
             "from which clusters drew which r.", "",
             "| specialists covering the correct class | clusters | test examples | change in correct | relative change | the same classes, 1 per cluster |",
             "|---|---|---|---|---|---|"]
    for row in mixed["rows"]:
        lines.append(f"| {row['specialists_covering']} | {row['clusters']} | {row['n_test']} | {row['delta_correct']:+d} | "
                     f"**{_rel(row['relative_change'])}** | {_rel(row['one_per_cluster_relative_change'])} |")
    return lines + [""]


def _target_lines(result) -> list:
    targets = result.get("targets")
    if not targets:
        return []
    lines = ["", "### What the students are asked to match", "",
             f"On the students' transfer set (`{targets['transfer_data']}`): each teacher's top-1 there and, per soft term, the "
             f"mean top probability and mean true-class probability of its targets; uniform is {targets['uniform']:.4f}.", "",
             "| teacher | top-1 on the transfer set % | soft term | mean top probability | mean true-class probability |",
             "|---|---|---|---|---|"]
    for label, row in targets["teachers"].items():
        for recipe in row["recipes"]:
            lines.append(f"| {_teacher_label(result, label)} | {_pct(row['train_accuracy'])} | {recipe['method']}, T={recipe['temperature']:g} | "
                         f"{recipe['p_max']:.4f} | {recipe['p_true']:.4f} |")
    return lines + [""]


def _build_lines(result) -> list:
    args = result["args"]
    lines = ["## Cost", "", "### Build time against the number of specialists", "",
              "| K | specialists | clustering s | training s | evaluation s | total s | test % generalist → ensemble | relative |",
              "|---|---|---|---|---|---|---|---|"]
    for b in result["builds"]:
        t = b["timings_s"]
        lines.append(f"| {b['k'][0]} | {b['specialists']} | {t['clustering']:.1f} | {t['training']:.1f} | {t['evaluation']:.1f} | "
                     f"{t['total']:.1f} | {_pct(b['generalist_accuracy'])} → {_pct(b['ensemble_accuracy'])} | {_rel(b['relative_change'])} |")
    lines += ["", "### The KL combination per example against the number of active specialists", "",
              f"{args['sizes'].split(',')[-1].split(':')[0]} classes, 100 specialists, float64, one thread, batches of 128 random "
              "inputs whose specialists roughly agree with the generalist. Gated: the solver holds only the active specialists; "
              "dense: all 100, the others masked, log-domain updates (the solver before this issue); the middle column is "
              "gated with the log-domain update, to separate the two changes.", "",
              "| active specialists | gated µs/example | gated, log-domain update | dense, log-domain (before) | mean updates | max |log q| difference gated vs before |",
              "|---|---|---|---|---|---|"]
    for r in result["solver_timing"]:
        lines.append(f"| {r['active']} | {r['gated_us_per_example']:.0f} | {r.get('gated_log_domain_us_per_example', float('nan')):.0f} | "
                     f"{r['dense_us_per_example']:.0f} | {r['mean_updates']:.1f} | {r['same_answer']:.1e} |")
    e, g, f = result["exact_error"], result["gating"], result["files"]
    lines += ["", f"Against an exact solver (L-BFGS on the logits to gtol 1e-12) on {e['inputs']} test inputs with "
              f"{e['active_per_input'][0]}-{e['active_per_input'][-1]} active specialists: the solver's largest probability error "
              f"{e['max_abs_prob']:.1e}, log-probability error {e['max_abs_log_prob_q_gt_1e-6']:.1e} (classes with q > 1e-6), objective "
              f"gap {e['objective_gap']:.1e}; the exportable module's {e['module_steps']} fixed update(s): probability error "
              f"{e['module_max_abs_prob']:.1e}, objective gap {e['module_objective_gap']:.1e}.", "",
              "## What did not scale, before and after", "",
              "| what | before | after |", "|---|---|---|",
              f"| ensemble teacher logits, {g['inputs']} inputs (batches of {g['batch']}) | {g['dense']['us_per_example']:.0f} µs/example, "
              f"peak +{g['dense']['peak_mib']:.0f} MiB (every specialist on every input, (B, n, C) float64, log-domain updates) | "
              f"{g['gated']['us_per_example']:.0f} µs/example, peak +{g['gated']['peak_mib']:.0f} MiB (gated, float64 updates in "
              f"probability space; max |logit difference| {g['max_abs_diff']:.1e}) |",
              f"| covariance in the artifact ({f['classes']} classes) | clusters.json {f['clusters_json_bytes_before'] / 2**20:.1f} MiB of text | "
              f"clusters.json {f['clusters_json_bytes_now'] / 2**10:.0f} KiB + covariance.npy {f['covariance_npy_bytes'] / 2**20:.1f} MiB |",
              f"| heatmap ({f['classes']} classes) | {f['heatmap_before_pixels']:,} px square by class (~{f['heatmap_before_rgba_gib']} GiB RGBA; not drawn) | "
              f"by cluster, {f['heatmap_now_bytes'] / 2**10:.0f} KiB PNG in {f['heatmap_now_seconds']:.1f} s |"]
    big = result["clustering_cost"]
    row = next((r for r in big if r.get("old_auto") and r["classes"] == max(x["classes"] for x in big if x.get("old_auto"))), None)
    if row:
        lines.append(f"| clustering, {row['classes']} classes, auto | {row['old_auto']['seconds']:.1f} s, peak +{row['old_auto']['peak_mib']:.0f} MiB, "
                     f"K = {row['old_auto']['k'][0]} (range 2..8), ARI {row['old_auto']['ari']:.3f} | {row['auto']['seconds']:.1f} s, "
                     f"peak +{row['auto']['peak_mib']:.0f} MiB, K = {row['auto']['k'][0]}, ARI {row['auto']['ari']:.3f} |")
    return lines


def _teacher_label(result, label: str) -> str:
    """Which specialist ensemble taught: the overlapping build, or the one with R specialists per cluster."""
    r = result["args"].get("teacher_per_cluster") or 0
    if label != "specialists":
        return label
    if not r:
        return "specialists (overlapping clusterings)"
    o = next(o for o in result["opinions"] if o["per_cluster"] == r)
    return f"specialists (K = {o['k'][0]}, {r} per cluster: {o['specialists']})"


def _recipe_words(args: dict) -> str:
    keys = ("student_method", "student_temperature", "student_alpha")
    r = student_recipe(argparse.Namespace(**{k: args.get(k) for k in keys}))
    name = {"kd": "plain KD", "kd-ls": "KD-LS", "dkd": "DKD", "nckd": "NCKD"}.get(r["method"], r["method"])
    what = "distilled with" if any(args.get(k) is not None for k in keys) else "edgekd's default distillation"
    return f"{what} ({name}, T={r['temperature']:g}, alpha={r['alpha']:g})"


def _student_lines(result) -> list:
    args = result["args"]
    budget = f"{args['student_epochs']} epochs"
    fresh = args.get("student_train")
    data = (f"a transfer set of {fresh} examples per class drawn afresh from the same classes (10% of them val), on "
            f"which the teachers were not trained, and the same test set" if fresh else
            "the teachers' own training data (the transfer set)")
    lines = ["", "## Students taught by the specialist ensemble and by the generalist", "",
              f"Student `{args['student']}`, {budget}, {_recipe_words(args)}, "
              f"on {data}; {args['seeds']} seeds. Hard labels: the same student, data, budget and seeds, no teacher.", "",
              "| teacher | teacher test % | teacher on the transfer set (train) % | student test % (mean ± std) | per seed |",
              "|---|---|---|---|---|"]
    for s in result["students"]:
        accs = [r["test_accuracy"] for r in s["runs"]]
        m, sd = mean_std(accs)
        lines.append(f"| {_teacher_label(result, s['teacher'])} | {_pct(s['runs'][0]['teacher_test_accuracy'])} | "
                     f"{_pct(s.get('teacher_transfer_accuracy'))} | {100 * m:.2f} ± {100 * sd:.2f} | "
                     + ", ".join(_pct(a) for a in accs) + " |")
    hard = [r.get("baseline_test_accuracy") for s in result["students"] if s["teacher"] == "generalist" for r in s["runs"]]
    if hard and all(h is not None for h in hard):
        m, sd = mean_std(hard)
        lines.append(f"| none (hard labels) | - | - | {100 * m:.2f} ± {100 * sd:.2f} | " + ", ".join(_pct(a) for a in hard) + " |")
    return lines


def reading(result) -> str:
    """What the figures say, worded from them (not written ahead of the run)."""
    aims_, said, args = result["aims"], [], result["args"]
    ari = aims_["ari_at_least_0.9"]
    said.append("the clustering aims are met" if all(ari.values()) and all(10 <= k < 100 for k in aims_["auto_k_in_the_tens"].values())
                else "the clustering aims are not all met")
    big_c = _sizes(result["args"]["sizes"])[-1][0]
    gain = result["specialists"][str(big_c)]["relative_change"]
    control = result.get("control")
    if control:
        said.append(f"the overall gain is {_rel(gain)} with the generalist trained {args['gen_epochs']} epochs and "
                    f"{_rel(control['relative_change'])} with the control trained {control['generalist_epochs']} epochs "
                    f"({_pct(control['generalist_accuracy'])}% against {_pct(result['specialists'][str(big_c)]['generalist_accuracy'])}%)")
        # the strongest baseline of the ensemble is the generalist trained longer, alone
        ensemble, longer = result["specialists"][str(big_c)]["ensemble_accuracy"], control["generalist_accuracy"]
        if ensemble < longer:
            said.append(f"the ensemble of the {args['gen_epochs']}-epoch generalist ({_pct(ensemble)}%) loses by "
                        f"{100 * (longer - ensemble):.2f} points to the {control['generalist_epochs']}-epoch generalist "
                        f"alone ({_pct(longer)}%): training the generalist longer pays more than these specialists")
    else:
        said.append(f"the overall gain is {_rel(gain)}, with no control generalist trained longer")
    said.append("Table 4 of the overlapping clusterings rises with coverage" if aims_["table4_rises_with_coverage"]
                else "Table 4 of the overlapping clusterings does not rise with coverage")
    if "table4_rises_with_coverage_in_one_ensemble_same_clusters" in aims_:
        rows = result["mixed"]["rows"]
        gains = ", ".join(f"{_rel(r['relative_change'])} with {r['specialists_covering']}" for r in rows)
        alone = ", ".join(_rel(r["one_per_cluster_relative_change"]) for r in rows)
        said.append(("inside one ensemble with the clusters fixed and coverage drawn per cluster, Table 4 rises"
                     if aims_["table4_rises_with_coverage_in_one_ensemble_same_clusters"] else
                     "inside one ensemble with the clusters fixed and coverage drawn per cluster, Table 4 does not rise")
                    + f" ({gains}; the same classes with one specialist each: {alone})")
    if "gain_rises_with_specialists_per_cluster" in aims_:
        gains = ", ".join(f"{_rel(o['relative_change'])} with {o['per_cluster']}" for o in result["opinions"])
        said.append(("with the same clusters the gain rises with the specialists per cluster" if aims_["gain_rises_with_specialists_per_cluster"]
                     else "with the same clusters the gain does not rise with the specialists per cluster") + f" ({gains})")
    if not result["students"]:
        return "; ".join(said) + "; no students were trained in this run."
    students_ = {s["teacher"]: mean_std([r["test_accuracy"] for r in s["runs"]])[0] for s in result["students"]}
    diff = 100 * (students_["specialists"] - students_["generalist"])
    verdict = "wins by more than its seed spread" if aims_["student_wins_by_more_than_spread"] else "does not win by more than its seed spread"
    said.append(f"the student taught by the specialists {verdict} ({diff:+.2f} points against the generalist's)")
    if "specialist_taught_student_beats_hard_labels_by_more_than_spread" in aims_:
        said.append("and it " + ("beats" if aims_["specialist_taught_student_beats_hard_labels_by_more_than_spread"] else "does not beat")
                    + " the same student trained on hard labels by more than the spread")
    return "; ".join(said) + '.'


if __name__ == "__main__":
    run_script(main)
