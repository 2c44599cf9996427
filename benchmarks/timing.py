"""Timing primitives: warm-up, time-boxed timed calls, percentiles; the machine's facts and its
measured peak fp32 and int8 GEMM rates (the compute floor's denominators)."""

from __future__ import annotations

import gc
import os
import platform
import time
from typing import Callable

import numpy as np


def warm_up(fn: Callable[[], object], seconds: float, *, min_runs: int = 3) -> int:
    """Call ``fn`` for ``seconds`` (and at least ``min_runs`` times); returns the number of calls."""
    deadline = time.perf_counter() + seconds
    runs = 0
    while runs < min_runs or time.perf_counter() < deadline:
        fn()
        runs += 1
    return runs


def time_calls(fn: Callable[[], object], seconds: float, *, min_runs: int = 1, max_runs: int = 1_000_000) -> list[int]:
    """Durations in nanoseconds of consecutive calls of ``fn`` for about ``seconds`` (at least ``min_runs``).

    The garbage collector is paused during the slice so a collection does not land inside a call.
    """
    samples: list[int] = []
    clock = time.perf_counter_ns
    deadline = clock() + int(seconds * 1e9)
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        while len(samples) < max_runs:
            start = clock()
            fn()
            end = clock()
            samples.append(end - start)
            if end >= deadline and len(samples) >= min_runs:
                break
    finally:
        if gc_was_enabled:
            gc.enable()
    return samples


def summarize(samples_ns: list[int], batch_size: int) -> dict:
    """p50/p90/p99/mean/min in ms (linear-interpolated percentiles) and throughput in samples/s."""
    ms = np.asarray(samples_ns, dtype=np.float64) / 1e6
    p50, p90, p99 = (float(v) for v in np.percentile(ms, [50, 90, 99]))
    mean = float(ms.mean())
    return {"runs": int(len(ms)), "p50_ms": p50, "p90_ms": p90, "p99_ms": p99, "mean_ms": mean,
            "min_ms": float(ms.min()), "samples_per_s": batch_size / (mean / 1e3)}


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def machine_facts() -> dict:
    """CPU model, cores, memory, OS and load when the benchmark started, with what an artifact's manifest
    records as its numerics (``edgekd.artifacts.numerics``: torch's intra-op threads and CPU kernel level).

    Those are recorded because they change results, not only speed: the same seed trains bit-identical
    weights at a fixed thread count and kernel set, and different ones at another, which is enough to
    move one seed's test accuracy by tenths of a point (``benchmarks/determinism.py``).
    """
    from edgekd.artifacts import numerics

    cpu, flags = None, []
    try:
        for line in open("/proc/cpuinfo", encoding="utf-8", errors="replace"):
            key, _, value = line.partition(":")
            if key.strip() == "model name" and cpu is None:
                cpu = value.strip()
            elif key.strip() == "flags" and not flags:
                flags = value.split()
    except OSError:
        pass
    cpu = cpu or platform.processor() or platform.machine()
    memory = None
    try:
        for line in open("/proc/meminfo", encoding="utf-8"):
            if line.startswith("MemTotal:"):
                memory = round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    simd = [f for f in ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "neon", "asimd") if f in flags]
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    return {"cpu": cpu, "logical_cores": os.cpu_count(), "usable_cores": usable_cores(), **numerics(), "memory_gib": memory,
            "simd": simd, "os": platform.platform(), "machine": platform.machine(),
            "load_average_at_start": [round(v, 2) for v in load] if load else None}


def peak_gemm_flops(threads: int, *, seconds: float = 0.3, n: int = 1024) -> float:
    """Best measured fp32 GEMM rate (FLOP/s) of ``torch.mm`` on n x n matrices at ``threads`` threads."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        generator = torch.Generator().manual_seed(0)
        a, b = torch.randn(n, n, generator=generator), torch.randn(n, n, generator=generator)
        c = torch.empty(n, n)
        torch.mm(a, b, out=c)
        best = float("inf")
        deadline = time.perf_counter() + seconds
        runs = 0
        while runs < 3 or time.perf_counter() < deadline:
            start = time.perf_counter()
            torch.mm(a, b, out=c)
            best = min(best, time.perf_counter() - start)
            runs += 1
        return 2 * n ** 3 / best
    finally:
        torch.set_num_threads(previous)


def peak_int8_ops(threads: int, *, seconds: float = 0.3, n: int = 1024) -> float:
    """Best measured int8 GEMM rate (ops/s, 1 MAC = 2 ops) at ``threads`` threads: onnxruntime's
    ``MatMulInteger`` (uint8 x int8 -> int32, MLAS, VNNI where the CPU has it) on n x n matrices.

    The int8 rows' compute floor divides by this, not by the fp32 rate: int8 kernels run 2-4x more MACs
    per cycle, so an fp32 floor would make an int8 model look faster than its floor."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("MatMulInteger", ["a", "b"], ["c"])], "int8_gemm",
                              [helper.make_tensor_value_info("a", TensorProto.UINT8, [n, n]),
                               helper.make_tensor_value_info("b", TensorProto.INT8, [n, n])],
                              [helper.make_tensor_value_info("c", TensorProto.INT32, [n, n])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=8)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    feed = {"a": rng.integers(0, 255, (n, n), dtype=np.uint8), "b": rng.integers(-127, 127, (n, n), dtype=np.int8)}
    session.run(None, feed)
    best = float("inf")
    deadline = time.perf_counter() + seconds
    runs = 0
    while runs < 3 or time.perf_counter() < deadline:
        start = time.perf_counter()
        session.run(None, feed)
        best = min(best, time.perf_counter() - start)
        runs += 1
    return 2 * n ** 3 / best
