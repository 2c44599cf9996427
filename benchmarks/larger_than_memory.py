"""Training on an image folder larger than the memory it runs in.

    python -m benchmarks.larger_than_memory --against b12286d --out benchmarks/results/larger_than_memory
    python -m benchmarks.larger_than_memory --image-size 224x224 --then evaluate,export,bench \
        --out benchmarks/results/larger_than_memory_224
    python -m benchmarks.larger_than_memory --smoke --out /tmp/ltm

Uses the 70,000-image PNG folder of ``benchmarks.photos_fmnist`` (written there if missing), loaded
at ``--image-size`` (64x64 RGB by default: 860 MB of uint8 pixels, 3.4 GB as float32) and runs

    edgekd teacher train --data imagefolder:DIR,size=64x64 --arch mlp:hidden=64 --epochs 1

from an empty decode cache (every file decoded) inside a Linux memory cgroup whose limit
(``--cap-mib``, 768 MiB by default) is below the size of the decoded pixels themselves. The cgroup
charges both the process's own (anonymous) memory and the page cache it reads through; pages of a
memory-mapped file can be dropped and read again, anonymous ones cannot. Reported: the exit code, the
wall time, the peak anonymous memory (``rss`` of the cgroup's ``memory.stat``, polled) and the peak
charged to the cgroup. With ``--against REV`` the same command runs from that revision of edgekd (a
temporary git worktree), under the same cap and with the decode cache already filled: the before of
the before/after. ``--then`` runs ``evaluate``, ``export`` (fp32 ONNX, verified) and ``bench`` on the
teacher just trained, under the same cap.

Needs root and the cgroup v1 memory controller (``/sys/fs/cgroup/memory``); elsewhere it stops with
a one-line reason.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.provenance import header_markdown, provenance
from benchmarks.scenario_common import Refused, run_script, write_result

CGROUP_V1 = Path("/sys/fs/cgroup/memory")
THEN = ("evaluate", "export", "bench")


def then_args(command: str, model: Path, spec: str, work: Path) -> tuple[list, Path | None]:
    """(edgekd arguments, --out) of one ``--then`` command on ``model``; bench times the export too where one was made."""
    if command == "evaluate":
        return ["evaluate", str(model), "--data", spec], None
    if command == "export":
        return ["export", str(model), "--onnx", "--data", spec], work / "model.onnx"
    exported = ["--model", str(work / "model.onnx")] if (work / "model.onnx").is_file() else []
    return ["bench", "--model", str(model), *exported, "--data", spec], work / "bench"


def parse_args(argv=None):
    import argparse

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="fashion-mnist", help="Source of the PNG folder (an IDX data spec).")
    p.add_argument("--photos", default="runs/photos_fmnist/photos", help="The PNG folder (written if missing).")
    p.add_argument("--work", default="runs/larger_than_memory", help="Decode cache and artifacts (replaced).")
    p.add_argument("--image-size", default="64x64")
    p.add_argument("--arch", default="mlp:hidden=64")
    p.add_argument("--cap-mib", type=int, default=768, help="The cgroup's memory limit.")
    p.add_argument("--against", default=None, help="Also run from this git revision (the before).")
    p.add_argument("--distill", default=None, metavar="STUDENT",
                   help="Then also distill STUDENT from the teacher just trained, with the defaults (the baseline, "
                        "25 cached views), 1 epoch, under the same cap, on each tree.")
    p.add_argument("--then", default="", metavar="COMMANDS",
                   help="Then also run these commands on the teacher just trained, under the same cap, from this tree: "
                        "a comma-separated list of evaluate, export (fp32 ONNX, verified on val and test), bench.")
    p.add_argument("--out", default="benchmarks/results/larger_than_memory")
    p.add_argument("--smoke", action="store_true", help="digits, a 1 GiB cap, seconds")
    args = p.parse_args(argv)
    then = [c for c in args.then.split(",") if c]
    if set(then) - set(THEN):
        p.error(f"--then takes a comma-separated list of {', '.join(THEN)}; got {args.then!r}")
    if args.smoke:
        args.data, args.cap_mib = "digits", 1024
        args.photos = str(Path(args.out).parent / (Path(args.out).name + "-photos"))
        args.work = str(Path(args.out).parent / (Path(args.out).name + "-work"))
    return args


def cgroup_available() -> str | None:
    """None when a memory cgroup can be made here, else why not."""
    if not (CGROUP_V1 / "memory.limit_in_bytes").is_file():
        return f"no cgroup v1 memory controller at {CGROUP_V1}"
    if not os.access(CGROUP_V1, os.W_OK):
        return f"cannot create cgroups under {CGROUP_V1} (needs root)"
    return None


def run_capped(argv: list[str], cap_bytes: int, env: dict, cwd: Path, poll: float = 0.1) -> dict:
    """Run ``argv`` in ``cwd`` (``python -m`` imports from there first) in a fresh memory cgroup limited
    to ``cap_bytes``; its exit code, seconds and peaks."""
    group = CGROUP_V1 / f"edgekd-ltm-{os.getpid()}-{time.monotonic_ns()}"
    group.mkdir()
    try:
        (group / "memory.limit_in_bytes").write_text(str(cap_bytes))
        procs = str(group / "cgroup.procs")

        def enter():   # in the child, before exec: everything it runs is charged to the group
            with open(procs, "w") as handle:
                handle.write(str(os.getpid()))

        tick = time.perf_counter()
        proc = subprocess.Popen(argv, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                preexec_fn=enter)
        peak_anon = 0
        while proc.poll() is None:
            peak_anon = max(peak_anon, _stat(group).get("rss", 0))
            time.sleep(poll)
        stdout, stderr = proc.communicate()
        seconds = time.perf_counter() - tick
        return {"returncode": proc.returncode, "seconds": round(seconds, 1), "peak_anon_bytes": peak_anon,
                "peak_charged_bytes": int((group / "memory.max_usage_in_bytes").read_text()),
                "limit_hits": int((group / "memory.failcnt").read_text()),
                "oom_kills": _stat(group, "memory.oom_control").get("oom_kill", 0),
                "stderr_tail": stderr[-600:]}
    finally:
        group.rmdir()


def _stat(group: Path, name: str = "memory.stat") -> dict:
    try:
        return {k: int(v) for k, v in (line.split() for line in (group / name).read_text().splitlines())}
    except (OSError, ValueError):
        return {}


def main(argv=None):
    from benchmarks.photos_fmnist import write_photos

    args = parse_args(argv)
    why = cgroup_available()
    if why:
        raise Refused(f"larger_than_memory: {why}; run it as root on Linux with cgroup v1.")
    started = time.perf_counter()
    folder = write_photos(args.data, Path(args.photos))
    work = Path(args.work).resolve()
    shutil.rmtree(work, ignore_errors=True)   # this benchmark's own folder: the cold run starts from nothing
    work.mkdir(parents=True)
    spec = f"imagefolder:{Path(args.photos).resolve()},size={args.image_size}"
    height, width = (int(v) for v in args.image_size.split("x"))
    n = folder["images"]["train"] + folder["images"]["test"]
    pixels = n * 3 * height * width
    runs = []
    trees = [("this tree", None)] + ([(args.against, args.against)] if args.against else [])
    for label, revision in trees:
        with _tree(revision) as root:
            decoded_before = _decoded_entries(work / "cache")

            def decode():   # what the run found, not what the order suggests: another cache version decodes again
                if not _decoded_entries(work / "cache") - decoded_before:
                    return "cached (filled by the run above)"
                return "cold (empty cache)" if not decoded_before else "decoded again (no entry under its cache key)"
            runs.append(_capped_edgekd(root, label, ["teacher", "train", "--data", spec, "--arch", args.arch, "--epochs", "1"],
                                       work / f"model-{len(runs)}", work, args.cap_mib, decode))
    if args.distill:
        for label, revision in trees:
            with _tree(revision) as root:
                # a logit cache of its own: a tree that found the other's teacher logits would skip the teacher
                runs.append(_capped_edgekd(root, label, ["distill", "--teacher", str(work / "model-0"), "--data", spec,
                                                         "--student", args.distill, "--epochs", "1", "--baseline",
                                                         "--cache-dir", str(work / f"logits-{len(runs)}")],
                                           work / f"student-{len(runs)}", work, args.cap_mib,
                                           lambda: "cached (filled by the first run); teacher logits cold"))
    for command in [c for c in THEN if c in args.then.split(",")]:   # in this order: bench times the export
        edgekd_args, out = then_args(command, work / "model-0", spec, work)
        runs.append(_capped_edgekd(Path(__file__).resolve().parents[1], "this tree", edgekd_args, out, work,
                                   args.cap_mib, lambda: "cached (filled by the first run)"))
    result = {"args": vars(args), "data": {"spec": args.data, "folder": folder, "images": n,
                                           "uint8_bytes": pixels, "float32_bytes": 4 * pixels},
              "cap_bytes": args.cap_mib << 20, "runs": runs, "provenance": provenance(started)}
    write_result(args, result, render(result))


def _capped_edgekd(root: Path, label: str, edgekd_args: list, out: Path | None, work: Path, cap_mib: int, decode) -> dict:
    """``edgekd EDGEKD_ARGS --out OUT`` (no ``--out`` when None) from the tree at ``root`` in the capped cgroup, as
    one record; ``decode()`` says afterwards what the run found in the decode cache."""
    from edgekd.artifacts import load_artifact

    env = {**os.environ, "EDGEKD_CACHE": str(work / "cache"), "OMP_NUM_THREADS": str(os.cpu_count() or 1),
           "PYTHONPATH": str(root)}
    ran_at = _revision(root)   # the code the run starts with (a commit made meanwhile is not it)
    argv_ = [sys.executable, "-m", "edgekd", *edgekd_args, *(["--out", str(out)] if out else []), "--quiet"]
    record = run_capped(argv_, cap_mib << 20, env, root)
    record["imports_from"] = subprocess.run([sys.executable, "-c", "import edgekd; print(edgekd.__file__)"], env=env,
                                            cwd=root, capture_output=True, text=True).stdout.strip()
    record.update(tree=label, revision=ran_at, command=["edgekd", *argv_[3:]], decode=decode())
    if record["returncode"] == 0 and edgekd_args[0] in ("teacher", "distill"):
        record["test_accuracy"] = load_artifact(out).manifest.metrics.get("test_accuracy")
    print(json.dumps({k: v for k, v in record.items() if k != "stderr_tail"}), flush=True)
    return record


def _decoded_entries(cache: Path) -> set[str]:
    """The decoded image folders in an edgekd cache (``images/<key>.json``)."""
    return {p.name for p in (cache / "images").glob("*.json")} if (cache / "images").is_dir() else set()


class _tree:
    """The repository root to import edgekd from: this one, or a temporary worktree at ``revision``."""

    def __init__(self, revision):
        self.revision, self.path = revision, None

    def __enter__(self) -> Path:
        here = Path(__file__).resolve().parents[1]
        if self.revision is None:
            return here
        self.path = Path(tempfile.mkdtemp(prefix="edgekd-rev-")) / "tree"
        subprocess.run(["git", "-C", str(here), "worktree", "add", "--detach", "-q", str(self.path), self.revision], check=True)
        return self.path

    def __exit__(self, *exc):
        if self.path is not None:
            here = Path(__file__).resolve().parents[1]
            subprocess.run(["git", "-C", str(here), "worktree", "remove", "--force", str(self.path)], check=False)
            shutil.rmtree(self.path.parent, ignore_errors=True)


def _revision(root: Path) -> str:
    done = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True)
    return done.stdout.strip() + ("+changes" if dirty.stdout.strip() else "")


def render(result: dict) -> str:
    mib = lambda b: f"{b / 2**20:,.0f}"  # noqa: E731
    d, cap = result["data"], result["cap_bytes"]
    lines = header_markdown("Training on an image folder larger than the memory it runs in", result["provenance"])
    lines += [f"`imagefolder:` {d['images']:,} PNG files (written from `{d['spec']}`) decoded at "
              f"{result['args']['image_size']} RGB: **{mib(d['uint8_bytes'])} MiB** of uint8 pixels, "
              f"{mib(d['float32_bytes'])} MiB as float32, in a memory cgroup limited to **{mib(cap)} MiB**. "
              "Each row is one edgekd command run inside it (the commands below).", "",
              "| edgekd | command | decode | exit | seconds | peak anonymous MiB | peak charged MiB | times at the limit | test accuracy |",
              "|---|---|---|---|---|---|---|---|---|"]
    for r in result["runs"]:
        exit_ = "0" if r["returncode"] == 0 else f"{r['returncode']} ({'killed: out of memory' if r['oom_kills'] or r['returncode'] in (-9, 137) else 'failed'})"
        acc = f"{100 * r['test_accuracy']:.2f}%" if r.get("test_accuracy") is not None else "—"
        lines.append(f"| {r['tree']} ({r['revision']}) | `{'teacher train' if r['command'][1] == 'teacher' else r['command'][1]}` | {r['decode']} | {exit_} | {r['seconds']} | "
                     f"{mib(r['peak_anon_bytes'])} | {mib(r['peak_charged_bytes'])} | {r['limit_hits']:,} | {acc} |")
    lines += [""] + [f"- {r['tree']} imported edgekd from `{r['imports_from']}`." for r in result["runs"]]
    commands = list(dict.fromkeys(" ".join(r["command"]) for r in result["runs"]))
    lines += ["", "Commands: " + "; ".join(f"`{c}`" for c in commands) + " (with `EDGEKD_CACHE` set to an empty folder "
                  "first). Peak anonymous memory is polled every 0.1 s from the cgroup's `memory.stat`; the charged "
                  "peak includes the page cache of the memory-mapped files, which the kernel drops and re-reads "
                  "under the limit.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    run_script(main)
