"""Teacher logits, computed once and cached on disk.

The key is a sha256 of the teacher's fingerprint (its weights or file), the inputs' fingerprint and
the augmentation views, so a changed teacher or changed data never reuses a stale cache. Logits are
stored raw (before any temperature), so T can change without recomputing. Each cache file carries
the sha256 of its values in its header: a torn file is reported, never silently used; and since a
hash in the file proves nothing against an edit that recomputes it, every hit is also checked by
recomputing the teacher on 64 random cached rows (a mismatch discards the entry with a warning).
A cache that cannot be written (full or read-only disk) is a warning; the run goes on.

Location: ``$EDGEKD_CACHE`` or ``~/.cache/edgekd`` (override per call with ``cache_dir``).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import warnings
from pathlib import Path

import torch

from edgekd.cachedir import default_cache_dir, safetensors_header, touch
from edgekd.errors import EdgekdError, EdgekdWarning, TeacherError

VERIFY_ROWS = 64


def logits_match(cached: torch.Tensor, fresh: torch.Tensor, *, loose: bool = False) -> bool:
    """Cached and recomputed logits agree: ``|a - b| <= tol * max(1, max|b|)`` with ``tol`` 1e-3 on the CPU
    (float32 summation order, batch size) and 2e-2 where CUDA took part (TF32 matmuls, other kernels)."""
    if cached.shape != fresh.shape:
        return False
    tol = 2e-2 if loose else 1e-3
    scale = max(1.0, float(fresh.abs().max())) if fresh.numel() else 1.0
    if not cached.numel():
        return True
    return bool(torch.isfinite(cached).all()) and float((cached.float() - fresh).abs().max()) <= tol * scale


def cache_key(*parts: str) -> str:
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:32]


class LogitCache:
    def __init__(self, cache_dir: str | Path | None = None, *, enabled: bool = True, writer: bool = True):
        self.dir = Path(cache_dir) if cache_dir else default_cache_dir()
        self.enabled = enabled
        self.writer = writer
        self.hits = 0
        self.misses = 0
        self._metadata: dict[str, dict] = {}

    def get_or_compute(self, key: str, compute, *, refresh: bool = False, dist=None, check=None) -> torch.Tensor:
        """The cached tensor under ``key``, else ``compute()`` (then stored).

        ``check(rows)`` recomputes the given rows (a LongTensor of indices): on every hit a random
        sample of ``VERIFY_ROWS`` cached rows is recomputed and compared (``logits_match``); an entry
        that does not match was edited (its header hash recomputed) or made by another teacher: it is
        discarded with a warning and recomputed. Under torchrun every rank must take the same branch
        (``compute`` is collective), so the ranks agree: the cache is used only when every rank finds it.
        """
        cached = self.load(key) if self.enabled and not refresh else None
        if cached is not None and check is not None and not self._verify(key, cached, check):
            cached = None
        found = cached is not None if dist is None else dist.all_true(cached is not None)
        if found:
            self.hits += 1
            return cached
        self.misses += 1
        value = compute()
        if torch.is_tensor(value) and value.is_floating_point() and not _finite(value):
            raise TeacherError("The teacher's logits contain NaN or Inf (its weights or outputs are not finite); "
                               "pass a teacher that gives finite outputs on this data.")
        if self.enabled and self.writer:
            self.store(key, value)
        return value

    def _verify(self, key: str, cached: torch.Tensor, check) -> bool:
        if cached.dim() < 1 or len(cached) == 0:
            return True
        seed = int.from_bytes(os.urandom(8), "little")   # unpredictable: an edit cannot dodge the sample
        rows = torch.randperm(len(cached), generator=torch.Generator().manual_seed(seed))[:VERIFY_ROWS]
        fresh = check(rows)
        if torch.is_tensor(fresh) and logits_match(cached[rows], fresh.detach().float().cpu(),
                                                   loose=self._device(key) == "cuda" or torch.cuda.is_available()):
            return True
        warnings.warn(f"Cached teacher logits '{self.path(key)}' do not match the teacher recomputed on {len(rows)} "
                      f"random rows (edited, or made by another teacher); discarded and recomputed.", EdgekdWarning,
                      stacklevel=3)
        with contextlib.suppress(OSError):
            self.path(key).unlink()
        return False

    def _device(self, key: str) -> str | None:
        return self._metadata.get(key, {}).get("device")

    def path(self, key: str) -> Path:
        return self.dir / f"{key}.safetensors"

    def load(self, key: str) -> torch.Tensor | None:
        path = self.path(key)
        if not path.is_file():
            return None
        try:
            value, metadata = _mapped_logits(path)
            expected = metadata.get("sha256")
        except Exception:  # a torn file fails to parse
            if not path.exists():
                return None   # removed since it was seen (`edgekd cache prune` meanwhile): a miss, computed again
            metadata, expected, value = {}, None, None
        self._metadata[key] = metadata
        if value is None or expected != _tensor_sha256(value):
            raise EdgekdError(f"Cached teacher logits '{path}' fail their sha256 check (torn or edited); "
                              f"delete that file or rerun with --refresh-cache.")
        touch(path)   # used now: `edgekd cache prune --older-than` keeps it
        return value

    def store(self, key: str, value: torch.Tensor) -> None:
        """One file, written to a temporary name then renamed; the hash of the values is in its header."""
        from edgekd.artifacts import save_tensors

        # where the logits were computed, not where they ended up: a CUDA teacher may hand them back on the
        # CPU, and a hit verified on a CPU-only machine needs the looser tolerance of CUDA's kernels
        device = "cuda" if value.device.type == "cuda" or torch.cuda.is_initialized() else "cpu"
        value = value.detach().contiguous().cpu()
        from edgekd.outputs import holding

        tmp = self.dir / f".{key}.{os.getpid()}.tmp"
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            with holding(tmp):   # a cache another container shares: its `cache prune` must not take it for a dead writer's
                save_tensors(tmp, {"logits": value}, metadata={"sha256": _tensor_sha256(value), "device": device})
                os.replace(tmp, self.path(key))
        except BaseException as exc:   # (Ctrl-C too: the temporary holds the split's logits)
            with contextlib.suppress(OSError):
                tmp.unlink()
            if not isinstance(exc, OSError):
                raise
            # a full or read-only cache folder costs a recomputation next time, not the run
            warnings.warn(f"Could not write the teacher-logit cache '{self.dir}' ({exc.strerror or exc}); going on "
                          f"without caching (pass --cache-dir to put it elsewhere).", EdgekdWarning, stacklevel=3)


def _mapped_logits(path: Path) -> tuple[torch.Tensor, dict]:
    """The ``logits`` tensor of a cache file, memory-mapped copy-on-write (the pages stay the file's: a hit held a
    copy of the table in anonymous memory, beside the rows taken from it), and the file's metadata. A file that is
    not one float32 tensor as ``store`` writes it is read by safetensors."""
    import numpy as np

    length, header = safetensors_header(path)
    metadata, entry = header.get("__metadata__") or {}, header["logits"]
    shape, (start, end) = [int(d) for d in entry["shape"]], entry["data_offsets"]
    size = int(np.prod(shape)) * 4
    if entry["dtype"] != "F32" or end - start != size or not size or 8 + length + end > path.stat().st_size:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as handle:
            return handle.get_tensor("logits"), handle.metadata() or {}
    array = np.memmap(path, dtype=np.float32, mode="c", offset=8 + length + start, shape=tuple(shape))
    return torch.from_numpy(array), metadata


def _finite(value: torch.Tensor, rows: int = 1 << 14) -> bool:
    """Whether every value is finite, checked a block of rows at a time (a whole-table check made a float and a
    bool copy of a large table)."""
    return all(bool(torch.isfinite(value[i:i + rows]).all()) for i in range(0, len(value), rows))


def _tensor_sha256(value: torch.Tensor) -> str:
    # the array's own buffer: .tobytes() would hold a second copy of the logits while hashing
    return hashlib.sha256(value.contiguous().numpy().data).hexdigest()
