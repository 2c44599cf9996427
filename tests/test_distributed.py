"""edgekd.distributed: torchrun with 2 gloo processes trains like one process."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest


def _edgekd(args):
    return subprocess.Popen([sys.executable, "-m", "edgekd", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=dict(os.environ))


MLP_TRAIN = ["teacher", "train", "--arch", "mlp:hidden=64", "--epochs", "6", "--quiet"]


@pytest.mark.slow
def test_ddp_two_processes_match_single_process(tmp_path):
    """torchrun with 2 gloo processes: the same global batch and seed give the same accuracy within
    2 points (an MLP without dropout or BatchNorm: gradients averaged over two shards equal the full
    batch's except on the last, uneven batch of each epoch; float sums differ in order)."""
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or shutil.which("torchrun")
    if torchrun is None:
        pytest.skip("torchrun not found")
    single = tmp_path / "single"
    proc = _edgekd([*MLP_TRAIN, "--out", single])
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    out = tmp_path / "ddp"
    proc = subprocess.run([torchrun, "--nproc-per-node", "2", "--master-port", "29533", "-m", "edgekd", *MLP_TRAIN, "--out", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    accuracy = lambda p: json.loads((p / "manifest.json").read_text())["metrics"]["test_accuracy"]  # noqa: E731
    assert accuracy(single) > 0.85
    assert abs(accuracy(single) - accuracy(out)) <= 0.02, (accuracy(single), accuracy(out))
    assert not any(p.name.endswith(".partial") for p in tmp_path.iterdir())
