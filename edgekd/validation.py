"""Validation in one place, phrased like scikit-learn's parameter checks."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Iterable

from edgekd.errors import ConfigError, EdgekdError


def check_positive(name: str, value: float, *, strict: bool = True) -> float:
    """``value > 0`` (or ``>= 0`` with ``strict=False``), and finite."""
    ok = value > 0 if strict else value >= 0
    if not isinstance(value, (int, float)) or not math.isfinite(value) or not ok:
        bound = "> 0" if strict else ">= 0"
        raise ConfigError(f"The '{name}' parameter must be {bound}. Got {value!r} instead.")
    return value


def check_in_range(name: str, value: float, low: float, high: float) -> float:
    """``low <= value <= high``."""
    if not isinstance(value, (int, float)) or not math.isfinite(value) or not low <= value <= high:
        raise ConfigError(f"The '{name}' parameter must be in [{low:g}, {high:g}]. Got {value!r} instead.")
    return value


def check_int_at_least(name: str, value: int, low: int) -> int:
    if not isinstance(value, int) or value < low:
        raise ConfigError(f"The '{name}' parameter must be an integer >= {low}. Got {value!r} instead.")
    return value


def check_choice(name: str, value: str, choices: Iterable[str]) -> str:
    choices = list(choices)
    if value not in choices:
        raise ConfigError(f"The '{name}' parameter must be one of {', '.join(map(repr, choices))}. Got {value!r} instead.")
    return value


def check_output_dir(path: str | Path, *, overwrite: bool) -> Path:
    """An output folder must not exist (or be empty) unless ``overwrite`` is set."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise EdgekdError(f"Output path '{path}' exists and is not a folder; choose another --out.")
    if path.is_dir() and any(path.iterdir()) and not overwrite:
        raise EdgekdError(f"Output folder '{path}' already exists and is not empty; pass --overwrite or choose another --out.")
    ancestor = path.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent   # missing parent folders are created when the output is written
    if not ancestor.is_dir():
        raise EdgekdError(f"Output folder '{path}' cannot be created: '{ancestor}' is a file; choose another --out.")
    return path


def check_output_file(path: str | Path, *, overwrite: bool) -> Path:
    """An output file's folder must exist; an existing file is kept unless ``overwrite`` is set."""
    path = Path(path)
    if not path.parent.is_dir():
        raise EdgekdError(f"The folder '{path.parent}' of output '{path}' does not exist; create it first or choose another --out.")
    if path.is_dir():
        raise EdgekdError(f"Output path '{path}' is a folder; give a file name.")
    if path.exists() and not overwrite:
        raise EdgekdError(f"Output file '{path}' already exists; pass --overwrite or choose another --out.")
    return path


def parse_limit(name: str, value: str | float | int | None, total: int) -> int | None:
    """A count (``5000``) or a fraction (``0.03``) of ``total``; ``None`` means all."""
    if value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"The '{name}' parameter must be a count or a fraction in (0, 1]. Got {value!r} instead.") from None
    if not math.isfinite(number) or number <= 0:
        raise ConfigError(f"The '{name}' parameter must be > 0. Got {value!r} instead.")
    if number <= 1 and not (isinstance(value, int) or (isinstance(value, str) and value.isdigit())):
        return max(1, round(number * total))
    if number != int(number):
        raise ConfigError(f"The '{name}' parameter must be a whole count or a fraction in (0, 1]. Got {value!r} instead.")
    return min(int(number), total)
