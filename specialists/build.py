"""``build_specialists``: the paper's section 5 as one stage.

generalist (an edgekd artifact of one model) -> confusion clustering of its train-split
probabilities -> one specialist per cluster of two or more classes -> one artifact of kind
"specialist-ensemble" (generalist + specialists + clusters + solver settings) that every command
accepts as a teacher, with a report (Markdown, JSON), the clusters (``clusters.json``), the class
covariance (``covariance.npy``, float32) and its heatmap inside.

Resumable: finished specialists and the interrupted one's checkpoint live in ``<out>.partial``
(``edgekd.training.RunStore``); rerun with ``resume=True``.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Sequence

import torch

from edgekd.artifacts import Manifest, Member, load_artifact, save_artifact
from edgekd.cache import LogitCache
from edgekd.data import Dataset, as_dataset
from edgekd.device import module_device, place_dataset, resolve_device
from edgekd.targets import teacher_logits
from edgekd.errors import ArtifactError, ConfigError, EdgekdError, TeacherError
from edgekd.models import count_macs, count_parameters
from edgekd.teachers import EnsembleModule, ModuleTeacher, Teacher, check_teacher_fits, source_path, teacher_from_artifact
from edgekd.outputs import data_paths
from edgekd.training import RunStore, TrainConfig, predict_logits, run_fingerprint
from edgekd.validation import check_flip, check_indices, check_jitter, check_output_dir
from edgekd.records import Record
from specialists.clustering import check_k, covariance_npy, covariance_png, find_clusters
from specialists.combine import (SolveResult, SpecialistEnsembleModule, check_specialist_artifact, check_top_n, gated_combine,
                                 max_active_bound)
from specialists.config import DEFAULT_CLUSTER_TEMPERATURE, SpecialistConfig  # noqa: F401  (SpecialistConfig re-exported)
from specialists.report import comparison, render_markdown
from specialists.training import check_specialist_arch, train_specialist

MODULE_STEPS_CAP = 200
MODULE_CHECK_INPUTS = 512   # the exportable module (every specialist on every input) is checked on this many test inputs


@dataclass(frozen=True)
class SpecialistsResult(Record):
    path: Path
    clusters: tuple
    specialist_clusters: tuple
    cluster_names: tuple
    k: tuple
    silhouette: dict | None
    generalist_test_accuracy: float
    ensemble_test_accuracy: float
    covered_generalist_accuracy: float | None
    covered_ensemble_accuracy: float | None
    covered_relative_change: float | None
    per_cluster: tuple = ()
    by_coverage: tuple = ()
    module_steps: int = 1
    seconds: float = 0.0
    timings: dict = field(default_factory=dict)
    report_md: Path | None = None
    solver: dict = field(default_factory=dict)   # its settings and how the solve went on test (steps, cap, module)


@dataclass(frozen=True)
class Generalist:
    teacher: Teacher
    model: torch.nn.Module
    arch: str
    options: dict
    member: int
    source: dict          # where it came from: path, description, fingerprint, member, training time, file hashes
    normalization: dict   # its own (mean, std): the specialists start from its weights, normalisation buffers included
    seed: int | None = None   # the seed it was built under (recorded again with it)

    @property
    def device(self) -> torch.device:
        return module_device(self.model)


def open_generalist(path, member: int | None = None, *, device=None, for_specialists: bool = False) -> Generalist:
    """The generalist: an edgekd artifact of one model, or one member of an ensemble (``member``),
    on ``device`` (the CPU by default). ``for_specialists``: refused here, before the generalist's pass over the train
    split and the clustering, if specialists cannot be made from it (``check_specialist_arch``; clustering alone
    needs no head)."""
    path = Path(path)
    if not path.is_dir():
        what = "an ONNX file" if path.suffix.lower() == ".onnx" else "not an edgekd artifact folder"
        if not path.exists():
            what = "not found"
        raise TeacherError(f"Specialists need a generalist that is one edgekd model (its weights initialise the "
                           f"specialists); '{path}' is {what}. Pass a folder written by 'edgekd teacher train --ensemble 1'.")
    artifact = load_artifact(path)
    members = artifact.manifest.members
    if artifact.kind == "specialist-ensemble":
        raise TeacherError(f"'{path}' is already a specialist ensemble; pass its generalist (a single-model artifact) instead.")
    if member is None and len(members) != 1:
        raise TeacherError(f"Specialists need a single generalist model but '{path}' is an ensemble of {len(members)}; "
                           f"pass a single-model teacher (edgekd teacher train --ensemble 1), or pick one member with --member.")
    index = member or 0
    if index >= len(members):
        raise ConfigError(f"The 'member' parameter must be in [0, {len(members) - 1}] for '{path}'. Got {index} instead.")
    model = artifact.build_members(only=index)[0].to(device or "cpu")
    options = members[index].arch_options
    if for_specialists:
        norm = artifact.manifest.normalization
        check_specialist_arch(model, members[index].arch, options, artifact.input_shape, len(artifact.classes),
                              mean=norm["mean"], std=norm["std"])
    if len(members) == 1:
        # the same fingerprint as everywhere else (the logit cache is shared), and the same module: not built twice
        teacher = teacher_from_artifact(artifact, members=[model])
    else:
        fingerprint = hashlib.sha256(f"{artifact.fingerprint}:member={index}".encode()).hexdigest()
        teacher = ModuleTeacher(EnsembleModule([model]), kind="model", classes=artifact.classes,
                                input_shape=artifact.input_shape, fingerprint=fingerprint,
                                description=f"member {index} of '{path}' ({members[index].arch})", artifact=artifact)
    source = {"path": str(path), "description": teacher.description, "fingerprint": teacher.fingerprint,
              "member": index, "train_seconds": generalist_train_seconds(artifact.manifest),
              "source_manifest_files": artifact.manifest.files}
    return Generalist(teacher=teacher, model=model, arch=members[index].arch, options=options, member=index,
                      source=source, normalization=dict(artifact.manifest.normalization),
                      seed=artifact.manifest.seed_of(members[index]))


def build_specialists(teacher_path, data: Dataset, config: SpecialistConfig, out, *, cache: LogitCache | None = None,
                      overwrite: bool = False, resume: bool = False, refresh_cache: bool = False,
                      progress: bool = False, config_record: dict | None = None) -> SpecialistsResult:
    """Cluster, train one specialist per cluster, evaluate, and save the specialist-ensemble artifact."""
    started = time.perf_counter()
    teacher_path, data, out = source_path(teacher_path, "teacher_path"), as_dataset(data), Path(out)
    check_output_dir(out, overwrite=overwrite, resume=resume, inputs=[teacher_path], data=data_paths(data.spec))
    check_k(config.clusters, data.num_classes)
    check_top_n(config.top_n, data.num_classes)
    cache = cache or LogitCache()
    generalist = open_generalist(teacher_path, config.member, device=resolve_device(config.train.device),
                                 for_specialists=True)
    check_teacher_fits(generalist.teacher, data, name="Generalist")
    data = data.shaped(generalist.teacher.input_shape)   # flat data of the right size, read as the generalist's images
    check_jitter(config.train.jitter, data.input_shape)
    check_flip(config.train.flip, data.input_shape)
    data = place_dataset(data, generalist.device)
    timings = {}

    # the interrupted run's settings are checked before the generalist's pass over the train split and the clustering
    store = RunStore(out.with_name(out.name + ".partial"), resume=resume, overwrite=overwrite,
                     fingerprint=run_fingerprint(config_record or config, data, generalist.teacher.fingerprint,
                                                 after_training=SOLVER_SETTINGS))
    tick = time.perf_counter()
    try:
        clustering = _clusters(generalist, data, config, cache, refresh_cache)
    except BaseException:   # no run to resume is left behind by one that found nothing to train
        store.discard_if_unused()
        raise
    timings["clustering"] = time.perf_counter() - tick
    previous = store.load_json("clusters")
    if previous is not None and previous["specialist_clusters"] != [list(s) for s in clustering.specialist_clusters]:
        raise EdgekdError(f"The interrupted run in '{store.path}' found other clusters ({previous['specialist_clusters']}); "
                          f"delete that folder to start over with these settings.")
    store.save_json("clusters", clustering.to_dict(data.classes))

    fits = []
    tick = time.perf_counter()
    try:
        for index, classes in enumerate(clustering.specialist_clusters):
            for copy in range(config.per_cluster):
                fits.append(train_specialist(generalist.model, generalist.arch, generalist.options, data, classes,
                                             train=replace(config.train, seed=config.train.seed + copy),
                                             special_fraction=config.special_fraction, store=store,
                                             name=f"specialist-{index}" + (f"-{copy}" if copy else ""), progress=progress))
    except BaseException:   # stopped or failed before a first checkpoint: no run to resume is left behind
        store.discard_if_unused()
        raise
    timings["training"] = time.perf_counter() - tick
    result = _evaluate_and_save(generalist, data, config, clustering, fits, out, cache=cache, timings=timings,
                                started=started, refresh_cache=refresh_cache, config_record=config_record)
    store.finish()
    return result


# how the trained specialists are combined (`specialists regate` changes them on a finished ensemble): a resume
# with other values continues the same training
SOLVER_SETTINGS = {"top_n", "tol", "max_steps", "module_steps"}


def _clusters(generalist: Generalist, data: Dataset, config: SpecialistConfig, cache: LogitCache, refresh_cache: bool):
    """The confusable clusters of the generalist's train-split probabilities (``find_clusters``); refused when every
    cluster has one class (no specialist to train)."""
    train_logits = teacher_logits(generalist.teacher, data, "train", cache, refresh=refresh_cache).cpu()
    clustering = find_clusters(train_logits, config.clusters, temperature=config.cluster_temperature, seed=config.train.seed)
    if any(len(c) == data.num_classes for c in clustering.clusters):
        raise ConfigError(f"The generalist's probabilities do not tell any classes apart (k-means put all "
                          f"{data.num_classes} in one cluster), so there is no cluster to train a specialist for; "
                          f"check that the generalist is trained (its test accuracy) and predicts more than one class.")
    if not clustering.specialist_clusters:
        names = [[data.classes[c] for c in s] for s in clustering.clusters]
        hot = (f"; a --cluster-temperature of {config.cluster_temperature:g} makes every probability alike, so the "
               f"classes look unconfusable: keep it near the default {DEFAULT_CLUSTER_TEMPERATURE:g}"
               if config.cluster_temperature > 4 * DEFAULT_CLUSTER_TEMPERATURE else "")
        raise ConfigError(f"Every cluster found has one class ({', '.join('{' + n[0] + '}' for n in names)}), so there is "
                          f"no specialist to train; choose fewer clusters (--clusters {max(2, data.num_classes // 3)} or auto){hot}.")
    return clustering


def _evaluate_and_save(generalist: Generalist, data: Dataset, config: SpecialistConfig, clustering, fits, out: Path, *,
                       cache: LogitCache, timings: dict, started: float, refresh_cache: bool = False,
                       config_record: dict | None = None, data_record: dict | None = None) -> SpecialistsResult:
    """Combine on the test split, compare with the generalist, and write the artifact with its report.
    ``data_record``: what the ensemble was trained on, when that was not ``data`` (a regate keeps its build's)."""
    tick = time.perf_counter()
    specialists = [_specialist_net(generalist, data, fit).to(generalist.device) for fit in fits]
    clusters = [fit.classes for fit in fits]
    solver = _solver_settings(config, generalist, specialists, clusters, data)
    test_gen = teacher_logits(generalist.teacher, data, "test", cache, refresh=refresh_cache)
    solved = _gated(test_gen, specialists, clusters, data.x_test, config)
    ens_test = solved.log_q.float()
    module = SpecialistEnsembleModule(generalist.model, specialists, clusters, data.num_classes, top_n=config.top_n,
                                      steps=solver["module_steps"], tol=config.tol).to(generalist.device).eval()   # its buffers too
    checked = min(len(data.x_test), MODULE_CHECK_INPUTS)
    module_test = predict_logits(module, data.x_test[:checked], batch_size=64)
    solver.update({"test_steps_max": int(solved.steps.max()), "test_steps_mean": float(solved.steps.float().mean()),
                   "test_grad_max": float(solved.grad_max.max()), "test_change_max": float(solved.change_max.max()),
                   "test_capped": int((solved.steps >= config.max_steps).sum()),
                   "module_max_abs_diff": float((module_test - ens_test[:checked]).abs().max()),
                   "module_checked_inputs": checked})
    test = comparison(test_gen.cpu(), ens_test.cpu(), data.y_test.cpu(), clustering.clusters,
                      clusters, data.classes, solved.active.cpu())   # each specialist's classes: coverage counts copies
    timings["evaluation"] = time.perf_counter() - tick
    timings["total"] = time.perf_counter() - started + timings.pop("earlier", 0.0)

    source = {k: v for k, v in generalist.source.items() if k != "source_manifest_files"}
    report = {"data": data.describe(), "generalist": source,
              "clustering": clustering.to_dict(data.classes), "solver": solver,
              "specialists": [{**fit.summary(), "class_names": [data.classes[c] for c in fit.classes]} for fit in fits],
              "test": test, "timings_s": {k: round(v, 2) for k, v in timings.items()}}
    manifest = _manifest(generalist, data, config, clustering, fits, solver, test, timings, config_record, specialists,
                         data_record or data.describe())
    tensors = {"generalist.safetensors": generalist.model.state_dict(),
               **{f"specialist-{i}.safetensors": fit.state for i, fit in enumerate(fits)}}
    extra = {"report.md": render_markdown(report).encode(), "report.json": _json_bytes(report),
             "clusters.json": _json_bytes(clustering.to_dict(data.classes)),
             "covariance.npy": covariance_npy(clustering.covariance),
             "covariance.png": covariance_png(clustering.covariance, clustering.clusters, data.classes)}
    save_artifact(out, manifest, tensors, extra_files=extra, overwrite=True)
    names = tuple(tuple(data.classes[c] for c in s) for s in clustering.clusters)
    return SpecialistsResult(
        path=out, clusters=clustering.clusters, specialist_clusters=clustering.specialist_clusters,
        cluster_names=names, k=clustering.k, silhouette=clustering.silhouette,
        generalist_test_accuracy=test["generalist"]["accuracy"], ensemble_test_accuracy=test["ensemble"]["accuracy"],
        covered_generalist_accuracy=test["covered"]["generalist_accuracy"],
        covered_ensemble_accuracy=test["covered"]["ensemble_accuracy"],
        covered_relative_change=test["covered"]["relative_change"], per_cluster=tuple(test["per_cluster"]),
        by_coverage=tuple(test["by_coverage"]), module_steps=solver["module_steps"],
        seconds=time.perf_counter() - started,   # this command's own (a regate's total also counts its build's)
        timings=report["timings_s"], report_md=out / "report.md", solver=dict(solver))


def regate_specialists(spec_path, data: Dataset, out, *, top_n: int | None = None, tol: float | None = None,
                       max_steps: int | None = None, module_steps: int | None = None, cache: LogitCache | None = None,
                       overwrite: bool = False, config_record: dict | None = None, device="auto",
                       keep: Sequence[int] | None = None) -> SpecialistsResult:
    """Re-score an existing specialist ensemble with other combination settings (top-n gating, solver
    tolerance, module steps): the same generalist and specialists, no training; a new artifact and report.

    ``keep``: the specialists kept (0-based, in the artifact's order; default all). The rest are dropped
    from the combination and the new artifact: an ensemble pruned for cost, or coverage varied with the
    clusters held fixed (the paper's Table 4 counts the specialists covering the correct class)."""
    from specialists.clustering import Clustering, read_covariance
    from specialists.training import SpecialistFit

    started = time.perf_counter()
    out = Path(out)
    artifact = load_artifact(spec_path)
    if artifact.kind != "specialist-ensemble":
        raise ArtifactError(f"'{spec_path}' is a '{artifact.kind}' artifact; pass one written by 'edgekd specialists build'.")
    check_specialist_artifact(artifact)
    # in place (--out SPEC --overwrite) is allowed: SPEC is read whole before the new artifact replaces it
    check_output_dir(out, overwrite=overwrite, inputs=[spec_path], data=data_paths(data.spec), in_place=spec_path)
    manifest = artifact.manifest
    if top_n is not None:
        check_top_n(top_n, len(artifact.classes))
    keep = check_indices("keep", keep, len(manifest.members) - 1) if keep is not None else None
    models = [model.to(resolve_device(device)) for model in artifact.build_members(only=0)]   # the specialists: from their fits
    gen_member, source = manifest.members[0], manifest.generalist
    teacher = ModuleTeacher(EnsembleModule([models[0]]), kind="model", classes=artifact.classes,
                            input_shape=artifact.input_shape, fingerprint=source["fingerprint"],
                            description=source["description"])
    # the ensemble's own record: data it was built on, split as it was (another --val-fraction would score rows
    # its specialists trained on, and the new artifact would record that split as its own)
    teacher.trained_on = manifest.data
    check_teacher_fits(teacher, data, name="Generalist")
    data = data.shaped(teacher.input_shape)   # flat data of the right size, read as the generalist's images
    data = place_dataset(data, module_device(models[0]))
    generalist = Generalist(teacher=teacher, model=models[0], arch=gen_member.arch, options=gen_member.arch_options,
                            member=source["member"], source=source, normalization=dict(manifest.normalization),
                            seed=manifest.seed_of(gen_member))
    saved = json.loads(artifact.file("clusters.json").read_text())
    clustering = Clustering(covariance=read_covariance(artifact.file("covariance.npy"), saved), clusters=tuple(tuple(c) for c in saved["clusters"]),
                            specialist_clusters=tuple(tuple(c) for c in saved["specialist_clusters"]),
                            k=tuple(saved["k"]), temperature=saved["temperature"],
                            silhouette={int(k): v for k, v in saved["silhouette"].items()} or None)
    earlier = manifest.timings
    per_specialist = earlier.get("per_specialist") or [0.0] * (len(manifest.members) - 1)
    fits = [SpecialistFit(classes=m.classes, state=artifact.load_tensors(m.weights), dustbin_bias=m.dustbin_bias,
                          true_share=m.true_share, training_share=m.training_share, val_accuracy=m.val_accuracy,
                          best_epoch=m.best_epoch, epochs_run=m.epochs_run, seconds=seconds, history=list(m.history),
                          seed=manifest.seed_of(m))
            for m, seconds in zip(manifest.members[1:], per_specialist)]
    fits = fits if keep is None else [fits[i] for i in keep]
    solver = manifest.solver
    config = SpecialistConfig(clusters=clustering.k, cluster_temperature=clustering.temperature,
                              top_n=solver["top_n"] if top_n is None else top_n, member=source["member"],
                              tol=solver["tol"] if tol is None else tol,
                              max_steps=solver["max_steps"] if max_steps is None else max_steps,
                              module_steps=module_steps, train=TrainConfig(seed=manifest.seed))
    timings = {k: earlier[k] for k in ("clustering", "training") if k in earlier}
    timings["earlier"] = sum(timings.values())
    record = config_record or {**manifest.config, "regate": {"from": str(spec_path), "top_n": config.top_n,
                                                                "tol": config.tol, "max_steps": config.max_steps,
                                                                "keep": list(keep) if keep is not None else None}}
    return _evaluate_and_save(generalist, data, config, clustering, fits, out, cache=cache or LogitCache(),
                              timings=timings, started=started, config_record=record, data_record=manifest.data)


def generalist_train_seconds(manifest: Manifest) -> float | None:
    """Seconds to train ONE member of the teacher artifact, if its manifest records the training time
    (``timings.seconds``; for a resumed run, whose ``seconds`` are its last process's, ``timings.train_seconds``,
    every process's epochs; divided by the number of members), else None."""
    timings = manifest.timings
    seconds = timings.get("train_seconds") if timings.get("resumed") else timings.get("seconds")
    if isinstance(seconds, (int, float)) and seconds > 0:
        return float(seconds) / max(1, len(manifest.members))
    return None


# --- helpers ---------------------------------------------------------------------------------------

def _specialist_net(generalist: Generalist, data: Dataset, fit) -> torch.nn.Module:
    from edgekd.models import create_model, seeded

    with seeded(fit.seed if fit.seed is not None else 0):   # built as it trained, as loading the artifact will build it
        net = create_model(generalist.arch, data.input_shape, len(fit.classes) + 1, mean=data.mean, std=data.std,
                           options=generalist.options)
    net.load_state_dict(fit.state)
    return net.eval()


GATED_CHUNK = 4096   # rows solved at once: the solver holds about ten float64 (rows, active, classes) tensors


def _gated(generalist_logits, specialists, clusters, x, config: SpecialistConfig, chunk: int = GATED_CHUNK):
    """The KL combination on ``x`` in float64, each specialist run only on the inputs it is active for,
    ``chunk`` rows at a time (each row is solved on its own, so chunking changes no result)."""
    parts = []
    for start in range(0, max(1, len(generalist_logits)), chunk):   # one (empty) chunk for no rows
        stop = min(start + chunk, len(generalist_logits))
        part = x[start:stop]
        parts.append(gated_combine(generalist_logits[start:stop].double(),
                                   lambda m, rows, part=part: predict_logits(specialists[m], part[rows]).double(),
                                   clusters, top_n=config.top_n, tol=config.tol, max_steps=config.max_steps))
    return SolveResult(**{name: torch.cat([getattr(r, name) for r in parts])
                          for name in ("log_q", "steps", "grad_max", "change_max", "active")})


def _solver_settings(config: SpecialistConfig, generalist: Generalist, specialists, clusters, data: Dataset) -> dict:
    """Solver settings for the manifest; the module's fixed steps: 1 where one update is exact (at
    most one active specialist per input), else the most updates any val input needed (capped)."""
    bound = max_active_bound(clusters, data.num_classes, config.top_n)
    steps = config.module_steps
    if steps is None and bound <= 1:
        steps = 1
    elif steps is None:
        solved = _gated(predict_logits(generalist.model, data.x_val), specialists, clusters, data.x_val, config)
        steps = int(min(MODULE_STEPS_CAP, max(1, int(solved.steps.max()))))
    return {"method": "fixed-point (EM) updates of q, see specialists/combine.py", "top_n": config.top_n,
            "tol": config.tol, "max_steps": config.max_steps, "module_steps": steps, "max_active_bound": bound}


def _manifest(generalist, data, config, clustering, fits, solver, test, timings, config_record, specialists,
              data_record: dict) -> Manifest:
    gen_member = Member(role="generalist", arch=generalist.arch, options=generalist.options,
                        weights="generalist.safetensors", num_outputs=data.num_classes, seed=generalist.seed)
    spec_members = [Member(role="specialist", classes=tuple(fit.classes), class_names=tuple(data.classes[c] for c in fit.classes),
                           arch=generalist.arch, options=generalist.options, weights=f"specialist-{i}.safetensors",
                           num_outputs=len(fit.classes) + 1, dustbin_bias=fit.dustbin_bias, dustbin_bias_applied=True,
                           true_share=fit.true_share, training_share=fit.training_share, val_accuracy=fit.val_accuracy,
                           best_epoch=fit.best_epoch, epochs_run=fit.epochs_run, history=tuple(fit.history), seed=fit.seed)
                    for i, fit in enumerate(fits)]
    macs_gen = count_macs(generalist.model, data.input_shape)
    macs_spec = [count_macs(net, data.input_shape) for net in specialists]
    return Manifest(
        kind="specialist-ensemble", classes=data.classes, input_shape=data.input_shape,
        normalization=generalist.normalization,   # what every member's weights carry, not this run's data's
        members=(gen_member, *spec_members), combine="specialists-kl", solver=solver,
        clusters={k: v for k, v in clustering.to_dict(data.classes).items() if k != "covariance"},
        generalist=generalist.source,
        config=config_record or {"specialists": asdict(config)}, data=data_record, seed=config.train.seed,
        metrics={"test_accuracy": test["ensemble"]["accuracy"], "test_nll": test["ensemble"]["nll"],
                 "generalist_test_accuracy": test["generalist"]["accuracy"],
                 "covered_relative_change": test["covered"]["relative_change"],
                 "macs": macs_gen + sum(macs_spec), "macs_generalist": macs_gen, "macs_per_specialist": macs_spec,
                 "parameters": count_parameters(generalist.model) + sum(count_parameters(net) for net in specialists)},
        timings={**{k: round(v, 2) for k, v in timings.items()}, "per_specialist": [round(fit.seconds, 2) for fit in fits]})


def _json_bytes(data) -> bytes:
    def default(value):
        if hasattr(value, "tolist"):
            return value.tolist()
        if isinstance(value, (tuple, set, Path)):
            return list(value) if not isinstance(value, Path) else str(value)
        raise TypeError(f"not JSON serialisable: {type(value).__name__}")

    return (json.dumps(data, indent=2, default=default) + "\n").encode()
