"""The specialists report: generalist vs specialist ensemble on the test split, per cluster, on the
classes the specialists cover, and the paper's Table 4 view (by how many specialists cover the
correct class). Data (a dict, saved as JSON) first; Markdown rendered from it."""

from __future__ import annotations

import torch


def _acc(correct: torch.Tensor) -> float | None:
    return float(correct.float().mean()) if len(correct) else None


def _relative(gen: float | None, ens: float | None) -> float | None:
    return (ens - gen) / gen if gen else None


def comparison(gen_logits: torch.Tensor, ens_logits: torch.Tensor, y: torch.Tensor, clusters, specialist_clusters,
               classes, active: torch.Tensor) -> dict:
    """Accuracy figures of generalist vs ensemble; ``active`` (N, n) bool from the solver."""
    gen_ok, ens_ok = gen_logits.argmax(1) == y, ens_logits.argmax(1) == y
    nll = lambda z: float(torch.nn.functional.cross_entropy(z, y))  # noqa: E731
    per_cluster = []
    for cluster in clusters:
        mask = torch.isin(y, torch.tensor(cluster))
        gen, ens = _acc(gen_ok[mask]), _acc(ens_ok[mask])
        per_cluster.append({"classes": list(cluster), "class_names": [classes[c] for c in cluster],
                            "specialist": cluster in specialist_clusters, "n_test": int(mask.sum()),
                            "generalist_accuracy": gen, "ensemble_accuracy": ens, "relative_change": _relative(gen, ens)})
    covered_classes = sorted({c for s in specialist_clusters for c in s})
    covered = torch.isin(y, torch.tensor(covered_classes))
    coverage = torch.zeros(len(classes), dtype=torch.long)
    for s in specialist_clusters:
        coverage[list(s)] += 1
    count = coverage[y]
    by_coverage = []
    for c in range(int(coverage.max()) + 1):
        mask = count == c
        if not mask.any():
            continue
        delta = int(ens_ok[mask].sum() - gen_ok[mask].sum())
        by_coverage.append({"specialists_covering": c, "n_test": int(mask.sum()), "delta_correct": delta,
                            "relative_change": delta / int(gen_ok[mask].sum()) if gen_ok[mask].any() else None})
    gen_cov, ens_cov = _acc(gen_ok[covered]), _acc(ens_ok[covered])
    return {
        "n_test": len(y),
        "generalist": {"accuracy": _acc(gen_ok), "nll": nll(gen_logits)},
        "ensemble": {"accuracy": _acc(ens_ok), "nll": nll(ens_logits)},
        "relative_change": _relative(_acc(gen_ok), _acc(ens_ok)),
        "covered": {"classes": covered_classes, "class_names": [classes[c] for c in covered_classes],
                    "n_test": int(covered.sum()), "generalist_accuracy": gen_cov, "ensemble_accuracy": ens_cov,
                    "relative_change": _relative(gen_cov, ens_cov)},
        "per_cluster": per_cluster,
        "by_coverage": by_coverage,
        "active": {"fraction_with_active_specialist": float(active.any(1).float().mean()),
                   "mean_active": float(active.sum(1).float().mean()), "max_active": int(active.sum(1).max())},
        "changed_predictions": int((gen_logits.argmax(1) != ens_logits.argmax(1)).sum()),
        **_paired(gen_ok, ens_ok),
    }


def _paired(gen_ok: torch.Tensor, ens_ok: torch.Tensor) -> dict:
    """Test inputs the specialists fixed and broke, and the two-sided sign test of fixed vs broken
    (is the change more than chance, on this one test set?)."""
    from scipy.stats import binomtest

    fixed, broken = int((ens_ok & ~gen_ok).sum()), int((gen_ok & ~ens_ok).sum())
    p = float(binomtest(fixed, fixed + broken, 0.5).pvalue) if fixed + broken else None
    return {"fixed": fixed, "broken": broken, "sign_test_p": p}


def _pct(value) -> str:
    return f"{100 * value:.2f}" if value is not None else "-"


def _rel(value) -> str:
    return f"{100 * value:+.2f}%" if value is not None else "-"


def sign_test(test: dict) -> str:
    """'12 fixed, 3 broken, sign test p = 0.035'; '' for a report from before these were recorded."""
    if "fixed" not in test:
        return ""
    p = f", sign test p = {test['sign_test_p']:.2g}" if test.get("sign_test_p") is not None else ""
    return f"{test['fixed']} fixed, {test['broken']} broken{p}"


def render_markdown(report: dict) -> str:
    test = report["test"]
    lines = [f"# Specialists on `{report['data']['spec']}`", "",
             f"Generalist: {report['generalist']['description']}. Clustering at T={report['clustering']['temperature']:g}, "
             f"K={', '.join(map(str, report['clustering']['k']))}"
             + (" (chosen by silhouette)" if report['clustering']['silhouette'] else "")
             + f"; top-{report['solver']['top_n']} gating.", "", "## Clusters", ""]
    for row in test["per_cluster"]:
        tag = "specialist" if row["specialist"] else \
            "no specialist (one class)" if len(row["class_names"]) == 1 else "no specialist (left out by --keep)"
        lines.append(f"- {', '.join(row['class_names'])}: {tag}")
    if report["clustering"]["silhouette"]:
        lines += ["", "Silhouette by K: " + ", ".join(f"{k}: {v:.3f}" for k, v in report["clustering"]["silhouette"].items())]
    lines += ["", "## Test accuracy (%)", "", "| classes | n | generalist | + specialists | relative change |", "|---|---|---|---|---|",
              f"| all | {test['n_test']} | {_pct(test['generalist']['accuracy'])} | {_pct(test['ensemble']['accuracy'])} | {_rel(test['relative_change'])} |",
              f"| covered by specialists | {test['covered']['n_test']} | {_pct(test['covered']['generalist_accuracy'])} | "
              f"{_pct(test['covered']['ensemble_accuracy'])} | {_rel(test['covered']['relative_change'])} |"]
    for row in test["per_cluster"]:
        if row["specialist"]:
            lines.append(f"| {', '.join(row['class_names'])} | {row['n_test']} | {_pct(row['generalist_accuracy'])} | "
                         f"{_pct(row['ensemble_accuracy'])} | {_rel(row['relative_change'])} |")
    lines += ["", f"NLL: generalist {test['generalist']['nll']:.4f}, ensemble {test['ensemble']['nll']:.4f}; "
              f"{test['changed_predictions']} test predictions changed: {sign_test(test)}; "
              f"{100 * test['active']['fraction_with_active_specialist']:.1f}% of test inputs had an active specialist.",
              "", "## By number of specialists covering the correct class (the paper's Table 4)", "",
              "| specialists covering | test examples | change in correct | relative accuracy change |", "|---|---|---|---|"]
    for row in test["by_coverage"]:
        lines.append(f"| {row['specialists_covering']} | {row['n_test']} | {row['delta_correct']:+d} | {_rel(row['relative_change'])} |")
    lines += ["", "## Specialists", "", "Index: what `edgekd specialists regate --keep` takes.", "",
              "| index | classes | val accuracy (mixed val, S + dustbin) | dustbin bias | share of S: data / training | epochs | seconds |",
              "|---|---|---|---|---|---|---|"]
    for index, spec in enumerate(report["specialists"]):
        lines.append(f"| {index} | {', '.join(spec['class_names'])} | {_pct(spec['val_accuracy'])} | {spec['dustbin_bias']:+.3f} | "
                     f"{spec['true_share']:.3f} / {spec['training_share']:.3f} | {spec['epochs_run']} | {spec['seconds']:.1f} |")
    solver = report["solver"]
    lines += ["", f"Solver: fixed-point (EM) updates of q, stopped when no log-probability moves by {solver['tol']:g} "
              f"or after {solver['max_steps']} updates; test: at most {solver['test_steps_max']} update(s) "
              f"({solver['test_capped']} input(s) stopped by the cap), max|df/dz| {solver['test_grad_max']:.1e}; "
              f"exportable module: {solver['module_steps']} fixed step(s), max |log q difference| vs the solver "
              f"{solver['module_max_abs_diff']:.1e} on test.",
              "", "Time (s): " + ", ".join(f"{k} {v:.1f}" for k, v in report["timings_s"].items()), ""]
    return "\n".join(lines)
