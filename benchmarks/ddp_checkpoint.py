"""Issue 6's figures: data-parallel training with 2 processes vs 1 on the CPU, and the cost of the
per-epoch checkpoint as a share of the epoch.

    python -m benchmarks.ddp_checkpoint                # Fashion-MNIST, 10,000 training images, a few minutes
    python -m benchmarks.ddp_checkpoint --smoke        # digits, seconds

Throughput is training samples per second of pure training (the loop's own epoch timer, val and
checkpoints excluded), each configuration run the same way in its own process(es), alternated.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.provenance import header_markdown, mean_std, provenance
from benchmarks.scenario_common import run_script, write_result


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="fashion-mnist")
    p.add_argument("--train-limit", type=int, default=10000)
    p.add_argument("--archs", default="mlp;cnn:width=16", help="';'-separated architectures")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--out", default="benchmarks/results/ddp_checkpoint")
    p.add_argument("--device", default="cpu", choices=("auto", "cpu", "cuda"),
                   help="cpu: gloo processes; cuda: nccl, one GPU per process.")
    p.add_argument("--smoke", action="store_true")
    args = p.parse_args(argv)
    if args.smoke:
        args.data, args.train_limit, args.archs, args.epochs, args.repeats = "digits", None, "mlp:hidden=32", 1, 1
    return args


def _train(args, arch: str, procs: int, folder: Path) -> dict:
    out = folder / f"{arch.replace(':', '_').replace('=', '')}-{procs}"
    shutil.rmtree(out, ignore_errors=True)
    cli = ["teacher", "train", "--data", args.data, "--arch", arch, "--epochs", str(args.epochs), "--device", args.device,
           "--quiet", "--out", str(out)]
    if args.train_limit:
        cli += ["--train-limit", str(args.train_limit)]
    if procs == 1:
        cmd = [sys.executable, "-m", "edgekd", *cli]
    else:
        torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or "torchrun"
        cmd = [torchrun, "--nproc-per-node", str(procs), "--master-port", "29541", "-m", "edgekd", *cli]
    env = {**os.environ, "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 2) // procs))}
    started = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"exit {proc.returncode}"}
    manifest = json.loads((out / "manifest.json").read_text())
    n = manifest["data"]["n_train"]
    per_epoch = manifest["timings"]["seconds_per_epoch"]
    return {"samples_per_s": n / per_epoch, "seconds_per_epoch": per_epoch, "wall_s": wall,
            "test_accuracy": manifest["metrics"]["test_accuracy"]}


def checkpoint_share(args, arch: str) -> dict:
    """One epoch with the run store: time writing the checkpoint vs the epoch's training time."""
    import torch

    from edgekd.data import load_dataset
    from edgekd.models import count_parameters, create_model
    from edgekd.teacher_training import cross_entropy_loss, supervised_batches
    from edgekd.training import RunStore, TrainConfig, fit

    data = load_dataset(args.data, train_limit=args.train_limit)
    torch.manual_seed(0)
    model = create_model(arch, data.input_shape, data.num_classes, mean=data.mean, std=data.std)
    with tempfile.TemporaryDirectory() as tmp:
        store = RunStore(Path(tmp) / "run.partial", resume=False)
        r = fit(model, n_train=len(data.y_train), make_batch=supervised_batches(data.x_train, data.y_train, 0),
                loss_fn=cross_entropy_loss, val=(data.x_val, data.y_val), config=TrainConfig(epochs=args.epochs, device=args.device),
                store=store, name="timing")
    per_epoch_ckpt = r.checkpoint_seconds / r.epochs_run
    return {"arch": arch, "parameters": count_parameters(model), "epoch_seconds": r.seconds_per_epoch,
            "checkpoint_seconds": per_epoch_ckpt, "share": per_epoch_ckpt / (r.seconds_per_epoch + per_epoch_ckpt)}


def main(argv=None):
    args = parse_args(argv)
    started = time.perf_counter()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for arch in args.archs.split(";"):
            runs = {1: [], 2: []}
            for _ in range(args.repeats):
                for procs in (1, 2):   # alternated, so drift hits both alike
                    runs[procs].append(_train(args, arch, procs, Path(tmp)))
            rows.append({"arch": arch, "runs": runs})
    ckpt = [checkpoint_share(args, arch) for arch in args.archs.split(";")]
    result = {"provenance": provenance(started), "args": vars(args), "ddp": rows, "checkpoint": ckpt}
    write_result(args, result, render(result))


def render(result: dict) -> str:
    a = result["args"]
    lines = header_markdown(f"DDP (torchrun, gloo) and checkpoint cost on `{a['data']}`", result["provenance"])
    lines += [f"`edgekd teacher train` for {a['epochs']} epoch(s) on {a['train_limit'] or 'all'} training images, batch 128, "
              f"1 process with every core vs 2 processes with one core each, alternated, {a['repeats']} repeat(s).", "",
              "| architecture | 1 process (samples/s) | 2 processes (samples/s) | 2 ÷ 1 | test accuracy 1 / 2 processes |",
              "|---|---|---|---|---|"]
    for row in result["ddp"]:
        runs = {str(k): [r for r in v if "samples_per_s" in r] for k, v in row["runs"].items()}
        one, two = runs["1"], runs["2"]
        if not one or not two:
            errors = [r["error"] for v in row["runs"].values() for r in v if "error" in r]
            lines.append(f"| `{row['arch']}` | failed: {errors[0] if errors else '?'} | | | |")
            continue
        s1, s2 = (mean_std(r["samples_per_s"] for r in rs)[0] for rs in (one, two))
        lines.append(f"| `{row['arch']}` | {s1:,.0f} | {s2:,.0f} | {s2 / s1:.2f}× | "
                     f"{one[0]['test_accuracy']:.4f} / {two[0]['test_accuracy']:.4f} |")
    lines += ["", "On 2 cores, two processes split the same two cores: little gain is expected; gloo's all-reduce of "
              "every gradient each step is the overhead.", "",
              "| architecture | parameters | epoch (s) | checkpoint (s) | share of the epoch |", "|---|---|---|---|---|"]
    for c in result["checkpoint"]:
        lines.append(f"| `{c['arch']}` | {c['parameters']:,} | {c['epoch_seconds']:.2f} | {c['checkpoint_seconds']:.3f} | "
                     f"{100 * c['share']:.1f}% |")
    lines += ["", "A checkpoint holds the weights, the best weights so far, the AdamW moments and the RNG state, written "
              "to a new file and committed by an atomic JSON rename.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    run_script(main)
