"""Latency and accuracy benchmarks of edgekd models on CPU and mobile runtimes, and the paper's scenarios.

- ``benchmarks.harness``: ``run_benchmark(models, data, BenchConfig) -> BenchReport`` times every
  model x runtime x batch size x thread count (interleaved, round-robin) and evaluates every model;
- ``benchmarks.runtimes``: the runtime registry (PyTorch eager, onnxruntime, OpenVINO, tract,
  OpenCV DNN; ExecuTorch, ncnn and MNN from ``benchmarks.mobile_runtimes``); ``list_runtimes()``
  names them.
- ``benchmarks.report``: ``report.json`` is the data; ``report.md``, ``latency.png`` and
  ``pareto.png`` are rendered from it.
- ``python -m benchmarks.latency_report``: teacher ensemble vs student fp32 vs student int8, every
  file a user would ship, on every runtime.

Heavy imports (torch, onnxruntime, the optional runtimes) happen inside the functions.
"""

from __future__ import annotations

__all__ = ["BenchConfig", "BenchReport", "run_benchmark", "list_runtimes"]


def __getattr__(name):
    if name in ("BenchConfig", "BenchReport", "run_benchmark"):
        from benchmarks import harness

        return getattr(harness, name)
    if name == "list_runtimes":
        from benchmarks.runtimes import list_runtimes

        return list_runtimes
    raise AttributeError(f"module 'benchmarks' has no attribute {name!r}")
