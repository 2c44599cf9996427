"""Validation in one place, phrased like scikit-learn's parameter checks."""

from __future__ import annotations

import math
import numbers
from pathlib import Path
from typing import Iterable

from edgekd.errors import ConfigError


def _real(value) -> bool:
    """A real number (numpy's too), not a bool and not text that looks like one: types are checked before values."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def check_positive(name: str, value: float, *, strict: bool = True) -> float:
    """``value > 0`` (or ``>= 0`` with ``strict=False``), and finite."""
    if not _real(value) or not math.isfinite(value) or not (value > 0 if strict else value >= 0):
        bound = "> 0" if strict else ">= 0"
        raise ConfigError(f"The '{name}' parameter must be {bound} and finite. Got {value!r} instead.")
    return value


def check_in_range(name: str, value: float, low: float, high: float) -> float:
    """``low <= value <= high``."""
    if not _real(value) or not math.isfinite(value) or not low <= value <= high:
        raise ConfigError(f"The '{name}' parameter must be in [{low:g}, {high:g}]. Got {value!r} instead.")
    return value


def check_bool(name: str, value) -> bool:
    """``True`` or ``False`` (numpy's too): ``flip="no"`` turned mirroring on."""
    if type(value).__name__ not in ("bool", "bool_"):
        raise ConfigError(f"The '{name}' parameter must be True or False. Got {value!r} instead.")
    return bool(value)


DEVICES = ("auto", "cpu", "cuda")   # or "cuda:N"; resolved once, in edgekd.device


def check_device(name) -> str:
    """A device name edgekd can resolve (whether that device exists is resolve_device's to say)."""
    text = str(name)
    if text not in DEVICES and not (text.startswith("cuda:") and text[5:].isdigit()):
        raise ConfigError(f"The 'device' parameter must be one of {', '.join(map(repr, DEVICES))} or 'cuda:N'. "
                          f"Got {name!r} instead.")
    return name


# the share of the training rows held out for val: at least one per cent, at most half (the CLI's range too)
VAL_FRACTION_RANGE = (0.01, 0.5)
VAL_FRACTION = 0.1   # the share of train held out for val, by default (every loader and command)


def check_val_fraction(value: float, name: str = "val_fraction") -> float:
    return check_in_range(name, value, *VAL_FRACTION_RANGE)


def check_int_at_least(name: str, value: int, low: int) -> int:
    if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < low:   # (numpy's integers too)
        raise ConfigError(f"The '{name}' parameter must be an integer >= {low}. Got {value!r} instead.")
    return value


def check_indices(name: str, values, size: int) -> tuple[int, ...]:
    """Distinct integers in [0, size), at least one: a subset of ``size`` things chosen by index."""
    values = tuple(values)
    if (not values or len(set(values)) != len(values)
            or not all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v < size for v in values)):
        raise ConfigError(f"The '{name}' parameter must be distinct integers in [0, {size - 1}], at least one. "
                          f"Got {list(values)!r} instead.")
    return values


def check_choice(name: str, value: str, choices: Iterable[str]) -> str:
    choices = list(choices)
    if value not in choices:
        raise ConfigError(f"The '{name}' parameter must be one of {', '.join(map(repr, choices))}. Got {value!r} instead.")
    return value


def check_output_dir(path: str | Path, *, overwrite: bool, resume: bool = False, kind: str = "artifact",
                     inputs=(), in_place=None, data=()) -> Path:
    """An output folder: see ``edgekd.outputs.check_output`` (only edgekd's own outputs are replaced)."""
    from edgekd.outputs import check_output

    return check_output(path, kind=kind, overwrite=overwrite, resume=resume, inputs=inputs, in_place=in_place, data=data)


def check_output_file(path: str | Path, *, overwrite: bool, inputs=(), data=()) -> Path:
    """An export file: its folder must exist; an existing one is replaced only if edgekd exported it."""
    from edgekd.outputs import check_output

    return check_output(path, kind="export", overwrite=overwrite, inputs=inputs, data=data)


# fit() derives per-epoch and per-step generator seeds as (seed * 100003 + epoch) * 1000033 + step, which
# must stay below 2**64: seeds up to 10**8 keep them there
MAX_SEED = 10**8
MAX_LR = 10.0
# T^2 scales the soft term: far above the paper's 1-20, far below where it overflows float32 (about 1.8e19)
MAX_TEMPERATURE = 1000.0


def check_temperature(name: str, value: float) -> float:
    """A softmax temperature: > 0, finite and at most ``MAX_TEMPERATURE``."""
    check_positive(name, value)
    if value > MAX_TEMPERATURE:
        raise ConfigError(f"The '{name}' parameter must be at most {MAX_TEMPERATURE:g} (the paper uses 1 to 20; above that "
                          f"every target is uniform and T^2 overflows the loss). Got {value!r} instead.")
    return value


def check_seed(value, name: str = "seed") -> int:
    if not isinstance(value, numbers.Integral) or isinstance(value, bool) or not 0 <= value <= MAX_SEED:
        raise ConfigError(f"The '{name}' parameter must be an integer in [0, {MAX_SEED}]. Got {value!r} instead.")
    return value


def check_jitter(jitter: int, input_shape, name: str = "jitter") -> int:
    """Shifts of ``jitter`` pixels must leave part of the image: ``jitter`` < the image's smaller side; and
    there must be an image to shift."""
    shape = tuple(input_shape)
    if jitter and len(shape) != 3:   # apply_shifts leaves vectors as they are: the option would do nothing
        raise ConfigError(f"The '{name}' parameter shifts images, but the inputs have shape {shape}. Got {name}={jitter} "
                          f"instead; leave --{name.replace('_', '-')} out for data that are not images.")
    if len(shape) == 3 and jitter >= min(shape[1:]):
        raise ConfigError(f"The '{name}' parameter must be smaller than the images' side ({min(shape[1:])} pixels for "
                          f"inputs of shape {shape}). Got {jitter} instead; pass --{name.replace('_', '-')} "
                          f"{max(0, min(shape[1:]) // 4)} or less.")
    return jitter


def check_flip(flip: bool, input_shape, name: str = "flip") -> bool:
    """A left-right mirror needs images (C, H, W)."""
    shape = tuple(input_shape)
    if flip and len(shape) != 3:
        raise ConfigError(f"The '{name}' parameter mirrors images, but the inputs have shape {shape}. "
                          f"Got {name}=True instead; leave --{name.replace('_', '-')} out for data that are not images.")
    return flip


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


def as_tuple(value) -> tuple:
    """The items of ``value`` as a tuple; one text or number is one item (a config's ``skip="bench"`` was read a
    letter at a time, and a list kept a frozen config unhashable)."""
    if isinstance(value, (str, bytes, numbers.Number)):
        return (value,)
    return tuple(value)
