"""``edgekd pipeline``: teacher ensemble -> specialists -> distill (with baseline) -> evaluate ->
export -> benchmark, with a Markdown and JSON summary in the output folder."""

from __future__ import annotations

import contextlib
import json
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable

from edgekd.artifacts import MANIFEST, is_artifact, sha256_file, write_json_atomic, write_text_atomic
from edgekd.config import PipelineConfig
from edgekd.errors import ConfigError, SettingsChanged, TeacherChanged
from edgekd.distill import describe_gain
from edgekd.models import code_trusted, create_model, is_user_arch, trust_code
from edgekd.outputs import PIPELINE_ARTIFACTS, OutputError, output_lock
from edgekd.training import fingerprint_changes, holds_checkpoint, run_fingerprint
from edgekd.validation import check_output_dir
from edgekd.records import Record, jsonable





@dataclass(frozen=True)
class PipelineResult(Record):
    out: Path
    summary_md: Path
    summary: dict = field(repr=False)

    @property
    def failures(self) -> list[str]:
        """The export rows that failed (not those the int8 accuracy gate refused: a measured outcome), as
        ``"export NAME: reason"``; the CLI exits 1 when there are any."""
        return [f"export {name}: {row['error']}" for name, row in self.summary.get("export", {}).items()
                if "error" in row and not row.get("refused")]

    def to_dict(self) -> dict:
        return jsonable({"out": self.out, "summary_md": self.summary_md, "failures": self.failures, "summary": self.summary})


def run_pipeline(config: PipelineConfig, out: str | Path, *, overwrite: bool = False, resume: bool = False,
                 progress: bool = False, echo: Callable[[str], None] = lambda s: None,
                 config_record: dict | None = None) -> PipelineResult:
    """Every stage in turn (see the module's docstring). A ``py:`` teacher or student typed here is the user's own
    code, trusted as ``teacher train`` and ``distill`` trust it: the stages may load the artifacts made from it
    without ``--trust-code`` (and only those architectures: any other ``py:`` code still needs the flag)."""
    typed = [spec for spec in (config.teacher_arch, config.student) if is_user_arch(spec)]
    with contextlib.nullcontext() if code_trusted() or not typed else trust_code(only=typed):
        return _run_pipeline(config, out, overwrite=overwrite, resume=resume, progress=progress, echo=echo,
                             config_record=config_record)


def _run_pipeline(config: PipelineConfig, out: Path, *, overwrite: bool, resume: bool, progress: bool,
                  echo: Callable[[str], None], config_record: dict | None) -> PipelineResult:
    from edgekd.cache import LogitCache
    from edgekd.data import load_dataset
    from edgekd.distill import distill
    from edgekd.evaluate import evaluate
    from edgekd.teacher_training import train_teachers
    from edgekd.teachers import load_teacher
    from edgekd.device import resolve_device

    from edgekd.outputs import data_paths
    from edgekd.validation import check_jitter

    out = Path(out)
    check_output_dir(out, kind="pipeline", overwrite=overwrite, resume=resume, data=data_paths(config.data))
    device = str(resolve_device(config.device))   # (cuda:N keeps its N)
    # every stage's settings are checked before the first trains: a bad --student must not cost a teacher
    teacher_cfg, distill_cfg = teacher_config(config, device), distill_config(config, device)
    data = load_dataset(config.data, val_fraction=config.val_fraction, train_limit=config.train_limit)
    if config.jitter is None:
        # the teachers' default jitter is for images: vectors train without it (a jitter given is checked below)
        config = replace(config, jitter=IMAGE_JITTER if len(data.input_shape) == 3 else 0)
        teacher_cfg = teacher_config(config, device)
    check_jitter(config.jitter, data.input_shape)
    check_jitter(config.student_jitter, data.input_shape, name="student_jitter")
    for arch in (distill_cfg.student, teacher_cfg.arch):
        model = create_model(arch, data.input_shape, data.num_classes, for_training=True)   # raises ConfigError when it cannot take this data
    if "specialists" not in config.skip:   # said before the teacher trains, not after
        _check_specialists_can_follow(model, teacher_cfg.arch, data)
    if overwrite and not resume:
        _clear_previous_run(out)
    out.mkdir(parents=True, exist_ok=True)
    fingerprint = _bind_run(out, config, data, resume)
    typed_record, config_record = config_record, _resolved_record(config_record, config)
    _clear_made_each_run(out)
    timings, summary = {}, {"format": "edgekd.pipeline", "config": asdict(config), "data": data.describe(),
                            "skipped": list(config.skip), "kept": []}
    cache = LogitCache(out / "cache")

    def stage(name, path, run, made_from=None):
        """Run a stage (``run(path, resume, config_record)``), or with --resume keep its finished artifact when this pipeline made
        it with this run's settings of that stage (``STAGE_SETTINGS``, recorded with its manifest's hash) and from
        this run's teacher (``made_from(path)``): a --skip or a retrained teacher since can change what it needs.
        Otherwise an interrupted run of the stage is resumed where its settings and teacher are this run's, and
        started again where they are not (``--resume`` brings the folder up to date with this command line);
        another torch or edgekd is the user's to decide."""
        started = time.perf_counter()
        settings = _stage_fingerprint(fingerprint, name)
        record = _stage_record(config_record, settings) if config_record else None
        with output_lock(path):   # a command given the stage's folder as its --out meanwhile is refused
            why = _why_made_again(out, name, path, settings, made_from) if resume and is_artifact(path) else "..."
            if why is None:
                echo(f"[{name}] kept from the previous run: {path}")
                summary["kept"].append(name)
            else:
                echo(f"[{name}] {why}")
                if resume:
                    _run_resuming(name, path, run, echo, record, _typed_stage_record(typed_record, name))
                else:
                    run(path, False, record)
            _record_stage(out, name, path, settings)
        timings[name] = round(time.perf_counter() - started, 2)

    teacher_dir = out / "teacher"
    stage("teacher", teacher_dir, lambda p, again, record: train_teachers(
        data, teacher_cfg, p, overwrite=True, resume=again, progress=progress, config_record=record))
    teacher = load_teacher(teacher_dir).to(device)
    summary["teacher"] = _model_summary(evaluate(teacher, data), teacher)

    teacher, summary["distilled_from"] = _specialists_stage(config, data, teacher, teacher_dir, out, cache, stage,
                                                            summary, progress, echo)
    student_dir = out / "student"
    stage("distill", student_dir, lambda p, again, record: distill(teacher, data, distill_cfg, p, cache=cache,
                                                                   overwrite=True, resume=again, progress=progress,
                                                                   config_record=record),
          made_from=lambda p: _recorded(p, "teacher") == teacher.fingerprint)
    student = load_teacher(student_dir).to(device)
    baseline = load_teacher(student_dir / "baseline").to(device)
    manifest = student.artifact.manifest
    summary["distill"] = {"temperature": manifest.config["temperature"], "alpha": manifest.config["alpha"],
                          "search": list(manifest.search), "gap_closed": manifest.metrics["gap_closed"]}
    summary["baseline"] = _model_summary(evaluate(baseline, data, reference=teacher), baseline)
    summary["student"] = _model_summary(evaluate(student, data, reference=teacher), student)
    bench_models = [teacher_dir, student_dir, student_dir / "baseline"]
    if "export" not in config.skip:
        started = time.perf_counter()
        echo("[export] ...")
        with output_lock(out / "export"):
            summary["export"] = export_for_pipeline(student_dir, teacher_dir, data, out / "export")
        timings["export"] = round(time.perf_counter() - started, 2)
        bench_models += [Path(row["path"]) for row in summary["export"].values() if "error" not in row]
    if "bench" not in config.skip:
        started = time.perf_counter()
        echo("[bench] ...")
        with output_lock(out / "bench"):
            summary["bench"] = bench_for_pipeline(bench_models, data, out / "bench", device=device)
        timings["bench"] = round(time.perf_counter() - started, 2)
    summary["timings_s"] = timings
    summary_md = out / "summary.md"
    text = render_summary(summary)   # rendered first: a summary that cannot be rendered leaves neither file
    write_json_atomic(out / "summary.json", summary)
    write_text_atomic(summary_md, text)
    return PipelineResult(out=out, summary_md=summary_md, summary=summary)


RUN_RECORD = "pipeline.json"   # what the stages in the folder were made with (edgekd.training.run_fingerprint)


def _clear_previous_run(out: Path) -> None:
    """--overwrite starts over: the previous run's stages (finished or interrupted) and its record go before
    this run records its settings, so a rerun interrupted now can never --resume into a stage another run
    made, and a skipped stage leaves nothing of the old run behind (exports, report and summaries go at
    every run's start, ``_clear_made_each_run``). All are edgekd's own (``check_output_dir`` has just
    refused any folder holding something else); the logit cache stays, keyed by the teacher and the data."""
    import shutil

    for name in PIPELINE_ARTIFACTS:
        for path in (out / name, out / f"{name}.partial"):
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
    (out / RUN_RECORD).unlink(missing_ok=True)


def _clear_made_each_run(out: Path) -> None:
    """The summaries, exports and report are made again by every run, never resumed: the previous run's go
    first, so a run stopped (or an export refused) before they are written leaves none that describe
    another student. Edgekd's own (``check_output_dir`` refused a folder holding anything else)."""
    import shutil

    for name in ("export", "bench"):
        if (out / name).is_dir() and not (out / name).is_symlink():
            shutil.rmtree(out / name)
    for name in ("summary.md", "summary.json"):
        (out / name).unlink(missing_ok=True)


# the settings only one stage reads (PipelineConfig fields, named as the command line names them); every other one
# (the data, --train-limit, --val-fraction, --seed) is every stage's. A --resume keeps a stage whose settings are this
# run's: another --student keeps the teacher. (A stage made from another teacher is made again: ``made_from``.)
STAGE_SETTINGS = {"teacher": ("teacher_arch", "ensemble", "teacher_epochs", "teacher_lr", "jitter"),
                  "specialists": ("specialist_lr", "specialist_patience"),
                  "distill": ("student", "epochs", "temperature", "alpha", "student_jitter", "student_recipe_search")}
STAGE_FOLDERS = {"teacher": "teacher", "specialists": "specialists", "distill": "student"}


def _stage_settings(params: dict, stage: str) -> dict:
    """``params`` without the settings only the other stages read (and without --skip, which only chooses stages)."""
    return {k: v for k, v in params.items() if k not in _unbound(stage)}


def _unbound(stage: str) -> set[str]:
    return {name for other, names in STAGE_SETTINGS.items() if other != stage for name in names} | {"skip"}


def _resolved_record(config_record: dict | None, config: PipelineConfig) -> dict | None:
    """The command line recorded with each stage's artifact, its pipeline settings as this run resolved them
    (``--jitter`` left out is the 1 px it means on images)."""
    if not config_record or not isinstance(config_record.get("params"), dict):
        return config_record
    params = config_record["params"]
    resolved = {name: getattr(config, name) for names in STAGE_SETTINGS.values() for name in names if name in params}
    return {**config_record, "params": {**params, **resolved}}


def _stage_record(config_record: dict, settings: dict) -> dict:
    """``config_record`` with what binds the stage's interrupted run: its ``settings`` (``_stage_fingerprint``) as this
    run resolved them, not the command line as typed (``"bind"``, ``edgekd.training.run_fingerprint``), so the
    checkpoint and the finished stage are kept by one rule."""
    return {**config_record, "bind": settings["config"]}


def _typed_stage_record(typed_record: dict | None, stage: str) -> dict | None:
    """What an earlier edgekd bound a stage's interrupted run to: the command line as typed, the other stages' settings
    left out (``"unbound"``), or in it (left out here too)."""
    if not typed_record or not isinstance(typed_record.get("params"), dict):
        return None
    return {**typed_record, "unbound": sorted(_unbound(stage) & set(typed_record["params"]))}


def _stage_fingerprint(fingerprint: dict, stage: str) -> dict:
    """The part of the run's fingerprint that binds ``stage``: its own settings, the shared ones and the data."""
    return {**fingerprint, "config": _stage_settings(fingerprint.get("config") or {}, stage)}


def _bind_run(out: Path, config: PipelineConfig, data, resume: bool) -> dict:
    """Record this run's settings in ``RUN_RECORD`` and return them (``run_fingerprint``). With ``--resume`` the
    stages the previous runs finished stay recorded, each with its manifest's hash and the settings it was made with
    (``_record_stage``; a record of the earlier formats is read as the settings of its run). A ``--resume`` into
    finished stages with no readable record is refused: what made them cannot be told. ``skip`` and ``device`` do not
    change what a stage makes, so they may differ."""
    fingerprint = run_fingerprint(replace(config, skip=()), data)
    finished = [name for name, folder in STAGE_FOLDERS.items() if is_artifact(out / folder)]
    old = (_run_record(out, required=bool(finished)) or None) if resume else None
    stages = {}
    if old is not None:
        recorded = old.pop("stages", None)
        if not isinstance(recorded, dict):   # from before stages were recorded: what is there is its own
            recorded = {name: sha256_file(out / STAGE_FOLDERS[name] / MANIFEST) for name in finished}
        for name, entry in recorded.items():   # from before each stage's settings were recorded: its run's
            stages[name] = entry if isinstance(entry, dict) else {"manifest": entry, "settings": _stage_fingerprint(old, name)}
    write_json_atomic(out / RUN_RECORD, {**fingerprint, "stages": stages})
    return fingerprint


def _check_specialists_can_follow(teacher_model, arch: str, data) -> None:
    """The specialists stage's refusals of the teacher's architecture and of the data, before the teacher trains."""
    from edgekd.errors import EdgekdError
    from edgekd.models import parse_arch
    from specialists.training import check_specialist_arch

    if data.num_classes < 3:
        raise ConfigError(f"The specialists stage needs at least 3 classes (a cluster of two, and a dustbin for the "
                          f"rest); dataset '{data.spec}' has {data.num_classes}. Pass --skip specialists.")
    name, options = parse_arch(arch)
    try:
        check_specialist_arch(teacher_model, name, options, data.input_shape, data.num_classes)
    except EdgekdError as exc:
        raise ConfigError(f"{str(exc).rstrip('.')}; or pass --skip specialists.") from None


def _run_resuming(name: str, path: Path, run, echo, record: dict | None, typed: dict | None) -> None:
    """``run(path, True, record)``: an interrupted run of this stage continues (one an earlier edgekd bound to the
    command line as typed, ``typed``, too). One started with other settings or from another teacher than this run's is
    started again, said in one line with what changed; another torch or edgekd is the user's to decide."""
    interrupted = holds_checkpoint(path.with_name(path.name + ".partial"))
    try:
        run(path, True, record)
        if interrupted:   # (said after: whether it could continue is known only once the stage opened its run)
            echo(f"[{name}] continued its interrupted run")
        return
    except TeacherChanged:
        why = "from another teacher than this run's"
    except SettingsChanged as exc:
        why = f"with other settings ({'; '.join(exc.changes) or 'the data'})"
        try:
            if typed is not None:
                run(path, True, typed)
                echo(f"[{name}] continued its interrupted run")
                return
        except SettingsChanged:
            pass
        except TeacherChanged:
            why = "from another teacher than this run's"
    echo(f"[{name}] the interrupted run was started {why}: started again")
    run(path, False, record)


# --- each stage's settings in the pipeline ------------------------------------------------------------

IMAGE_JITTER = 1   # PipelineConfig.jitter=None on images: the teachers' ±1 px (none on vectors)


def teacher_config(config: PipelineConfig, device: str):
    """The teacher stage's settings (``benchmarks/pipeline_digits.py`` trains the same teacher)."""
    from edgekd.teacher_training import TeacherConfig
    from edgekd.training import TrainConfig

    return TeacherConfig(arch=config.teacher_arch, ensemble=config.ensemble,
                         train=TrainConfig(epochs=config.teacher_epochs, lr=config.teacher_lr,
                                           jitter=IMAGE_JITTER if config.jitter is None else config.jitter,
                                           seed=config.seed, device=device))


def distill_config(config: PipelineConfig, device: str):
    """The distill stage's settings: with student jitter the teacher is cached on every shift, so it sees
    exactly the student's view (consistent teaching); the baseline is always trained beside it."""
    from edgekd.config import DistillConfig
    from edgekd.training import TrainConfig

    return DistillConfig(student=config.student, temperature=config.temperature, alpha=config.alpha,
                         train=TrainConfig(epochs=config.epochs, jitter=config.student_jitter, seed=config.seed,
                                           device=device),
                         view_grid=bool(config.student_jitter), baseline=True, recipe_search=config.student_recipe_search)


QUICK_BENCH = dict(batch_sizes=(1, 32), threads=(1,), seconds=0.15, rounds=2, min_runs=4, warmup_seconds=0.02,
                   floor_seconds=0.05, probe_seconds=0.1)


def build_for_pipeline(teacher_dir, data, out_dir, quick: bool = True, *, cache=None, seed: int = 0,
                       device: str = "auto", resume: bool = False, progress: bool = False, config_record: dict | None = None,
                       pipeline: PipelineConfig | None = None):
    """The specialists stage: the teacher's member 0 as generalist (the pipeline trains an ensemble),
    K chosen automatically, top-1 gating; ``quick`` trains each specialist 2 epochs, else 5, at
    ``pipeline``'s specialist learning rate and patience."""
    from edgekd.artifacts import load_artifact
    from edgekd.training import TrainConfig
    from specialists.build import SpecialistConfig, build_specialists

    members = len(load_artifact(teacher_dir).manifest.members)
    pipeline = pipeline or PipelineConfig()
    config = SpecialistConfig(member=0 if members > 1 else None,
                              train=TrainConfig(epochs=2 if quick else 5, lr=pipeline.specialist_lr,
                                                patience=pipeline.specialist_patience, seed=seed, device=device))
    return build_specialists(teacher_dir, data, config, out_dir, cache=cache, overwrite=True, resume=resume,
                             progress=progress, config_record=config_record)


def export_for_pipeline(student_dir, teacher_dir, data, out_dir, *, opset: int | None = None,
                        calibration_size: int | None = None, max_accuracy_drop: float | None = None,
                        overwrite: bool = True) -> dict:
    """The export stage: ``student.onnx``, ``student.int8.onnx`` (static QDQ) and ``teacher.onnx`` in
    ``out_dir``. ``data``'s val split verifies, its test split measures accuracy and its train split
    calibrates the int8 model. A row that fails does not stop the others: its entry holds
    ``{"path", "error", "refused"}`` instead of figures, ``refused`` when the int8 model lost more accuracy
    than the gate allows (an outcome; any other failure is reported by ``PipelineResult.failures``)."""
    from edgekd.data import load_dataset
    from edgekd.errors import AccuracyGateError, EdgekdError
    from export import ExportConfig, export_onnx, result_row

    # what is not given is ExportConfig's default (defaults live there once)
    given = {k: v for k, v in dict(opset=opset, calibration_size=calibration_size,
                                   max_accuracy_drop=max_accuracy_drop).items() if v is not None}
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if isinstance(data, str):
        data = load_dataset(data)
    jobs = {
        "student_fp32": (student_dir, "student.onnx", ExportConfig(**given)),
        "student_int8": (student_dir, "student.int8.onnx", ExportConfig(**given, quantize="int8", calibration_data=data.spec)),
        "teacher": (teacher_dir, "teacher.onnx", ExportConfig(**given)),
    }
    rows = {}
    for name, (model, filename, config) in jobs.items():
        try:
            result = export_onnx(model, out_dir / filename, config, overwrite=overwrite, data=data,
                                 calibration=data if config.quantize == "int8" else None)
        except EdgekdError as exc:
            rows[name] = {"path": str(out_dir / filename), "error": str(exc),
                          "refused": isinstance(exc, AccuracyGateError)}
            continue
        rows[name] = result_row(result)
    return rows


def bench_for_pipeline(model_paths, data, out_dir, *, quick: bool = True, command: str | None = None,
                       echo: Callable[[str], None] | None = None, device: str = "auto") -> dict:
    """The benchmark stage: run, write ``out_dir/report.{json,md}`` and the plots, and return the paths
    and the 1-thread batch-1 headline (a few seconds on digits with ``quick``)."""
    from benchmarks.harness import BenchConfig, run_benchmark
    from benchmarks.report import headline_rows, write_report

    config = BenchConfig(**QUICK_BENCH, device=device) if quick else BenchConfig(device=device)   # the run's --device
    report = run_benchmark(model_paths, data, config, command=command or "edgekd pipeline (bench stage)", echo=echo)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = write_report(report, out_dir)
    return {**{k: str(v) for k, v in paths.items()}, "headline": headline_rows(report.to_dict()),
            "errors": sum(r["status"] == "error" for r in report.rows),
            "skipped": sum(r["status"] == "skipped" for r in report.rows), "wall_seconds": report.wall_seconds}


def _specialists_stage(config, data, teacher, teacher_dir, out, cache, stage, summary, progress, echo):
    """Build the specialist ensemble (member 0 as generalist); distil from whichever teacher, the
    ensemble or the specialist ensemble, is more accurate on *val* (never test)."""
    from edgekd.device import resolve_device
    from edgekd.evaluate import evaluate
    from edgekd.teachers import load_teacher

    device = str(resolve_device(config.device))   # (cuda:N keeps its N)
    if "specialists" in config.skip:
        return teacher, "teacher"
    spec_dir = out / "specialists"
    stage("specialists", spec_dir, lambda p, again, record: build_for_pipeline(
        teacher_dir, data, p, cache=cache, seed=config.seed, device=device, resume=again, progress=progress,
        config_record=record, pipeline=config),
          made_from=lambda p: _recorded(p, "generalist") == _generalist_fingerprint(teacher_dir, p))
    spec = load_teacher(spec_dir).to(device)
    summary["specialists"] = _model_summary(evaluate(spec, data), spec)
    summary["specialists"]["clusters"] = spec.artifact.manifest.clusters
    val_teacher = evaluate(teacher, data, split="val").accuracy
    val_spec = evaluate(spec, data, split="val").accuracy
    summary["specialists"]["val_accuracy"], summary["teacher"]["val_accuracy"] = val_spec, val_teacher
    if val_spec > val_teacher:
        echo(f"[specialists] the specialist ensemble is better on val ({val_spec:.4f} > {val_teacher:.4f}): distilling from it")
        return spec, "specialists"
    return teacher, "teacher"


def _why_made_again(out: Path, name: str, path: Path, settings: dict, made_from) -> str | None:
    """Why the finished artifact of stage ``name`` at ``path`` is not kept by ``--resume`` (None: it is kept). It is
    kept when its manifest is the one this pipeline finished (not one put there since by another command, ``teacher
    train --out OUT/teacher --overwrite``, which would be reported under this pipeline's settings), made with this
    run's ``settings`` of the stage, from this run's teacher (``made_from``)."""
    entry = _run_record(out).get("stages", {}).get(name)
    if not isinstance(entry, dict) or entry.get("manifest") != sha256_file(path / MANIFEST):
        return "the previous run's was not made by this pipeline (replaced since, or never recorded): made again"
    if changes := fingerprint_changes(entry.get("settings") or {}, settings):
        return f"the previous run's was made with other settings ({'; '.join(changes)}): made again"
    if made_from is not None and not made_from(path):
        return "the previous run's was made from another teacher than this run's: made again"
    return None


def _record_stage(out: Path, name: str, path: Path, settings: dict) -> None:
    record = _run_record(out)
    record["stages"] = {**record.get("stages", {}), name: {"manifest": sha256_file(path / MANIFEST), "settings": settings}}
    write_json_atomic(out / RUN_RECORD, record)


def _run_record(out: Path, *, required: bool = False) -> dict | None:
    """``RUN_RECORD`` as ``_bind_run`` wrote it. Missing or unreadable: ``{}``, or with ``required`` (a --resume into
    finished stages) refused, since what made them cannot be told."""
    path = out / RUN_RECORD
    try:
        record = json.loads(path.read_text())
    except FileNotFoundError:
        if required:
            raise OutputError(f"--resume cannot tell what settings made the stages in '{out}': it has no {RUN_RECORD}; "
                              f"pass --overwrite to start over.") from None
        return {}
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        record = None
    if isinstance(record, dict) and isinstance(record.get("stages", {}), dict):
        return record
    if required:
        raise OutputError(f"--resume cannot read '{path}' (not the JSON edgekd writes); pass --overwrite to start over.")
    return {}


def _recorded(path: Path, field: str) -> str | None:
    """The fingerprint of the teacher (or generalist) a finished stage's manifest says it was made from."""
    from edgekd.artifacts import load_artifact

    record = getattr(load_artifact(path, verify=False).manifest, field, None)
    return record.get("fingerprint") if isinstance(record, dict) else None


def _generalist_fingerprint(teacher_dir: Path, spec_dir: Path) -> str | None:
    """The fingerprint this run's teacher has as the generalist the kept specialists name (its member)."""
    from edgekd.artifacts import load_artifact
    from specialists.build import open_generalist

    source = getattr(load_artifact(spec_dir, verify=False).manifest, "generalist", None)
    if not isinstance(source, dict):
        return None
    return open_generalist(teacher_dir, source.get("member")).teacher.fingerprint


def _model_summary(result, teacher) -> dict:
    metrics = teacher.artifact.manifest.metrics if getattr(teacher, "artifact", None) else {}
    return {"description": teacher.description, "accuracy": result.accuracy, "nll": result.nll, "ece": result.ece,
            "agreement_with_teacher": result.agreement, "macs": metrics.get("macs"), "parameters": metrics.get("parameters")}


def _chosen(distill: dict) -> str:
    """'T=4 (chosen on val), alpha=0.9': only what the search varied is said to be chosen."""
    searched = {key: len({c[key] for c in distill["search"]}) > 1 for key in ("temperature", "alpha")}
    return ", ".join(f"{label}={distill[key]:g}" + (" (chosen on val)" if searched[key] else "")
                     for key, label in (("temperature", "T"), ("alpha", "alpha")))


def render_summary(summary: dict) -> str:
    lines = [f"# edgekd pipeline on `{summary['data']['spec']}`", "",
             f"train {summary['data']['n_train']} / val {summary['data']['n_val']} / test {summary['data']['n_test']} samples; "
             f"distillation at {_chosen(summary['distill'])}.", "",
             "| model | test accuracy | NLL | ECE | agreement with the student's teacher | MACs |", "|---|---|---|---|---|---|"]
    members = summary.get("config", {}).get("ensemble", 2)
    rows = (("teacher", "teacher ensemble" if members > 1 else "teacher"), ("specialists", "generalist + specialists"),
            ("baseline", "student, hard labels"), ("student", "student, distilled"))
    for key, label in rows:
        if key not in summary:
            continue
        m = summary[key]
        agree = f"{m['agreement_with_teacher']:.4f}" if m["agreement_with_teacher"] is not None else "-"
        macs = f"{m['macs']:,}" if m["macs"] else "-"
        lines.append(f"| {label} | {m['accuracy']:.4f} | {m['nll']:.4f} | {m['ece']:.4f} | {agree} | {macs} |")
    if "specialists" in summary:
        source = "specialist ensemble" if summary["distilled_from"] == "specialists" else "teacher"
        lines += ["", f"The student was distilled from the {source} (the specialist ensemble is taken only when it "
                      f"is more accurate on val)."]
    teacher = summary["specialists"] if summary.get("distilled_from") == "specialists" else summary["teacher"]
    gain = describe_gain(summary["student"]["accuracy"], summary["baseline"]["accuracy"], teacher["accuracy"])
    lines += ["", gain[0].upper() + gain[1:] + " (test accuracy)."]
    if "export" in summary:
        from export import render_export_table

        lines += ["", "## Export", "", render_export_table(summary["export"])]
    if "bench" in summary:
        lines += ["", "## Latency (1 thread)", "", "| model | runtime | batch | p50 ms | p99 ms | speed-up |", "|---|---|---|---|---|---|"]
        for row in summary["bench"].get("headline", []):
            cells = [f"{row[k]:.4f}" if row.get(k) is not None else "-" for k in ("p50_ms", "p99_ms")]
            speedup = f"{row['speedup']:.1f}x" if row.get("speedup") is not None else "-"   # no reference row: none
            lines.append(f"| {row['model']} | {row['runtime']} | {row['batch_size']} | {' | '.join(cells)} | {speedup} |")
        lines += ["", f"Full report: `bench/report.md` ({summary['bench'].get('errors', 0)} error rows, "
                      f"{summary['bench'].get('skipped', 0)} skipped: runtimes not installed or settings they cannot honour). "
                      f"A quick measurement ({QUICK_BENCH['rounds']} rounds of {QUICK_BENCH['seconds']:g} s per model): "
                      f"between models of similar size the speed-ups are noise; time them with `edgekd bench` to compare."]
    kept = set(summary.get("kept", []))
    times = ", ".join(f"{k} kept from the previous run" if k in kept else f"{k} {v}" for k, v in summary["timings_s"].items())
    lines += ["", f"Stage times (s): {times}."]
    if summary.get("skipped"):
        lines += ["", f"Skipped (--skip): {', '.join(summary['skipped'])}."]
    return "\n".join(lines + [""])
