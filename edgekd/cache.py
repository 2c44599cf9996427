"""Teacher logits, computed once and cached on disk.

The key is a sha256 of the teacher's fingerprint (its weights or file), the inputs' fingerprint and
the augmentation views, so a changed teacher or changed data never reuses a stale cache. Logits are
stored raw (before any temperature), so T can change without recomputing. Each cache file carries
the sha256 of its values in its header: a torn or edited file is reported, never silently used.

Location: ``$EDGEKD_CACHE`` or ``~/.cache/edgekd`` (override per call with ``cache_dir``).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch

from edgekd.errors import EdgekdError


def default_cache_dir() -> Path:
    return Path(os.environ.get("EDGEKD_CACHE") or Path.home() / ".cache" / "edgekd")


def cache_key(*parts: str) -> str:
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:32]


class LogitCache:
    def __init__(self, cache_dir: str | Path | None = None, *, enabled: bool = True, writer: bool = True):
        self.dir = Path(cache_dir) if cache_dir else default_cache_dir()
        self.enabled = enabled
        self.writer = writer
        self.hits = 0
        self.misses = 0

    def get_or_compute(self, key: str, compute, *, refresh: bool = False, dist=None) -> torch.Tensor:
        """The cached tensor under ``key``, else ``compute()`` (then stored).

        Under torchrun every rank must take the same branch (``compute`` is collective), so the
        ranks agree: the cache is used only when every rank finds it.
        """
        cached = self.load(key) if self.enabled and not refresh else None
        found = cached is not None if dist is None else dist.all_true(cached is not None)
        if found:
            self.hits += 1
            return cached
        self.misses += 1
        value = compute()
        if self.enabled and self.writer:
            self.store(key, value)
        return value

    def path(self, key: str) -> Path:
        return self.dir / f"{key}.safetensors"

    def load(self, key: str) -> torch.Tensor | None:
        from safetensors import safe_open

        path = self.path(key)
        if not path.is_file():
            return None
        try:
            with safe_open(str(path), framework="pt") as handle:
                expected = (handle.metadata() or {}).get("sha256")
                value = handle.get_tensor("logits")
        except Exception:  # a torn file fails to parse
            expected, value = None, None
        if value is None or expected != _tensor_sha256(value):
            raise EdgekdError(f"Cached teacher logits '{path}' fail their sha256 check (torn or edited); "
                              f"delete that file or rerun with --refresh-cache.")
        return value

    def store(self, key: str, value: torch.Tensor) -> None:
        """One file, written to a temporary name then renamed; the hash of the values is in its header."""
        from safetensors.torch import save_file

        self.dir.mkdir(parents=True, exist_ok=True)
        value = value.detach().contiguous().cpu()
        tmp = self.dir / f".{key}.{os.getpid()}.tmp"
        save_file({"logits": value}, str(tmp), metadata={"sha256": _tensor_sha256(value)})
        os.replace(tmp, self.path(key))


def _tensor_sha256(value: torch.Tensor) -> str:
    return hashlib.sha256(value.contiguous().numpy().tobytes()).hexdigest()
