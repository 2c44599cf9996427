"""The spine's commands: models, teacher train, distill, evaluate, pipeline."""

from __future__ import annotations

import functools

import click

from edgekd.clicommon import (cache_option_rules, cache_options, common_options, data_of_models, data_options, data_spec,
                              echo_json, load_data, make_train_config, refuse_resume_and_overwrite, refuse_unused,
                              resolved_config, show_progress, train_options)
from edgekd.config import (COMBINE_RULES, DEFAULT_ALPHA_GRID, DEFAULT_TEMPERATURE_GRID, MAX_MIXUP, METHODS, DistillConfig, InputTransform,
                           PIPELINE_OPTIONAL_STAGES, PipelineConfig, TeacherConfig, defaults)

# every default below is read from the config dataclasses: a flag left out means what the library means
TEACHER, DISTILL, PIPELINE = defaults(TeacherConfig), defaults(DistillConfig), defaults(PipelineConfig)
TRANSFORM = defaults(InputTransform)


def _auto_default(value) -> str:
    return "auto" if value is None else f"{value:g}"


def teacher_options(func):
    """Options that pick and feed a teacher (or any model to evaluate)."""
    @click.option("--combine", type=click.Choice(["logits", "probs"]), default=None,
                  help="How an ensemble's members are combined (default: as the artifact says; logits).")
    @click.option("--teacher-output", default=None, help="ONNX teacher: the output to use when it has several.")
    @click.option("--teacher-scale", type=float, default=TRANSFORM["scale"], show_default=True, help="Foreign teacher input: x*scale.")
    @click.option("--teacher-mean", type=float, default=TRANSFORM["mean"], show_default=True, help="Foreign teacher input: minus mean.")
    @click.option("--teacher-std", type=float, default=TRANSFORM["std"], show_default=True, help="Foreign teacher input: divided by std.")
    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        return func(*args, **kwargs)
    return wrapper


def teacher_option_rules(params, *specs) -> list:
    """The foreign-teacher options apply to model files (.onnx, .pt2, TorchScript), --combine to artifact folders."""
    from pathlib import Path

    paths = [Path(s) for s in specs if s]
    foreign, onnx = any(not p.is_dir() for p in paths), any(p.suffix.lower() == ".onnx" for p in paths)
    rules = [(name, foreign, "with a model file: .onnx, .pt2 or TorchScript (an artifact normalises its own inputs)")
             for name in ("teacher_scale", "teacher_mean", "teacher_std")]
    return rules + [("teacher_output", onnx, "with an .onnx model"),
                    ("combine", any(p.is_dir() for p in paths), "with an edgekd artifact folder")]


def open_teacher(spec, params, *, device=None, role: str = "Teacher", teacher_options: bool = True):
    """``spec`` loaded with the --teacher-* options (scale, mean, std, output, combine), or without them."""
    from edgekd.clicommon import register_stage_kinds
    from edgekd.teachers import load_teacher

    register_stage_kinds()
    if not teacher_options:
        teacher = load_teacher(spec, role=role)
    else:
        transform = InputTransform(params["teacher_scale"], params["teacher_mean"], params["teacher_std"])
        teacher = load_teacher(spec, combine=params["combine"], output=params["teacher_output"], transform=transform, role=role)
        if transform != InputTransform() and teacher.trained_on is not None:   # an edgekd export: it normalises itself
            from edgekd.errors import ConfigError

            raise ConfigError(f"--teacher-scale/--teacher-mean/--teacher-std transform a foreign model's inputs; '{spec}' is "
                              f"an edgekd export, which normalises its raw inputs itself, so they would be transformed "
                              f"twice; leave those options out.")
    return teacher.to(device) if device is not None else teacher


def output_options(func):
    @click.option("--out", required=True, type=click.Path(file_okay=False), help="Output artifact folder.")
    @click.option("--overwrite", is_flag=True, help="Replace an existing output folder.")
    @click.option("--resume", is_flag=True, help="Continue an interrupted run from its checkpoint.")
    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        return func(*args, **kwargs)
    return wrapper


def check_out(params, inputs=()):
    """Before anything is read or written: ``--out`` may be written (see ``edgekd.outputs``); the data
    path and ``inputs`` (a teacher) are inputs it must not replace."""
    from edgekd.outputs import data_paths
    from edgekd.validation import check_output_dir

    refuse_resume_and_overwrite(params)
    check_output_dir(params["out"], overwrite=params["overwrite"], resume=params.get("resume", False),
                     inputs=inputs, data=data_paths(params.get("data")))


def distributed_context(params):
    from edgekd.distributed import context_from_env

    return context_from_env(params["device"])


# --- models ----------------------------------------------------------------------------------------

@click.command("models")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.option("--input-shape", default="1,28,28", show_default=True, help="Input shape used for the counts (C,H,W or D).")
@click.option("--classes", type=click.IntRange(2, 100_000), default=10, show_default=True, help="Classes used for the counts.")
def models_cmd(as_json, input_shape, classes):
    """List the registered architectures, their options, parameters and MACs."""
    import torch

    from edgekd.errors import ConfigError
    from edgekd.models import count_macs, count_parameters, create_model, format_arch, list_models

    try:
        shape = tuple(int(v) for v in input_shape.split(","))
    except ValueError:
        shape = ()
    if not 1 <= len(shape) <= 3 or min(shape) < 1 or max(shape) > 4096:
        raise ConfigError(f"The 'input_shape' parameter must be 1 to 3 sizes in [1, 4096] like 1,28,28 or 3,32,32. "
                          f"Got {input_shape!r} instead.")
    rows = []
    for entry in list_models():
        row = {"name": entry.name, "options": format_arch(entry.name, entry.defaults).partition(":")[2],
               "description": entry.description, "parameters": None, "macs": None}
        try:
            with torch.device("meta"):   # shapes only: counting a 3x4096x4096 model allocates nothing
                model = create_model(entry.name, shape, classes)
            row.update(parameters=count_parameters(model), macs=count_macs(model, shape))
        except ConfigError as exc:   # an architecture that does not take this input shape
            row["not_applicable"] = str(exc)
        rows.append(row)
    if as_json:
        echo_json(rows)
        return
    click.echo(f"{'name':11} {'params':>10} {'MACs':>14}  options / description (input {shape}, {classes} classes)")
    for row in rows:
        counts = (f"{row['parameters']:>10,} {row['macs']:>14,}" if row["parameters"] is not None
                  else f"{'-':>10} {'-':>14}")
        click.echo(f"{row['name']:11} {counts}  {row['options']}\n{'':38}{row['description']}")


# --- teacher train ---------------------------------------------------------------------------------

@click.group("teacher")
def teacher_group():
    """Train teachers."""


@teacher_group.command("train")
@data_options
@click.option("--arch", default=TEACHER["arch"], show_default=True, help="Architecture spec, e.g. cnn:width=32 (see 'edgekd models').")
@click.option("--ensemble", type=click.IntRange(min=1), default=TEACHER["ensemble"], show_default=True,
              help="Members, seeds seed..seed+N-1.")
@click.option("--combine", type=click.Choice(COMBINE_RULES), default=TEACHER["combine"], show_default=True)
@train_options(TEACHER["train"])
@output_options
@common_options
@click.pass_context
def teacher_train_cmd(ctx, **params):
    """Train one teacher or an ensemble of N with different seeds, saved as one artifact."""
    from edgekd.teacher_training import train_teachers

    from edgekd.outputs import output_lock
    from edgekd.validation import check_flip, check_jitter

    check_out(params)
    refuse_unused([("combine", params["ensemble"] > 1, "with --ensemble 2 or more (one member has nothing to combine)")])
    config = TeacherConfig(arch=params["arch"], ensemble=params["ensemble"], combine=params["combine"],
                           train=make_train_config(params))
    with output_lock(params["out"]):
        data = load_data(params)
        check_jitter(params["jitter"], data.input_shape)
        check_flip(params["flip"], data.input_shape)
        dist = distributed_context(params)
        result = train_teachers(data, config, params["out"], overwrite=params["overwrite"], resume=params["resume"],
                                progress=show_progress(params), dist=dist, config_record=resolved_config(ctx))
    if dist is None or dist.rank == 0:
        for i, acc in enumerate(result.member_test_accuracy):
            click.echo(f"member {i} (seed {params['seed'] + i}): test accuracy {acc:.4f}")
        click.echo(f"ensemble of {len(result.member_test_accuracy)}: test accuracy {result.ensemble_test_accuracy:.4f}, "
                   f"NLL {result.ensemble_test_nll:.4f}; {result.macs_per_member * len(result.member_test_accuracy):,} MACs; "
                   f"{result.seconds:.1f} s{f' (resumed; its epochs took {result.train_seconds:.1f} s over every process)' if result.resumed else ''}"
                   f" -> {result.path}")


# --- distill -------------------------------------------------------------------------------------

def _parse_auto(name, value, kind=float):
    from edgekd.errors import ConfigError

    if value is None or str(value).lower() == "auto":
        return None
    try:
        return kind(value)
    except ValueError:
        raise ConfigError(f"The '{name}' parameter must be a number or 'auto'. Got {value!r} instead.") from None


def _parse_views(value) -> dict:
    """``--views N`` or ``--views all`` as DistillConfig fields."""
    from edgekd.errors import ConfigError

    if str(value).strip().lower() == "all":
        return {"views": 0, "view_grid": True}
    try:
        return {"views": int(value), "view_grid": False}
    except ValueError:
        raise ConfigError(f"The 'views' parameter must be a whole number >= 0 or 'all'. Got {value!r} instead.") from None


def _parse_list(name, value, kind=float):
    from edgekd.errors import ConfigError

    if value in (None, ""):
        return ()
    try:
        parsed = tuple(kind(v) for v in str(value).split(",") if v.strip())
    except ValueError:
        parsed = ()
    if not parsed:   # ',' or 'a,b': never the default grid in silence
        raise ConfigError(f"The '{name}' parameter must be a comma-separated list of numbers. Got {value!r} instead.")
    return parsed


def _check_grids(params) -> None:
    """A grid is searched only for 'auto': given with a fixed value it would be silently unused."""
    from edgekd.errors import ConfigError

    for name in ("temperature", "alpha"):
        grid = params[f"{name}_grid"]
        if grid not in (None, "") and _parse_auto(name, params[name]) is not None:
            raise ConfigError(f"The '{name}_grid' parameter is searched only with {name}='auto'. Got {name}_grid={grid!r} "
                              f"with {name}={params[name]!r} instead; pass --{name} auto or leave --{name}-grid out.")


def distill_config(params):
    _check_grids(params)
    return DistillConfig(
        student=params["student"], temperature=_parse_auto("temperature", params["temperature"]),
        alpha=_parse_auto("alpha", params["alpha"]),
        temperature_grid=_parse_list("temperature_grid", params["temperature_grid"]) or DEFAULT_TEMPERATURE_GRID,
        alpha_grid=_parse_list("alpha_grid", params["alpha_grid"]) or DEFAULT_ALPHA_GRID,
        auto_epochs=params["auto_epochs"], train=make_train_config(params), method=params["method"], dkd_beta=params["dkd_beta"],
        correct_teacher=params["correct_teacher"],
        **_parse_views(params["views"]),
        transfer_limit=params["transfer_limit"], omit_classes=_parse_list("omit_classes", params["omit_classes"], int),
        baseline=params["baseline"], baseline_jitter=params["baseline_jitter"],
        baseline_mixup=params["baseline_mixup"], baseline_flip=params["baseline_flip"], recipe_search=params["recipe_search"],
        search_methods=tuple(m.strip() for m in params["search_methods"].split(",") if m.strip()),
        twin_teacher=params["twin_teacher"])


def distill_options(func):
    @click.option("--student", default=DISTILL["student"], show_default=True, help="Student architecture spec (see 'edgekd models').")
    @click.option("--temperature", "-T", default=_auto_default(DISTILL["temperature"]), show_default=True,
                  help="Softmax temperature, or 'auto' (val-selected).")
    @click.option("--alpha", default=_auto_default(DISTILL["alpha"]), show_default=True,
                  help="Weight of the soft term in [0, 1], or 'auto'.")
    @click.option("--temperature-grid", default=None,
                  help=f"Grid for --temperature auto (default {','.join(f'{t:g}' for t in DEFAULT_TEMPERATURE_GRID)}).")
    @click.option("--alpha-grid", default=None, help=f"Grid for --alpha auto (default {','.join(f'{a:g}' for a in DEFAULT_ALPHA_GRID)}).")
    @click.option("--auto-epochs", type=click.IntRange(min=0), default=DISTILL["auto_epochs"], show_default=True,
                  help="Epochs per auto candidate (0: a quarter of --epochs).")
    @click.option("--views", default="all" if DISTILL["view_grid"] else str(DISTILL["views"]), show_default=True,
                  help="With --jitter or --flip: cache teacher logits on this many jittered (mirrored) views (0: run the "
                       "teacher online), or 'all': every integer shift (each also mirrored with --flip), so the teacher "
                       "sees exactly the student's view (consistent teaching).")
    @click.option("--method", type=click.Choice(METHODS), default=DISTILL["method"], show_default=True,
                  help="Soft term: the paper's KD, KD on z-scored logits (logit standardization), decoupled KD, or its non-target term alone.")
    @click.option("--dkd-beta", type=float, default=DISTILL["dkd_beta"], show_default=True, help="With --method dkd: weight of the non-target term.")
    @click.option("--correct-teacher/--no-correct-teacher", default=DISTILL["correct_teacher"], show_default=True,
                  help="Where the teacher's top class is wrong on a training example, swap its top logit with the "
                       "true class's before the soft term (knowledge adjustment), keeping the rest of its ranking.")
    @click.option("--transfer-limit", default=None, help="Transfer set: a count or a fraction of the train split (after --omit-classes).")
    @click.option("--omit-classes", default=None, help="Comma-separated class indices left out of the transfer set "
                                                        "(their bias is then corrected on val).")
    @click.option("--baseline/--no-baseline", default=DISTILL["baseline"], show_default=True,
                  help="Also train the student on hard labels with the same budget and seed.")
    @click.option("--baseline-jitter", type=click.IntRange(min=0), default=DISTILL["baseline_jitter"],
                  help="The hard-label baseline's ±px jitter, fixed (e.g. the recipe an earlier run chose). "
                       "Default: it is trained with the student's jitter (±2 px on images without one) and without, "
                       "and the better on val is kept.")
    @click.option("--baseline-mixup", type=click.FloatRange(0, MAX_MIXUP), default=DISTILL["baseline_mixup"],
                  help="With --baseline-jitter: the fixed recipe's mixup Beta(a, a) on hard labels (e.g. what an earlier "
                       "run with --mixup chose). Default: none.")
    @click.option("--baseline-flip", is_flag=True, default=DISTILL["baseline_flip"],
                  help="With --baseline-jitter: the fixed recipe mirrors a random half of each batch (e.g. what an "
                       "earlier run with --flip chose). Default: no mirroring.")
    @click.option("--recipe-search/--no-recipe-search", default=DISTILL["recipe_search"], show_default=True,
                  help="On images, when the student has no --jitter: also train it with ±2 px jitter on consistent "
                       "views (the teacher's logits cached on every shift) and keep the better on val, so it gets its "
                       "own best recipe as the baseline does (twice the training; the extra time is reported apart).")
    @click.option("--search-methods", default=",".join(DISTILL["search_methods"]), show_default=True,
                  help="With --recipe-search: soft terms also tried on the plain transfer set at the same T and alpha, "
                       "the best on val kept ('' for none). Plain KD's sharper targets pay when the teacher is well "
                       "above the student's own baseline, logit standardization's when it is not.")
    @click.option("--twin-teacher/--no-twin-teacher", default=DISTILL["twin_teacher"], show_default=True,
                  help="With --baseline and --recipe-search: when the teacher is no better than the hard-label "
                       "baseline on val, also distill a student from the teacher with that baseline as an equal member "
                       "(a born-again step) and keep the better on val.")
    @cache_options
    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        return func(*args, **kwargs)
    return wrapper


@click.command("distill")
@click.option("--teacher", required=True, help="Teacher: artifact folder, .onnx, torch.export .pt2 or TorchScript file.")
@teacher_options
@data_options
@distill_options
@train_options(DISTILL["train"])
@output_options
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@common_options
@click.pass_context
def distill_cmd(ctx, **params):
    """Train a compact student on the teacher's temperature-softened targets."""
    from edgekd.cache import LogitCache
    from edgekd.device import resolve_device
    from edgekd.distill import distill

    from edgekd.outputs import output_lock
    from edgekd.validation import check_flip, check_jitter

    check_out(params, inputs=[params["teacher"]])
    config = distill_config(params)
    auto = config.temperature is None or config.alpha is None
    refuse_unused([*teacher_option_rules(params, params["teacher"]),
                   *[(name, config.baseline, "with --baseline") for name in ("baseline_jitter", "baseline_mixup", "baseline_flip")],
                   ("twin_teacher", config.baseline and config.recipe_search, "with --baseline and --recipe-search"),
                   ("dkd_beta", "dkd" in (config.method, *config.search_methods), "with --method dkd (or dkd in --search-methods)"),
                   ("auto_epochs", auto, "with --temperature auto or --alpha auto"),
                   ("search_methods", config.recipe_search, "with --recipe-search (the default)"),
                   *[(name, config.alpha != 0, "with a soft term (--alpha above 0)")
                     for name in ("method", "correct_teacher", "temperature")],
                   *cache_option_rules(params)])
    with output_lock(params["out"]):
        # the teacher first: a missing or damaged one is refused before a large data set is decoded
        resolve_device(params["device"])   # (--device cuda without a GPU: refused before anything is read)
        # opened on the host: distill() places it on the run's device, which under torchrun is this rank's GPU,
        # known once the process group exists (here "cuda" is GPU 0, and every rank put a teacher there)
        teacher = open_teacher(params["teacher"], params)
        data = load_data(params)
        check_jitter(params["jitter"], data.input_shape)
        check_flip(params["flip"], data.input_shape)
        dist = distributed_context(params)
        cache = LogitCache(params["cache_dir"], enabled=not params["no_cache"], writer=dist is None or dist.rank == 0)
        result = distill(teacher, data, config, params["out"], cache=cache, overwrite=params["overwrite"],
                         resume=params["resume"], refresh_cache=params["refresh_cache"], progress=show_progress(params),
                         dist=dist, config_record=resolved_config(ctx))
    if dist is not None and dist.rank != 0:
        return
    if params["as_json"]:
        echo_json(result.to_dict())
        return
    print_distill(result, teacher.description)


def _recipe_text(recipe: dict) -> str:
    """'jitter 2', 'jitter 0, mixup 0.2' or 'jitter 1, flip' (records written before mixup or flip have no such key)."""
    return (f"jitter {recipe['jitter']}" + (f", mixup {recipe['mixup']:g}" if recipe.get("mixup") else "")
            + (", flip" if recipe.get("flip") else ""))


def _student_recipe_text(recipe: dict) -> str:
    """'kd-ls, jitter 2 on consistent views' (records written before the method search have no method)."""
    flip = ", flip" if recipe.get("flip") else ""
    views = " on consistent views" if (recipe["jitter"] or flip) and recipe.get("view_grid") else ""
    twin = ", the hard-label twin in the teacher" if recipe.get("twin") else ""
    return (f"{recipe['method']}, " if recipe.get("method") else "") + f"jitter {recipe['jitter']}{flip}{views}{twin}"


def print_distill(result, teacher_desc: str) -> None:
    if result.search:
        click.echo("auto search on val (short budget):")
        for c in result.search:
            click.echo(f"  T={c['temperature']:<5g} alpha={c['alpha']:<4g} val accuracy {c['val_accuracy']:.4f}  NLL {c['val_nll']:.4f}")
    settings = "chose" if result.search else "at"   # "chose" only where the auto search chose
    click.echo(f"{settings} T={result.temperature:g}, alpha={result.alpha:g}; transfer set {result.transfer_size} samples; "
               f"teacher logits cache: {result.cache_hits} hit(s), {result.cache_misses} computed")
    tm = f"{result.teacher_macs:,}" if result.teacher_macs else "?"
    click.echo(f"{'model':<22} {'test acc':>9} {'MACs':>14}")
    click.echo(f"{'teacher':<22} {result.teacher_test_accuracy:>9.4f} {tm:>14}   {teacher_desc}")
    if result.baseline_test_accuracy is not None:
        click.echo(f"{'student, hard labels':<22} {result.baseline_test_accuracy:>9.4f} {result.student_macs:>14,}")
    click.echo(f"{'student, distilled':<22} {result.student_test_accuracy:>9.4f} {result.student_macs:>14,}")
    if result.student_search:   # searched with or without a baseline
        chosen = next(c for c in result.student_search if c["chosen"])
        click.echo(f"student recipe chosen on val: {_student_recipe_text(chosen)} "
                   f"(tried {'; '.join(_student_recipe_text(c) for c in result.student_search)})")
    if result.baseline_test_accuracy is not None:
        from edgekd.distill import describe_gain

        if len(result.baseline_search) > 1:
            chosen = next(c for c in result.baseline_search if c["chosen"])
            click.echo(f"baseline recipe chosen on val: {_recipe_text(chosen)} "
                       f"(tried {'; '.join(_recipe_text(c) for c in result.baseline_search)})")
        click.echo(describe_gain(result.student_test_accuracy, result.baseline_test_accuracy, result.teacher_test_accuracy))
    if result.omitted:
        o = result.omitted
        click.echo(f"omitted classes {o['classes']}: bias {o['bias']:+.2f} (fitted on val): test errors "
                   f"{o['test_errors_before']} -> {o['test_errors_after']}")
    ratio = f" ({result.seconds_per_epoch / result.baseline_seconds_per_epoch:.2f}x hard-label)" if result.baseline_seconds_per_epoch else ""
    apart = [f"{side} {seconds:.1f} s" for side, seconds in (("student", result.student_search_seconds),
                                                              ("baseline", result.baseline_search_seconds)) if seconds]
    apart_text = f"; recipes not kept, trained apart: {', '.join(apart)}" if apart else ""
    click.echo(f"{result.seconds_per_epoch:.2f} s per distillation epoch{ratio}{apart_text} -> {result.path}")


# --- evaluate ------------------------------------------------------------------------------------

@click.command("evaluate")
@click.argument("model")
@teacher_options
@data_options
@click.option("--split", type=click.Choice(["test", "val", "train"]), default="test", show_default=True)
@click.option("--teacher", "reference", default=None, help="Also report top-1 agreement with this teacher.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@common_options
@click.pass_context
def evaluate_cmd(ctx, model, reference, split, as_json, **params):
    """Accuracy, NLL, ECE, per-class accuracy and confusion matrix of MODEL (anything --teacher accepts)."""
    from edgekd.device import resolve_device
    from edgekd.evaluate import evaluate

    # the --teacher-* options (scale, mean, std, output, combine) are for --teacher when one is given, else for MODEL:
    # never for both, which would feed MODEL the teacher's preprocessing
    refuse_unused([*teacher_option_rules(params, reference or model),
                   ("seed", False, "to commands that draw at random (evaluate scores every sample)")])
    data_of_models(ctx, params, [model])
    device = resolve_device(params["device"])
    # the models first: a missing or damaged one is refused before a large data set is decoded
    scored = open_teacher(model, params, device=device, role="Model", teacher_options=not reference)
    teacher = open_teacher(reference, params, device=device) if reference else None
    result = evaluate(scored, load_data(params), split=split, reference=teacher)
    if as_json:
        echo_json(result.to_dict())
        return
    click.echo(f"{result.model} on {result.data} [{result.split}], n={result.n}")
    click.echo(f"accuracy {result.accuracy:.4f}  NLL {result.nll:.4f}  ECE {result.ece:.4f}"
               + (f"  agreement with teacher {result.agreement:.4f}" if result.agreement is not None else ""))
    width = max(len(c) for c in result.per_class_accuracy)
    for name, acc in result.per_class_accuracy.items():
        click.echo(f"  {name:<{width}}  {acc:.4f}" if acc is not None else f"  {name:<{width}}  (no samples)")


# --- pipeline ------------------------------------------------------------------------------------

@click.command("pipeline")
@data_options
@click.option("--teacher-arch", default=PIPELINE["teacher_arch"], show_default=True)
@click.option("--ensemble", type=click.IntRange(min=1), default=PIPELINE["ensemble"], show_default=True)
@click.option("--teacher-epochs", type=click.IntRange(min=1), default=PIPELINE["teacher_epochs"], show_default=True)
@click.option("--student", default=PIPELINE["student"], show_default=True)
@click.option("--epochs", type=click.IntRange(min=1), default=PIPELINE["epochs"], show_default=True)
@click.option("--temperature", "-T", default=_auto_default(PIPELINE["temperature"]), show_default=True)
@click.option("--alpha", default=_auto_default(PIPELINE["alpha"]), show_default=True)
@click.option("--jitter", type=click.IntRange(min=0), default=PIPELINE["jitter"],
              help="The teachers' random input shifts, in pixels (default: 1 on images, 0 on vectors).")
@click.option("--student-jitter", type=click.IntRange(min=0), default=PIPELINE["student_jitter"], show_default=True,
              help="The student's (and its baseline's) shifts; with shifts the teacher is cached on every one.")
@click.option("--skip", multiple=True, type=click.Choice(PIPELINE_OPTIONAL_STAGES),
              help="Skip an optional stage (repeatable).")
@click.option("--out", required=True, type=click.Path(file_okay=False))
@click.option("--overwrite", is_flag=True)
@click.option("--resume", is_flag=True, help="Keep the stages already finished in --out.")
@common_options
@click.pass_context
def pipeline_cmd(ctx, **params):
    """The whole chain: teacher ensemble -> specialists -> distill (with baseline) -> evaluate -> export -> bench."""
    from edgekd.pipeline import run_pipeline

    refuse_resume_and_overwrite(params)

    config = PipelineConfig(
        data=data_spec(params), train_limit=params["train_limit"], val_fraction=params["val_fraction"],
        teacher_arch=params["teacher_arch"], ensemble=params["ensemble"], teacher_epochs=params["teacher_epochs"],
        student=params["student"], epochs=params["epochs"], temperature=_parse_auto("temperature", params["temperature"]),
        alpha=_parse_auto("alpha", params["alpha"]), jitter=params["jitter"],
        student_jitter=params["student_jitter"], seed=params["seed"],
        device=params["device"], skip=tuple(params["skip"]))
    from edgekd.outputs import output_lock
    from edgekd.validation import check_output_dir

    check_output_dir(params["out"], kind="pipeline", overwrite=params["overwrite"], resume=params["resume"])
    with output_lock(params["out"]):
        result = run_pipeline(config, params["out"], overwrite=params["overwrite"], resume=params["resume"],
                              progress=show_progress(params), echo=click.echo, config_record=resolved_config(ctx))
    click.echo(f"summary: {result.summary_md}")
    if result.failures:   # the other stages' outputs are kept; a script must still learn that one failed
        from edgekd.errors import StagesFailed
        raise StagesFailed(f"The pipeline finished, but {len(result.failures)} stage(s) failed: "
                           f"{'; '.join(result.failures)}. What was made is in '{result.out}' (see its summary.md); "
                           f"fix the cause and rerun with --resume.")
