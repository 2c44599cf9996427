"""Does the same seed train the same weights? Across runs, thread counts and CPU kernels, in one run.

    python -m benchmarks.determinism --out benchmarks/results/determinism_fmnist

Each variant is a fresh process running ``edgekd teacher train`` with the same arguments and seed; only
its environment differs: the thread count torch's intra-op pool takes (``OMP_NUM_THREADS``), and the
instruction set of the CPU kernels (``ATEN_CPU_CAPABILITY`` for ATen's vectorised kernels,
``ONEDNN_MAX_CPU_ISA`` for oneDNN's convolutions and matrix products): AVX2 kernels on an AVX-512 CPU,
as a CPU without AVX-512 would run. Weights are compared bit for bit against the first variant.

Why it matters: two benchmark runs of the same seed on different machines are not the same experiment,
and a difference between them is noise, not an effect of the code.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.provenance import header_markdown, provenance
from benchmarks.scenario_common import run_script, write_result
from benchmarks.timing import usable_cores

AVX2 = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}


def variants(cores: int) -> list[tuple[str, dict]]:
    """(name, environment) pairs; the first is the reference the others are compared with."""
    threads = str(max(cores, 2))
    return [(f"{threads} threads, native kernels", {"OMP_NUM_THREADS": threads}),
            (f"{threads} threads, native kernels, again", {"OMP_NUM_THREADS": threads}),
            ("1 thread, native kernels", {"OMP_NUM_THREADS": "1"}),
            (f"{threads} threads, AVX2 kernels", {"OMP_NUM_THREADS": threads, **AVX2})]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="fashion-mnist")
    p.add_argument("--train-limit", type=int, default=3000)
    p.add_argument("--arch", default="cnn:width=8")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--jitter", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="benchmarks/results/determinism")
    p.add_argument("--smoke", action="store_true", help="digits, the mlp, one epoch")
    args = p.parse_args(argv)
    if args.smoke:
        args.data, args.arch, args.epochs, args.train_limit = "digits", "mlp", 1, 0
    return args


def train(args, env: dict, out: Path) -> dict:
    """One ``edgekd teacher train`` in a fresh process; its weights' digest and test accuracy."""
    from safetensors.torch import load_file

    command = [sys.executable, "-m", "edgekd", "teacher", "train", "--data", args.data, "--arch", args.arch,
               "--epochs", str(args.epochs), "--jitter", str(args.jitter), "--seed", str(args.seed), "--out", str(out)]
    if args.train_limit:
        command += ["--train-limit", str(args.train_limit)]
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, **env}, timeout=3600)
    if done.returncode != 0:
        raise SystemExit(f"training failed with {env}: {done.stderr.strip().splitlines()[-1:]}")
    weights = load_file(str(out / "member-0.safetensors"))
    digest = hashlib.sha256()
    for name in sorted(weights):
        digest.update(name.encode() + weights[name].contiguous().numpy().tobytes())
    accuracy = json.loads((out / "manifest.json").read_text())["metrics"]["test_accuracy"]
    return {"sha256": digest.hexdigest(), "test_accuracy": accuracy, "weights": weights}


def max_difference(a: dict, b: dict) -> float:
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a)


def main(argv=None):
    args = parse_args(argv)
    started = time.perf_counter()
    runs = []
    with tempfile.TemporaryDirectory(prefix="edgekd-determinism-") as tmp:
        for index, (name, env) in enumerate(variants(usable_cores())):
            run = train(args, env, Path(tmp) / f"v{index}")
            reference = runs[0] if runs else run
            run.update(name=name, env=env, identical=run["sha256"] == reference["sha256"],
                       max_abs_difference=max_difference(run["weights"], reference["weights"]))
            runs.append(run)
    for run in runs:
        del run["weights"]
    result = {"args": vars(args), "runs": runs, "provenance": provenance(started)}
    write_result(args, result, render(result))


def render(result: dict) -> str:
    a = result["args"]
    simd = ", ".join(result["provenance"]["machine"].get("simd") or []) or "none recorded"
    lines = header_markdown("Same seed, same weights? Threads and CPU kernels", result["provenance"])
    lines += [f"`edgekd teacher train --data {a['data']} --arch {a['arch']} --epochs {a['epochs']} --jitter {a['jitter']} "
              f"--seed {a['seed']}`" + (f" `--train-limit {a['train_limit']}`" if a["train_limit"] else "")
              + f", each variant a fresh process; this CPU's vector extensions: {simd}.", "",
              "| variant | environment | weights identical to the first | max abs weight difference | test accuracy |",
              "|---|---|---|---|---|"]
    for r in result["runs"]:
        env = " ".join(f"`{k}={v}`" for k, v in r["env"].items())
        lines.append(f"| {r['name']} | {env} | {'yes' if r['identical'] else '**no**'} | {r['max_abs_difference']:.2e} "
                     f"| {100 * r['test_accuracy']:.2f}% |")
    first = result["runs"][0]
    again = [r for r in result["runs"][1:] if r["env"] == first["env"]]
    other = [r for r in result["runs"][1:] if r["env"] != first["env"]]
    lines += ["", "Same seed, same thread count, same kernels: "
              + ("bit-identical weights." if all(r["identical"] for r in again) else "**the weights differ**: a defect."),
              "Another thread count or instruction set: " + "; ".join(
                  f"{r['name']} {'identical' if r['identical'] else 'differs'}" for r in other)
              + ". Reductions split and vectorised differently round differently, and training amplifies the "
              "last bits; so compare one seed only within one machine and thread count, and compare across "
              "machines as means over seeds.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    run_script(main)
