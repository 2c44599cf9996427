"""``edgekd specialists``: confusion clustering and specialist ensembles (paper section 5)."""

from __future__ import annotations

import functools

import click

from edgekd.clicommon import (cache_option_rules, cache_options, common_options, data_of_models, data_options, echo_json,
                              load_data, make_train_config, refuse_resume_and_overwrite, refuse_unused, resolved_config,
                              show_progress, train_options)
from edgekd.config import defaults
from specialists.config import SpecialistConfig

# every default below is read from SpecialistConfig: a flag left out means what the library means
SPECIALIST = defaults(SpecialistConfig)


def cluster_options(func):
    @click.option("--teacher", required=True, help="The generalist: an edgekd artifact of one model.")
    @click.option("--member", type=click.IntRange(min=0), default=None,
                  help="With an ensemble teacher: the member used as generalist (ensembles are refused otherwise).")
    @click.option("--clusters", default="auto", show_default=True,
                  help="Number of clusters K, several K separated by commas (clusterings merged: overlapping "
                       "specialists), or 'auto' (the K in 2..min(C-1, max(8, ceil(2 sqrt C))) with the best silhouette).")
    @click.option("--cluster-temperature", type=click.FloatRange(min=0, min_open=True),
                  default=SPECIALIST["cluster_temperature"], show_default=True,
                  help="Clustering uses softmax(z/T) of the generalist (T=1 is the paper's; a confident generalist needs ~4).")
    @cache_options
    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        return func(*args, **kwargs)
    return wrapper


@click.group("specialists")
def specialists_group():
    """Specialist ensembles: cluster the classes a generalist confuses, train one specialist per cluster."""


@specialists_group.command("cluster")
@cluster_options
@data_options
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@common_options
def cluster_cmd(as_json, **params):
    """Only the confusion clustering: print the clusters (no training)."""
    from edgekd.cache import LogitCache
    from edgekd.device import resolve_device
    from edgekd.targets import teacher_logits
    from edgekd.teachers import check_teacher_fits
    from edgekd.validation import check_positive
    from specialists.build import open_generalist
    from specialists.clustering import check_k, find_clusters, parse_clusters

    refuse_unused(cache_option_rules(params))
    check_positive("cluster_temperature", params["cluster_temperature"])
    # the generalist first: a missing or damaged one is refused before a large data set is decoded
    generalist = open_generalist(params["teacher"], params["member"], device=resolve_device(params["device"]))
    data = load_data(params)
    ks = check_k(parse_clusters(params["clusters"]), data.num_classes)
    check_teacher_fits(generalist.teacher, data, name="Generalist")
    cache = LogitCache(params["cache_dir"], enabled=not params["no_cache"])
    logits = teacher_logits(generalist.teacher, data, "train", cache, refresh=params["refresh_cache"]).cpu()
    clustering = find_clusters(logits, ks, temperature=params["cluster_temperature"], seed=params["seed"])
    if as_json:
        echo_json({k: v for k, v in clustering.to_dict(data.classes).items()})
        return
    _echo_clusters(clustering, data.classes)


def _echo_clusters(clustering, classes) -> None:
    how = " (silhouette: " + ", ".join(f"K={k} {v:.3f}" for k, v in clustering.silhouette.items()) + ")" \
        if clustering.silhouette else ""
    click.echo(f"clusters at T={clustering.temperature:g}, K={','.join(map(str, clustering.k))}{how}:")
    for cluster in clustering.clusters:
        why = "one class" if len(cluster) == 1 else "every class: the generalist's own task"
        tag = "" if cluster in clustering.specialist_clusters else f"   ({why}: no specialist)"
        click.echo(f"  {{{', '.join(classes[c] for c in cluster)}}}{tag}")


@specialists_group.command("build")
@cluster_options
@data_options
@click.option("--top-n", type=click.IntRange(min=1), default=SPECIALIST["top_n"], show_default=True,
              help="Specialists are active when their classes meet the generalist's top-n classes.")
@click.option("--special-fraction", type=click.FloatRange(0, 1, min_open=True, max_open=True),
              default=SPECIALIST["special_fraction"], show_default=True,
              help="Share of each specialist's training data drawn from its own classes.")
@click.option("--per-cluster", type=click.IntRange(min=1), default=SPECIALIST["per_cluster"], show_default=True,
              help="Specialists trained per cluster, each with its own seed (seed, seed+1, ...): every class is then "
                   "covered by that many opinions, which the KL combination weighs together.")
@train_options(SPECIALIST["train"])
@click.option("--tol", type=click.FloatRange(min=0, min_open=True), default=SPECIALIST["tol"], show_default=True,
              help="Solver stops when an update moves no log-probability by this much ...")
@click.option("--max-steps", type=click.IntRange(min=1), default=SPECIALIST["max_steps"], show_default=True,
              help="... or after this many updates.")
@click.option("--module-steps", type=click.IntRange(min=1), default=None,
              help="Fixed updates in the exportable module (default: 1 where exact, else measured on val).")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Output artifact folder.")
@click.option("--overwrite", is_flag=True, help="Replace an existing output folder.")
@click.option("--resume", is_flag=True, help="Continue an interrupted run from its checkpoint.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@common_options
@click.pass_context
def build_cmd(ctx, as_json, **params):
    """Cluster the generalist's confusions, train a specialist per cluster, save the specialist ensemble.

    The result is a teacher: 'edgekd evaluate OUT', 'edgekd distill --teacher OUT ...'.
    """
    from edgekd.cache import LogitCache
    from edgekd.outputs import data_paths, output_lock
    from edgekd.validation import check_flip, check_jitter, check_output_dir
    from specialists.build import build_specialists, open_generalist
    from specialists.clustering import parse_clusters

    refuse_unused(cache_option_rules(params))
    refuse_resume_and_overwrite(params)
    check_output_dir(params["out"], overwrite=params["overwrite"], resume=params["resume"],
                     inputs=[params["teacher"]], data=data_paths(params["data"]))
    train = make_train_config(params)
    config = SpecialistConfig(clusters=parse_clusters(params["clusters"]), cluster_temperature=params["cluster_temperature"],
                              top_n=params["top_n"], special_fraction=params["special_fraction"], member=params["member"],
                              train=train, tol=params["tol"], max_steps=params["max_steps"],
                              module_steps=params["module_steps"], per_cluster=params["per_cluster"])
    with output_lock(params["out"]):
        open_generalist(params["teacher"], params["member"], for_specialists=True)   # checked before a large data set is decoded
        data = load_data(params)
        check_jitter(params["jitter"], data.input_shape)
        check_flip(params["flip"], data.input_shape)
        cache = LogitCache(params["cache_dir"], enabled=not params["no_cache"])
        result = build_specialists(params["teacher"], data, config, params["out"], cache=cache,
                                   overwrite=params["overwrite"], resume=params["resume"],
                                   refresh_cache=params["refresh_cache"], progress=show_progress(params),
                                   config_record=resolved_config(ctx))
    if as_json:
        echo_json(result.to_dict())
        return
    _echo_result(result)


def _score(value) -> str:
    """An accuracy, or '-' where it has no test examples to be measured on."""
    return f"{value:.4f}" if value is not None else "-"


def _echo_result(result) -> None:
    import json

    clustering = json.loads((result.path / "clusters.json").read_text())
    click.echo(f"clusters at T={clustering['temperature']:g}, K={','.join(map(str, result.k))}"
               + (" (chosen by silhouette)" if result.silhouette else "") + ":")
    for row in result.per_cluster:
        if row["specialist"]:
            click.echo(f"  {{{', '.join(row['class_names'])}}}: test accuracy {_score(row['generalist_accuracy'])} -> "
                       f"{_score(row['ensemble_accuracy'])} with its specialist")
        else:
            why = "one class: no specialist" if len(row["class_names"]) == 1 else "its specialist was left out (--keep)"
            click.echo(f"  {{{', '.join(row['class_names'])}}}   ({why})")
    rel = f" ({100 * result.covered_relative_change:+.2f}% relative)" if result.covered_relative_change is not None else ""
    click.echo(f"covered classes: {_score(result.covered_generalist_accuracy)} -> {_score(result.covered_ensemble_accuracy)}{rel}; "
               f"all classes: {result.generalist_test_accuracy:.4f} -> {result.ensemble_test_accuracy:.4f}")
    for line in _solver_notes(result.solver):
        click.echo(line)
    click.echo(f"{result.seconds:.1f} s -> {result.path} (report: {result.report_md})")


# the exported module (a fixed number of solver steps) farther than this from the solve, in nats, is said
MODULE_DIFF_NOTE = 0.05


def _solver_notes(solver: dict) -> list[str]:
    """What a user should not have to find deep in report.md: the KL solve stopped by its step cap, or an
    exported module (fixed steps) that departs from the solve."""
    notes = []
    if solver.get("test_capped"):
        notes.append(f"note: the KL solve hit its step cap ({solver.get('max_steps')}) on {solver['test_capped']} test "
                     f"input(s); raise --max-steps or --tol for a full solve")
    if (solver.get("module_max_abs_diff") or 0.0) > MODULE_DIFF_NOTE:
        notes.append(f"note: the exportable module ({solver.get('module_steps')} solver steps) differs from the solve by up "
                     f"to {solver['module_max_abs_diff']:.2f} nats on {solver.get('module_checked_inputs')} test inputs; "
                     f"raise --module-steps for a closer export")
    return notes


def _index_list(ctx, param, value):
    """'0,2,5' -> (0, 2, 5); the range is checked against SPEC by the stage."""
    if value is None:
        return None
    try:
        return tuple(int(v) for v in value.split(","))
    except ValueError:
        raise click.BadParameter(f"expected comma-separated specialist indices such as 0,2,5; got {value!r}") from None


@specialists_group.command("regate")
@click.argument("spec")
@data_options
@click.option("--top-n", type=click.IntRange(min=1), default=None, help="New gating (default: as built).")
@click.option("--tol", type=click.FloatRange(min=0, min_open=True), default=None, help="New solver tolerance (default: as built).")
@click.option("--max-steps", type=click.IntRange(min=1), default=None, help="New solver step cap (default: as built).")
@click.option("--module-steps", type=click.IntRange(min=1), default=None,
              help="Fixed updates in the exportable module (default: 1 where exact, else measured on val).")
@click.option("--keep", default=None, callback=_index_list, metavar="I,J,...",
              help="Keep only these specialists (0-based, as listed in SPEC's report; default all): prune for cost.")
@click.option("--cache-dir", type=click.Path(file_okay=False), default=None, help="Teacher-logit cache.")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Output artifact folder (may be SPEC with --overwrite).")
@click.option("--overwrite", is_flag=True, help="Replace an existing output folder.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@common_options
@click.pass_context
def regate_cmd(ctx, spec, as_json, **params):
    """Re-score the specialist ensemble SPEC with other combination settings (e.g. --top-n 2), no training."""
    from edgekd.cache import LogitCache
    from edgekd.device import resolve_device
    from specialists.build import regate_specialists

    from edgekd.outputs import data_paths, output_lock
    from edgekd.validation import check_output_dir

    refuse_unused([("seed", False, "to commands that draw at random (regate trains nothing)")])
    data_of_models(ctx, params, [spec])
    check_output_dir(params["out"], overwrite=params["overwrite"], inputs=[spec], data=data_paths(params["data"]), in_place=spec)
    with output_lock(params["out"]):
        data = load_data(params)
        result = regate_specialists(spec, data, params["out"], top_n=params["top_n"], tol=params["tol"],
                                    max_steps=params["max_steps"], module_steps=params["module_steps"],
                                    cache=LogitCache(params["cache_dir"]), overwrite=params["overwrite"],
                                    device=resolve_device(params["device"]), keep=params["keep"])
    if as_json:   # as build prints its result
        echo_json(result.to_dict())
        return
    _echo_result(result)
