"""Train a generalist teacher or an ensemble of N of them (different seeds), paper section 3."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from edgekd.artifacts import Manifest, Member, save_artifact
from edgekd.config import TeacherConfig
from edgekd.data import Dataset
from edgekd.device import place_dataset, resolve_device
from edgekd.models import count_macs, count_parameters, create_model, parse_arch
from edgekd.outputs import data_paths
from edgekd.teachers import combine_outputs
from edgekd.training import (RunStore, TrainConfig, accuracy_and_nll, cross_entropy_loss, fit, predict_logits,
                             run_fingerprint, supervised_batches)  # the last two re-exported: benchmarks read them here
from edgekd.validation import check_flip, check_jitter, check_output_dir
from edgekd.records import Record





@dataclass(frozen=True)
class TeacherResult(Record):
    path: Path
    member_test_accuracy: tuple[float, ...]
    ensemble_test_accuracy: float
    ensemble_test_nll: float
    macs_per_member: int
    parameters_per_member: int
    seconds: float
    seconds_per_epoch: float
    epochs_run: tuple[int, ...] = ()    # per member: fewer than asked when patience stopped it
    best_epoch: tuple[int, ...] = ()    # per member: the epoch whose weights were kept (best on val)
    train_seconds: float = 0.0          # every process's training epochs, without evaluation and setup (a resumed run's ``seconds`` are its own)
    resumed: bool = False


def train_teachers(data: Dataset, config: TeacherConfig, out: str | Path, *, overwrite: bool = False,
                   resume: bool = False, progress: bool = False, dist=None, config_record: dict | None = None) -> TeacherResult:
    """Train ``config.ensemble`` members with seeds ``seed, seed+1, ...`` and save one artifact."""
    out = Path(out)
    check_output_dir(out, overwrite=overwrite, resume=resume, data=data_paths(data.spec))   # before training, not at the save
    started = time.perf_counter()
    name, options = parse_arch(config.arch)
    create_model(name, data.input_shape, data.num_classes, options=options, for_training=True)  # a bad architecture fails before anything is written
    check_jitter(config.train.jitter, data.input_shape)
    check_flip(config.train.flip, data.input_shape)
    store = RunStore(out.with_name(out.name + ".partial"), resume=resume, rank=dist.rank if dist else 0,
                     fingerprint=run_fingerprint(config_record or config, data, after_training={"combine"}),
                     overwrite=overwrite)
    try:
        members, member_logits, per_epoch, epochs_run, best_epoch = _train_members(data, config, store, name, options,
                                                                                   progress, dist)
    except BaseException:   # stopped or failed before a first checkpoint: no run to resume is left behind
        store.discard_if_unused()
        raise
    seconds = time.perf_counter() - started
    member_acc = [accuracy_and_nll(z, data.y_test)[0] for z in member_logits]
    # the ensemble's test logits from its members' (each member's pass over test is made once)
    test_acc, test_nll = accuracy_and_nll(combine_outputs(member_logits, config.combine), data.y_test)
    macs = count_macs(members[0], data.input_shape)
    params = count_parameters(members[0])
    metrics = {"member_test_accuracy": member_acc, "test_accuracy": test_acc, "test_nll": test_nll,
               "macs_per_member": macs, "macs": macs * len(members), "parameters": params * len(members),
               "member_epochs_run": epochs_run, "member_best_epoch": best_epoch}
    # wall-clock figures vary run to run; they live apart from the (deterministic) metrics. "seconds" is this
    # process's; a resumed run's epochs before it are in train_seconds (the sum over every process's epochs)
    train_seconds = sum(s * e for s, e in zip(per_epoch, epochs_run))
    timings = {"seconds": round(seconds, 2), "seconds_per_epoch": sum(per_epoch) / len(per_epoch),
               "train_seconds": round(train_seconds, 2), "resumed": not store.fresh}
    manifest = Manifest(
        kind="ensemble" if len(members) > 1 else "model", classes=data.classes, input_shape=data.input_shape,
        normalization={"mean": list(data.mean), "std": list(data.std)},
        members=tuple(Member(arch=name, options=options, weights=f"member-{i}.safetensors", seed=config.train.seed + i,
                             num_outputs=data.num_classes) for i in range(len(members))),
        combine=config.combine, config=config_record or {"teacher": _config_dict(config)}, data=data.describe(),
        seed=config.train.seed, metrics=metrics, timings=timings)
    if dist is None or dist.rank == 0:
        save_artifact(out, manifest, {f"member-{i}.safetensors": m.state_dict() for i, m in enumerate(members)},
                      overwrite=overwrite or resume)
        store.finish()
    return TeacherResult(path=out, member_test_accuracy=tuple(member_acc), ensemble_test_accuracy=test_acc,
                         ensemble_test_nll=test_nll, macs_per_member=macs, parameters_per_member=params,
                         seconds=seconds, seconds_per_epoch=sum(per_epoch) / len(per_epoch),
                         epochs_run=tuple(epochs_run), best_epoch=tuple(best_epoch), train_seconds=train_seconds,
                         resumed=not store.fresh)


def _train_members(data: Dataset, config: TeacherConfig, store, name: str, options: dict, progress: bool, dist):
    """Each member trained with its seed (checkpointed in ``store``): the models, their test logits, their figures."""
    device = dist.device if dist is not None else resolve_device(config.train.device)
    data = place_dataset(data, device)
    members, member_logits, per_epoch, epochs_run, best_epoch = [], [], [], [], []
    for index in range(config.ensemble):
        seed = config.train.seed + index
        torch.manual_seed(seed)
        model = create_model(name, data.input_shape, data.num_classes, mean=data.mean, std=data.std,
                             options=options).to(device)
        if dist is not None:
            dist.broadcast_parameters(model)
        member_cfg = TrainConfig(**{**asdict(config.train), "seed": seed})
        result = fit(model, n_train=len(data.y_train), make_batch=supervised_batches(data.x_train, data.y_train, member_cfg.jitter, member_cfg.mixup,
                                                                                 member_cfg.flip),
                     loss_fn=cross_entropy_loss, val=(data.x_val, data.y_val), config=member_cfg, store=store,
                     name=f"member-{index}", progress=progress, dist=dist, data_device=data.device)
        model.eval()
        members.append(model)
        member_logits.append(predict_logits(model, data.x_test))
        per_epoch.append(result.seconds_per_epoch)
        epochs_run.append(result.epochs_run)
        best_epoch.append(result.best_epoch)
    return members, member_logits, per_epoch, epochs_run, best_epoch


def _config_dict(config) -> dict:
    return asdict(config)


def save_untrained(out: str | Path, arch: str, data: Dataset, *, members: int = 1, seed: int = 0) -> Path:
    """An artifact of ``members`` randomly initialised ``arch`` models on ``data`` (seeds seed..): the
    stand-in teacher or student of smoke runs and tests, with its MACs and parameters recorded."""
    name, options = parse_arch(arch)
    models = []
    for i in range(members):
        torch.manual_seed(seed + i)
        models.append(create_model(arch, data.input_shape, data.num_classes, mean=data.mean, std=data.std))
    manifest = Manifest(
        kind="ensemble" if members > 1 else "model", classes=data.classes, input_shape=data.input_shape,
        normalization={"mean": list(data.mean), "std": list(data.std)},
        members=tuple(Member(arch=name, options=options, weights=f"member-{i}.safetensors", seed=seed + i,
                             num_outputs=data.num_classes) for i in range(members)),
        config={"untrained": True}, data=data.describe(), seed=seed,
        metrics={"macs": members * count_macs(models[0], data.input_shape), "parameters": members * count_parameters(models[0])})
    save_artifact(out, manifest, {f"member-{i}.safetensors": m.state_dict() for i, m in enumerate(models)}, overwrite=True)
    return Path(out)

