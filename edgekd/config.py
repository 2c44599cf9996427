"""Every stage's settings as frozen, typed dataclasses: the one place where defaults live.

The command line derives its options' defaults from these classes (``defaults``), so a flag left out
and a config built in a notebook mean the same thing. The module imports no torch: ``edgekd --help``
stays instant. Architecture specs are checked against the registry when a config is built.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from edgekd.errors import ConfigError, TeacherError
from edgekd.validation import (MAX_LR, VAL_FRACTION, as_tuple, check_bool, check_choice, check_in_range, check_int_at_least, check_positive,
                               check_device, check_seed, check_temperature, check_val_fraction)

PRECISIONS = ("fp32", "bf16")
METHODS = ("kd", "kd-ls", "dkd", "nckd")
COMBINE_RULES = ("logits", "probs")
DEFAULT_TEMPERATURE_GRID = (1.0, 2.0, 4.0, 8.0, 16.0)
DEFAULT_ALPHA_GRID = (0.5, 0.9, 1.0)
MAX_MIXUP = 100.0   # Beta(a, a) concentration; beyond this every lam is 0.5 for all purposes


def defaults(cls) -> dict:
    """``{field: default}`` of a config class, read without building one (no validation, no imports)."""
    return {f.name: f.default for f in dataclasses.fields(cls) if f.default is not dataclasses.MISSING}


def _check_arch(spec: str) -> None:
    from edgekd.models import parse_arch

    parse_arch(spec)


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings of one training run."""

    epochs: int = 20
    batch_size: int = 128
    lr: float = 3e-3
    weight_decay: float = 1e-4
    patience: int = 0          # epochs without val improvement before stopping; 0 = never stop early
    jitter: int = 0            # random shifts of up to this many pixels (paper section 3)
    seed: int = 0
    device: str = "auto"       # "auto" | "cpu" | "cuda": resolved once, in edgekd.device (the CLI's default too)
    precision: str = "fp32"    # "fp32" | "bf16" (autocast of the forward pass and loss)
    # mixup (Zhang et al., ICLR 2018): each batch blended with a permutation of itself, lam ~ Beta(a, a); 0 = off
    mixup: float = 0.0
    # images only: a left-right mirror of a random half of each batch (for classes that keep their name
    # when mirrored: garments, animals; not digits or text)
    flip: bool = False

    def __post_init__(self):
        check_int_at_least("epochs", self.epochs, 1)
        check_int_at_least("batch_size", self.batch_size, 1)
        check_positive("lr", self.lr)
        check_in_range("lr", self.lr, 0.0, MAX_LR)
        check_in_range("weight_decay", self.weight_decay, 0.0, MAX_LR)
        check_int_at_least("patience", self.patience, 0)
        check_int_at_least("jitter", self.jitter, 0)
        check_seed(self.seed)
        check_choice("precision", self.precision, PRECISIONS)
        check_in_range("mixup", self.mixup, 0.0, MAX_MIXUP)
        check_bool("flip", self.flip)
        check_device(self.device)


@dataclass(frozen=True)
class TeacherConfig:
    """``edgekd teacher train``: ``ensemble`` members of ``arch`` with seeds seed..seed+N-1."""

    arch: str = "cnn"
    ensemble: int = 1
    combine: str = "logits"
    train: TrainConfig = TrainConfig(epochs=8, lr=2e-3)

    def __post_init__(self):
        _check_arch(self.arch)
        check_int_at_least("ensemble", self.ensemble, 1)
        check_choice("combine", self.combine, COMBINE_RULES)


@dataclass(frozen=True)
class DistillConfig:
    """``edgekd distill``; ``temperature=None`` / ``alpha=None`` mean "auto": picked on val from the grids.

    The defaults (logit standardization, T=2, alpha=0.5) are the candidate whose worst cell was best in
    ``benchmarks/defaults_study.py`` (results in ``benchmarks/results/defaults_study_10k.md``); the
    paper's plain KD at T=4, alpha=0.9 lost to its baseline in every cell there. With ``recipe_search``
    the student also tries ``search_methods`` (plain KD) at the same T and alpha and keeps the best on
    val: within a seed spread of the better of the two, per teacher and student, in the study
    (``benchmarks/results/defaults_pick_10k_*.md``; on the full data ``defaults_confirm_full_search.md``).
    """

    student: str = "mlp"
    temperature: float | None = 2.0
    alpha: float | None = 0.5
    temperature_grid: tuple[float, ...] = DEFAULT_TEMPERATURE_GRID
    alpha_grid: tuple[float, ...] = DEFAULT_ALPHA_GRID
    auto_epochs: int = 0            # budget of each auto candidate; 0 = a quarter of the epochs
    train: TrainConfig = TrainConfig(epochs=20)
    views: int = 0                  # with jitter: cached jittered views of the transfer set; 0 = online teacher
    view_grid: bool = False         # the views are every integer shift ((2j+1)^2): consistent teaching
    method: str = "kd-ls"           # soft term: "kd" | "kd-ls" | "dkd" | "nckd" (edgekd.losses)
    dkd_beta: float = 8.0           # weight of the non-target term with method "dkd"
    correct_teacher: bool = False   # swap the teacher's wrong top logit with the label's (edgekd.losses.corrected_teacher)
    transfer_limit: str | None = None
    omit_classes: tuple[int, ...] = ()
    baseline: bool = False
    baseline_jitter: int | None = None  # the baseline's recipe, fixed; None = its best of baseline_trials on val
    baseline_mixup: float | None = None  # with baseline_jitter, the fixed recipe's mixup (None: 0)
    baseline_flip: bool = False         # with baseline_jitter, whether the fixed recipe mirrors (train.flip)
    # on images, a student without jitter is also trained with +-2 px on consistent views (every shift, cached)
    # and the better on val kept: its own best recipe, as the baseline gets (edgekd.distill.student_recipes)
    recipe_search: bool = True
    # with recipe_search, these soft terms are also tried on the plain transfer set at the same T and alpha, the
    # best on val kept: kd-ls suits a teacher below the student's own baseline, kd's sharper targets one above it
    # (benchmarks/results/defaults_pick_10k_*.md)
    search_methods: tuple[str, ...] = ("kd",)
    # with recipe_search and baseline, when the teacher is no better than the hard-label baseline on val, a student
    # is also distilled from the teacher with that baseline as an equal member (born-again; edgekd.distill.tries_twin)
    twin_teacher: bool = False

    def __post_init__(self):
        for name in ("temperature_grid", "alpha_grid", "omit_classes", "search_methods"):
            object.__setattr__(self, name, as_tuple(getattr(self, name)))
        _check_arch(self.student)
        if self.temperature is not None:
            check_temperature("temperature", self.temperature)
        if self.alpha is not None:
            check_in_range("alpha", self.alpha, 0.0, 1.0)
        if self.alpha == 0 and self.temperature is None:
            raise ConfigError("The 'temperature' parameter softens the soft term, which alpha=0 leaves out: a search "
                              "over T would train the same student for every T. Got temperature='auto' with alpha=0; "
                              "leave --temperature out or pass --alpha above 0.")
        for name, grid, searched in (("temperature_grid", self.temperature_grid, self.temperature is None),
                                     ("alpha_grid", self.alpha_grid, self.alpha is None)):
            if searched and not len(grid):   # (max() of an empty search, after the teacher's targets were made)
                raise ConfigError(f"The '{name}' parameter must list at least one value to search. Got {tuple(grid)!r} instead.")
        for t in self.temperature_grid:
            check_temperature("temperature_grid", t)
        for a in self.alpha_grid:
            check_in_range("alpha_grid", a, 0.0, 1.0)
        check_int_at_least("auto_epochs", self.auto_epochs, 0)
        check_int_at_least("views", self.views, 0)
        if self.baseline_jitter is not None:
            check_int_at_least("baseline_jitter", self.baseline_jitter, 0)
        if self.baseline_mixup is not None:
            check_in_range("baseline_mixup", self.baseline_mixup, 0.0, MAX_MIXUP)
            if self.baseline_jitter is None:
                # a recipe is fixed whole or searched whole: a mixup alone would leave the jitter to a search
                raise ConfigError(f"The 'baseline_mixup' parameter fixes the baseline's recipe together with 'baseline_jitter', "
                                  f"which is not set. Got baseline_mixup={self.baseline_mixup!r} alone; pass --baseline-jitter too "
                                  f"or leave --baseline-mixup out.")
        if self.baseline_flip and self.baseline_jitter is None:
            raise ConfigError("The 'baseline_flip' parameter fixes the baseline's recipe together with 'baseline_jitter', "
                              "which is not set. Got baseline_flip=True alone; pass --baseline-jitter too or leave "
                              "--baseline-flip out.")
        for c in self.omit_classes:   # (a class index; its bound is the data's, checked by distill)
            check_int_at_least("omit_classes", c, 0)
        if len(set(self.omit_classes)) != len(self.omit_classes):
            raise ConfigError(f"The 'omit_classes' parameter must list each class once. Got {list(self.omit_classes)!r} "
                              f"instead; pass each class once, e.g. --omit-classes 3,5.")
        check_choice("method", self.method, METHODS)
        for m in self.search_methods:
            check_choice("search_methods", m, METHODS)
        check_positive("dkd_beta", self.dkd_beta, strict=False)
        if self.train.mixup and (self.views or self.view_grid):
            # the teacher has to judge each blended image, which no cache holds: function matching
            raise ConfigError(f"The 'mixup' parameter needs the teacher online (views=0), since it must see each blended "
                              f"batch. Got views={'all' if self.view_grid else self.views} instead; pass --views 0 or drop --mixup.")
        if (self.views or self.view_grid) and not (self.train.jitter or self.train.flip):
            # cached views are jittered (mirrored) copies of the transfer set: without either there is none to cache
            raise ConfigError(f"The 'views' parameter caches the teacher on jittered or mirrored views, but the student "
                              f"trains without jitter or flip. Got views={'all' if self.view_grid else self.views} instead; "
                              f"pass --jitter N or --flip too, or leave --views out.")
        distinct = (2 * self.train.jitter + 1) ** 2 * (2 if self.train.flip else 1)
        if self.views > distinct and not self.view_grid:
            # more random views than shifts only repeats them, and each costs the teacher a pass and n x C floats
            raise ConfigError(f"The 'views' parameter counts cached views, but jitter {self.train.jitter}"
                              f"{' with flip' if self.train.flip else ''} has only {distinct} distinct ones. Got "
                              f"views={self.views} instead; pass --views all (each once) or at most {distinct}.")
        if self.views == 1 and not self.view_grid:
            # view 0 is the image as it is: one view would cache only that, and the student would never be jittered
            raise ConfigError("The 'views' parameter counts the cached views, the first of which is the image unshifted, "
                              "so views=1 would train without augmentation. Got views=1 instead; pass --views 2 or more, "
                              "--views all, or --views 0 (the teacher online).")


@dataclass(frozen=True)
class PipelineConfig:
    """``edgekd pipeline``: the whole chain's settings (each stage's own come from its config)."""

    data: str = "digits"
    train_limit: int | None = None
    val_fraction: float = VAL_FRACTION
    teacher_arch: str = "cnn"
    ensemble: int = 3
    teacher_epochs: int = 15
    teacher_lr: float = 2e-3
    specialist_lr: float = 5e-4      # fine-tuning from the generalist's weights: a quarter of the teacher's
    specialist_patience: int = 2
    student: str = "mlp:hidden=64"
    # 60, not 30: at 30 both students are still learning on digits and the distilled one loses to
    # its baseline; at 60 it gains (3 seeds, chosen on val: benchmarks/results/pipeline_digits.md)
    epochs: int = 60
    temperature: float | None = None
    alpha: float | None = 0.5
    jitter: int | None = None       # the teachers' input jitter; None: 1 px on images, none on vectors
    student_jitter: int = 0         # the student's: a 1-px shift of an 8x8 digit costs a small mlp 3-6 points
    student_recipe_search: bool = False   # so the distilled student is not also trained jittered (see above)
    seed: int = 0
    device: str = "auto"
    skip: tuple[str, ...] = ()

    def __post_init__(self):
        object.__setattr__(self, "skip", as_tuple(self.skip))
        check_val_fraction(self.val_fraction)
        for name in self.skip:
            check_choice("skip", name, PIPELINE_OPTIONAL_STAGES)
        for name in ("ensemble", "teacher_epochs", "epochs", "specialist_patience"):
            check_int_at_least(name, getattr(self, name), 1)
        check_positive("teacher_lr", self.teacher_lr)
        check_positive("specialist_lr", self.specialist_lr)
        for name in ("jitter", "student_jitter"):
            if getattr(self, name) is not None:
                check_int_at_least(name, getattr(self, name), 0)
        # what each stage's own config checks, checked here too: a notebook's config is refused when built
        _check_arch(self.teacher_arch)
        _check_arch(self.student)
        check_seed(self.seed)
        check_device(self.device)
        if self.train_limit is not None:
            check_int_at_least("train_limit", self.train_limit, 1)
        if self.temperature is not None:
            check_temperature("temperature", self.temperature)
        if self.alpha is not None:
            check_in_range("alpha", self.alpha, 0.0, 1.0)
        check_bool("student_recipe_search", self.student_recipe_search)


PIPELINE_OPTIONAL_STAGES = ("specialists", "export", "bench")


@dataclass(frozen=True)
class InputTransform:
    """A foreign teacher's input: ``(x * scale - mean) / std`` (the --teacher-scale/-mean/-std options)."""

    scale: float = 1.0
    mean: float = 0.0
    std: float = 1.0

    def __post_init__(self):
        if not (math.isfinite(self.scale) and math.isfinite(self.mean) and math.isfinite(self.std)) or self.std <= 0:
            raise TeacherError(f"The teacher input transform needs finite numbers and std > 0. Got scale={self.scale}, "
                               f"mean={self.mean}, std={self.std} instead.")
        if self.scale == 0:   # (a student was distilled from a teacher that saw one blank image)
            raise TeacherError("The teacher input transform's scale must not be 0: every input would become the same "
                               "value. Got scale=0 instead; pass --teacher-scale 1 (or the factor the model was trained with).")

    def apply(self, x):
        """``x`` (a tensor) as the teacher takes it; the identity transform returns ``x`` itself."""
        if (self.scale, self.mean, self.std) == (1.0, 0.0, 1.0):
            return x
        return (x * self.scale - self.mean) / self.std
