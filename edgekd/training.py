"""The training loop shared by teachers, students and specialists.

AdamW with a one-cycle schedule (linear warm-up, cosine decay), an optional ±``jitter``-pixel random
shift (the paper's input jitter) and left-right mirror (``flip``), model selection and early stopping on the val split, and
checkpoints that make a run resumable after Ctrl-C, SIGTERM or kill -9:

- every epoch ends with a checkpoint in the run store (``<out>.partial/``), written atomically;
- Ctrl-C / SIGTERM finish the current step, write a checkpoint *at that step*, and stop;
- a non-finite loss stops the run and keeps the last good (epoch) checkpoint.

The batch order and the jitter of epoch ``e`` come from a generator seeded with ``(seed, e)`` and
the global RNG state (dropout) is saved in the checkpoint, so a resumed run on the CPU takes the very
same steps as an uninterrupted one.
"""

from __future__ import annotations

import json
import math
import os
import re
import signal
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from edgekd.artifacts import write_json_atomic
from edgekd.errors import ConfigError, EdgekdError, ResumeMismatch, SettingsChanged, TeacherChanged, TrainingError
from edgekd.config import TrainConfig  # noqa: F401  (re-exported: the training loop's settings)
from edgekd.data import as_float, fill_rows, inference_rows
from edgekd.device import autocast, module_device, resolve_device, to_device
from edgekd.records import Record


class Interrupted(EdgekdError):
    """Training was stopped by a signal after writing a checkpoint."""

    exit_code = 130





@dataclass(frozen=True)
class FitResult(Record):
    state: dict = field(repr=False)          # weights of the best epoch on val
    best_epoch: int
    epochs_run: int
    val_accuracy: float
    val_nll: float
    history: list
    seconds_per_epoch: float
    checkpoint_seconds: float = 0.0      # total time spent writing checkpoints


# --- seeding ------------------------------------------------------------------------------------
# Generators live on the CPU whatever the data's device, so the streams (batch order, jitter, view
# choice, mixup partners) depend on the seed alone: not on whether a data set fitted on the GPU, which
# can differ between the ranks of one torchrun job (they would shard different orders) or between a run
# and its resume. A GPU run draws the CPU's numbers; the few a step draws are copied to the data.

def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 100_003 + epoch)


def step_generator(seed: int, epoch: int, step: int) -> torch.Generator:
    return torch.Generator().manual_seed((seed * 100_003 + epoch) * 1_000_033 + step + 1)


def _environment() -> dict:
    """What a run store records of the process that started it (``RunStore._check_environment``)."""
    from edgekd.artifacts import library_versions, numerics

    versions = library_versions()
    return {"torch": versions.get("torch"), "edgekd": versions.get("edgekd"), **numerics()}


def rank_step_seed(seed: int, epoch: int, step: int, rank: int) -> int:
    """The global torch seed of one step on one torchrun rank (dropout masks): the ranks draw apart, and a
    run resumed mid-epoch draws as the uninterrupted one did. One process keeps ``torch.manual_seed(seed)``."""
    return (((seed * 100_003 + epoch) * 1_000_033 + step) * 1_009 + rank + 7_919) % 2**63   # manual_seed's range


def one_cycle_lr(step: int, total: int, max_lr: float, warmup: float = 0.2) -> float:
    """Linear warm-up from max_lr/25 over ``warmup`` of the steps, then cosine decay to ~0."""
    warm = max(1, int(total * warmup))
    if step < warm:
        return max_lr * (0.04 + 0.96 * step / warm)
    progress = (step - warm) / max(1, total - warm)
    return max_lr * (0.5 * (1 + math.cos(math.pi * min(1.0, progress)))) + max_lr * 1e-4


def jitter_shifts(n: int, pixels: int, generator: torch.Generator) -> torch.Tensor:
    """(n, 2) integer shifts (dy, dx) uniform in [-pixels, pixels], on the CPU as the generator is."""
    return torch.randint(-pixels, pixels + 1, (n, 2), generator=generator)


def jitter_views(n: int, pixels: int, flip: bool, generator: torch.Generator) -> torch.Tensor:
    """Each image's random view: (n, 2) shifts (``jitter_shifts``), and with ``flip`` a third column, 1 for
    a left-right mirror with probability 1/2, drawn after the shifts (so a run without flips draws as before)."""
    shifts = jitter_shifts(n, pixels, generator)
    if not flip:
        return shifts
    return torch.cat([shifts, torch.randint(0, 2, (n, 1), generator=generator)], 1)


def apply_shifts(x: torch.Tensor, shifts: torch.Tensor, pixels: int) -> torch.Tensor:
    """Shift each image of (N, C, H, W) ``x`` by its own (dy, dx), filling with zeros (raw background); a
    third column of ``shifts``, when there is one, mirrors the rows where it is 1 left to right (after the shift)."""
    if x.dim() != 4:
        return x
    shifts = shifts.to(x.device)
    if pixels:
        x = _shifted(x, shifts, pixels)
    if shifts.shape[-1] > 2:
        x = torch.where(shifts[:, 2].bool()[:, None, None, None], x.flip(-1), x)
    return x


def _shifted(x: torch.Tensor, shifts: torch.Tensor, pixels: int) -> torch.Tensor:
    n, _, height, width = x.shape
    padded = F.pad(x, (pixels, pixels, pixels, pixels))
    rows = torch.arange(height, device=x.device)[None, :] + pixels - shifts[:, 0:1]
    cols = torch.arange(width, device=x.device)[None, :] + pixels - shifts[:, 1:2]
    batch = torch.arange(n, device=x.device)[:, None, None]
    out = padded.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]]
    return out.permute(0, 3, 1, 2).contiguous()   # with one channel still NHWC-strided: as_float makes it row-major


def mix_inputs(x: torch.Tensor, generator: torch.Generator, alpha: float) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Mixup (Zhang et al., ICLR 2018): ``x' = lam * x + (1 - lam) * x[partner]`` with one
    ``lam ~ Beta(alpha, alpha)`` per batch and ``partner`` a permutation of the batch; returns
    ``(x', partner, lam)``. ``lam`` comes from a NumPy generator seeded with the step generator's seed,
    so it needs no device synchronisation and a resumed run draws the same one."""
    lam = float(np.random.default_rng(generator.initial_seed()).beta(alpha, alpha))
    partner = torch.randperm(len(x), generator=generator).to(x.device)
    x = as_float(x)
    return lam * x + (1.0 - lam) * x[partner], partner, lam


def augment_batch(xb: torch.Tensor, yb: torch.Tensor, generator: torch.Generator, pixels: int, mixup: float,
                  flip: bool = False) -> tuple:
    """A training batch's augmentations, in their one order: the paper's ±``pixels`` jitter and, with
    ``flip``, a left-right mirror of a random half (``jitter_views``), then mixup. Returns ``(input, labels)``,
    or ``(input, labels, partner labels, lam)`` when blended (the tail ``mixup_loss`` reads)."""
    if pixels or flip:
        xb = apply_shifts(xb, jitter_views(len(xb), pixels, flip, generator), pixels)
    if not mixup:
        return xb, yb
    xb, partner, lam = mix_inputs(xb, generator, mixup)
    return xb, yb, yb[partner], lam


def mixup_loss(loss_fn: LossFn) -> LossFn:
    """``loss_fn`` for batches that may be blended by ``mix_inputs``: such a batch ends with the partner
    labels and ``lam`` (the only Python float a batch holds), and its loss is
    ``lam * loss(labels) + (1 - lam) * loss(partner labels)``, labels being the batch's second element."""
    def loss(outputs, batch):
        if not isinstance(batch[-1], float):
            return loss_fn(outputs, batch)
        *rest, partner, lam = batch
        return lam * loss_fn(outputs, tuple(rest)) + (1.0 - lam) * loss_fn(outputs, (rest[0], partner, *rest[2:]))
    return loss


# --- signals ------------------------------------------------------------------------------------

class _StopFlag:
    def __init__(self):
        self.signal_name: str | None = None


@contextmanager
def _stop_on_signals():
    """Turn SIGINT/SIGTERM into a flag checked after each step (main thread only)."""
    flag = _StopFlag()
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield flag
        return

    def handler(signum, _frame):
        flag.signal_name = signal.Signals(signum).name

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield flag
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


# --- the run store: checkpoints and finished runs -------------------------------------------------

_NOT_FINGERPRINTED = {"resume", "overwrite", "quiet", "debug", "trust_code", "out", "as_json", "json", "cache_dir", "no_cache",
                      "refresh_cache", "device", "config_file", "teacher", "data"}


def run_fingerprint(config, data=None, teacher: str | None = None, *, after_training=()) -> dict:
    """What a resumable run is bound to: the resolved config (without the flags that do not change the
    result: output, resume, overwrite, quiet, debug, cache, device; nor ``after_training``, the settings a command
    applies only once its models are trained, such as an ensemble's combine rule), the data and the teacher.

    ``config`` is a command's resolved config record (``{"params": {...}}``) or a config dataclass. A record's
    ``"bind"`` (a pipeline stage's own settings, as resolved) binds the run in place of its params; its ``"unbound"``
    names settings it holds that do not bind this run (another pipeline stage's): left out like ``after_training``,
    here and from the record of a run started before.
    """
    import dataclasses
    import hashlib

    if dataclasses.is_dataclass(config):
        config = dataclasses.asdict(config)
    params = dict(config.get("params", config)) if isinstance(config, dict) else {}
    if isinstance(config, dict) and isinstance(config.get("bind"), dict):
        params = dict(config["bind"])
    if isinstance(config, dict) and isinstance(config.get("unbound"), (list, tuple)):
        after_training = set(after_training) | set(config["unbound"])
    params = _fingerprinted(params, _NOT_FINGERPRINTED | set(after_training))
    if isinstance(params.get("train"), dict):
        params["train"] = _fingerprinted(params["train"], {"device"})
    fingerprint = {"config": json.loads(json.dumps(params, sort_keys=True, default=str))}
    if after_training:   # a run recorded before they were left out still holds them: the resume leaves them out there too
        fingerprint["after_training"] = sorted(after_training)
    if data is not None:
        digest = hashlib.sha256(f"{data.fingerprint('train')}:{data.fingerprint('val')}".encode())
        fingerprint["data"] = digest.hexdigest()
    if teacher:
        fingerprint["teacher"] = teacher
    return fingerprint


# settings added since runs were first fingerprinted: left out at their default, so a run started before still resumes
_ADDED_SINCE = {"flip": False}


def _fingerprinted(params: dict, ignored) -> dict:
    return {k: v for k, v in params.items() if k not in ignored and not (k in _ADDED_SINCE and v == _ADDED_SINCE[k])}


def _comparable(fingerprint: dict) -> dict:
    """A fingerprint with each setting as its value, not as it was typed: ``-T 2.0`` is ``-T 2``,
    ``--alpha .5`` is ``0.5``, and ``mlp:hidden=16,dropout=0.0`` is ``mlp:hidden=16`` (the defaults filled in),
    so that a resume typed another way is not refused. Stores keep the record as typed."""
    config = fingerprint.get("config")
    if not isinstance(config, dict):
        return fingerprint
    return {**fingerprint, "config": {k: _as_value(k, v) for k, v in config.items()}}


def _as_value(key: str, v):
    """A setting as its value (``_comparable``)."""
    from edgekd.errors import EdgekdError
    from edgekd.models import format_arch, parse_arch

    if not isinstance(v, str):
        return v
    try:
        return format_arch(*parse_arch(v)) if key in ("arch", "student", "teacher_arch") else float(v)
    except (EdgekdError, ValueError):
        return v


# what makes a run's teacher another, in a refused resume's words
_TEACHER_INPUTS = "its weights, or --combine, --teacher-output, --teacher-scale, --teacher-mean, --teacher-std"


def fingerprint_changes(old: dict, new: dict) -> list[str]:
    """What differs between two ``run_fingerprint`` results, one phrase per setting as typed, for a refused resume
    (settings compared as their values, ``_comparable``: ``-T 2.0`` is ``-T 2``)."""
    changes = _setting_changes(old.get("config") or {}, new.get("config") or {})
    for key, what in (("data", "the data (or --train-limit / --val-fraction)"), ("teacher", f"the teacher ({_TEACHER_INPUTS})")):
        if old.get(key) != new.get(key):
            changes.append(f"{what} changed")
    return changes


def _setting_changes(old: dict, new: dict, prefix: str = "") -> list[str]:
    """One phrase per differing setting, nested settings by their dotted name ('train.lr' was 0.0005, now 0.001),
    not the whole nested record twice."""
    changes = []
    for key in sorted(set(old) | set(new)):
        was, now = old.get(key), new.get(key)
        if isinstance(was, dict) and isinstance(now, dict):
            changes += _setting_changes(was, now, f"{prefix}{key}.")
        elif _as_value(key, was) != _as_value(key, now):
            changes.append(f"'{prefix}{key}' was {was!r}, now {now!r}")
    return changes


# every name a RunStore writes (run.json, clusters.json, NAME.KIND.json, NAME.KIND.PID-SERIAL-RANDOM.safetensors, and
# the temporary .NAME...tmp / .NAME...edgekd-tmp of an atomic write): anything else in the folder is the user's
_OWN_STORE_FILE = re.compile(r"(run|clusters|.+\.(ckpt|done))\.json|.+\.(ckpt|done)(\.\d+-\d+(-[0-9a-f]{8})?)?\.safetensors|\..+\.(edgekd-)?tmp")


def _own_record(path: Path) -> bool:
    """A store's own ``run.json``/``clusters.json`` by its content too: a user's ``results.partial/run.json`` (a log
    of their own) matches the name but is not edgekd's, and the folder must not be removed for it."""
    expected = {"run.json": "fingerprint", "clusters.json": "clusters"}.get(path.name)
    if expected is None:
        return True
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError, UnicodeDecodeError):
        return False
    return isinstance(data, dict) and expected in data


def _not_removable(folder: Path, entries) -> list[str]:
    """Why ``folder`` may not be removed as a store of edgekd's: a store holds its ``run.json`` (or, from before
    it, a checkpoint), and a checkpoint's JSON holds a checkpoint's fields. A user's folder of files named like a store's
    (``model.ckpt.safetensors``, ``epoch-3.ckpt.json``) is not removed for its names."""
    if not entries:
        return []
    odd, valid = [], 0
    for path in entries:
        if path.name.endswith((".ckpt.json", ".done.json")):
            try:
                meta = json.loads(path.read_text())
            except (OSError, ValueError, UnicodeDecodeError):
                meta = None
            ok = _checkpoint_meta_ok(path.name.rsplit(".", 2)[-2], meta)
            valid += ok
            odd += [] if ok else [path.name]
    if not (folder / "run.json").is_file() and not valid:   # (a store from before run.json has its checkpoints)
        return sorted(p.name for p in entries)
    return odd


def holds_checkpoint(store: Path) -> bool:
    """Whether the run store folder ``store`` holds a checkpoint or a finished sub-run to resume from."""
    return any(Path(store).glob("*.ckpt.json")) or any(Path(store).glob("*.done.json"))


_OPENED: list[Path] = []   # every run store this process opened (a stopped command says whether one can resume)


def stores_opened() -> tuple[Path, ...]:
    """The run store folders this process opened, oldest first."""
    return tuple(_OPENED)


class RunStore:
    """A folder (``<out>.partial``) holding checkpoints and finished sub-runs of one command.

    A sub-run ``name`` is finished when ``name.done.safetensors`` and ``name.done.json`` exist; an
    interrupted one has ``name.ckpt.safetensors`` and ``name.ckpt.json``. Each JSON holds the sha256 of
    its tensors so that a torn or edited file is detected, not silently used. ``run.json`` holds the
    fingerprint of what the run was started with (``run_fingerprint``): resuming under another one is
    refused, naming what changed. A store with no checkpoint in it (a run that failed before its
    first epoch ended) is stale and removed; ``overwrite`` discards any store and starts over.
    """

    def __init__(self, path: Path, *, resume: bool, rank: int = 0, fingerprint: dict | None = None,
                 overwrite: bool = False):
        self.path = Path(path)
        self.resume = resume
        self.writer = rank == 0
        fresh = not (self.path.exists() or self.path.is_symlink())
        if self.writer and not fresh:
            if self.path.is_symlink() or not self.path.is_dir():
                raise EdgekdError(f"'{self.path}' (where an interrupted run is kept) exists and is not a folder; "
                                  f"move it away and rerun.")
            has_state = any(self.path.glob("*.ckpt.json")) or any(self.path.glob("*.done.json"))
            entries = list(self.path.iterdir())
            foreign = [p.name for p in entries if p.is_dir() or p.is_symlink() or not _OWN_STORE_FILE.fullmatch(p.name)
                       or not _own_record(p)]
            damaged = any(_OWN_STORE_FILE.fullmatch(name) for name in foreign)   # edgekd's names, content not
            if foreign:
                raise EdgekdError(f"'{self.path}' (where an interrupted run is kept) holds files edgekd did not write "
                                  f"({', '.join(sorted(foreign)[:3])}){' or that are corrupt' if damaged else ''}; "
                                  f"move them away and rerun.")
            removing = (overwrite and not resume) or not has_state
            if removing and (odd := _not_removable(self.path, entries)):   # (a resume reads them, and says what is wrong)
                raise EdgekdError(f"'{self.path}' (where an interrupted run is kept) holds files that are not a run "
                                  f"edgekd wrote ({', '.join(odd[:3])}); move them away and rerun.")
            if removing:
                import shutil

                shutil.rmtree(self.path)
                fresh = True
            elif not resume:
                raise EdgekdError(f"An interrupted run was found at '{self.path}'; pass --resume to continue it, "
                                  f"or --overwrite (or delete that folder) to start over.")
            elif fingerprint is not None:
                saved = self.load_json("run")
                self._check_fingerprint(saved, fingerprint)
                self._check_environment(saved)
        if self.writer:
            self.path.mkdir(parents=True, exist_ok=True)
            if fingerprint is not None and fresh:   # a store from before fingerprints stays as it was
                write_json_atomic(self.path / "run.json", {"fingerprint": fingerprint, "environment": _environment()})
        self._serial, self.fresh = 0, fresh
        _OPENED.append(self.path)

    def discard_if_unused(self) -> None:
        """Remove a store this run made and saved nothing in (a run that fails before training leaves none)."""
        import shutil

        if self.writer and self.fresh and not holds_checkpoint(self.path):
            shutil.rmtree(self.path, ignore_errors=True)

    def _check_fingerprint(self, saved, fingerprint: dict) -> None:
        """``saved`` (the store's ``run.json``) against this run's ``fingerprint``."""
        old = saved.get("fingerprint") if isinstance(saved, dict) else None
        if not isinstance(old, dict):
            return   # a store from before fingerprints: nothing to compare with
        new = json.loads(json.dumps(fingerprint, sort_keys=True, default=str))
        ignored = set(new.pop("after_training", ()))
        raw = {k: v for k, v in old.items() if k != "after_training"}
        if isinstance(raw.get("config"), dict):
            raw["config"] = {k: v for k, v in raw["config"].items() if k not in ignored}
        old, normalized = _comparable(raw), _comparable(new)
        if old != normalized:
            changes = fingerprint_changes(raw, new) or ["the settings changed"]   # (as typed)
            if old.get("config") == normalized.get("config") and old.get("data") == normalized.get("data"):
                raise TeacherChanged(f"Cannot resume the interrupted run in '{self.path}': it was started from another "
                                     f"teacher ({_TEACHER_INPUTS} changed); rerun with that teacher to resume, or pass "
                                     f"--overwrite instead of --resume to start over.")
            raise SettingsChanged(f"Cannot resume the interrupted run in '{self.path}': it was started with other settings "
                                  f"({'; '.join(changes)}); rerun with the original settings to resume, or pass "
                                  f"--overwrite instead of --resume to start over.", changes)

    def _check_environment(self, saved) -> None:
        """A resume under another torch or edgekd than ``saved`` (the store's ``run.json``) records is refused (other
        kernels, other code: neither the run that was started nor a fresh one); under another thread count or CPU
        kernel level it is warned of, since the result then equals neither uninterrupted run bit for bit
        (``artifacts.numerics``)."""
        old = saved.get("environment") if isinstance(saved, dict) else None
        if not isinstance(old, dict):
            return   # a store from before environments were recorded
        now = _environment()
        versions = [f"{k} {old[k]} then, {now[k]} now" for k in ("torch", "edgekd") if k in old and old[k] != now.get(k)]
        if versions:
            raise ResumeMismatch(f"Cannot resume the interrupted run in '{self.path}': it was started with other "
                                 f"software ({'; '.join(versions)}); resume it with those versions, or pass --overwrite "
                                 f"instead of --resume to start over.")
        numerics = [f"{k} {old[k]} then, {now[k]} now" for k in ("torch_threads", "cpu_capability")
                    if k in old and old[k] != now.get(k)]
        if numerics:
            import warnings

            from edgekd.errors import EdgekdWarning

            warnings.warn(EdgekdWarning(f"Resuming '{self.path}' under other numerics ({'; '.join(numerics)}): the "
                                        f"result will equal neither uninterrupted run bit for bit."), stacklevel=3)

    def save(self, name: str, kind: str, tensors: dict, meta: dict) -> None:
        """Write the tensors under a fresh file name, then the JSON that points to them (the commit),
        then drop older tensor files: a kill -9 at any point leaves the previous or the new state."""
        if not self.writer:
            return
        from edgekd.artifacts import save_tensors

        import secrets

        self._serial += 1
        # a random part too: a resumed run with the pid of the one it resumes (pid 1 in every container) wrote over
        # the tensors its checkpoint's JSON still named, and a kill before the new JSON lost the run
        tensor_name = f"{name}.{kind}.{os.getpid()}-{self._serial}-{secrets.token_hex(4)}.safetensors"
        tmp = self.path / f".{tensor_name}.tmp"
        digest = save_tensors(tmp, tensors)
        os.replace(tmp, self.path / tensor_name)
        write_json_atomic(self.path / f"{name}.{kind}.json", {**meta, "tensors": tensor_name, "sha256": digest})
        for stale in self.path.glob(f"{name}.{kind}.*.safetensors"):
            if stale.name != tensor_name:
                stale.unlink(missing_ok=True)

    def load(self, name: str, kind: str) -> tuple[dict, dict] | None:
        from safetensors.torch import load_file

        from edgekd.artifacts import sha256_file

        meta_path = self.path / f"{name}.{kind}.json"
        if not meta_path.is_file():
            return None
        corrupt = f"Checkpoint '{meta_path}' is corrupt or not one edgekd wrote; delete '{self.path}' to start over."
        try:
            meta = json.loads(meta_path.read_text())
            tensor_path = self.path / Path(meta.get("tensors", f"{name}.{kind}.safetensors")).name
        except (ValueError, UnicodeDecodeError, KeyError, TypeError, AttributeError):
            raise EdgekdError(corrupt) from None
        if not _checkpoint_meta_ok(kind, meta):
            raise EdgekdError(corrupt)
        if not tensor_path.is_file() or sha256_file(tensor_path) != meta.get("sha256"):
            raise EdgekdError(f"Checkpoint '{tensor_path}' is missing or fails its sha256 check (torn or edited); "
                              f"delete '{self.path}' to start over.")
        try:
            tensors = load_file(str(tensor_path))
        except Exception:  # safetensors' own error types
            raise EdgekdError(corrupt) from None
        if kind == "ckpt" and not isinstance(tensors.get("rng_state"), torch.Tensor):
            raise EdgekdError(corrupt)
        return tensors, meta

    def save_json(self, name: str, data: dict) -> None:
        if self.writer:
            write_json_atomic(self.path / f"{name}.json", data)

    def load_json(self, name: str) -> dict | None:
        path = self.path / f"{name}.json"
        if not path.is_file():
            return None
        try:
            data = json.loads(path.read_text())
        except (ValueError, UnicodeDecodeError):
            raise EdgekdError(f"'{path}' is corrupt; delete '{self.path}' to start over.") from None
        if not isinstance(data, dict):
            raise EdgekdError(f"'{path}' is not a JSON object; delete '{self.path}' to start over.")
        return data

    def finish(self) -> None:
        """Remove the store once the command's artifact is safely written."""
        import shutil

        if self.writer:
            shutil.rmtree(self.path, ignore_errors=True)


_RESULT_KEYS = {"best_epoch": int, "epochs_run": int, "val_accuracy": (int, float), "val_nll": (int, float),
                "history": list, "seconds_per_epoch": (int, float), "checkpoint_seconds": (int, float)}
_POSITION_KEYS = {"epoch": int, "batch": int, "step": int, "best_epoch": int, "stale": int, "history": list,
                  "train_seconds": (int, float), "epochs_timed": int}


def _typed(table, expected: dict, *, exact: bool, optional=("checkpoint_seconds",)) -> bool:
    """``table`` has every key of ``expected`` (but ``optional``) of its type, and no other key if ``exact``."""
    if not isinstance(table, dict) or (exact and not set(table) <= set(expected)):
        return False
    return all(isinstance(table[k], t) and not isinstance(table[k], bool) if k in table else k in optional
               for k, t in expected.items())


def _checkpoint_meta_ok(kind: str, meta) -> bool:
    """The JSON half of a checkpoint has the fields ``fit`` reads, of the right types."""
    if not isinstance(meta, dict) or not isinstance(meta.get("sha256"), str) or not isinstance(meta.get("tensors", ""), str):
        return False
    if kind == "done":
        return _typed(meta.get("result"), _RESULT_KEYS, exact=True)
    if kind == "ckpt":
        position, optimizer = meta.get("position"), meta.get("optimizer")
        best = position.get("best_key") if isinstance(position, dict) else None
        return (_typed(position, _POSITION_KEYS, exact=False) and min(position["epoch"], position["batch"], position["step"]) >= 0
                and (best is None or (isinstance(best, list) and len(best) == 2))
                and isinstance(optimizer, dict) and isinstance(optimizer.get("param_groups"), list)
                and isinstance(optimizer.get("scalars"), dict))
    return True


def _flatten_optimizer(optimizer: torch.optim.Optimizer) -> tuple[dict, dict]:
    state = optimizer.state_dict()
    tensors, scalars = {}, {}
    for index, per_param in state["state"].items():
        for key, value in per_param.items():
            if torch.is_tensor(value):
                tensors[f"optim.{index}.{key}"] = value
            else:
                scalars[f"{index}.{key}"] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def _restore_optimizer(optimizer, tensors: dict, meta: dict) -> None:
    per_param: dict = {}
    for name, value in tensors.items():
        if name.startswith("optim."):
            _, index, key = name.split(".", 2)
            per_param.setdefault(int(index), {})[key] = value
    for name, value in meta["scalars"].items():
        index, key = name.split(".", 1)
        per_param.setdefault(int(index), {})[key] = value
    optimizer.load_state_dict({"state": per_param, "param_groups": meta["param_groups"]})
    for param, state in optimizer.state.items():   # saved contiguous: back in the parameter's layout (a user's net may
        for key, value in state.items():           # hold channels_last weights), which torch's fused AdamW silently assumes
            if torch.is_tensor(value) and value.shape == param.shape:
                state[key] = torch.empty_like(param, dtype=value.dtype).copy_(value)


def steps_in_epoch(n_train: int, batch_size: int, ranks: int = 1) -> int:
    """Batches in an epoch: ``ceil(n / batch_size)``, but a last batch that would leave a rank a single row
    (fewer than ``2 * ranks`` rows; one row on one process) joins the one before, as ``DataLoader(drop_last=True)``
    would drop it: BatchNorm in training cannot normalise a single row."""
    steps = max(1, math.ceil(n_train / batch_size))
    return steps - 1 if steps > 1 and 0 < n_train % batch_size < 2 * ranks else steps


def _your_code(model, what: str, call, *args):
    """``call(*args)``; where the model is your own architecture (``py:``), its failure in ``what`` (forward or
    backward: an in-place op autograd needs, a shape it cannot take) is one line naming it, not edgekd's error."""
    try:
        return call(*args)
    except (torch.OutOfMemoryError, MemoryError, EdgekdError):   # the machine's, or edgekd's own: said as such
        raise
    except Exception as exc:   # noqa: BLE001 (your code may raise anything: a typo's AttributeError included)
        arch = getattr(model, "user_arch", None)
        if arch is None:
            raise
        cause = next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
        raise ConfigError(f"Architecture '{arch}' failed in training ({what}: {type(exc).__name__}: {cause[:200]}); "
                          f"fix the module (rerun with --debug for the traceback).") from exc


# --- evaluation helpers --------------------------------------------------------------------------

@torch.no_grad()
def predict_logits(model: torch.nn.Module, x: torch.Tensor, *, batch_size: int | None = None) -> torch.Tensor:
    """The model's float32 logits on ``x``, computed on the model's device, returned on ``x``'s device, fed
    ``batch_size`` rows at a time (default: ``inference_rows``, at most 1024 on a GPU and 256 on the CPU, where
    larger chunks only churn the allocator)."""
    device = module_device(model)
    batch_size = batch_size or inference_rows(x, 1024 if device.type == "cuda" else 256)
    model.eval()
    async_copy = device.type == "cuda"   # a copy into host memory must land before the CPU reads it
    logits = fill_rows(lambda r: model(as_float(x[r].to(device, non_blocking=async_copy))),
                       0, len(x), batch_size, device=x.device)
    if logits is None:   # (0, C), as the rows of a non-empty input would be: an empty torchrun shard gathers with the rest
        logits = model(as_float(x[:0].to(device))).float().to(x.device)
    return logits


def accuracy_and_nll(logits: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    y = y.to(logits.device)
    return float((logits.argmax(1) == y).float().mean()), float(F.cross_entropy(logits, y))


# --- the loop -------------------------------------------------------------------------------------

BatchFn = Callable[[torch.Tensor, torch.Generator, int], tuple]   # (indices, generator, epoch) -> batch
LossFn = Callable[[torch.Tensor, tuple], torch.Tensor]             # (student logits, batch) -> loss


def fit(model: torch.nn.Module, *, n_train: int, make_batch: BatchFn, loss_fn: LossFn,
        val: tuple[torch.Tensor, torch.Tensor], config: TrainConfig, store: RunStore | None, name: str,
        progress: bool = False, dist=None, data_device=None) -> FitResult:
    """Train ``model`` for ``config.epochs``; keep the weights of the best val epoch.

    ``make_batch(indices, generator, epoch)`` returns a tuple whose first element is the model input;
    ``loss_fn(outputs, batch)`` returns the scalar loss. ``dist`` (edgekd.distributed.Context) shards
    each batch over ranks and averages gradients. ``data_device`` is where the training data lives (the
    epoch's order, drawn on the CPU, is copied there once); batches are moved to the training device. The
    loss is summed on the device and read once per epoch.
    """
    device = dist.device if dist is not None else resolve_device(config.device)
    data_device = torch.device(data_device or "cpu")
    loss_fn = mixup_loss(loss_fn)   # batches that ``mix_inputs`` blended carry their partner labels
    model.to(device)
    if store is not None:
        done = store.load(name, "done")
        if done is not None:
            tensors, meta = done
            model.load_state_dict(tensors)
            return FitResult(state=tensors, **meta["result"])
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    steps_per_epoch = steps_in_epoch(n_train, config.batch_size, dist.world_size if dist is not None else 1)
    total_steps = config.epochs * steps_per_epoch
    position = {"epoch": 0, "batch": 0, "step": 0, "best_key": None, "best_epoch": -1, "stale": 0,
                "history": [], "train_seconds": 0.0, "epochs_timed": 0, "loss_sum": 0.0, "loss_steps": 0}
    best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    torch.manual_seed(config.seed)
    if store is not None and (ckpt := store.load(name, "ckpt")) is not None:
        best_state, position = _restore(ckpt, model, optimizer, position, f"'{store.path}'")
    with _stop_on_signals() as stop:
        while position["epoch"] < config.epochs:
            epoch = position["epoch"]
            order = torch.randperm(n_train, generator=epoch_generator(config.seed, epoch)).to(data_device)
            model.train()
            started = time.perf_counter()
            loss_sum = torch.tensor(position["loss_sum"], device=device)
            bar = _progress_bar(range(position["batch"], steps_per_epoch), progress, f"{name} epoch {epoch + 1}/{config.epochs}")
            for batch_index in bar:
                last = batch_index + 1 == steps_per_epoch   # the last batch takes the rest (a lone row included)
                indices = order[batch_index * config.batch_size:n_train if last else (batch_index + 1) * config.batch_size]
                # a generator per step (jitter, view choice): a run resumed mid-epoch draws the same numbers
                batch = make_batch(indices, step_generator(config.seed, epoch, batch_index), epoch)
                share = 1.0
                if dist is not None:
                    batch, share = dist.shard_batch(batch)
                    torch.manual_seed(rank_step_seed(config.seed, epoch, batch_index, dist.rank))   # dropout: a mask per rank
                batch = tuple(to_device(t, device) if torch.is_tensor(t) else t for t in batch)
                batch = (as_float(batch[0]), *batch[1:])   # uint8 pixels cross to the device as uint8
                for group in optimizer.param_groups:
                    group["lr"] = one_cycle_lr(position["step"], total_steps, config.lr)
                with autocast(device, config.precision):
                    if len(batch[0]):
                        loss = loss_fn(_your_code(model, "forward", model, batch[0]), batch)
                    else:   # no rows on this rank: zero gradients, and the same collectives as the others
                        loss = sum(p.sum() for p in model.parameters()) * 0.0
                optimizer.zero_grad(set_to_none=True)
                _your_code(model, "backward", (loss * share if share != 1.0 else loss).backward)
                if dist is not None:
                    dist.average_gradients(model)
                optimizer.step()
                loss_sum += loss.detach().float()
                position["step"] += 1
                position["batch"] = batch_index + 1
                position["loss_steps"] += 1
                if stop.signal_name is not None:
                    position["loss_sum"] = _finite_loss_sum(loss_sum, position, name, store)
                    position["train_seconds"] += time.perf_counter() - started
                    _checkpoint(store, name, model, best_state, optimizer, position)
                    where = f" in '{store.path}'" if store is not None else ""
                    raise Interrupted(f"Stopped by {stop.signal_name}; checkpoint saved{where}; rerun the same command with --resume to continue.")
            epoch_loss = _finite_loss_sum(loss_sum, position, name, store) / max(1, position["loss_steps"])
            position["train_seconds"] += time.perf_counter() - started
            position["epochs_timed"] += 1
            if dist is not None:
                dist.average_buffers(model)
            best_state = _end_epoch(model, val, position, best_state, epoch_loss, config)
            tick = time.perf_counter()
            _checkpoint(store, name, model, best_state, optimizer, position)
            position["checkpoint_seconds"] = position.get("checkpoint_seconds", 0.0) + time.perf_counter() - tick
    best_acc, best_neg_nll = position["best_key"]
    result = {"best_epoch": position["best_epoch"] + 1, "epochs_run": len(position["history"]),
              "val_accuracy": best_acc, "val_nll": -best_neg_nll, "history": position["history"],
              "seconds_per_epoch": position["train_seconds"] / max(1, position["epochs_timed"]),
              "checkpoint_seconds": position.get("checkpoint_seconds", 0.0)}
    if store is not None:
        store.save(name, "done", best_state, {"result": result})
    if stop.signal_name is not None:   # it came while the last epoch was scored or saved: not lost
        where = f" in '{store.path}'" if store is not None else ""
        raise Interrupted(f"Stopped by {stop.signal_name} as '{name}' finished; its result is saved{where}; rerun the same "
                          f"command with --resume to continue.")
    model.load_state_dict(best_state)
    return FitResult(state=best_state, **result)


def _finite_loss_sum(loss_sum: torch.Tensor, position: dict, name: str, store) -> float:
    """The loss summed so far this epoch, read from the device (the one synchronisation of an epoch);
    a non-finite sum stops the run and keeps the last good checkpoint."""
    value = float(loss_sum)
    if not math.isfinite(value):
        where = f"'{store.path}'" if store is not None else "memory"
        raise TrainingError(f"Non-finite loss ({value}) in '{name}' during epoch {position['epoch'] + 1}; the last good "
                            f"checkpoint is kept in {where}; lower --lr or check the data for NaN/Inf.")
    return value


def _end_epoch(model, val, position: dict, best_state: dict, epoch_loss: float, config: TrainConfig) -> dict:
    """Score the epoch on val, keep the best weights, record the history; returns the best state."""
    epoch = position["epoch"]
    val_acc, val_nll = accuracy_and_nll(predict_logits(model, val[0]), val[1])
    key = (val_acc, -val_nll)
    if position["best_key"] is None or tuple(key) > tuple(position["best_key"]):
        position["best_key"], position["best_epoch"], position["stale"] = list(key), epoch, 0
        best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    else:
        position["stale"] += 1
    position["history"].append({"epoch": epoch + 1, "loss": epoch_loss, "val_accuracy": val_acc, "val_nll": val_nll})
    position.update(epoch=epoch + 1, batch=0, loss_sum=0.0, loss_steps=0)
    if config.patience and position["stale"] >= config.patience:
        position["epoch"] = config.epochs
    return best_state


def _restore(ckpt, model, optimizer, position: dict, where: str = "the run store") -> tuple[dict, dict]:
    """Weights, optimizer, RNG state and loop position from a checkpoint; returns (best state, position).
    A checkpoint whose tensors do not fit the model (crafted, or from other code) is one clear error."""
    tensors, meta = ckpt
    best_state = {k[len("best."):]: v for k, v in tensors.items() if k.startswith("best.")}
    try:
        model.load_state_dict(best_state)   # the best weights must fit too (they are loaded at the end)
        model.load_state_dict({k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")})
        _restore_optimizer(optimizer, tensors, meta["optimizer"])
        torch.set_rng_state(tensors["rng_state"])
    except torch.OutOfMemoryError:   # the GPU's to say: "start over" would throw a good checkpoint away
        raise
    except (RuntimeError, KeyError, ValueError, TypeError) as exc:
        raise EdgekdError(f"The checkpoint in {where} does not fit this model ({str(exc).splitlines()[0][:160]}); "
                          f"pass --overwrite to start over.") from None
    if "cuda_rng_state" in tensors and torch.cuda.is_available():
        device = module_device(model)
        torch.cuda.set_rng_state(tensors["cuda_rng_state"], device if device.type == "cuda" else "cuda")
    return best_state, {**position, **meta["position"]}


def _checkpoint(store, name, model, best_state, optimizer, position) -> None:
    if store is None:
        return
    opt_tensors, opt_meta = _flatten_optimizer(optimizer)
    tensors = {**{f"model.{k}": v for k, v in model.state_dict().items()},
               **{f"best.{k}": v for k, v in best_state.items()},
               **opt_tensors, "rng_state": torch.get_rng_state()}
    if (device := module_device(model)).type == "cuda":   # dropout masks on the GPU come from its own generator
        tensors["cuda_rng_state"] = torch.cuda.get_rng_state(device)
    store.save(name, "ckpt", tensors, {"position": position, "optimizer": opt_meta})


def _progress_bar(iterable, enabled: bool, desc: str):
    if not enabled:
        return iterable
    from tqdm import tqdm

    return tqdm(iterable, desc=desc, leave=False, unit="step", dynamic_ncols=True)


# --- hard-label batches ---------------------------------------------------------------------------

def supervised_batches(x: torch.Tensor, y: torch.Tensor, jitter: int, mixup: float = 0.0, flip: bool = False):
    """``make_batch`` for hard-label training with the paper's random-shift jitter, with ``flip`` a random
    half mirrored and, with ``mixup``, each batch blended with a permutation of itself
    (``edgekd.training.augment_batch``; the loss blends the two labels alike)."""
    def make_batch(indices, generator, _epoch):
        return augment_batch(x[indices], y[indices], generator, jitter, mixup, flip)
    return make_batch


def cross_entropy_loss(outputs, batch):
    return F.cross_entropy(outputs, batch[1])
