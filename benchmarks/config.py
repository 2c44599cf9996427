"""``BenchConfig``: what ``edgekd bench`` and ``run_benchmark`` measure, and how long (no runtime imported here:
the command line reads its defaults without loading torch)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class BenchConfig:
    batch_sizes: tuple[int, ...] = (1, 8, 64)
    threads: tuple[int, ...] | None = None  # None: 1 and every usable core
    runtimes: tuple[str, ...] | None = None  # None: every registered runtime
    seconds: float = 1.0  # timed seconds per (model, runtime, batch size, threads)
    rounds: int = 3  # round-robin slices the seconds are split into
    min_runs: int = 6  # timed calls at least, per measurement
    warmup_seconds: float = 0.1
    floor_seconds: float = 0.2  # timed seconds of each runtime's identity graph
    probe_seconds: float = 0.3  # peak GEMM probe per thread count
    split: str = "test"
    check_samples: int = 256  # samples compared across runtimes (parity)
    # the first N samples of the split evaluated (accuracy, and the inputs of the parity check and the timings);
    # None: all. A run that only times (latency_report's confirmation) needs no accuracy on the whole split
    eval_samples: int | None = None
    warm_seconds: float = 0.0  # > 0: also time each pair alone, warm, for this long (warm_p50_ms)
    # where the PyTorch rows run ("auto": CUDA where there is one, as every command); every other runtime is a CPU runtime
    device: str = "auto"

    def __post_init__(self):
        from edgekd.errors import ConfigError
        from edgekd.validation import check_choice, check_device, check_int_at_least, check_positive

        if not self.batch_sizes:
            raise ConfigError("The 'batch_sizes' parameter must list at least one batch size. Got () instead.")
        for b in self.batch_sizes:
            check_int_at_least("batch_sizes", b, 1)
        for t in self.threads or ():
            check_int_at_least("threads", t, 1)
        if self.threads is not None and not self.threads:
            raise ConfigError("The 'threads' parameter must list at least one thread count. Got () instead.")
        for name in ("seconds", "floor_seconds", "probe_seconds"):
            check_positive(name, getattr(self, name))
        check_positive("warmup_seconds", self.warmup_seconds, strict=False)
        check_positive("warm_seconds", self.warm_seconds, strict=False)
        check_device(self.device)
        check_int_at_least("rounds", self.rounds, 1)
        check_int_at_least("min_runs", self.min_runs, 1)
        check_int_at_least("check_samples", self.check_samples, 1)
        if self.eval_samples is not None:
            check_int_at_least("eval_samples", self.eval_samples, 1)
        check_choice("split", self.split, ("test", "val", "train"))
        if self.runtimes is not None:
            from benchmarks.runtimes import parse_runtimes

            object.__setattr__(self, "runtimes", parse_runtimes(self.runtimes))
        object.__setattr__(self, "batch_sizes", tuple(dict.fromkeys(self.batch_sizes)))

    def thread_counts(self) -> tuple[int, ...]:
        from benchmarks.timing import usable_cores

        return tuple(dict.fromkeys(self.threads or (1, usable_cores())))
