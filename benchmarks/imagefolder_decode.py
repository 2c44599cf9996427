"""How long does an image folder take to load: decoded cold, then from the decode cache?

    python -m benchmarks.imagefolder_decode --out benchmarks/results/imagefolder_decode
    python -m benchmarks.imagefolder_decode --smoke

Writes Fashion-MNIST's 60,000 training images as PNG files (``<work>/train/<class>/*.png``, written
once and reused), then loads ``imagefolder:<work>`` through ``edgekd.data.load_dataset`` twice with an
empty decode cache (cold: every file decoded) and twice with the cache filled (a hit: the file list
is stat-ed and a sample re-hashed, the arrays and split files memory-mapped). Aims: cold <= 60 s, cached <= 3 s.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

from benchmarks.provenance import header_markdown, provenance
from benchmarks.scenario_common import run_script, write_result


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="fashion-mnist", help="Source of the images (an IDX data spec).")
    p.add_argument("--limit", type=int, default=60000, help="Images written (the first N of the train split).")
    p.add_argument("--work", default="runs/imagefolder_fmnist", help="Folder the PNG files are written to.")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--out", default="benchmarks/results/imagefolder_decode")
    p.add_argument("--smoke", action="store_true", help="digits, a few hundred images")
    args = p.parse_args(argv)
    if args.smoke:
        args.data, args.limit, args.repeats = "digits", 300, 1
        args.work = str(Path(args.out).parent / (Path(args.out).name + "-work"))
    return args


def write_folder(args) -> tuple[Path, int, float]:
    """The PNG folder (reused when complete); returns (folder, images, seconds spent writing)."""
    import numpy as np
    from PIL import Image

    from edgekd.data import load_dataset

    root = Path(args.work)
    done = root / ".complete"
    if done.is_file() and int(done.read_text()) == args.limit:
        return root, args.limit, 0.0
    shutil.rmtree(root, ignore_errors=True)
    tick = time.perf_counter()
    data = load_dataset(args.data, val_fraction=0.01)
    x = np.concatenate([data.x_train.numpy(), data.x_val.numpy()])[:args.limit]
    y = np.concatenate([data.y_train.numpy(), data.y_val.numpy()])[:args.limit]
    scale = 255.0 / max(1.0, float(x.max()))
    for name in data.classes:
        (root / "train" / name.replace("/", "-")).mkdir(parents=True)
    names = [c.replace("/", "-") for c in data.classes]
    for i, (image, label) in enumerate(zip(x, y)):
        Image.fromarray((image[0] * scale).astype(np.uint8)).save(root / "train" / names[label] / f"{i:05d}.png")
    done.write_text(str(len(x)))
    return root, len(x), time.perf_counter() - tick


def main(argv=None):
    from edgekd.data import load_dataset

    args = parse_args(argv)
    started = time.perf_counter()
    root, n, write_seconds = write_folder(args)
    cold, cached = [], []
    saved = os.environ.get("EDGEKD_CACHE")
    try:
        for _ in range(args.repeats):
            with tempfile.TemporaryDirectory(prefix="edgekd-decode-") as cache:
                os.environ["EDGEKD_CACHE"] = cache
                tick = time.perf_counter()
                data = load_dataset(f"imagefolder:{root}")
                cold.append(time.perf_counter() - tick)
                for _ in range(2):
                    tick = time.perf_counter()
                    load_dataset(f"imagefolder:{root}")
                    cached.append(time.perf_counter() - tick)
    finally:
        if saved is None:
            os.environ.pop("EDGEKD_CACHE", None)
        else:
            os.environ["EDGEKD_CACHE"] = saved
    result = {"args": vars(args), "images": n, "input_shape": list(data.input_shape), "classes": list(data.classes),
              "write_seconds": write_seconds, "cold_seconds": cold, "cached_seconds": cached,
              "provenance": provenance(started)}
    write_result(args, result, render(result))


def render(result: dict) -> str:
    lines = header_markdown(f"Loading a {result['images']:,}-image PNG folder", result["provenance"])
    cold, cached = result["cold_seconds"], result["cached_seconds"]
    lines += [f"`imagefolder:` with {result['images']:,} PNG files of shape {tuple(result['input_shape'])} in "
              f"{len(result['classes'])} class folders (written from `{result['args']['data']}`), loaded through "
              "`edgekd.data.load_dataset` (decode, the fixed test split, the train/val split into memory-mapped uint8 split files).", "",
              "| load | seconds (each) | best | aim |", "|---|---|---|---|",
              f"| cold (empty decode cache) | {', '.join(f'{v:.1f}' for v in cold)} | **{min(cold):.1f}** | ≤ 60 |",
              f"| cached | {', '.join(f'{v:.2f}' for v in cached)} | **{min(cached):.2f}** | ≤ 3 |", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    run_script(main)
