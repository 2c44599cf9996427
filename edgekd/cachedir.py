"""What edgekd keeps in its cache folder, and pruning it.

The cache folder (``$EDGEKD_CACHE`` or ``~/.cache/edgekd``) holds only what edgekd can make again:

- ``logits``: teacher logits, ``<key>.safetensors`` with edgekd's sha256 in the header (edgekd.cache);
- ``decoded``: an image folder decoded once, ``images/<key>.json`` + ``.x.npy`` + ``.y.npy`` + ``.h.npy``
  (edgekd.imagefolder);
- ``splits``: the train / val / test rows of a decoded folder or of an uncompressed ``.npz`` (and an ``.npz``'s
  inflated arrays and row digests),
  ``images/splits/<key>.npy`` (edgekd.data);
- ``conversions``: ncnn and MNN files converted from an ``.onnx`` by the benchmarks, ``convert/<name>/``;
- ``unfinished``: the temporary file of a logits, decode or split write whose process died before it
  renamed it into place (``.<key>.<pid>.tmp`` / ``.x.npy`` / ``.y.npy`` / ``.h.npy`` / ``.json.tmp`` / ``.npy``), and the arrays and
  lock of a decode killed between its renames; one of a running process is never listed.

A split file is a full copy of its rows, and every (split seed, val fraction, train limit) makes its
own, so a folder larger than memory leaves several such copies behind. ``prune_cache`` removes entries
not used for a while (each hit refreshes its entry's modification time, ``touch``) or all of them.

Only entries whose names (and, for logits, headers) are edgekd's are ever listed or removed, so a cache
folder pointed at a folder that holds other files loses none of them; links are never followed.
An entry in use by a running job can be removed: a memory-mapped file stays readable until closed, a logit
entry gone before it is read is a miss (computed again), and a decoded folder gone while its splits are
made stops the job with one line saying so (prune while no command runs).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import struct
import time
from dataclasses import dataclass
from pathlib import Path

from edgekd.validation import check_positive
from edgekd.records import Record

KINDS = ("logits", "decoded", "splits", "conversions", "unfinished")
_KEY = r"[0-9a-f]{32}"
_CONVERSION = re.compile(rf"^(?:[a-z0-9]+-{_KEY}-[A-Za-z0-9.+_-]+|[a-z0-9]+-identity)$")
_CONVERTING = re.compile(rf"^\.([a-z0-9]+-{_KEY}-[A-Za-z0-9.+_-]+)\.(\d+)-[0-9a-f]{{8}}\.tmp$")


@dataclass(frozen=True)
class CacheEntry:
    kind: str
    name: str
    paths: tuple[Path, ...]     # every file (or, for a conversion, the folder) that makes the entry
    bytes: int
    last_used: float            # seconds since the epoch: the newest modification time of its files

    def to_dict(self) -> dict:
        return {"kind": self.kind, "name": self.name, "bytes": self.bytes, "last_used": self.last_used,
                "paths": [str(p) for p in self.paths]}


@dataclass(frozen=True)
class PruneResult(Record):
    cache_dir: Path
    removed: tuple[CacheEntry, ...]
    kept: int
    dry_run: bool

    @property
    def bytes(self) -> int:
        return sum(e.bytes for e in self.removed)


def default_cache_dir() -> Path:
    """``$EDGEKD_CACHE``, else ``~/.cache/edgekd``."""
    return Path(os.environ.get("EDGEKD_CACHE") or Path.home() / ".cache" / "edgekd")


def touch(path: Path) -> None:
    """Mark a cache entry as used now (its age decides ``prune_cache --older-than``); best effort."""
    with contextlib.suppress(OSError):
        os.utime(path)


def cache_entries(cache_dir: str | Path) -> list[CacheEntry]:
    """Every edgekd entry in ``cache_dir``, oldest first (an empty list when the folder does not exist)."""
    root = Path(cache_dir)
    if not root.is_dir() or root.is_symlink():
        return []
    entries = [*_logits(root), *_decoded(root / "images"), *_splits(root / "images" / "splits"),
               *_conversions(root / "convert"), *_unfinished(root)]
    return sorted(entries, key=lambda e: e.last_used)


def prune_cache(cache_dir: str | Path, *, older_than_days: float | None = None, kinds=KINDS,
                dry_run: bool = False, now: float | None = None) -> PruneResult:
    """Remove the entries of ``kinds`` last used more than ``older_than_days`` ago (every one with
    ``None``); with ``dry_run`` only say which."""
    if older_than_days is not None:   # finite too: 'inf' would remove nothing, in silence
        check_positive("older_than_days", older_than_days, strict=False)
    unknown = sorted(set(kinds) - set(KINDS))
    if unknown:
        from edgekd.errors import ConfigError
        raise ConfigError(f"Unknown cache kind {unknown[0]!r}; choose one of {', '.join(KINDS)}.")
    now = time.time() if now is None else now
    entries = cache_entries(cache_dir)
    chosen = [e for e in entries if e.kind in kinds
              and (older_than_days is None or now - e.last_used > older_than_days * 86400)]
    if not dry_run:
        for entry in chosen:
            _remove(entry)
    return PruneResult(cache_dir=Path(cache_dir), removed=tuple(chosen), kept=len(entries) - len(chosen), dry_run=dry_run)


# --- finding entries -------------------------------------------------------------------------------

def _files(folder: Path, pattern: str):
    if not folder.is_dir() or folder.is_symlink():
        return
    regex = re.compile(pattern)
    for path in folder.iterdir():
        if regex.fullmatch(path.name) and path.is_file() and not path.is_symlink():
            yield path


def _entry(kind: str, name: str, paths) -> CacheEntry:
    stats = [p.lstat() for p in paths]
    return CacheEntry(kind=kind, name=name, paths=tuple(paths), bytes=sum(s.st_size for s in stats),
                      last_used=max(s.st_mtime for s in stats))


def _logits(root: Path):
    for path in _files(root, rf"{_KEY}\.safetensors"):
        if _is_edgekd_logits(path):
            yield _entry("logits", path.stem, [path])


def safetensors_header(path: Path) -> tuple[int, dict]:
    """(length, header) of a safetensors file's JSON header, read without its tensors; ``ValueError`` for a
    header that is not one (a length past 1 MiB, far above any cache entry's, is not read)."""
    with open(path, "rb") as handle:
        try:
            (length,) = struct.unpack("<Q", handle.read(8))
        except struct.error:
            raise ValueError(f"'{path}' is shorter than a safetensors header") from None
        if length > 1 << 20:
            raise ValueError(f"'{path}' declares a header of {length} bytes")
        header = json.loads(handle.read(length))
    if not isinstance(header, dict):
        raise ValueError(f"'{path}' has a header that is not a table")
    return length, header


def _is_edgekd_logits(path: Path) -> bool:
    """A safetensors file whose header metadata carries edgekd's sha256 (read without loading tensors)."""
    try:
        _, header = safetensors_header(path)
    except (OSError, ValueError):
        return False
    metadata = header.get("__metadata__") or {}
    return isinstance(metadata.get("sha256"), str) and len(metadata["sha256"]) == 64


def _decoded(folder: Path):
    for meta in _files(folder, rf"{_KEY}\.json"):
        key = meta.stem
        parts = [meta] + [p for p in (folder / f"{key}.{part}.npy" for part in "xyh")
                          if p.is_file() and not p.is_symlink()]
        yield _entry("decoded", key, parts)


def _splits(folder: Path):
    for path in _files(folder, rf"{_KEY}\.npy"):
        yield _entry("splits", path.stem, [path])


def _conversions(folder: Path):
    if not folder.is_dir() or folder.is_symlink():
        return
    for sub in folder.iterdir():
        if not (_CONVERSION.fullmatch(sub.name) and sub.is_dir() and not sub.is_symlink()):
            continue
        files = [p for p in sub.rglob("*") if p.is_file() and not p.is_symlink()]
        stats = [p.lstat() for p in files] or [sub.lstat()]
        yield CacheEntry(kind="conversions", name=sub.name, paths=(sub,), bytes=sum(s.st_size for s in stats),
                         last_used=max([sub.lstat().st_mtime] + [s.st_mtime for s in stats]))


def _unfinished(root: Path):
    """Temporary files named with the writer's pid (edgekd.cache, edgekd.imagefolder, edgekd.data) whose
    process is gone: a job killed mid-write leaves them, and nothing else would ever remove them."""
    from edgekd.outputs import left_behind

    for folder, suffix in ((root, r"tmp"), (root / "images", r"(?:[xyh]\.npy|json\.tmp)"), (root / "images" / "splits", r"npy")):
        for path in _files(folder, rf"\.({_KEY})\.(\d+)\.{suffix}"):
            key, pid = path.name.split(".")[1:3]
            if left_behind(int(pid), path):
                yield _entry("unfinished", f"{key} (process {pid})", [path])
    yield from _stopped_decodes(root / "images")
    convert = root / "convert"   # a conversion's folder as it is being made: .<name>.<pid>-<random>.tmp
    for sub in convert.iterdir() if convert.is_dir() and not convert.is_symlink() else ():
        found = _CONVERTING.fullmatch(sub.name)
        if found and sub.is_dir() and not sub.is_symlink() and left_behind(int(found.group(2)), sub):
            files = [p for p in sub.rglob("*") if p.is_file() and not p.is_symlink()]
            yield CacheEntry(kind="unfinished", name=f"{found.group(1)} (process {found.group(2)})", paths=(sub,),
                             bytes=sum(p.lstat().st_size for p in files), last_used=sub.lstat().st_mtime)


def _stopped_decodes(folder: Path):
    """What a decode killed between its renames leaves (edgekd.imagefolder): ``KEY.x.npy`` / ``.y.npy`` / ``.h.npy`` without
    the ``KEY.json`` that makes them an entry (a whole decoded folder no kind listed), and its ``.KEY.lock``;
    none while a decode of that key holds the lock."""
    from edgekd.outputs import is_held

    for path in _files(folder, rf"{_KEY}\.[xyh]\.npy"):
        key = path.name.split(".")[0]
        if not (folder / f"{key}.json").exists() and not is_held(folder / f".{key}.lock"):
            yield _entry("unfinished", f"{key} (decode stopped)", [path])
    for lock in _files(folder, rf"\.{_KEY}\.lock"):
        if not is_held(lock):
            yield _entry("unfinished", f"{lock.name[1:-5]} (decode lock)", [lock])


def _remove(entry: CacheEntry) -> None:
    for path in entry.paths:
        with contextlib.suppress(FileNotFoundError):
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()


def file_identity(stat: "os.stat_result") -> str:
    """What says a file is unchanged without reading it: size, mtime, and also ctime and inode, which a
    rewrite changes even when it keeps the size and puts the mtime back (``cp -p``, ``rsync -a``, tar)."""
    return f"{stat.st_size}\0{stat.st_mtime_ns}\0{stat.st_ctime_ns}\0{stat.st_ino}"


def cached_array(path: Path, mmap_mode: str | None = None):
    """The ``.npy`` cache entry at ``path``, or ``None`` where it is not made yet or torn, to be made again
    (numpy raises ``OSError``, ``ValueError``, or ``EOFError`` for an empty file, which click would report as
    an abort)."""
    import numpy as np

    try:
        return np.load(path, mmap_mode=mmap_mode)
    except (OSError, ValueError, EOFError):
        return None


def allocated_memmap(path: Path, dtype, shape):
    """A new ``.npy`` at ``path`` opened for writing through a memory map (``numpy.lib.format.open_memmap``), its
    blocks allocated on disk first (``posix_fallocate``). The file numpy makes is sparse: on a full disk a page
    written through the map kills the process with SIGBUS (no message, no clean-up, the partial file left in the
    cache), where allocation fails with ENOSPC, an ``OSError`` the caller reports. A filesystem that cannot
    allocate ahead (or a system without the call) keeps the sparse file."""
    import errno

    import numpy as np

    out = np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=shape)
    if not hasattr(os, "posix_fallocate"):   # macOS, Windows
        return out
    fd = os.open(path, os.O_RDWR)
    try:
        os.posix_fallocate(fd, 0, os.fstat(fd).st_size)
    except OSError as exc:
        if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
            del out
            raise
    finally:
        os.close(fd)
    return out
