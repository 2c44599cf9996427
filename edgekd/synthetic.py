"""``synthetic:`` data: many classes with a known confusion structure, generated (not downloaded).

    synthetic:classes=1000,groups=50,dim=64,seed=0[,sep=8,spread=4,train=100,test=20]

The classes are split into ``groups`` groups of (nearly) equal size, assigned at random. In R^dim,
with unit Gaussian noise on every coordinate (``x = mu_c + N(0, I)``):

    group centre  g_k  ~ N(0, sep^2    / (2 dim) I)   two centres are about ``sep`` apart
    class mean    mu_c = g_k(c) + N(0, spread^2 / (2 dim) I)   two classes of one group about ``spread`` apart

so classes of one group are confusable (a pair at distance d is mistaken with probability about
Phi(-d/2): 2.3% at the default spread 4, and a class has ``classes/groups - 1`` such neighbours)
while groups are not when ``sep`` is large. ``sep`` is the difficulty knob for the clustering: the
smaller it is, the more the groups blur into each other. ``train`` and ``test`` are examples per
class; the test split is generated, not held out of train.

Everything is drawn from ``numpy.random.default_rng`` streams spawned from ``seed``, so a spec gives
the same arrays on every machine; 1,000 classes x 120 examples x 64 dimensions take well under a
second. ``true_groups(spec)`` returns each class's group (for scoring a clustering against it)
without generating the examples. Class names are ``g<group>/c<class>`` so a reader of a cluster
report sees at once whether a cluster is a group.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edgekd.errors import DataError

MAX_CLASSES = 100_000
MAX_DIM = 4096
MAX_VALUES = 1_000_000_000          # classes x (train + test) x dim: 4 GB of float32 at most
EXAMPLE = "synthetic:classes=1000,groups=50,dim=64,seed=0"


@dataclass(frozen=True)
class SyntheticSpec:
    classes: int = 1000
    groups: int = 50
    dim: int = 64
    seed: int = 0
    sep: float = 8.0          # typical distance between two group centres (noise std = 1)
    spread: float = 4.0       # typical distance between two class means of one group
    train: int = 100          # training examples per class (val is split off them)
    test: int = 20            # test examples per class

    def spec(self) -> str:
        """The full spec string, every option written out."""
        return (f"synthetic:classes={self.classes},groups={self.groups},dim={self.dim},seed={self.seed},"
                f"sep={self.sep:g},spread={self.spread:g},train={self.train},test={self.test}")


_INTS = {"classes": (2, MAX_CLASSES), "groups": (1, MAX_CLASSES), "dim": (1, MAX_DIM), "seed": (0, 2**32 - 1),
         "train": (2, 100_000), "test": (1, 100_000)}
_FLOATS = ("sep", "spread")
MAX_DISTANCE = 1e6   # against a noise std of 1 far beyond any difficulty, and far inside float32
_EXPECTED = (f"expected classes=N (2..{MAX_CLASSES}), groups=G (1..classes), dim=D (1..{MAX_DIM}), seed=S (>= 0), "
             f"sep=F and spread=F (0..{MAX_DISTANCE:g}), train=N (>= 2 per class), test=N (>= 1 per class), e.g. '{EXAMPLE}'")


def parse_spec(arg: str) -> SyntheticSpec:
    """``classes=N,groups=G,...`` (the part after ``synthetic:``) -> SyntheticSpec, every option checked
    and the size bounded before anything is allocated."""
    values: dict = {}
    for option in (o for o in arg.split(",") if o.strip()):
        key, eq, value = (part.strip() for part in option.partition("="))
        try:
            if not eq or key in values:
                raise ValueError
            if key in _INTS:
                number = int(value)
                low, high = _INTS[key]
                if not low <= number <= high:
                    raise ValueError
                values[key] = number
            elif key in _FLOATS:
                number = float(value)
                if not (np.isfinite(number) and 0 <= number <= MAX_DISTANCE):
                    raise ValueError
                values[key] = number
            else:
                raise ValueError
        except ValueError:
            raise DataError(f"Synthetic data option '{option}' is not understood; {_EXPECTED}.") from None
    spec = SyntheticSpec(**values)
    if spec.groups > spec.classes:
        given = "" if "groups" in values else " (the default)"
        raise DataError(f"Synthetic data: 'groups' must be at most 'classes' ({spec.classes}). Got {spec.groups}{given} "
                        f"instead; pass groups=G with G <= {spec.classes}.")
    size = spec.classes * (spec.train + spec.test) * spec.dim
    if size > MAX_VALUES:
        raise DataError(f"Synthetic data of {spec.classes} classes x {spec.train + spec.test} examples x {spec.dim} "
                        f"dimensions is {size:,} values, over the {MAX_VALUES:,} (4 GB as float32; loading holds about "
                        f"twice that while it splits) edgekd generates; lower "
                        f"'train', 'test' or 'dim'.")
    return spec


def _streams(spec: SyntheticSpec):
    """Independent generators for: group assignment, centres, class offsets, train noise, test noise."""
    return [np.random.default_rng(s) for s in np.random.SeedSequence(spec.seed).spawn(5)]


def _groups(spec: SyntheticSpec, rng) -> np.ndarray:
    return rng.permutation(np.arange(spec.classes) % spec.groups).astype(np.int64)


def true_groups(spec: str | SyntheticSpec) -> np.ndarray:
    """(C,) the group of every class of a ``synthetic:`` spec (string or parsed)."""
    if isinstance(spec, str):
        name, _, arg = spec.partition(":")
        if name != "synthetic":
            raise DataError(f"True groups exist only for 'synthetic:' data. Got '{spec}' instead.")
        spec = parse_spec(arg)
    return _groups(spec, _streams(spec)[0])


def class_names(spec: SyntheticSpec, groups: np.ndarray) -> tuple[str, ...]:
    gw, cw = len(str(spec.groups - 1)), len(str(spec.classes - 1))
    return tuple(f"g{g:0{gw}d}/c{c:0{cw}d}" for c, g in enumerate(groups))


def class_means(spec: SyntheticSpec) -> np.ndarray:
    """(C, dim) float64 class means (the Bayes classifier's centres)."""
    rng_groups, rng_centres, rng_offsets, _, _ = _streams(spec)
    groups = _groups(spec, rng_groups)
    centres = rng_centres.normal(0.0, spec.sep / np.sqrt(2 * spec.dim), (spec.groups, spec.dim))
    offsets = rng_offsets.normal(0.0, spec.spread / np.sqrt(2 * spec.dim), (spec.classes, spec.dim))
    return centres[groups] + offsets


def _draw(spec: SyntheticSpec, means: np.ndarray, per_class: int, rng) -> tuple[np.ndarray, np.ndarray]:
    labels = rng.permutation(np.repeat(np.arange(spec.classes, dtype=np.int64), per_class))
    x = rng.standard_normal((len(labels), spec.dim), dtype=np.float32)
    means = means.astype(np.float32)   # the same values as casting each gathered row; no float64 (N, dim) copy
    step = max(1, (64 << 20) // (4 * spec.dim))
    for start in range(0, len(labels), step):
        x[start:start + step] += means[labels[start:start + step]]
    return x, labels


def load_synthetic(arg: str):
    """(x, y, x_test, y_test, class names) for ``synthetic:<arg>``."""
    spec = parse_spec(arg)
    streams = _streams(spec)
    groups = _groups(spec, streams[0])
    means = class_means(spec)
    x, y = _draw(spec, means, spec.train, streams[3])
    x_test, y_test = _draw(spec, means, spec.test, streams[4])
    return x, y, x_test, y_test, class_names(spec, groups)
