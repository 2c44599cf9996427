"""``SpecialistConfig``: the settings of ``specialists build``, where their defaults live once.

Imports no torch, so ``edgekd --help`` reads these defaults without loading the stage.
"""

from __future__ import annotations

from dataclasses import dataclass

from edgekd.config import TrainConfig
from edgekd.errors import ConfigError
from edgekd.validation import as_tuple, check_int_at_least, check_positive, check_temperature

DEFAULT_CLUSTER_TEMPERATURE = 4.0   # clustering uses softmax(z / T); why not the paper's T = 1: specialists.clustering
DEFAULT_TOL = 1e-6                  # the KL solver stops when no log-probability moves by more ...
DEFAULT_MAX_STEPS = 5000            # ... or after this many updates (specialists.combine)


@dataclass(frozen=True)
class SpecialistConfig:
    """Settings of ``build_specialists``; ``clusters=None`` means auto (silhouette)."""

    clusters: tuple[int, ...] | None = None
    cluster_temperature: float = DEFAULT_CLUSTER_TEMPERATURE
    top_n: int = 1
    special_fraction: float = 0.5
    member: int | None = None            # with an ensemble teacher: the member that is the generalist
    train: TrainConfig = TrainConfig(epochs=5, lr=5e-4, patience=2)
    tol: float = DEFAULT_TOL
    max_steps: int = DEFAULT_MAX_STEPS
    module_steps: int | None = None      # None: 1 where exact, else the most any val input needed (capped)
    per_cluster: int = 1                 # specialists per cluster, each with its own seed: independent opinions

    def __post_init__(self):
        if self.clusters == "auto":   # as the command line spells "choose K on val"
            object.__setattr__(self, "clusters", None)
        if self.clusters is not None:   # one K, as a notebook writes it, or a list: a tuple
            object.__setattr__(self, "clusters", as_tuple(self.clusters))
        if self.clusters is not None:
            for k in self.clusters:
                check_int_at_least("clusters", k, 2)
        check_temperature("cluster_temperature", self.cluster_temperature)
        check_int_at_least("top_n", self.top_n, 1)
        if isinstance(self.special_fraction, bool) or not isinstance(self.special_fraction, (int, float)) \
                or not 0 < self.special_fraction < 1:
            raise ConfigError(f"The 'special_fraction' parameter must be in (0, 1). Got {self.special_fraction!r} instead.")
        if self.member is not None:
            check_int_at_least("member", self.member, 0)
        check_positive("tol", self.tol)
        check_int_at_least("max_steps", self.max_steps, 1)
        check_int_at_least("per_cluster", self.per_cluster, 1)
        if self.module_steps is not None:
            check_int_at_least("module_steps", self.module_steps, 1)
            if self.module_steps > self.max_steps:   # (1e8 fixed steps trained every specialist, then ran for ever)
                raise ConfigError(f"The 'module_steps' parameter must be at most max_steps ({self.max_steps}): the "
                                  f"exportable module runs that many fixed updates where the solver stops at max_steps. "
                                  f"Got {self.module_steps!r} instead.")
