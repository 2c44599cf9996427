"""Distillation (paper section 2): train a compact student on the teacher's softened outputs.

Loss: ``alpha * T^2 * KL(softmax(t/T) || softmax(s/T)) + (1 - alpha) * CE(s, y)``; the student infers at
T = 1. Teacher logits on the transfer set are computed once and cached (``edgekd.cache``); with
input jitter the teacher either runs online on every augmented batch (``views=0``) or its logits
are cached for ``views`` fixed jittered copies of the transfer set, one drawn per sample and step.
With ``view_grid`` the views are *every* integer shift of the jitter ((2j+1)^2 of them), so the
teacher is consulted on exactly the image the student sees, at cached-logit speed: "consistent
teaching" (Beyer et al., CVPR 2022, "Knowledge distillation: a good teacher is patient and consistent").
``method`` picks the soft term (``edgekd.losses``: plain KD, logit standardization, decoupled KD).

With mixup (``train.mixup``) the teacher runs online on each blended batch, so it judges exactly the
image the student sees ("function matching", the same paper). With ``train.flip`` a random half of each
batch is mirrored, and the teacher judges the mirrored image: online, or cached on mirrored views.

Both sides of the comparison get their own best recipe, chosen on val: the hard-label baseline is
trained with and without jitter (``baseline_recipes``; with the student's mixup too, ``baseline_trials``),
and a student without jitter or mixup is also trained with the soft terms of ``search_methods`` and,
on images, with ±2 px on consistent views (``student_recipes``); the time of the recipes not kept is
reported apart. With ``twin_teacher`` (opt-in), a teacher no better than the hard-label baseline on val
is joined by that baseline for one more student (``twin_logits``, a born-again step).

Transfer-set options from the paper (section 3): ``transfer_limit`` (a count, or a fraction of the
train split left once ``omit_classes`` are removed) and ``omit_classes`` with the bias correction for
omitted classes, fitted on val (each ``student_search`` record's test accuracy is measured before it).
"""

from __future__ import annotations

import hashlib
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from edgekd.artifacts import Manifest, Member, save_artifact
from edgekd.cache import LogitCache, cache_key
from edgekd.config import DistillConfig
from edgekd.data import Dataset, as_dataset, inference_rows, stratified_subset_indices, take_rows
from edgekd.device import place_dataset, place_table, resolve_device
from edgekd.errors import ConfigError, TrainingError
from edgekd.losses import distillation_loss
from edgekd.models import count_macs, count_parameters, create_model, format_arch, output_layer, parse_arch
from edgekd.outputs import data_paths
from edgekd.teachers import Teacher, as_teacher, check_teacher_fits, teacher_files
from edgekd.training import (RunStore, TrainConfig, accuracy_and_nll, apply_shifts, augment_batch, cross_entropy_loss,
                             fit, jitter_views, predict_logits, run_fingerprint, supervised_batches)
from edgekd.targets import sharded_logits, teacher_logits  # noqa: F401  (teacher_logits re-exported)
from edgekd.validation import check_flip, check_jitter, check_output_dir, parse_limit
from edgekd.records import Record

VIEW_SEED = 7_919  # jittered views are fixed (not tied to the training seed) so their cache is shared





@dataclass(frozen=True)
class DistillResult(Record):
    path: Path
    temperature: float
    alpha: float
    method: str = ""                # the soft term of the recipe kept (student_recipes)
    search: tuple = ()
    student_test_accuracy: float = 0.0
    student_test_nll: float = 0.0
    teacher_test_accuracy: float = 0.0
    baseline_test_accuracy: float | None = None
    gap_closed: float | None = None
    student_macs: int = 0
    student_parameters: int = 0
    teacher_macs: int | None = None
    seconds_per_epoch: float = 0.0
    baseline_seconds_per_epoch: float | None = None
    baseline_search: tuple = ()     # the hard-label recipes tried (jitter on / off), the one chosen on val
    student_search: tuple = ()      # the distilled student's recipes tried (student_recipes), the one chosen on val
    # seconds spent training the recipes that were not kept (apart from the per-epoch figures)
    student_search_seconds: float = 0.0
    baseline_search_seconds: float = 0.0
    transfer_size: int = 0
    cache_hits: int = 0
    cache_misses: int = 0
    omitted: dict = field(default_factory=dict)


# --- teacher logits ------------------------------------------------------------------------------

def view_shifts(n: int, views: int, pixels: int, *, grid: bool = False, flip: bool = False) -> torch.Tensor:
    """(views, n, 2) fixed shifts, (views, n, 3) with ``flip`` (the third column mirrors: ``apply_shifts``);
    view 0 is the identity. With ``grid`` view v is the v-th integer shift (dy, dx) of [-pixels, pixels]^2
    for every sample, each also mirrored with ``flip`` (``views`` is then (2 pixels + 1)^2, twice that)."""
    if grid:
        offsets = grid_offsets(pixels, flip)
        return offsets[:, None, :].expand(len(offsets), n, offsets.shape[1]).contiguous()
    # int16 (an image side is at most 4096 px), filled view by view: an int64 table, stacked from a list, was
    # 32 bytes a row and view at its peak, as much as a 28x28 image's bytes at 16 views
    shifts = torch.zeros((views, n, 3 if flip else 2), dtype=torch.int16)
    for v in range(1, views):
        shifts[v] = jitter_views(n, pixels, flip, torch.Generator().manual_seed(VIEW_SEED + v))
    return shifts


def grid_offsets(pixels: int, flip: bool = False) -> torch.Tensor:
    """(views, 2 or 3): every integer shift of [-pixels, pixels]^2, the identity first, each also mirrored with
    ``flip``; one row per view, the same for every sample (``view_shifts`` with ``grid``, not repeated n times)."""
    offsets = [(0, 0)] + [(dy, dx) for dy in range(-pixels, pixels + 1) for dx in range(-pixels, pixels + 1) if (dy, dx) != (0, 0)]
    if flip:
        offsets = [(*o, 0) for o in offsets] + [(*o, 1) for o in offsets]
    return torch.tensor(offsets, dtype=torch.long)


def _view_name(shift: torch.Tensor, pixels: int, v: int, grid: bool, flip: bool) -> str:
    """A view's cache name; the names of views without mirroring are those of caches made before ``flip``."""
    if not v:
        return "0"
    if grid:
        return f"shift:{int(shift[0])},{int(shift[1])}" + (",flip" if flip and int(shift[2]) else "")
    return f"{pixels}:{VIEW_SEED + v}" + (":flip" if flip else "")


def teacher_view_logits(teacher: Teacher, data: Dataset, views: int, pixels: int, cache: LogitCache,
                        *, refresh: bool = False, dist=None, grid: bool = False, flip: bool = False,
                        rows: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Teacher logits (views, n, classes) on ``views`` jittered (and with ``flip`` mirrored) copies of the
    train split's ``rows`` (default all, n of them), and their shifts: (views, 2|3) with ``grid`` (one offset
    per view, ``grid_offsets``), else (views, n, 2|3) (``view_shifts``).

    The table is written view by view into a file-backed memory map (``view_table``): one view's logits are in
    memory at a time, never the whole table twice, and the OS pages it like a memory-mapped data set. The
    teacher runs on ``rows`` only; a subset is cached under a key of its own (the whole split keeps the key it
    has always had, so caches are shared across transfer limits of the whole set)."""
    n_all = len(data.y_train)
    subset = rows is not None and not (len(rows) == n_all and torch.equal(rows.cpu(), torch.arange(n_all)))
    rows = rows.cpu() if subset else torch.arange(n_all)
    shifts = grid_offsets(pixels, flip) if grid else view_shifts(n_all, views, pixels, flip=flip)
    shifts = shifts[:, rows] if subset and not grid else shifts   # (every row: the table itself, not a copy)
    x = take_rows(data.x_train, rows.to(data.device)) if subset else data.x_train
    where = ("rows:" + hashlib.sha256(rows.numpy().astype(np.int64).tobytes()).hexdigest(),) if subset else ()

    table, whole = None, torch.arange(len(x))
    for v in range(len(shifts)):
        key = cache_key("view-logits", teacher.fingerprint, data.fingerprint("train"),
                        _view_name(shifts[v] if grid else shifts[v, 0], pixels, v, grid, flip), *where)
        logits = cache.get_or_compute(key, lambda v=v: sharded_logits(teacher.logits, x, dist, row_shifts(shifts, v, whole),
                                                                      pixels),
                                      refresh=refresh, dist=dist,
                                      check=lambda r, v=v: teacher.logits(apply_shifts(x[r], row_shifts(shifts, v, r), pixels)).cpu())
        if table is None:
            table = view_table((len(shifts), *logits.shape), cache)
        table[v] = logits.cpu()
        del logits   # one view at a time
    return place_table(table, data.device), shifts.to(data.device)


def row_shifts(shifts: torch.Tensor, view, rows: torch.Tensor) -> torch.Tensor:
    """The (len(rows), 2|3) shifts of ``view`` (one view, or one per row) for ``rows``, from either form of
    ``teacher_view_logits``'s shifts: grid offsets (views, 2|3), the same for every row, or (views, n, 2|3)."""
    if shifts.dim() == 2:
        picked = shifts[view]
        return picked.expand(len(rows), shifts.shape[1]) if picked.dim() == 1 else picked
    return shifts[view, rows]


def view_table(shape: tuple, cache: LogitCache | None = None) -> torch.Tensor:
    """A float32 tensor of ``shape`` backed by an unnamed temporary file (beside the logit cache, else in the
    system's temporary folder): pages the OS can drop, as a larger-than-memory split's are. Memory when no
    such file can be made."""
    import tempfile

    folder = cache.dir if cache is not None and cache.enabled else None
    try:
        if folder is not None:
            folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder) as handle:   # unlinked at once; the mapping keeps its pages
            array = np.memmap(handle, dtype=np.float32, mode="w+", shape=shape)
        return torch.from_numpy(array)
    except OSError:
        return torch.empty(shape, dtype=torch.float32)


# --- the transfer set ------------------------------------------------------------------------------

def transfer_indices(data: Dataset, limit, omit_classes, seed: int) -> np.ndarray:
    """Indices into the train split: omitted classes removed, then a stratified subset of ``limit``."""
    y = data.y_train.cpu().numpy()
    for c in omit_classes:
        if not 0 <= c < data.num_classes:
            raise ConfigError(f"The 'omit_classes' parameter must hold classes in [0, {data.num_classes - 1}]. Got {c} instead.")
    keep = np.flatnonzero(~np.isin(y, list(omit_classes)))
    n = parse_limit("transfer_limit", limit, len(keep))
    kept_classes = len(np.unique(y[keep]))
    if n is not None and n < kept_classes:   # the stratified subset keeps one of each class whatever n says
        raise ConfigError(f"The 'transfer_limit' parameter must leave at least one sample of each of the {kept_classes} "
                          f"classes in the transfer set. Got {limit!r} ({n} samples) instead; raise --transfer-limit.")
    if n is not None and n < len(keep):
        keep = keep[stratified_subset_indices(y[keep], n, seed)]
    if len(keep) == 0:
        raise TrainingError(f"The transfer set is empty (train split of {len(y)}, omitted classes {list(omit_classes)}, "
                            f"limit {limit!r}); omit fewer classes or raise --transfer-limit.")
    return keep


def distill_batches(x, y, logits, views_shifts, pixels, teacher_online: Teacher | None, mixup: float = 0.0,
                    flip: bool = False):
    """``make_batch`` yielding (input, labels, teacher logits) for one epoch's indices: the teacher online
    on each (jittered, with ``flip`` half mirrored) batch, its cached logits, or its cached logits on ``views``
    fixed jittered copies (``logits`` (views, n, C) with ``views_shifts`` (views, n, 2 or 3), ``view_shifts``, or
    (views, 2 or 3), ``grid_offsets``),
    one view drawn per sample and step.
    With ``mixup`` (online teacher only) each batch is blended with a permutation of itself and the
    teacher judges the blend: "function matching" (Beyer et al., CVPR 2022); the hard term blends the
    two labels (``edgekd.training.mixup_loss``)."""
    def make_batch(indices, generator, _epoch):
        xb, yb = x[indices], y[indices]
        if teacher_online is not None:
            xb, yb, *blend = augment_batch(xb, yb, generator, pixels, mixup, flip)
            return xb, yb, teacher_online.logits(xb), *blend
        at = indices.to(logits.device)   # (a table too large for the GPU stays on the host: gathered there)
        if views_shifts is None:
            return xb, yb, logits[at]
        view = torch.randint(0, logits.shape[0], (len(indices),), generator=generator)
        xb = apply_shifts(xb, row_shifts(views_shifts, view.to(indices.device), indices), pixels)
        return xb, yb, logits[view.to(logits.device), at]
    return make_batch


def distill_loss_fn(temperature, alpha, method: str = "kd", dkd_beta: float = DistillConfig.dkd_beta,
                    correct: bool = False):
    """``loss_fn(outputs, batch)`` for ``fit``: ``edgekd.losses.distillation_loss`` on (input, labels, teacher logits)."""
    def loss_fn(outputs, batch):
        return distillation_loss(outputs, batch[2], batch[1], temperature=temperature, alpha=alpha, method=method,
                                 dkd_beta=dkd_beta, correct=correct)
    return loss_fn


def _config_loss_fn(config: DistillConfig, temperature, alpha, method: str | None = None):
    """``distill_loss_fn`` with the soft term's settings of ``config`` (method unless another is given,
    dkd_beta, correct_teacher)."""
    return distill_loss_fn(temperature, alpha, method or config.method, config.dkd_beta, config.correct_teacher)


# --- the honest comparison ----------------------------------------------------------------------------

def gap_closed(student: float, baseline: float | None, teacher: float) -> float | None:
    """Share of the baseline -> teacher gap the distilled student closes, ``(s - b) / (t - b)``
    (the paper's measure: 91% on MNIST). ``None`` without a baseline, or when the teacher is not above
    the baseline (there is no gap to close: a share would read as a success whatever happened). A
    negative share means distillation lost to its baseline."""
    if baseline is None or teacher <= baseline:
        return None
    return (student - baseline) / (teacher - baseline)


def describe_gain(student: float, baseline: float | None, teacher: float) -> str:
    """One sentence for people: a gain as a share of the gap, a loss as a loss, no share without a gap."""
    if baseline is None:
        return "no hard-label baseline was trained (pass --baseline to measure the gain)"
    points = 100 * (student - baseline)
    if teacher <= baseline:
        # in benchmarks/results/defaults_*_10k_k1*.md no soft term, T or teacher correction paid with such a teacher
        hint = "; a teacher above the student's own baseline (more epochs or members) is what pays" if points < 0 else ""
        return (f"the teacher ({100 * teacher:.2f}%) is not above the hard-label baseline ({100 * baseline:.2f}%): "
                f"no gap to close; distillation {'gains' if points >= 0 else 'loses'} {abs(points):.2f} points{hint}")
    if student < baseline:
        return f"distillation loses to its hard-label baseline by {-points:.2f} points"
    if student > teacher:
        # a share above 100% reads as more than the gap was there to close; say what happened instead
        return (f"distillation gains {points:.2f} points, closing all of the baseline->teacher gap: the student is "
                f"{100 * (student - teacher):.2f} points above its teacher ({100 * teacher:.2f}%)")
    return f"distillation gains {points:.2f} points, closing {100 * gap_closed(student, baseline, teacher):.1f}% of the baseline->teacher gap"


BASELINE_JITTER = 2   # the augmentation the baseline also tries on images when the student trains without


def baseline_recipes(pixels: int, input_shape) -> list[int]:
    """The jitters the hard-label baseline is trained with: the student's and none, and on images a
    ±``BASELINE_JITTER`` px one even when the student has no jitter (a quarter of the smaller side at
    most), so the baseline's own best recipe never depends on the student's."""
    shape = tuple(input_shape)
    augment = pixels or (min(BASELINE_JITTER, min(shape[1:]) // 4) if len(shape) == 3 else 0)
    return sorted({augment, 0}, reverse=True)


def baseline_trials(config: DistillConfig, input_shape) -> list[dict]:
    """The hard-label baseline's recipes, ``{"jitter", "mixup", "flip"}`` each: the fixed ``baseline_jitter``
    (with ``baseline_mixup`` and ``baseline_flip``) alone, else ``baseline_recipes`` without mixup or mirroring
    and, when the student is trained with mixup or ``flip``, the student's own augmentation first (hard labels
    blended alike): the baseline may use every augmentation the student gets."""
    if config.baseline_jitter is not None:
        return [{"jitter": config.baseline_jitter, "mixup": config.baseline_mixup or 0.0, "flip": config.baseline_flip}]
    images = len(tuple(input_shape)) == 3
    pixels = config.train.jitter if images else 0
    trials = [{"jitter": j, "mixup": 0.0, "flip": False} for j in baseline_recipes(pixels, input_shape)]
    mixup, flip = config.train.mixup, config.train.flip and images
    return ([{"jitter": pixels, "mixup": mixup, "flip": flip}] if mixup or flip else []) + trials


def _strongest_baseline(new_student, x, y, recipes: list[dict], val, train_cfg: TrainConfig, store, progress, dist, data):
    """The hard-label student with the same budget and its own best recipe: each ``{"jitter", "mixup", "flip"}``
    of ``recipes`` (augmentation on and off, ``baseline_trials``) trained in full, the better on val kept
    (never test)."""
    tried = []
    for recipe in recipes:
        jitter, mixup, flip = recipe["jitter"], recipe["mixup"], recipe["flip"]
        model = new_student(train_cfg.seed)
        name = ("baseline" if len(recipes) == 1 else
                f"baseline-jitter{jitter}" + (f"-mixup{mixup:g}" if mixup else "") + ("-flip" if flip else ""))
        fitted = fit(model, n_train=len(y), make_batch=supervised_batches(x, y, jitter, mixup, flip), loss_fn=cross_entropy_loss,
                     val=val, config=train_cfg, store=store, name=name, progress=progress, dist=dist,
                     data_device=data.device)
        tried.append((model, fitted, _record(recipe, model, fitted, data)))
    return _keep_best(tried)


def _record(recipe: dict, model, fitted, data: Dataset) -> dict:
    """One try of a recipe search: the recipe, its val figures (what ``_keep_best`` chooses by) and its
    test accuracy, recorded after training and never read by the choice. It lets a study measure how
    often val keeps what test would have, and what another selection rule would give, without training
    the tries that were not kept again."""
    test_accuracy = accuracy_and_nll(predict_logits(model, data.x_test), data.y_test)[0]
    return {**recipe, "val_accuracy": fitted.val_accuracy, "val_nll": fitted.val_nll, "test_accuracy": test_accuracy}


def _keep_best(tried: list) -> tuple:
    """Of (model, fit, record) tries, the best on val (accuracy, then NLL; never test): its model and fit,
    every record marked ``chosen`` or not, and the seconds spent on the tries not kept, which live apart
    from the (deterministic) records."""
    best = max(range(len(tried)), key=lambda i: (tried[i][1].val_accuracy, -tried[i][1].val_nll))
    search = [{**record, "chosen": i == best} for i, (_, _, record) in enumerate(tried)]
    seconds = sum(f.seconds_per_epoch * f.epochs_run for i, (_, f, _) in enumerate(tried) if i != best)
    return tried[best][0], tried[best][1], search, seconds


def student_recipes(config: DistillConfig, input_shape) -> list[dict]:
    """The recipes the distilled student is trained with, each in full, the best on val kept. With
    ``recipe_search`` on and the student given no jitter or mixup, beside the configured one:

    - on images, ±``BASELINE_JITTER`` px on consistent views (the teacher's logits cached on every
      shift, Beyer et al. 2022): the augmentation the baseline also tries, so the strongest baseline
      never meets a student held to a recipe that is not its best;
    - each soft term of ``search_methods`` on the plain transfer set, at the same T and alpha: how sharp
      the targets should be depends on the teacher. Plain KD's (mean top probability 0.8 at T=2 for a
      10-class cnn ensemble) pay when the teacher is above the student's own baseline, logit
      standardization's (0.24) when it is below (``benchmarks/results/defaults_pick_10k_*.md``).

    The configured recipe comes last (``_search`` runs on it)."""
    shape = tuple(input_shape)
    pixels = config.train.jitter if len(shape) == 3 else 0
    flip = config.train.flip and len(shape) == 3
    own = {"method": config.method, "jitter": pixels, "views": config.views, "view_grid": config.view_grid,
           "mixup": config.train.mixup, "flip": flip}
    if pixels or config.train.mixup or flip or not config.recipe_search:   # an augmentation given: the user's recipe stands
        return [own]
    augment = min(BASELINE_JITTER, min(shape[1:]) // 4) if len(shape) == 3 else 0
    shifted = [{"method": config.method, "jitter": augment, "views": 0, "view_grid": True, "mixup": 0.0,
                "flip": False}] if augment else []
    # at alpha 0 there is no soft term: every method trains the same student, so none is tried beside the own
    others = [{**own, "method": m} for m in dict.fromkeys(config.search_methods) if m != config.method and config.alpha != 0]
    return [*shifted, *others, own]


def _recipe_batches(recipe: dict, teacher: Teacher, data: Dataset, x, y, idx, cache: LogitCache, refresh: bool, dist,
                    soft: bool = True):
    """``make_batch`` for one recipe: the teacher online on each jittered, mirrored or blended batch (jitter or
    flip without views, or mixup), its logits cached on jittered (mirrored) views, or cached on the plain transfer set.
    Without a ``soft`` term (alpha 0) the teacher is not run: the batches are the hard-label ones."""
    pixels, flip = recipe["jitter"], recipe["flip"]
    if not soft:
        return supervised_batches(x, y, pixels, recipe["mixup"], flip)
    if recipe["mixup"] or ((pixels or flip) and recipe["views"] == 0 and not recipe["view_grid"]):
        return distill_batches(x, y, None, None, pixels, teacher, recipe["mixup"], flip)
    if pixels or flip:
        logits, shifts = teacher_view_logits(teacher, data, recipe["views"], pixels, cache, refresh=refresh, dist=dist,
                                             grid=recipe["view_grid"], flip=flip, rows=idx)
        return distill_batches(x, y, logits, shifts, pixels, None)
    logits = teacher_logits(teacher, data, "train", cache, refresh=refresh, dist=dist)
    # every train row in order (no subset): the table itself, not a copy of it per recipe
    logits = take_rows(logits, idx.to(logits.device))
    return distill_batches(x, y, logits, None, 0, None)


def _best_student(new_student, recipes, batches, loss_for, n_train, val, train_cfg: TrainConfig, store, progress, dist, data):
    """The distilled student trained in full with each recipe (``loss_for(recipe["method"])`` its loss),
    the best on val kept (never test); the seconds spent on the recipes not kept are returned apart,
    like the baseline's. The configured method (the last recipe's, ``student_recipes``) keeps its runs'
    names in the run store."""
    method, tried = recipes[-1]["method"], []
    # one recipe records no search (its figures are the student's own): no test pass for a record dropped
    searching = len(recipes) > 1
    for recipe, make_batch in zip(recipes, batches):
        model = new_student(train_cfg.seed)
        other = "" if recipe["method"] == method else f"-{recipe['method']}"
        name = f"student{other}-jitter{recipe['jitter']}" if searching else "student"
        fitted = fit(model, n_train=n_train, make_batch=make_batch, loss_fn=loss_for(recipe["method"]), val=val,
                     config=train_cfg, store=store, name=name, progress=progress, dist=dist, data_device=data.device)
        tried.append((model, fitted, _record(recipe, model, fitted, data) if searching else {}))
    model, fitted, search, seconds = _keep_best(tried)
    return model, fitted, search if searching else [], seconds


def twin_logits(teacher_logits: torch.Tensor, twin: torch.Tensor, *, out: torch.Tensor | None = None) -> torch.Tensor:
    """The teacher with the student's hard-label twin as an equal member, as the paper's ensembles are
    combined (Hinton et al. 2015, section 3: the mean of the members' probabilities),
    ``log((softmax(z_teacher) + softmax(z_twin)) / 2)``: distilling from it is a born-again step
    (Furlanello et al., ICML 2018, "Born-Again Neural Networks"), the twin's knowledge of the student's
    own task added to a teacher that alone is no better than the twin.

    Computed a bounded chunk of rows at a time into ``out`` (default: a new table; it may be ``teacher_logits``
    itself): whole-table log-softmaxes were five temporaries the size of a split's logits."""
    out = torch.empty(teacher_logits.shape, dtype=torch.float32, device=teacher_logits.device) if out is None else out
    rows = inference_rows(teacher_logits, 1 << 20)
    for start in range(0, len(out), rows):
        r = slice(start, start + rows)
        log_probs = torch.log_softmax(teacher_logits[r].float(), -1), torch.log_softmax(twin[r].float(), -1)
        out[r] = torch.logaddexp(*log_probs) - math.log(2)
    return out


def _teacher_not_above(teacher: Teacher, data: Dataset, base_fit, cache: LogitCache, refresh: bool, dist) -> bool:
    """Whether the teacher's val accuracy is no higher than the hard-label baseline's (val, never test)."""
    teacher_val = accuracy_and_nll(teacher_logits(teacher, data, "val", cache, refresh=refresh, dist=dist), data.y_val)[0]
    return teacher_val <= base_fit.val_accuracy


def twin_batches(recipe: dict, teacher: Teacher, baseline, data: Dataset, x, y, idx, cache: LogitCache, refresh: bool, dist):
    """``make_batch`` for ``recipe`` (cached logits: the plain transfer set or consistent views) with the
    hard-label twin ``baseline`` in the teacher (``twin_logits``), the twin judging the same shifted image."""
    pixels, flip = recipe["jitter"], recipe["flip"]

    def logits_of(xb):
        return predict_logits(baseline, xb)

    if not (pixels or flip):
        logits = teacher_logits(teacher, data, "train", cache, refresh=refresh, dist=dist)[idx]
        logits = twin_logits(logits, sharded_logits(logits_of, x, dist).to(logits.device), out=logits)   # [idx]: a copy
        return distill_batches(x, y, logits, None, 0, None)
    views, shifts = teacher_view_logits(teacher, data, recipe["views"], pixels, cache, refresh=refresh, dist=dist,
                                        grid=recipe["view_grid"], flip=flip, rows=idx)
    rows = torch.arange(len(x))
    for v in range(len(views)):   # in place, a view at a time: the twin judges the same shifted images
        twin = sharded_logits(logits_of, x, dist, row_shifts(shifts, v, rows), pixels)
        twin_logits(views[v], twin.to(views.device), out=views[v])
    return distill_batches(x, y, views, shifts, pixels, None)


def _twin_taught(new_student, make_batch, n_train: int, loss_fn, val, train_cfg: TrainConfig, store, progress, dist, data):
    """The student distilled with ``make_batch`` (``twin_batches``): a recipe of its own, kept only if best on val."""
    model = new_student(train_cfg.seed)
    fitted = fit(model, n_train=n_train, make_batch=make_batch, loss_fn=loss_fn, val=val, config=train_cfg, store=store,
                 name="student-twin", progress=progress, dist=dist, data_device=data.device)
    return model, fitted


def tries_twin(config: DistillConfig, input_shape) -> bool:
    """Whether the student's recipe search also tries the hard-label twin in the teacher (``twin_batches``):
    with ``twin_teacher``, ``recipe_search`` and ``baseline`` on, and the student given no augmentation (a
    recipe the user fixed stands: ``student_recipes``). It is trained only when the teacher is no better than
    the twin on val, with the recipe the search kept."""
    images = len(tuple(input_shape)) == 3
    augmented = (config.train.jitter or config.train.flip) and images or config.train.mixup
    # at alpha 0 no teacher, twinned or not, is asked: the twin-taught student would be the baseline again
    return config.twin_teacher and config.recipe_search and config.baseline and not augmented and config.alpha != 0


def _with_twin_taught(kept: tuple, recipe: dict, twin: tuple, data: Dataset) -> tuple:
    """``_best_student``'s ``kept`` (model, fit, records, seconds not kept) against the ``twin``-taught
    (model, fit) with ``recipe``, the better on val kept by ``_keep_best`` (the search's own wins a tie); a
    one-recipe search recorded nothing, so its record is rebuilt from ``recipe``."""
    model, fitted, search, seconds = kept
    records = list(search) or [{**_record(recipe, model, fitted, data), "chosen": True}]
    own = next(r for r in records if r["chosen"])
    twin_record = _record({**recipe, "twin": True}, *twin, data)
    best, best_fit, pair, not_kept = _keep_best([(model, fitted, own), (*twin, twin_record)])
    twin_wins = pair[1]["chosen"]
    return best, best_fit, [*({**r, "chosen": r["chosen"] and not twin_wins} for r in records), pair[1]], seconds + not_kept


NON_TARGET_METHODS = ("dkd", "nckd")   # their non-target term needs two non-target classes


def _check_methods(config: DistillConfig, data: Dataset) -> None:
    """With 2 classes there is one non-target class: NCKD is 0 for every input (``nckd`` at alpha 1 trained
    nothing) and DKD is its target term alone; refused. Logit standardization's 2 z-scored logits are always
    +-1/sqrt(2), so its targets keep only the teacher's top class, not its confidence: said in a warning."""
    if config.alpha == 0 or data.num_classes > 2:
        return
    for name, methods in (("method", (config.method,)), ("search_methods", config.search_methods if config.recipe_search else ())):
        bad = [m for m in methods if m in NON_TARGET_METHODS]
        if bad:
            raise ConfigError(f"The {name!r} parameter {bad[0]!r} needs at least 3 classes (its non-target term compares the "
                              f"classes other than the label); dataset '{data.spec}' has 2. Got {bad[0]!r} instead; "
                              f"use --method kd.")
    if config.method == "kd-ls":
        import warnings

        from edgekd.errors import EdgekdWarning

        warnings.warn(f"Dataset '{data.spec}' has 2 classes: logit standardization ('kd-ls') z-scores the teacher's two "
                      f"logits to +-0.71, so its soft targets say which class the teacher ranks first but not how sure it "
                      f"is; --method kd keeps that.", EdgekdWarning, stacklevel=3)


def _check_augmentation(config: DistillConfig, input_shape) -> None:
    """Mirroring and jitter need images, and a jitter must leave part of them; so must a fixed baseline jitter
    (``_check_baseline_jitter``). (The library checks what the command line does: a jitter as large as the
    image trained on blank inputs.)"""
    check_jitter(config.train.jitter, input_shape)
    check_flip(config.train.flip, input_shape)
    check_flip(config.baseline_flip, input_shape, name="baseline_flip")
    _check_baseline_jitter(config, input_shape)


def _check_baseline_jitter(config: DistillConfig, input_shape) -> None:
    """A fixed baseline jitter shifts images only, and must leave part of them."""
    if config.baseline_jitter is None or config.baseline_jitter == 0:
        return
    if len(tuple(input_shape)) != 3:
        raise ConfigError(f"The 'baseline_jitter' parameter shifts images, but the inputs have shape {tuple(input_shape)}. "
                          f"Got {config.baseline_jitter} instead; pass --baseline-jitter 0 or leave it out.")
    check_jitter(config.baseline_jitter, input_shape, name="baseline_jitter")


# --- the bias correction for omitted classes -------------------------------------------------------

def fit_omitted_bias(val_logits: torch.Tensor, y_val: torch.Tensor, omitted) -> float:
    """The bias b added to the omitted classes' logits that minimises val NLL (paper section 3:
    the student never saw them, so their logits are too low; the paper raised class 3's bias by 3.5)."""
    from scipy.optimize import minimize_scalar

    val_logits, y_val = val_logits.detach().cpu(), y_val.cpu()   # a 1-D search on the host, from any device
    mask = torch.zeros(val_logits.shape[1])
    mask[list(omitted)] = 1.0

    def nll(b):
        return float(torch.nn.functional.cross_entropy(val_logits + b * mask, y_val))

    return float(minimize_scalar(nll, bounds=(-10.0, 40.0), method="bounded", options={"xatol": 1e-3}).x)


OMITTED_NEEDS = "correcting omitted classes (--omit-classes) raises their output biases"


def add_output_bias(model: torch.nn.Module, classes, bias: float, num_classes: int) -> None:
    """Add ``bias`` to the given classes' entries of the output layer's bias (``output_layer``)."""
    _, last = output_layer(model, num_classes, OMITTED_NEEDS)
    with torch.no_grad():
        last.bias[list(classes)] += bias


# --- the stage ---------------------------------------------------------------------------------------

def distill(teacher: Teacher | str | Path, data: Dataset | str, config: DistillConfig, out: str | Path, *,
            cache: LogitCache | None = None, overwrite: bool = False, resume: bool = False,
            refresh_cache: bool = False, progress: bool = False, dist=None, config_record: dict | None = None) -> DistillResult:
    """Train ``config.student`` on ``teacher``'s soft targets (a ``Teacher`` or a path ``load_teacher`` takes)
    on ``data`` (a ``Dataset`` or its spec); optionally a hard-label baseline too."""
    teacher, data, out = as_teacher(teacher), as_dataset(data), Path(out)
    # before any work: the library checks what the CLI checks (a notebook's --out could be the teacher)
    check_output_dir(out, overwrite=overwrite, resume=resume, inputs=teacher_files(teacher), data=data_paths(data.spec))
    cache = cache or LogitCache()
    train_cfg = config.train
    check_teacher_fits(teacher, data)
    _check_augmentation(config, data.input_shape)
    _check_methods(config, data)
    arch, options = parse_arch(config.student)
    probe = create_model(arch, data.input_shape, data.num_classes, options=options, for_training=True)  # a bad student fails before anything is written
    if config.omit_classes:
        output_layer(probe, data.num_classes, OMITTED_NEEDS)   # its bias is edited after training: refused before it
    device = dist.device if dist is not None else resolve_device(train_cfg.device)
    data, teacher = place_dataset(data, device), teacher.to(device)
    idx = torch.from_numpy(transfer_indices(data, config.transfer_limit, config.omit_classes, train_cfg.seed)).to(data.device)
    x, y = take_rows(data.x_train, idx), data.y_train[idx]   # no copy of the inputs: batches gather them
    recipes = student_recipes(config, data.input_shape)
    # a --resume of other settings is refused before the teacher's targets are computed, not after
    store = RunStore(out.with_name(out.name + ".partial"), resume=resume, rank=dist.rank if dist else 0,
                     fingerprint=run_fingerprint(config_record or config, data, teacher.fingerprint), overwrite=overwrite)
    targets_started = time.perf_counter()   # the one-time cost of the teacher's targets (near 0 from the cache)
    try:
        batches = [_recipe_batches(recipe, teacher, data, x, y, idx, cache, refresh_cache, dist, soft=config.alpha != 0)
                   for recipe in recipes]
    except BaseException:   # a teacher that fails on the data leaves no run to resume
        store.discard_if_unused()
        raise
    targets_seconds = time.perf_counter() - targets_started
    val = (data.x_val, data.y_val)

    def new_student(seed):
        torch.manual_seed(seed)
        model = create_model(arch, data.input_shape, data.num_classes, mean=data.mean, std=data.std, options=options).to(device)
        if dist is not None:
            dist.broadcast_parameters(model)
        return model

    search = _search(config, new_student, batches[-1], len(idx), val, store, progress, dist)   # on the configured recipe
    temperature, alpha = search["temperature"], search["alpha"]

    def loss_for(method):
        # alpha 0: the hard-label batches carry no teacher logits, and the loss is the cross-entropy alone
        return _config_loss_fn(config, temperature, alpha, method) if alpha != 0 else cross_entropy_loss

    student, fitted, student_search, student_search_seconds = _best_student(
        new_student, recipes, batches, loss_for, len(idx), val, train_cfg, store, progress, dist, data)
    method = next((r["method"] for r in student_search if r["chosen"]), config.method)
    baseline = base_fit = None
    baseline_search, baseline_search_seconds = [], 0.0
    if config.baseline:
        baseline, base_fit, baseline_search, baseline_search_seconds = _strongest_baseline(
            new_student, x, y, baseline_trials(config, data.input_shape), val, train_cfg, store, progress, dist, data)
        if tries_twin(config, data.input_shape) and _teacher_not_above(teacher, data, base_fit, cache, refresh_cache, dist):
            kept = {k: v for k, v in next((r for r in student_search if r["chosen"]), recipes[-1]).items()
                    if k in recipes[-1]}   # the recipe the search kept, without its val figures
            student, fitted, student_search, student_search_seconds = _with_twin_taught(
                (student, fitted, student_search, student_search_seconds), kept,
                _twin_taught(new_student, twin_batches(kept, teacher, baseline, data, x, y, idx, cache, refresh_cache, dist),
                             len(idx), loss_for(kept["method"]), val, train_cfg, store, progress, dist, data), data)
            method = next(r["method"] for r in student_search if r["chosen"])
    omitted = {}
    if config.omit_classes:
        omitted = _correct_omitted(student, data, config.omit_classes)
        if baseline is not None:
            omitted["baseline"] = _correct_omitted(baseline, data, config.omit_classes)

    test_t = teacher_logits(teacher, data, "test", cache, refresh=refresh_cache, dist=dist)
    teacher_acc, teacher_nll = accuracy_and_nll(test_t, data.y_test)
    student_acc, student_nll = accuracy_and_nll(predict_logits(student, data.x_test), data.y_test)
    base_acc = accuracy_and_nll(predict_logits(baseline, data.x_test), data.y_test)[0] if baseline is not None else None
    gap = gap_closed(student_acc, base_acc, teacher_acc)
    teacher_macs = _teacher_macs(teacher)
    macs, params = count_macs(student, data.input_shape), count_parameters(student)
    metrics = {"test_accuracy": student_acc, "test_nll": student_nll, "val_accuracy": fitted.val_accuracy,
               "val_nll": fitted.val_nll, "teacher_test_accuracy": teacher_acc, "teacher_test_nll": teacher_nll,
               "baseline_test_accuracy": base_acc, "gap_closed": gap, "baseline_search": baseline_search,
               "student_search": student_search,
               "macs": macs, "parameters": params,
               "teacher_macs": teacher_macs, "history": fitted.history, "omitted": omitted}
    timings = {"seconds_per_epoch": fitted.seconds_per_epoch,
               "baseline_seconds_per_epoch": base_fit.seconds_per_epoch if base_fit else None,
               "baseline_search_seconds": baseline_search_seconds, "search_seconds": search["seconds"],
               "student_search_seconds": student_search_seconds,
               "teacher_targets_seconds": targets_seconds}
    result = DistillResult(
        path=out, temperature=temperature, alpha=alpha, method=method, search=tuple(search["candidates"]),
        student_test_accuracy=student_acc, student_test_nll=student_nll, teacher_test_accuracy=teacher_acc,
        baseline_test_accuracy=base_acc, gap_closed=gap, student_macs=macs, student_parameters=params,
        teacher_macs=teacher_macs, seconds_per_epoch=fitted.seconds_per_epoch,
        baseline_seconds_per_epoch=base_fit.seconds_per_epoch if base_fit else None, baseline_search=tuple(baseline_search),
        student_search=tuple(student_search), student_search_seconds=student_search_seconds,
        baseline_search_seconds=baseline_search_seconds, transfer_size=len(idx),
        cache_hits=cache.hits, cache_misses=cache.misses, omitted=omitted)
    if dist is None or dist.rank == 0:
        record = config_record or {"distill": asdict(config)}
        common = dict(kind="model", classes=data.classes, input_shape=data.input_shape,
                      normalization={"mean": list(data.mean), "std": list(data.std)}, data=data.describe(),
                      seed=train_cfg.seed, teacher={"description": teacher.description, "fingerprint": teacher.fingerprint},
                      members=(Member(arch=arch, options=options, weights="member-0.safetensors", num_outputs=data.num_classes,
                                       seed=train_cfg.seed),))
        nested = {}
        if baseline is not None:
            nested["baseline"] = (Manifest(**common, config={**record, "role": "hard-label baseline"},
                                           metrics={"test_accuracy": base_acc, "macs": macs, "parameters": params,
                                                    "history": base_fit.history}),
                                  {"member-0.safetensors": baseline.state_dict()})
        manifest = Manifest(**common, config={**record, "temperature": temperature, "alpha": alpha, "method": method,
                                              "student": format_arch(arch, options)},
                            metrics=metrics, timings=timings, search=tuple(search["candidates"]))
        save_artifact(out, manifest, {"member-0.safetensors": student.state_dict()}, nested=nested, overwrite=overwrite or resume)
        store.finish()
    return result


def _search(config: DistillConfig, new_student, make_batch, n_train, val, store, progress, dist) -> dict:
    """Pick (T, alpha) on val with a short budget when either is "auto"; results survive --resume."""
    temps = config.temperature_grid if config.temperature is None else (config.temperature,)
    alphas = config.alpha_grid if config.alpha is None else (config.alpha,)
    if len(temps) == 1 and len(alphas) == 1:
        return {"temperature": temps[0], "alpha": alphas[0], "candidates": [], "seconds": 0.0}
    budget = config.auto_epochs or max(1, config.train.epochs // 4)
    short = TrainConfig(**{**asdict(config.train), "epochs": budget, "patience": 0})
    candidates, seconds = [], 0.0
    for temperature in temps:
        for alpha in alphas:
            name = f"search-T{temperature:g}-a{alpha:g}"
            fitted = fit(new_student(short.seed), n_train=n_train, make_batch=make_batch,
                         loss_fn=_config_loss_fn(config, temperature, alpha), val=val,
                         config=short, store=store,
                         name=name, progress=progress, dist=dist, data_device=val[0].device)
            candidates.append({"temperature": temperature, "alpha": alpha, "epochs": budget,
                               "val_accuracy": fitted.val_accuracy, "val_nll": fitted.val_nll})
            seconds += fitted.seconds_per_epoch * fitted.epochs_run
    best = max(candidates, key=lambda c: (c["val_accuracy"], -c["val_nll"]))
    return {"temperature": best["temperature"], "alpha": best["alpha"], "candidates": candidates, "seconds": seconds}


def _correct_omitted(model, data: Dataset, omitted) -> dict:
    """Fit the omitted classes' bias on val, apply it to ``model``, report test errors before/after."""
    mask = torch.isin(data.y_test, torch.tensor(list(omitted), device=data.y_test.device))

    def errors():
        wrong = predict_logits(model, data.x_test).argmax(1) != data.y_test
        return int(wrong.sum()), int(wrong[mask].sum())

    before, before_omitted = errors()
    bias = fit_omitted_bias(predict_logits(model, data.x_val).cpu(), data.y_val.cpu(), omitted)
    add_output_bias(model, omitted, bias, data.num_classes)
    after, after_omitted = errors()
    n = len(data.y_test)
    return {"classes": list(omitted), "bias": bias, "test_accuracy_before": 1 - before / n, "test_accuracy_after": 1 - after / n,
            "test_errors_before": before, "test_errors_after": after, "omitted_class_errors_before": before_omitted,
            "omitted_class_errors_after": after_omitted, "omitted_class_test_samples": int(mask.sum())}


def _teacher_macs(teacher: Teacher) -> int | None:
    artifact = getattr(teacher, "artifact", None)
    if artifact is not None and artifact.manifest.metrics.get("macs"):
        return int(artifact.manifest.metrics["macs"])
    module = teacher.module()
    if module is not None and teacher.input_shape is not None:
        return count_macs(module, teacher.input_shape)
    return None
