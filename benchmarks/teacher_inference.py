"""How fast does a convolutional teacher make its targets on the CPU: NCHW (the net as trained) against
the channels_last (NHWC) inference copy ``ModuleTeacher`` now uses?

    python -m benchmarks.teacher_inference --teacher runs/fmnist/teacher --out benchmarks/results/teacher_inference
    python -m benchmarks.teacher_inference --smoke --out /tmp/teacher_inference

Teacher targets are a one-time cost that grows with the views cached (9 shifts at +-1 px, 25 at
+-2 px) and a per-step cost with an online teacher. Both nets run through ``predict_logits`` on the same
``--images`` training images (batches of 1024, ``no_grad``), alternated ``--repeats`` times in one
process, at every usable core; the ratio is taken per pair (NCHW time / NHWC time) and its median
reported with the spread, the logits of the two paths are compared, and ``Teacher.logits`` is checked
to give the NHWC path's logits.
"""

from __future__ import annotations

import argparse
import time

from benchmarks.provenance import header_markdown, provenance
from benchmarks.scenario_common import Refused, run_script, write_result


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--teacher", default="runs/fmnist/teacher", help="An edgekd artifact with convolutional members.")
    p.add_argument("--data", default="fashion-mnist")
    p.add_argument("--images", type=int, default=10000, help="The first N training images.")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", default="benchmarks/results/teacher_inference")
    p.add_argument("--smoke", action="store_true", help="A fresh 2 x cnn on digits, a few hundred images.")
    args = p.parse_args(argv)
    if args.smoke:
        args.data, args.images, args.repeats, args.teacher = "digits", 512, 1, None
    return args


def smoke_teacher(data, folder) -> str:
    from edgekd.teacher_training import save_untrained

    return str(save_untrained(folder, "cnn:width=8,fc=32", data, members=2))


def time_paths(teacher, x, repeats: int) -> dict:
    """Seconds of the logits of ``x`` through the NCHW net and through the NHWC copy, alternated."""
    import numpy as np
    import torch

    from edgekd.training import predict_logits

    nhwc_net = teacher.channels_last_net()
    if nhwc_net is None:
        raise Refused(f"{teacher.description} has no convolutions: there is nothing to compare.")

    pairs, outs = [], {}
    for _ in range(repeats):
        seconds = {}
        for label, net, fmt in (("nchw", teacher.net, torch.contiguous_format), ("nhwc", nhwc_net, torch.channels_last)):
            tick = time.perf_counter()
            outs[label] = predict_logits(net, x.contiguous(memory_format=fmt))
            seconds[label] = time.perf_counter() - tick
        pairs.append(seconds)
    through_teacher = teacher.logits(x)
    ratios = [p["nchw"] / p["nhwc"] for p in pairs]
    return {"pairs": pairs, "ratio_median": float(np.median(ratios)), "ratio_range": [min(ratios), max(ratios)],
            "max_abs_diff": float((outs["nchw"] - outs["nhwc"]).abs().max()),
            "teacher_logits_is_nhwc": bool(torch.equal(through_teacher, outs["nhwc"])),
            "top1_agreement": float((outs["nchw"].argmax(1) == outs["nhwc"].argmax(1)).float().mean())}


def main(argv=None) -> int:
    import tempfile

    import torch

    from edgekd.data import load_dataset
    from edgekd.teachers import load_teacher

    from benchmarks.timing import usable_cores

    args = parse_args(argv)
    started = time.perf_counter()
    torch.set_num_threads(usable_cores())
    data = load_dataset(args.data)
    with tempfile.TemporaryDirectory(prefix="edgekd-teacher-inference-") as tmp:
        path = args.teacher or smoke_teacher(data, f"{tmp}/teacher")
        teacher = load_teacher(path)
        x = data.x_train[:args.images].float().reshape(-1, *data.input_shape)
        timed = time_paths(teacher, x, args.repeats)
    result = {"args": vars(args), "teacher": teacher.description, "images": len(x), "threads": torch.get_num_threads(),
              **timed, "provenance": provenance(started)}
    write_result(args, result, render(result))
    return 0


def render(result: dict) -> str:
    lines = header_markdown("Teacher targets on the CPU: NCHW against the channels_last copy", result["provenance"])
    n = result["images"]
    lines += [f"{result['teacher']}, {n:,} training images of `{result['args']['data']}`, batches of 1024, "
              f"{result['threads']} thread(s), the two paths alternated {len(result['pairs'])} times in one process.", "",
              "| repeat | NCHW s | NHWC s | NCHW / NHWC | NHWC µs per image |", "|---|---|---|---|---|"]
    for i, p in enumerate(result["pairs"]):
        lines.append(f"| {i + 1} | {p['nchw']:.2f} | {p['nhwc']:.2f} | {p['nchw'] / p['nhwc']:.2f}× | {1e6 * p['nhwc'] / n:.0f} |")
    lo, hi = result["ratio_range"]
    lines += ["", f"**The channels_last copy is {result['ratio_median']:.2f}× as fast** (median of the per-pair ratios, range "
              f"{lo:.2f}–{hi:.2f}×). Largest |logit difference| between the paths {result['max_abs_diff']:.1e}, top-1 "
              f"agreement {100 * result['top1_agreement']:.2f}%; `Teacher.logits` takes the channels_last path: "
              f"{'yes' if result['teacher_logits_is_nhwc'] else 'NO'}.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    run_script(main)
