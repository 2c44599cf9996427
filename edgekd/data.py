"""Datasets named by one spec string, used by every command.

Specs:
- ``digits``: scikit-learn's 8x8 digits (shipped inside scikit-learn), 10 classes; the default.
- ``fashion-mnist[:DIR]``, ``mnist[:DIR]``: the four standard IDX files (gzipped or not) in DIR, else
  in ``$EDGEKD_DATA/<name>``, else ``/usr/share/datasets/<name>``.
- ``npz:PATH``: arrays ``x`` and ``y``, optional ``class_names``, ``x_test``/``y_test``; ``x`` and ``x_test`` are
  memory-mapped where stored uncompressed (``_npz_member``), else inflated once into the cache and mapped
  from there (``_unpacked_member``), and split into the cache like a decoded folder.
- ``imagefolder:DIR[,...]``: one folder per class (``edgekd.imagefolder``).
- ``synthetic:classes=N,groups=G,dim=D,seed=S[,...]``: generated vectors, many classes in groups of
  confusable ones, true groups known (``edgekd.synthetic``).

Inputs are kept *raw*, as stored: pixels of IDX, npz and image-folder data stay uint8 (0-255), digits and
float arrays float32 (``as_float`` converts a batch); every edgekd model carries its own normalisation
(statistics computed on the train split), so any model maps raw inputs to logits and a device can feed
pixels as they come.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import math
import os
import struct
import warnings
import dataclasses
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np

from edgekd.cachedir import allocated_memmap, cached_array, default_cache_dir, file_identity, touch
from edgekd.errors import DataError, EdgekdWarning
from edgekd.validation import VAL_FRACTION, check_int_at_least, check_seed, check_val_fraction

if TYPE_CHECKING:  # torch is imported lazily at run time
    import torch

FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                         "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
MNIST_CLASSES = tuple(str(i) for i in range(10))
IDX_DATASETS = {"fashion-mnist": FASHION_MNIST_CLASSES, "mnist": MNIST_CLASSES}
IDX_FILES = {
    "x_train": "train-images-idx3-ubyte",
    "y_train": "train-labels-idx1-ubyte",
    "x_test": "t10k-images-idx3-ubyte",
    "y_test": "t10k-labels-idx1-ubyte",
}
KNOWN_SPECS = ("digits", "fashion-mnist[:DIR]", "mnist[:DIR]", "npz:PATH", "imagefolder:DIR[,size=HxW,channels=C,test=F]",
               "synthetic:classes=N,groups=G,dim=D,seed=S[,sep=F,spread=F,train=N,test=N]")
# Datasets without an official test split get a fixed, seed-independent stratified one.
HELD_OUT_TEST_FRACTION = 0.2


@dataclass(frozen=True)
class Dataset:
    """Raw inputs (N, *input_shape), as stored (uint8 pixels stay uint8: ``as_float`` per batch), and int64
    labels for train / val / test."""

    spec: str
    classes: tuple[str, ...]
    input_shape: tuple[int, ...]
    x_train: "torch.Tensor"
    y_train: "torch.Tensor"
    x_val: "torch.Tensor"
    y_val: "torch.Tensor"
    x_test: "torch.Tensor"
    y_test: "torch.Tensor"
    mean: tuple[float, ...]
    std: tuple[float, ...]
    split_seed: int = 0
    train_limit: int | None = None
    _fingerprints: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def split(self, name: str):
        """``(x, y)`` of 'train', 'val' or 'test'."""
        if name not in ("train", "val", "test"):
            raise DataError(f"The 'split' parameter must be one of 'train', 'val', 'test'. Got {name!r} instead.")
        return getattr(self, f"x_{name}"), getattr(self, f"y_{name}")

    def fingerprint(self, split: str = "train") -> str:
        """sha256 of a split's inputs and labels (used to key teacher-logit caches)."""
        if split not in self._fingerprints:
            self._hash_split(split)
        return self._fingerprints[split]

    def rows_digest(self, split: str) -> str:
        """sha256 of a split's values and labels whatever shape they are read in (flat or as images):
        recorded with a model as the rows it was not trained on (``check_split_matches``)."""
        if f"rows:{split}" not in self._fingerprints:
            self._hash_split(split)
        return self._fingerprints[f"rows:{split}"]

    def _hash_split(self, split: str) -> None:
        """Both digests of a split in one read of it: ``fingerprint`` (its shape, and its dtype but float32's,
        then the rows) and ``rows_digest`` (its dtype, then the rows)."""
        x, y = self.split(split)
        keyed, rows_only = hashlib.sha256(str(tuple(x.shape)).encode()), hashlib.sha256(str(x.dtype).encode())
        if str(x.dtype) != "torch.float32":   # float32 splits keep the fingerprints they always had
            keyed.update(str(x.dtype).encode())
        step = chunk_rows(x[:1].numel() * x.element_size())
        for start in range(0, len(x), step):   # in chunks: a memory-mapped split is never copied whole
            chunk = memoryview(np.ascontiguousarray(x[start:start + step].cpu().numpy())).cast("B")   # (no bytes copy)
            keyed.update(chunk)
            rows_only.update(chunk)
        labels = y.contiguous().cpu().numpy().tobytes()
        keyed.update(labels)
        rows_only.update(labels)
        self._fingerprints.update({split: keyed.hexdigest(), f"rows:{split}": rows_only.hexdigest()})

    def shaped(self, input_shape) -> "Dataset":
        """The same samples as ``(N, *input_shape)`` (views, nothing copied): data stored flat for a model
        that takes images, or the reverse. The sizes must match; the mean and std follow when the channels
        change (computed again, streamed)."""
        input_shape = tuple(input_shape)
        if input_shape == tuple(self.input_shape):
            return self
        if not same_layout(input_shape, self.input_shape):
            raise DataError(f"Dataset '{self.spec}' has inputs of shape {tuple(self.input_shape)}, which cannot be read as "
                            f"{input_shape}; pass data of the model's input shape.")
        moved = {f"x_{split}": getattr(self, f"x_{split}").reshape(-1, *input_shape) for split in ("train", "val", "test")}
        stats = {}
        if len(self.mean) != (input_shape[0] if len(input_shape) == 3 else 1):
            stats["mean"], stats["std"] = channel_stats(moved["x_train"])
        return dataclasses.replace(self, input_shape=input_shape, **moved, **stats, _fingerprints={})

    @property
    def device(self) -> "torch.device":
        return self.x_train.device

    def to(self, device) -> "Dataset":
        """Every split on ``device`` (to a GPU in 64 MiB pieces, ``copy_to_device``). The fingerprints
        (sha256 of the host bytes) are computed first and carried over."""
        from edgekd.device import copy_to_device

        for split in ("train", "val", "test"):
            self.fingerprint(split)
        moved = {f"{kind}_{split}": copy_to_device(getattr(self, f"{kind}_{split}"), device)
                 for split in ("train", "val", "test") for kind in "xy"}
        return dataclasses.replace(self, **moved, _fingerprints=self._fingerprints)

    def describe(self, digests: bool = True) -> dict:
        """What a record names the data by; ``digests``: with the sha256 of the held-out rows (what a model
        records; a report that trains nothing leaves them out: hashing a large folder's splits costs reads)."""
        record = {
            "spec": self.spec, "classes": list(self.classes), "input_shape": list(self.input_shape),
            "n_train": len(self.y_train), "n_val": len(self.y_val), "n_test": len(self.y_test),
            "split_seed": self.split_seed, "train_limit": self.train_limit,
            "mean": list(self.mean), "std": list(self.std),
        }
        if digests:   # the held-out rows themselves: a file added to a folder re-draws them with the same counts
            record.update(val_sha256=self.rows_digest("val"), test_sha256=self.rows_digest("test"))
        return record


def as_dataset(data) -> "Dataset":
    """A ``Dataset`` as given, or one loaded from a spec (``load_dataset``): a stage called from Python takes either."""
    if isinstance(data, Dataset):
        return data
    if isinstance(data, str):
        return load_dataset(data)
    raise DataError(f"The 'data' parameter must be a Dataset (edgekd.data.load_dataset) or a dataset spec such as "
                    f"'digits' or 'npz:PATH'. Got {type(data).__name__} instead.")


def load_dataset(spec: str = "digits", *, val_fraction: float = VAL_FRACTION, split_seed: int = 0,
                 train_limit: int | None = None) -> Dataset:
    """Load ``spec``, split train into train/val (stratified, seeded) and compute train statistics."""
    check_val_fraction(val_fraction)   # before reading anything: 2.0 left 10 training rows, silently
    if not isinstance(spec, str):   # (a Path: a folder of images is 'imagefolder:DIR', an archive 'npz:FILE')
        raise DataError(f"The 'spec' parameter must be a dataset spec such as 'digits', 'npz:FILE' or 'imagefolder:DIR'. "
                        f"Got {spec!r} instead.")
    check_seed(split_seed, "split_seed")
    if train_limit is not None:
        check_int_at_least("train_limit", train_limit, 1)
    spec = canonical_spec(spec)
    x, y, x_test, y_test, classes, copies = _load_arrays(spec)
    _check_arrays(spec, x, y, x_test, y_test, classes)   # (before the copies are looked for: a pass over the inputs)
    test_idx = None
    if x_test is None:   # fixed for the data (not drawn from the training seed): every run scores the same images
        # two of each class stay for train and val, whatever the test fraction (every class has three: _check_arrays)
        pool_idx, test_idx = _stratified_split(y, _held_out_fraction(spec), seed=12345, keep_at_least=2)
    else:
        pool_idx = np.arange(len(y))
    keep, held = _stratified_split(y[pool_idx], val_fraction, seed=split_seed)
    train_idx, val_idx = pool_idx[keep], pool_idx[held]
    if train_limit is not None:
        if train_limit < len(classes):
            raise DataError(f"The 'train_limit' parameter must be at least the number of classes ({len(classes)}). Got {train_limit} instead.")
        train_idx = _stratified_subset(y, train_idx, train_limit, seed=split_seed)
    if copies is not None:
        digests, name_of, words = copies()
        _warn_copies(spec, digests, name_of, np.asarray(y) if x_test is None else np.concatenate([y, y_test]),
                     np.concatenate([train_idx, val_idx]), test_idx if x_test is None else len(y) + np.arange(len(y_test)),
                     **words)
    if test_idx is not None:
        x_test, y_test = x, y
    else:
        test_idx = np.arange(len(y_test))
    return _make_dataset(spec, classes, x, y, train_idx, val_idx, x_test, y_test, test_idx, split_seed, train_limit)


def _make_dataset(spec, classes, x, y, train_idx, val_idx, x_test, y_test, test_idx, split_seed, train_limit) -> Dataset:
    """Each split's rows taken once from the source arrays (``_rows``); nothing else is copied."""
    import torch

    x_train = _rows(x, train_idx)
    mean, std = channel_stats(x_train)
    as_labels = lambda a, idx: torch.from_numpy(np.array(a[idx], dtype=np.int64))  # noqa: E731
    return Dataset(
        spec=spec, classes=tuple(classes), input_shape=tuple(x_train.shape[1:]),
        x_train=x_train, y_train=as_labels(y, train_idx),
        x_val=_rows(x, val_idx), y_val=as_labels(y, val_idx),
        x_test=_rows(x_test, test_idx), y_test=as_labels(y_test, test_idx),
        mean=mean, std=std, split_seed=split_seed, train_limit=train_limit,
    )


def check_split_matches(recorded: dict | None, data: Dataset, name: str, splits=("val", "test")) -> None:
    """A model trained on the same data as ``data`` (``recorded``: its manifest's ``data``) must meet the
    same held-out rows: with another val or test fraction, rows it trained on would be scored as val (which
    picks T, alpha and recipes) or test (which is reported). Refused, naming the split to pass."""
    if not isinstance(recorded, dict) or _source(recorded.get("spec")) != _source(data.spec):
        return   # other data (or a model of unknown origin): nothing it trained on is known to be here
    here = {"split_seed": data.split_seed, "n_val": len(data.y_val), "n_test": len(data.y_test)}
    keys = [k for k in ("split_seed", *(f"n_{s}" for s in splits)) if k in recorded and recorded[k] != here[k]]
    if keys:
        words = {"split_seed": "split seed {}", "n_val": "{} val rows", "n_test": "{} test rows"}
        then = ", ".join(words[k].format(recorded[k]) for k in keys)
        now = ", ".join(words[k].format(here[k]) for k in keys)
        raise DataError(f"{name} was trained on '{recorded['spec']}' held out as {then}, but this run holds out "
                        f"{now} of '{data.spec}', so rows it trained on would be scored as held out; pass the "
                        f"--val-fraction (and --test-fraction) it was trained with, or data it was not trained on.")
    changed = [s for s in splits if f"{s}_sha256" in recorded and recorded[f"{s}_sha256"] != data.rows_digest(s)]
    if changed:   # the same counts, other rows: files added, removed or replaced since (models before this record pass)
        raise DataError(f"{name} was trained on '{recorded['spec']}', whose {' and '.join(changed)} rows have changed "
                        f"since (files added, removed or replaced re-draw them), so rows it trained on may be scored as "
                        f"held out; train it again on the data as it is now, or pass data it was not trained on.")


def canonical_spec(spec: str) -> str:
    """``spec`` with its file or folder as an absolute path (``~`` expanded): what a model records and a later
    command reloads or compares from any folder. A relative path was recorded as typed, so ``evaluate`` run
    elsewhere read another folder of that name, and the held-out-rows guard (``check_split_matches``) let the same
    folder given by its absolute path through with other splits."""
    kind, _, arg = spec.partition(":")
    absolute = lambda path: os.path.abspath(os.path.expanduser(path))  # noqa: E731  (links kept: the path the user gave)
    if kind == "imagefolder" and arg:
        from edgekd.imagefolder import split_spec

        root, options = split_spec(arg)   # the options kept as typed (checked where the folder is read)
        return ",".join([f"imagefolder:{absolute(root)}" if root else "imagefolder:", *options])
    if (kind == "npz" or kind in IDX_DATASETS) and arg:
        return f"{kind}:{absolute(arg)}"
    return spec


def _source(spec) -> tuple | None:
    """What rows a spec reads, whatever its options: an image folder by its root, IDX data by its name."""
    if not isinstance(spec, str):
        return None
    kind, _, arg = spec.partition(":")
    try:
        if kind == "imagefolder":
            from edgekd.imagefolder import parse_spec

            return kind, str(parse_spec(arg).root.resolve())
        if kind in IDX_DATASETS:
            return (kind,)
        if kind == "npz":
            return kind, str(Path(arg).resolve())
    except (DataError, OSError, ValueError):
        pass
    return (spec,)


def same_layout(a, b) -> bool:
    """Whether inputs of shape ``a`` can be read as shape ``b`` without scrambling an image: one of them
    flat (an MLP's view, (784,) or (1, 784)), or the same sizes once the sizes of 1 are dropped ((1, 28, 28)
    and (28, 28, 1) lay out the same values). A (1, 24, 16) image read as (1, 16, 24) is refused: the
    pixel counts match, the rows do not. A ``None`` size (a graph's dynamic axis) is left out like a 1."""
    a, b = tuple(a), tuple(b)
    if None not in a + b and math.prod(a) != math.prod(b):
        return False
    a, b = [d for d in a if d not in (1, None)], [d for d in b if d not in (1, None)]
    return len(a) <= 1 or len(b) <= 1 or a == b   # flat once the sizes of 1 drop ((1, 784)), or the same sizes


def as_float(x: "torch.Tensor") -> "torch.Tensor":
    """Raw inputs as the models take them: uint8 pixels (kept as stored, a quarter of float32's
    memory) become float32 one batch at a time, in row-major (NCHW) strides; float inputs in those pass
    unchanged. A batch permuted back from NHWC with one channel passes ``is_contiguous()`` with
    channels_last strides, which convolutions then follow: a user's net that flattens with ``view`` fails on it."""
    if not x.is_floating_point():
        x = x.float()
    return x if x.stride() == _row_major_strides(x.shape) else x.new_empty(x.shape).copy_(x)


def _row_major_strides(shape) -> tuple:
    strides, step = [], 1
    for size in reversed(shape):
        strides.append(step)
        step *= max(size, 1)
    return tuple(reversed(strides))


class RowView:
    """Rows ``rows`` of ``x`` without copying them: ``view[i]`` is ``x[rows[i]]``. A transfer subset of
    a memory-mapped train split is gathered one batch at a time, never as a whole."""

    def __init__(self, x: "torch.Tensor", rows: "torch.Tensor"):
        self.x, self.rows = x, rows.to(x.device)

    def __getitem__(self, indices):
        return self.x[self.rows[indices]]

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def shape(self) -> tuple:
        return (len(self.rows), *self.x.shape[1:])

    @property
    def device(self):
        return self.x.device


def take_rows(x: "torch.Tensor", rows: "torch.Tensor"):
    """``x`` itself when ``rows`` is every row in order, else a ``RowView``."""
    import torch

    if len(rows) == len(x) and torch.equal(rows.cpu(), torch.arange(len(x))):
        return x
    return RowView(x, rows)


def _rows(x: np.ndarray, idx: np.ndarray) -> "torch.Tensor":
    """Rows ``idx`` of (N, ...) ``x`` as a (N, C, ...) tensor: uint8 stays uint8, anything else becomes
    float32. Rows of a memory-mapped array (a decoded image folder) go to a memory-mapped split file
    beside it, copied in chunks: a dataset larger than memory is never held in memory."""
    import torch

    dtype = np.uint8 if x.dtype == np.uint8 else np.float32
    if isinstance(x, np.memmap) and getattr(x, "filename", None):
        return torch.from_numpy(_split_file(x, idx, dtype))
    rows = _as_nchw(np.ascontiguousarray(x[idx], dtype=dtype))
    return torch.from_numpy(rows if rows.flags.writeable else rows.copy())


SPLIT_CHUNK_BYTES = 64 << 20


def chunk_rows(row_bytes: int) -> int:
    """Rows per chunk when a whole split is walked: about ``SPLIT_CHUNK_BYTES`` at a time, at least one row."""
    return max(1, SPLIT_CHUNK_BYTES // max(1, row_bytes))


# a forward pass over a split takes rows a chunk at a time: its float32 inputs (and the copies a model makes of
# them, a normalisation's, a shift's) about this size, whatever the size of a row (1024 rows of 224x224 photos
# were 588 MiB, held three times over)
INFERENCE_CHUNK_BYTES = 32 << 20


def inference_rows(x, most: int) -> int:
    """Rows of ``x`` (a tensor, array or ``RowView``) per forward pass: at most ``most``, and at most about
    ``INFERENCE_CHUNK_BYTES`` of float32 inputs, at least one."""
    row = math.prod(x.shape[1:]) * 4
    return max(1, min(most, INFERENCE_CHUNK_BYTES // max(1, row)))


def fill_rows(fn, lo: int, hi: int, rows: int, *, device=None) -> "torch.Tensor | None":
    """``fn(slice)`` over rows ``lo:hi``, ``rows`` at a time, each result written as it comes into one float32
    table on ``device`` (default: the first result's). Chunks kept and then joined would hold the whole result twice
    for a moment. None when ``lo:hi`` is empty (the caller knows what an empty result looks like)."""
    import torch

    out = None
    for start in range(lo, hi, rows):
        r = slice(start, min(start + rows, hi))
        part = fn(r)
        if out is None:
            out = part.new_empty((hi - lo, *part.shape[1:]), dtype=torch.float32, device=device)
        out[start - lo:r.stop - lo] = part
    return out


def _split_file(x: np.memmap, idx: np.ndarray, dtype) -> np.ndarray:
    """``x[idx]`` stored once as ``splits/<key>.npy`` beside ``x``'s file, keyed by that file (path,
    ``file_identity``, offset) and the indices, and opened copy-on-write (the file is never written back)."""
    source = Path(x.filename)
    try:
        stat = source.stat()
    except FileNotFoundError:   # the decoded entry, open here, removed by `edgekd cache prune` meanwhile
        raise DataError(f"The decoded cache entry '{source}' was removed while this command used it (an 'edgekd cache "
                        f"prune' meanwhile?); run the command again (the images are decoded anew).") from None
    digest = hashlib.sha256(f"{source.resolve()}\0{file_identity(stat)}\0{x.offset}\0{x.shape}\0{np.dtype(dtype)}".encode())
    digest.update(np.ascontiguousarray(idx, dtype=np.int64).tobytes())
    # beside a decoded image folder in the cache; never beside a user's own file (an .npz)
    decoded = source.parent.name == "images" and source.name.endswith(".x.npy")
    folder = (source.parent if decoded else default_cache_dir() / "images") / "splits"
    path = folder / f"{digest.hexdigest()[:32]}.npy"
    shape = (len(idx), *_as_nchw(x[:1]).shape[1:])
    rows = cached_array(path, mmap_mode="c")
    if rows is None or rows.shape != shape or rows.dtype != dtype:   # written anew, renamed over what is there
        _write_split(x, idx, dtype, shape, path)
        rows = np.load(path, mmap_mode="c")
    else:
        touch(path)   # used now: `edgekd cache prune --older-than` keeps it
    return rows


def _write_split(x: np.memmap, idx: np.ndarray, dtype, shape, path: Path) -> None:
    """``x[idx]`` into ``path`` in chunks of ``SPLIT_CHUNK_BYTES``, atomically (``_write_npy``)."""
    def fill(out):
        step = chunk_rows(int(np.prod(shape[1:])) * np.dtype(dtype).itemsize)
        for start in range(0, len(idx), step):
            out[start:start + step] = _as_nchw(x[idx[start:start + step]])

    _write_npy(path, dtype, shape, fill, failed=lambda reason: (
        f"Cannot write the split file '{path}' ({reason}); free disk space there or point EDGEKD_CACHE at a folder "
        f"with room for a copy of the decoded images."))


def _write_npy(path: Path, dtype, shape, fill, *, failed) -> None:
    """An .npy of ``shape`` and ``dtype`` at ``path``, its values written by ``fill(memmap)``: into a temporary
    beside it (held while written: ``edgekd.outputs.hold``), then renamed over. Any stop (Ctrl-C too) removes
    the temporary, a full copy of the rows; a disk error is ``DataError(failed(reason))``."""
    from edgekd.outputs import holding

    tmp = path.with_name(f".{path.stem}.{os.getpid()}.npy")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with holding(tmp):
            out = allocated_memmap(tmp, dtype, shape)
            fill(out)
            out.flush()
            del out
            os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        if not isinstance(exc, OSError):
            raise
        raise DataError(failed(exc.strerror or exc)) from None


def channel_stats(x) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of (N, C, ...) inputs (one channel for vectors), accumulated in
    float64 over chunks of rows (a memory-mapped split is read once, never converted whole)."""
    import torch

    if len(x) == 0:
        raise DataError("The train split is empty; pass a dataset with at least one sample per class.")
    channels = x.shape[1] if x.dim() > 2 else 1
    total = torch.zeros(channels, dtype=torch.float64)
    square = torch.zeros(channels, dtype=torch.float64)
    count = 0
    step = chunk_rows(x[0].numel() * 8)   # float64 while summed
    for start in range(0, len(x), step):
        chunk = x[start:start + step].cpu().double()   # sums on the host whatever the data's device
        flat = chunk.reshape(len(chunk), channels, -1)   # (rows, channels, values): summed in place, no transposed copy
        total += flat.sum(dim=(0, 2))
        square += flat.square_().sum(dim=(0, 2))
        count += flat.shape[0] * flat.shape[2]
    mean = total / count
    # unbiased, as torch.std; clamp a constant channel away from zero
    var = ((square - count * mean * mean) / max(1, count - 1)).clamp_min(0)
    std = var.sqrt().clamp_min(1e-6)
    return tuple(float(v) for v in mean), tuple(float(v) for v in std)


def _as_nchw(x: np.ndarray) -> np.ndarray:
    """(N, H, W) images gain a channel axis; vectors (N, D) and (N, C, H, W) stay."""
    return x[:, None] if x.ndim == 3 else x


# --- loading ------------------------------------------------------------------------------------

def _load_arrays(spec: str):
    name, _, arg = spec.partition(":")
    if spec == "digits":
        return (*_load_digits(), None)
    if name in IDX_DATASETS:
        return (*_load_idx(name, arg or None), IDX_DATASETS[name], None)
    if name == "npz" and arg:
        x, y, x_test, y_test, classes = _load_npz(Path(arg))
        return x, y, x_test, y_test, classes, lambda: (*_npz_copies(Path(arg), x, x_test),
                                                          {"noun": "sample", "held": "values"})
    if name == "imagefolder":
        from edgekd.imagefolder import load_imagefolder

        loaded = load_imagefolder(arg)
        return (*loaded[:5], lambda: (loaded.digests, loaded.name_of, {}))
    if name == "synthetic":
        from edgekd.synthetic import load_synthetic

        return (*load_synthetic(arg), None)
    raise DataError(f"Unknown dataset '{spec}'; choose one of {', '.join(KNOWN_SPECS)}.")


def _warn_copies(spec: str, digests: np.ndarray, name_of, labels: np.ndarray, seen: np.ndarray, test: np.ndarray, *,
                 noun: str = "image", held: str = "pixels") -> None:
    """Warn of samples that are copies of one another (the same decoded values, ``digests``): a test sample whose copy
    is among the train or val rows (``seen``) is not held out, and copies under two classes contradict each other.
    ``digests`` and ``labels`` run over every sample of the source (train's, then any test split's), and
    ``name_of(index)`` names one; each warning names one pair, saying which is the test one. ``noun`` and ``held``
    word it for images ("image", "pixels") or an array's rows ("sample", "values")."""
    pairs = np.unique(np.stack([digests, labels.astype(np.uint64)], axis=1), axis=0)
    values, counts = np.unique(pairs[:, 0], return_counts=True)
    clashing = np.flatnonzero(np.isin(digests, values[counts > 1]))
    if len(clashing):
        first = clashing[digests[clashing] == digests[clashing[0]]]
        other = first[labels[first] != labels[first[0]]][0]
        groups = int(np.sum(counts > 1))
        warnings.warn(EdgekdWarning(
            f"{_count(groups, noun)} of '{spec}' {'appears' if groups == 1 else 'appear'} under more than one class "
            f"(e.g. '{name_of(first[0])}' has the {held} of '{name_of(other)}'): their labels contradict each other; "
            f"keep each {noun} under one class."), stacklevel=3)
    leaked = test[np.isin(digests[test], digests[seen])]
    if len(leaked):
        source = seen[digests[seen] == digests[leaked[0]]][0]
        warnings.warn(EdgekdWarning(
            f"{len(leaked)} of the {_count(len(test), 'test ' + noun)} of '{spec}' "
            f"{'is a copy' if len(leaked) == 1 else 'are copies'} of train or val {noun}s (e.g. test {noun} "
            f"'{name_of(leaked[0])}' has the {held} of '{name_of(source)}'): the test accuracy counts "
            f"{'it' if len(leaked) == 1 else 'them'} as unseen; remove the copies from one side."), stacklevel=3)


def _npz_copies(path: Path, x, x_test) -> tuple[np.ndarray, Callable[[int], str]]:
    """The digests of the rows of ``x`` then ``x_test`` (``imagefolder.pixel_digest``) and a namer of a row, for
    ``_warn_copies``: computed once a chunk at a time, and cached (kind ``splits``) keyed by the archive's identity."""
    parts = [_npz_digests(path, key, rows) for key, rows in (("x", x), ("x_test", x_test)) if rows is not None]
    n = len(x)
    return np.concatenate(parts), lambda i: f"x[{i}]" if i < n else f"x_test[{i - n}]"


def _npz_digests(path: Path, key: str, rows) -> np.ndarray:
    import zipfile

    from edgekd.imagefolder import pixel_digests

    with zipfile.ZipFile(path) as archive:
        crc = archive.getinfo(f"{key}.npy").CRC
    digest = hashlib.sha256(f"digests\0{path.resolve()}\0{file_identity(path.stat())}\0{key}\0{crc}".encode())
    target = default_cache_dir() / "images" / "splits" / f"{digest.hexdigest()[:32]}.npy"
    if (cached := cached_array(target)) is not None:
        return cached
    digests = pixel_digests(rows)

    def fill(out):
        out[:] = digests

    with contextlib.suppress(DataError):   # a cache that cannot be written: computed again next time
        _write_npy(target, np.uint64, digests.shape, fill, failed=str)
    return digests


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _held_out_fraction(spec: str) -> float:
    name, _, arg = spec.partition(":")
    if name == "imagefolder":
        from edgekd.imagefolder import parse_spec

        return parse_spec(arg).test_fraction
    return HELD_OUT_TEST_FRACTION


def _load_digits():
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = bunch.images.astype(np.float32)  # (1797, 8, 8), values 0..16
    return images, bunch.target.astype(np.int64), None, None, tuple(str(c) for c in bunch.target_names)


def _idx_dirs(name: str, given: str | None) -> list[Path]:
    if given:
        return [Path(given)]
    dirs = []
    if os.environ.get("EDGEKD_DATA"):
        dirs.append(Path(os.environ["EDGEKD_DATA"]) / name)
    dirs.append(Path("/usr/share/datasets") / name)
    return dirs


def _load_idx(name: str, given: str | None):
    dirs = _idx_dirs(name, given)
    for folder in dirs:
        found = {key: _find_idx_file(folder, stem) for key, stem in IDX_FILES.items()}
        if all(found.values()):
            arrays = {key: _read_idx(path) for key, path in found.items()}
            return arrays["x_train"], arrays["y_train"], arrays["x_test"], arrays["y_test"]
    where = " or ".join(f"'{d}'" for d in dirs)
    hint = "install Debian's dataset-fashion-mnist package (apt-get install -y dataset-fashion-mnist)" if name == "fashion-mnist" \
        else f"download the four IDX files of {name}"
    raise DataError(f"Dataset '{name}' not found: looked for {IDX_FILES['x_train']}[.gz] and the other three IDX files in {where}; "
                    f"{hint}, or pass '{name}:DIR' or set EDGEKD_DATA.")


def _find_idx_file(folder: Path, stem: str) -> Path | None:
    for candidate in (folder / stem, folder / f"{stem}.gz", folder / stem.replace("-idx", ".idx")):
        if candidate.is_file():
            return candidate
    return None


def _read_idx(path: Path) -> np.ndarray:
    """Read one IDX file (the MNIST format: magic, dims as big-endian uint32, then data)."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as handle:
            raw = handle.read()
        zero, dtype_code, ndim = struct.unpack(">HBB", raw[:4])
        if zero != 0 or dtype_code != 0x08:
            raise ValueError("bad magic number")
        shape = struct.unpack(f">{ndim}I", raw[4:4 + 4 * ndim])
        data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
        return data.reshape(shape)
    except (OSError, ValueError, struct.error, EOFError) as exc:
        raise DataError(f"'{path}' is not a valid IDX file ({exc}); re-download or reinstall the dataset.") from None


def _load_npz(path: Path):
    if path.is_dir():
        raise DataError(f"'npz:{path}' needs one .npz file, but '{path}' is a folder; pass 'npz:FILE.npz' holding arrays "
                        f"'x' and 'y', or 'imagefolder:{path}' for a folder of images.")
    if not path.is_file():
        raise DataError(f"Dataset file '{path}' not found; pass 'npz:PATH' with an existing .npz holding arrays 'x' and 'y'.")
    with open(path, "rb") as handle:
        magic = handle.read(6)
    if not magic.startswith(b"PK"):
        # numpy would read any other bytes as a pickle and say so, which misleads
        what = "a single .npy array" if magic == b"\x93NUMPY" else "not a zip archive"
        raise DataError(f"'{path}' is not an .npz archive ({what}); save the arrays with numpy.savez(PATH, x=..., y=...) "
                        f"and pass 'npz:PATH'.")
    try:
        with np.load(path, allow_pickle=False) as archive:
            if not {"x", "y"} <= set(archive.files):
                raise DataError(f"'{path}' has arrays {sorted(archive.files)[:10]} but needs 'x' and 'y' (names are "
                                f"case-sensitive); save it with numpy.savez(path, x=..., y=...).")
            # the labels and names first (small): a wrong one is refused before the inputs are unpacked into the cache
            labels = {key: _labels(path, key, _npz_array(archive, path, key)) for key in ("y", "y_test") if key in archive.files}
            names = _npz_array(archive, path, "class_names") if "class_names" in archive.files else None
            y, y_test = labels["y"], labels.get("y_test")
            _check_npz_labels(path, y, y_test, names)
            # only the arrays edgekd reads; the inputs memory-mapped where they are stored uncompressed
            arrays = {key: _npz_array(archive, path, key) for key in ("x", "x_test") if key in archive.files}
    except DataError:
        raise
    except Exception as exc:  # numpy raises many types (BadZipFile, ValueError, OSError, ...) for a file that is no npz
        raise DataError(f"'{path}' is not a readable .npz without pickled objects ({exc.__class__.__name__}: "
                        f"{str(exc)[:120]}); save it with numpy.savez.") from None
    n_classes = int(max(y.max(initial=0), y_test.max(initial=0) if y_test is not None else 0)) + 1
    # names saved as bytes (h5py's habit) are text, not "b'cat'"
    classes = tuple(c.decode("utf-8", "replace") if isinstance(c, bytes) else str(c) for c in names) \
        if names is not None else tuple(str(i) for i in range(n_classes))
    repeated = sorted(c for c, n in Counter(classes).items() if n > 1)
    if repeated:   # results per class are keyed by name: a repeated one would hide a class
        raise DataError(f"'{path}': 'class_names' must name each class once. Got {', '.join(map(repr, repeated[:5]))} more "
                        f"than once; give every class its own name.")
    return arrays["x"], y, arrays.get("x_test"), y_test, classes


MAX_CLASSES = 100_000


def _check_npz_labels(path: Path, y, y_test, names) -> None:
    """The class names' shape, and every label a class index: bounded by the names given, else by the number of
    samples (a label beyond it leaves some class without samples anyway), before anything is sized by it."""
    if names is not None and (names.ndim != 1 or not 1 <= len(names) <= MAX_CLASSES or names.dtype.kind not in "iuUS"):
        raise DataError(f"'{path}': 'class_names' must be a vector of 1 to {MAX_CLASSES} names. Got dtype {names.dtype}, "
                        f"shape {names.shape} instead.")
    limit = len(names) if names is not None else max(1, len(y))
    for part, labels in (("y", y), ("y_test", y_test)):
        if labels is not None and len(labels) and (labels.min() < 0 or labels.max() >= limit):
            what = f"{len(names)} class_names" if names is not None else f"{len(y)} samples"
            raise DataError(f"'{path}': '{part}' must hold class indices in [0, {limit - 1}] for {what}. Got "
                            f"[{labels.min()}, {labels.max()}] instead; number the classes 0..C-1.")


# how to save each array without Python objects (pandas' ``.values`` is an object array, which numpy pickles)
_PLAIN_ARRAY = {"x": "numbers: numpy.asarray(x, dtype=numpy.float32)", "x_test": "numbers: numpy.asarray(x_test, dtype=numpy.float32)",
                "y": "class indices: names, y = numpy.unique(labels, return_inverse=True), saved with class_names=names",
                "y_test": "class indices numbered as y's", "class_names": "text: numpy.asarray(names, dtype=str)"}


def _npz_array(archive, path: Path, key: str) -> np.ndarray:
    mapped = None
    if key in ("x", "x_test"):
        mapped = _npz_member(path, key)
        mapped = _unpacked_member(path, key) if mapped is None else mapped
    try:
        return archive[key] if mapped is None else mapped
    except ValueError as exc:
        if "Object arrays" not in str(exc):
            raise
        raise DataError(f"'{path}': array '{key}' holds Python objects (dtype object), which edgekd does not unpickle; "
                        f"save it as {_PLAIN_ARRAY[key]}.") from None


def _npz_member(path: Path, key: str) -> np.memmap | None:
    """Array ``key`` of the .npz ``path`` memory-mapped in place, when ``numpy.savez`` stored it
    uncompressed (its default) in C order; ``None`` otherwise (``savez_compressed``: read into memory)."""
    import zipfile

    with zipfile.ZipFile(path) as archive:
        info = archive.getinfo(f"{key}.npy")
        if info.compress_type != zipfile.ZIP_STORED or info.flag_bits & 0x1:
            return None
    with open(path, "rb") as handle:
        handle.seek(info.header_offset)
        local = handle.read(30)   # the local file header: its name and extra field lengths end it
        if local[:4] != b"PK\x03\x04":
            return None
        name_length, extra_length = struct.unpack("<HH", local[26:30])
        handle.seek(info.header_offset + 30 + name_length + extra_length)
        version = np.lib.format.read_magic(handle)
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = read_header(handle)
        offset = handle.tell()
    if fortran or dtype.hasobject or offset + dtype.itemsize * math.prod(shape) > path.stat().st_size:
        return None
    return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape)


def _unpacked_member(path: Path, key: str) -> np.memmap | None:
    """Array ``key`` of a compressed .npz (``numpy.savez_compressed``) inflated once, a chunk at a time, into
    the cache (``images/splits/<key>.npy``, kind ``splits``), and memory-mapped from there: read into memory
    whole it did not fit where a larger-than-memory folder of images does. Keyed by the archive
    (``file_identity``) and the member's CRC-32; ``None`` for a member not in C order or holding objects."""
    import zipfile

    with zipfile.ZipFile(path) as archive:
        info = archive.getinfo(f"{key}.npy")
        digest = hashlib.sha256(f"unpacked\0{path.resolve()}\0{file_identity(path.stat())}\0{key}\0{info.CRC}".encode())
        target = default_cache_dir() / "images" / "splits" / f"{digest.hexdigest()[:32]}.npy"
        # (not touched: its splits are keyed by its mtime, as a decoded folder's by its x.npy's)
        if (unpacked := cached_array(target, mmap_mode="r")) is not None:
            return unpacked
        with archive.open(info) as member:
            version = np.lib.format.read_magic(member)
            read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, fortran, dtype = read_header(member)
            if fortran or dtype.hasobject:
                return None

            def fill(out):   # the member's bytes straight into the mapped file, a chunk at a time
                flat = out.reshape(-1).view(np.uint8)
                for start in range(0, len(flat), SPLIT_CHUNK_BYTES):
                    view = memoryview(flat[start:start + SPLIT_CHUNK_BYTES])
                    if member.readinto(view) != len(view):
                        raise DataError(f"'{path}': array '{key}' ends before its {math.prod(shape)} values; save it again.")

            _write_npy(target, dtype, shape, fill, failed=lambda reason: (
                f"Cannot unpack '{key}' of '{path}' into the cache ({reason}); free disk space there, point "
                f"EDGEKD_CACHE at a folder with room for it, or save the .npz uncompressed (numpy.savez)."))
    return np.load(target, mmap_mode="r")


def _labels(path: Path, name: str, y: np.ndarray) -> np.ndarray:
    """Integer class labels; float labels only when every one is a finite whole number (2.0, not 2.7)."""
    if y.ndim != 1:
        raise DataError(f"'{path}': '{name}' must be a vector of class labels. Got shape {y.shape} instead.")
    if y.dtype.kind == "f":
        if not np.isfinite(y).all():
            raise DataError(f"'{path}': '{name}' holds NaN or Inf labels; labels must be whole class indices.")
        if (y != np.round(y)).any():
            bad = y[y != np.round(y)][0]
            raise DataError(f"'{path}': '{name}' must hold whole class indices. Got {bad.item()!r} among them; save integer labels.")
        if len(y) and np.abs(y).max() >= 2**62:
            raise DataError(f"'{path}': '{name}' holds labels too large to be class indices; number the classes 0..C-1.")
        return y.astype(np.int64)
    if y.dtype.kind in "US":
        raise DataError(f"'{path}': '{name}' must hold integer class indices. Got text labels (dtype {y.dtype}"
                        f"{', e.g. ' + repr(y[0].item()) if len(y) else ''}) instead; save {_PLAIN_ARRAY[name]}.")
    if y.dtype.kind not in "iu":
        raise DataError(f"'{path}': '{name}' must hold integer class labels. Got dtype {y.dtype} instead.")
    if y.dtype.kind == "u" and len(y) and y.max() > np.iinfo(np.int64).max:
        raise DataError(f"'{path}': '{name}' holds labels too large to be class indices; number the classes 0..C-1.")
    return y.astype(np.int64, copy=False)


def _all_finite(x: np.ndarray) -> bool:
    """Finite also as float32, which the models read (float64 beyond 3.4e38 becomes Inf in the cast); checked in
    chunks of rows: a memory-mapped array is read once, never as a whole boolean copy."""
    step = chunk_rows(int(np.prod(x.shape[1:])) * x.dtype.itemsize)
    limit = float(np.finfo(np.float32).max)
    for i in range(0, len(x), step):
        chunk = x[i:i + step]   # read once (a memory-mapped array), checked twice
        if not np.isfinite(chunk).all() or (np.abs(chunk) > limit).any():
            return False
    return True


def _check_arrays(spec, x, y, x_test, y_test, classes) -> None:
    def fail(msg):
        raise DataError(f"Dataset '{spec}': {msg}")

    for xs, ys, part in ((x, y, "x/y"), (x_test, y_test, "x_test/y_test")):
        if xs is None and ys is None:
            continue
        if xs is None or ys is None:
            fail(f"{part} must be given together; add the missing array.")
        if xs.dtype.kind not in "uif" or xs.ndim not in (2, 3, 4):
            fail(f"inputs must be numeric arrays of shape (N, D), (N, H, W) or (N, C, H, W). Got dtype {xs.dtype}, shape {xs.shape} instead.")
        if xs.ndim == 4 and xs.shape[3] in (1, 3, 4) and xs.shape[1] not in (1, 3, 4):
            fail(f"inputs of shape {xs.shape} look channels-last (N, H, W, C); edgekd takes (N, C, H, W): save "
                 f"x.transpose(0, 3, 1, 2) instead.")
        if 0 in xs.shape[1:]:
            fail(f"each input must hold at least one value. Got inputs of shape {xs.shape[1:]} ({part}); save the "
                 f"features or pixels themselves.")
        if ys.ndim != 1 or len(ys) != len(xs):
            fail(f"labels must be a vector with one entry per input. Got {ys.shape} labels for {len(xs)} inputs.")
        if len(xs) == 0:
            fail(f"it holds no samples ({part} {'is' if part == 'x/y' else 'are'} empty); pass a dataset with at least "
                 f"one sample per class.")
        if xs.dtype.kind == "f" and not _all_finite(xs):
            fail("inputs contain NaN or Inf, or values beyond float32's range (3.4e38); clean or rescale the data first.")
        if ys.min() < 0 or ys.max() >= len(classes):
            fail(f"labels must be in [0, {len(classes) - 1}] for {len(classes)} classes. Got [{ys.min()}, {ys.max()}] instead.")
    if x_test is not None and x_test.shape[1:] != x.shape[1:]:
        fail(f"x_test has sample shape {x_test.shape[1:]} but x has {x.shape[1:]}; they must match.")
    counts = np.bincount(y, minlength=len(classes))
    if len(classes) < 2:
        fail(f"it has {len(classes)} class; a classifier needs at least 2. Pass data with two or more classes.")
    if (counts == 0).any():   # a gap in the numbering, or a named class without samples
        fail(f"class(es) {np.flatnonzero(counts == 0).tolist()[:10]} have no training samples; number the classes "
             f"0..C-1 without gaps (or drop their names from class_names).")
    if x_test is None and (counts < 3).any():   # the test split is held out of these too
        fail(f"every class needs at least 3 samples when there is no test split (one each for test, val and train); "
             f"class(es) {np.flatnonzero(counts < 3).tolist()} have fewer; add samples, or a test split (x_test/y_test, "
             f"or a test/ folder).")
    if (counts < 2).any():
        fail(f"every class needs at least 2 training samples to split train/val; class(es) {np.flatnonzero(counts < 2).tolist()} have fewer.")


# --- splits -------------------------------------------------------------------------------------

def _by_label(labels: np.ndarray):
    """(label, indices into ``labels`` in increasing order) for every label present, in increasing
    label order; one stable sort instead of a scan per label (10,000 classes stay fast)."""
    order = np.argsort(labels, kind="stable")
    values, starts = np.unique(labels[order], return_index=True)
    return zip(values, np.split(order, starts[1:]))


def _stratified_split(y: np.ndarray, fraction: float, seed: int, keep_at_least: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Indices (keep, held_out) with ``fraction`` of each class held out (at least one per class, and at
    least ``keep_at_least`` of each kept)."""
    rng = np.random.default_rng(seed)
    keep, held = [], []
    for _, members in _by_label(y):
        idx = rng.permutation(members)
        n_held = min(len(idx) - keep_at_least, max(1, round(fraction * len(idx))))
        held.append(idx[:n_held])
        keep.append(idx[n_held:])
    return np.sort(np.concatenate(keep)), np.sort(np.concatenate(held))


def _stratified_subset(y: np.ndarray, idx: np.ndarray, n: int, seed: int) -> np.ndarray:
    """A stratified subset of ``idx`` of ``n`` samples (more only when ``n`` is below the number of classes):
    each class its share ``n * size / total`` rounded down, at least one, and the rows still missing go to the
    largest remainders (Hamilton's method; rounding each share on its own gave 601 rows for 600)."""
    if n >= len(idx):
        return idx
    rng = np.random.default_rng(seed + 1)
    groups = [idx[positions] for _, positions in _by_label(y[idx])]
    quota = n * np.array([len(g) for g in groups]) / len(idx)
    take = np.maximum(1, np.floor(quota).astype(int))
    for i in np.argsort(-(quota - np.floor(quota)), kind="stable")[:max(0, n - int(take.sum()))]:
        take[i] = min(take[i] + 1, len(groups[i]))
    return np.sort(np.concatenate([rng.permutation(g)[:t] for g, t in zip(groups, take)]))


def stratified_subset_indices(y, n: int, seed: int) -> np.ndarray:
    """Public form of the stratified subset, over all of ``y`` (used for transfer-set limits)."""
    y = np.asarray(y)
    return _stratified_subset(y, np.arange(len(y)), n, seed)
