"""Seconds per training epoch on a GPU (or the CPU), and the whole spine scenario extrapolated from them.

    python -m benchmarks.gpu_fmnist --device cuda --out benchmarks/results/gpu_fmnist_h200
    python -m benchmarks.gpu_fmnist --device cpu  --out benchmarks/results/gpu_fmnist_cpu
    python -m benchmarks.gpu_fmnist --smoke       # digits, seconds

Measured on the full Fashion-MNIST train split with edgekd's own training loop (``edgekd.training.fit``,
batch 128, every step of an epoch; the val pass is timed apart): the ``cnn`` teacher (width 32,
±2 px jitter, the README's recipe) and each student on hard labels and distilled from cached
teacher logits on jittered views (the spine's recipe). Each measurement follows a short warm-up fit
(cuDNN autotuning, allocator), so the figure is a warm epoch. The one-time costs (caching the
teacher's view logits, loading and placing the data) are reported apart.

GPU time is scarce, so the benchmark measures epochs and extrapolates the whole spine scenario
(``benchmarks/spine_fmnist.py``: 3-member teacher, students with their epoch budgets, seeds,
baselines and the (T, alpha) search) from them, and says so. Where no GPU is at hand it runs on the
CPU and says that instead.
"""

from __future__ import annotations

import argparse
import time
from statistics import median as _median   # of an even count, the mean of the middle two

from benchmarks.provenance import header_markdown, provenance
from benchmarks.scenario_common import run_script, write_result

SPINE = {"teacher_members": 3, "teacher_epochs": 6, "students": "mlp@20;cnn:width=8@10", "seeds": 3, "views": 4,
         "grid": 8}   # spine_fmnist's defaults: 4 temperatures x 2 alphas, each a quarter of the epochs


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="fashion-mnist")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--precision", default="fp32", choices=("fp32", "bf16"))
    p.add_argument("--teacher", default="cnn", help="Teacher architecture (one member is timed).")
    p.add_argument("--students", default="mlp;cnn:width=8", help="';'-separated student architectures.")
    p.add_argument("--epochs", type=int, default=1, help="Timed epochs per measurement (after the warm-up).")
    p.add_argument("--seeds", type=int, default=1, help="Repeats of each measurement (seeds 0..N-1).")
    p.add_argument("--views", type=int, default=SPINE["views"])
    p.add_argument("--jitter", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--out", default="benchmarks/results/gpu_fmnist")
    p.add_argument("--smoke", action="store_true", help="digits, tiny models, seconds")
    args = p.parse_args(argv)
    if args.smoke:
        args.data, args.teacher, args.students, args.views, args.jitter = "digits", "cnn:width=4,fc=16", "mlp:hidden=32", 2, 1
    return args


def _timed_fit(arch, data, make_batch, loss_fn, train, seed):
    """(train seconds per epoch, val seconds per epoch) of a warm fit: a short warm-up fit first."""
    import torch

    from edgekd.device import module_device
    from edgekd.models import create_model
    from edgekd.training import TrainConfig, fit, predict_logits

    def run(n_train, epochs):
        torch.manual_seed(seed)
        model = create_model(arch, data.input_shape, data.num_classes, mean=data.mean, std=data.std)
        config = TrainConfig(**{**train, "epochs": epochs, "seed": seed})
        result = fit(model, n_train=n_train, make_batch=make_batch, loss_fn=loss_fn, val=(data.x_val, data.y_val),
                     config=config, store=None, name="timing", data_device=data.device)
        return model, result

    run(min(len(data.y_train), 20 * train["batch_size"]), 1)   # warm-up: autotuning, allocator, lazy inits
    model, result = run(len(data.y_train), train["epochs"])
    sync = torch.cuda.synchronize if module_device(model).type == "cuda" else (lambda: None)
    sync()
    tick = time.perf_counter()
    predict_logits(model, data.x_val).sum().item()
    return result.seconds_per_epoch, time.perf_counter() - tick, result.val_accuracy


def measure(args) -> dict:
    import torch

    from edgekd.data import load_dataset
    from edgekd.device import describe_device, place_dataset, resolve_device
    from edgekd.distill import distill_batches, distill_loss_fn, view_shifts
    from edgekd.models import create_model
    from edgekd.teacher_training import cross_entropy_loss, supervised_batches
    from edgekd.teachers import EnsembleModule, ModuleTeacher
    from edgekd.training import apply_shifts

    device = resolve_device(args.device)
    tick = time.perf_counter()
    data = place_dataset(load_dataset(args.data), device)
    load_seconds = time.perf_counter() - tick
    pixels = args.jitter if len(data.input_shape) == 3 else 0
    train = {"batch_size": args.batch_size, "lr": 2e-3, "jitter": pixels, "device": device.type,
             "precision": args.precision, "epochs": args.epochs}
    rows = []

    def record(model, kind, arch, seed, seconds, val_seconds, val_accuracy):
        rows.append({"model": model, "kind": kind, "arch": arch, "seed": seed, "seconds_per_epoch": seconds,
                     "val_seconds": val_seconds, "val_accuracy_after": val_accuracy})

    hard = supervised_batches(data.x_train, data.y_train, pixels)
    for seed in range(args.seeds):
        record("teacher", "hard", args.teacher, seed, *_timed_fit(args.teacher, data, hard, cross_entropy_loss, train, seed))
    # the teacher for the distillation timings: a fresh member of the teacher's architecture (its
    # accuracy does not change the cost of a distillation step, which only reads cached logits)
    torch.manual_seed(0)
    net = create_model(args.teacher, data.input_shape, data.num_classes, mean=data.mean, std=data.std).to(device).eval()
    teacher = ModuleTeacher(EnsembleModule([net]), kind="model", classes=data.classes, input_shape=data.input_shape,
                            fingerprint="timing", description=args.teacher)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    tick = time.perf_counter()
    shifts = view_shifts(len(data.y_train), args.views, pixels).to(data.device) if pixels else None
    if pixels:
        logits = torch.stack([teacher.logits(apply_shifts(data.x_train, shifts[v], pixels)) for v in range(args.views)])
    else:
        logits = teacher.logits(data.x_train)
    sync()
    cache_seconds = time.perf_counter() - tick
    soft = distill_batches(data.x_train, data.y_train, logits, shifts, pixels, None)
    for arch in args.students.split(";"):
        for seed in range(args.seeds):
            student_train = {**train, "lr": 3e-3}
            record(arch, "hard", arch, seed, *_timed_fit(arch, data, supervised_batches(data.x_train, data.y_train, pixels),
                                                         cross_entropy_loss, student_train, seed))
            record(arch, "distill", arch, seed, *_timed_fit(arch, data, soft, distill_loss_fn(4.0, 0.9), student_train, seed))
    return {"device": describe_device(device), "device_type": device.type, "data_resident": data.device.type == device.type,
            "n_train": len(data.y_train), "n_val": len(data.y_val), "load_seconds": load_seconds,
            "view_cache_seconds": cache_seconds, "views": args.views if pixels else 0, "rows": rows,
            "cuda": torch.version.cuda, "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None}


def per_epoch(result: dict, model: str, kind: str) -> float | None:
    values = [r["seconds_per_epoch"] for r in result["rows"] if r["model"] == model and r["kind"] == kind]
    return _median(values) if values else None


def recipe_counts(arch: str) -> tuple[int, int]:
    """(student recipes, baseline recipes) that ``edgekd distill --baseline`` trains in full per seed on
    28x28 images with its defaults: each is a whole fit, the best on val kept (edgekd.distill)."""
    from edgekd.config import DistillConfig
    from edgekd.distill import baseline_trials, student_recipes

    config = DistillConfig(student=arch, baseline=True)
    return len(student_recipes(config, (1, 28, 28))), len(baseline_trials(config, (1, 28, 28)))


def extrapolate_spine(result: dict) -> dict:
    """Seconds of the whole spine scenario from the measured epochs (train steps; val passes added per
    epoch): teacher members x epochs, then per student and seed every recipe the student and the
    baseline try in full (``recipe_counts``), plus the (T, alpha) search once per student (grid x a
    quarter of the epochs) and the view cache per member."""
    val = _median([r["val_seconds"] for r in result["rows"]])
    teacher = per_epoch(result, "teacher", "hard")
    total = SPINE["teacher_members"] * SPINE["teacher_epochs"] * (teacher + val)
    parts = {"teacher": total}
    missing = []
    for entry in SPINE["students"].split(";"):
        arch, _, epochs = entry.partition("@")
        hard, soft = per_epoch(result, arch, "hard"), per_epoch(result, arch, "distill")
        if hard is None or soft is None:
            missing.append(arch)
            continue
        epochs = int(epochs)
        search = SPINE["grid"] * max(1, epochs // 4) * (soft + val)
        students, baselines = recipe_counts(arch)
        parts[arch] = SPINE["seeds"] * epochs * (students * (soft + val) + baselines * (hard + val)) + search
    parts["view cache (3-member teacher)"] = result["view_cache_seconds"] * SPINE["teacher_members"]
    return {"seconds": sum(parts.values()), "parts": parts, "missing_students": missing,
            "note": "extrapolated from the measured epochs above, not run end to end"}


def render(result: dict) -> str:
    m = result["measure"]
    where = f"on **{m['device']}**" + (f", CUDA {m['cuda']}" if m["gpu"] else " (no GPU in this run: the CPU figures)")
    lines = header_markdown(f"Training epochs {where}", result["provenance"])
    lines += [f"Full train split ({m['n_train']} images), batch {result['args']['batch_size']}, "
              f"{result['args']['precision']}, data "
              f"{'in host memory' if m['device_type'] == 'cpu' else 'resident on the GPU' if m['data_resident'] else 'copied per batch'}; "
              f"every step of an epoch timed after a warm-up fit; the val pass ({m['n_val']} images) timed apart. "
              f"One-time costs: loading and placing the data {m['load_seconds']:.1f} s, caching the teacher's logits on "
              f"{m['views']} jittered views {m['view_cache_seconds']:.1f} s.", "",
              "| model | labels | s / epoch (median) | val pass s | distill / hard |", "|---|---|---|---|---|"]
    for model in dict.fromkeys(r["model"] for r in m["rows"]):
        for kind in ("hard", "distill"):
            seconds = per_epoch(m, model, kind)
            if seconds is None:
                continue
            val = _median([r["val_seconds"] for r in m["rows"] if r["model"] == model and r["kind"] == kind])
            arch = next(r["arch"] for r in m["rows"] if r["model"] == model)
            ratio = f"{seconds / per_epoch(m, model, 'hard'):.2f}×" if kind == "distill" else ""
            lines.append(f"| {model} (`{arch}`) | {kind} | {seconds:.2f} | {val:.2f} | {ratio} |")
    spine = result["spine"]
    lines += ["", f"**Whole spine scenario, extrapolated** ({spine['note']}): {spine['seconds'] / 60:.1f} min "
              f"(" + ", ".join(f"{k} {v / 60:.1f} min" for k, v in spine["parts"].items()) + ")"
              + (f"; students not measured here, left out: {', '.join(spine['missing_students'])}" if spine["missing_students"] else "")
              + ".", ""]
    return "\n".join(lines)


def main(argv=None):
    args = parse_args(argv)
    started = time.perf_counter()
    measured = measure(args)
    result = {"args": vars(args), "measure": measured, "spine": extrapolate_spine(measured)}
    result["provenance"] = provenance(started)
    write_result(args, result, render(result))


if __name__ == "__main__":
    run_script(main)
