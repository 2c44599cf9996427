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


def test_shards_are_balanced_and_their_shares_give_the_batch_mean():
    """For any batch size and world: the shards tile the batch, differ by at most one row, and the ranks'
    mean losses times their shares average (as the gradients are) to the batch's mean loss."""
    import torch

    from edgekd.distributed import Context

    for world in (2, 3, 8):
        for n in range(1, 30):
            values = torch.arange(n, dtype=torch.float64) ** 2
            shards = [Context(rank, world, torch.device("cpu")).shard_batch((values, "kept"))
                      for rank in range(world)]
            assert torch.equal(torch.cat([batch[0] for batch, _ in shards]), values)
            sizes = [len(batch[0]) for batch, _ in shards]
            assert max(sizes) - min(sizes) <= 1 and all(batch[1] == "kept" for batch, _ in shards)
            averaged = sum(share * batch[0].mean() for batch, share in shards if len(batch[0])) / world
            assert float(averaged) == pytest.approx(float(values.mean()))


@pytest.mark.slow
def test_ddp_with_a_last_batch_smaller_than_the_world_and_batchnorm(tmp_path):
    """129 rows in batches of 128: the last batch is one row and rank 1 gets none (it used to take a NaN
    loss and stop the job); a BatchNorm cnn with dropout, its statistics averaged over the ranks."""
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or shutil.which("torchrun")
    if torchrun is None:
        pytest.skip("torchrun not found")
    out = tmp_path / "ddp"
    proc = subprocess.run([torchrun, "--nproc-per-node", "2", "--master-port", "29534", "-m", "edgekd", "teacher", "train",
                           "--arch", "cnn:width=4,fc=16,dropout=0.2", "--train-limit", "129", "--batch-size", "128",
                           "--epochs", "3", "--quiet", "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads((out / "manifest.json").read_text())["metrics"]["test_accuracy"] > 0.1


def test_commands_that_are_not_data_parallel_refuse_torchrun(edgekd, tmp_path, monkeypatch):
    """Under torchrun every rank ran 'specialists build' (or evaluate, export, ...) whole, all on one GPU,
    racing on the same --out: refused in one line; the data-parallel commands go on to their own checks."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    code, _, err = edgekd("evaluate", tmp_path / "nope")
    assert code == 2 and "'edgekd evaluate' runs in one process" in err and "WORLD_SIZE=2" in err
    code, _, err = edgekd("specialists", "build", "--teacher", tmp_path / "nope", "--out", tmp_path / "o")
    assert code == 2 and "'edgekd specialists build' runs in one process" in err
    code, _, err = edgekd("teacher", "train", "--arch", "nope", "--out", tmp_path / "o")
    assert code == 2 and "runs in one process" not in err


def test_more_ranks_than_gpus_is_one_line_not_an_internal_error(monkeypatch):
    import torch

    import edgekd.device
    from edgekd.distributed import context_from_env
    from edgekd.errors import ConfigError

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(edgekd.device, "resolve_device", lambda device: torch.device("cuda"))
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ConfigError, match="local rank 1 but this machine has 1 CUDA device.*--nproc-per-node 1"):
        context_from_env("cuda")
