"""edgekd.device and the device-following training loop. The ``gpu`` tests run every command on CUDA
(tiny data) and are skipped, with the reason, where no GPU is visible: run them with ``pytest -m gpu``."""

import json
import math
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from edgekd.cli import cli
from edgekd.clicommon import run_cli
from edgekd.device import autocast, module_device, place_dataset, resolve_device
from edgekd.errors import ConfigError
from edgekd.training import (Interrupted, RunStore, TrainConfig, accuracy_and_nll, apply_shifts, fit, jitter_shifts,
                             predict_logits, step_generator)

CUDA = torch.cuda.is_available()
gpu = pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU (torch.cuda.is_available() is False)")


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if CUDA else "cpu")
    with pytest.raises(ConfigError, match="one of 'auto', 'cpu', 'cuda'"):
        resolve_device("tpu")
    if not CUDA:
        with pytest.raises(ConfigError, match="no CUDA device"):
            resolve_device("cuda")


def test_cuda_n_is_carried_to_every_stage_and_made_current(monkeypatch):
    """``--device cuda:1`` was accepted, then cut to "cuda" (GPU 0) where the stages and the training config
    were made; now it reaches them, and GPU 1 is made current (its random state and name are then those
    asked for)."""
    from edgekd.clicommon import make_train_config
    from edgekd.config import PipelineConfig
    from edgekd.pipeline import teacher_config

    made_current = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_device", made_current.append)
    assert resolve_device("cuda:1") == torch.device("cuda:1") and made_current == [torch.device("cuda:1")]
    params = dict(device="cuda:1", epochs=1, batch_size=8, lr=1e-3, weight_decay=0.0, patience=0, jitter=0, seed=0,
                  precision="fp32", mixup=0.0, flip=False)
    assert make_train_config(params).device == "cuda:1"
    device = str(resolve_device(PipelineConfig(device="cuda:1").device))   # what pipeline() hands its stages
    assert teacher_config(PipelineConfig(device="cuda:1"), device).train.device == "cuda:1"


def test_place_dataset_on_the_cpu_is_the_same_object(digits):
    assert place_dataset(digits, torch.device("cpu")) is digits


def test_predict_logits_follows_the_model_and_returns_on_the_inputs_device():
    model = torch.nn.Linear(4, 3)
    x = torch.randn(5, 4)
    out = predict_logits(model, x, batch_size=2)
    assert out.device == x.device and torch.allclose(out, model(x))
    assert module_device(model) == torch.device("cpu")


def test_shifts_are_made_on_the_generators_device():
    generator = step_generator(0, 0, 0)
    shifts = jitter_shifts(6, 2, generator)
    assert shifts.device == generator.device and shifts.abs().max() <= 2
    x = torch.arange(2 * 1 * 4 * 4, dtype=torch.float32).reshape(2, 1, 4, 4)
    moved = apply_shifts(x, torch.tensor([[1, 0], [0, -1]]), 1)
    assert torch.equal(moved[0, 0, 1:], x[0, 0, :-1]) and torch.equal(moved[0, 0, 0], torch.zeros(4))
    assert torch.equal(moved[1, 0, :, :-1], x[1, 0, :, 1:])


def test_bf16_autocast_trains_on_the_cpu(digits):
    """bf16 autocasts the forward pass; the weights the loop keeps stay float32, and it learns."""
    with autocast(torch.device("cpu"), "bf16"):
        assert torch.nn.Linear(4, 2)(torch.randn(3, 4)).dtype == torch.bfloat16
    model, result = _tiny_fit(digits, None, TrainConfig(epochs=3, lr=1e-2, precision="bf16", device="cpu"))
    assert all(v.dtype == torch.float32 for v in result.state.values())
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert all(torch.isfinite(torch.tensor(h["loss"])) for h in result.history), result.history
    assert result.val_accuracy > 0.8, result.val_accuracy
    with pytest.raises(ConfigError, match="'precision' parameter"):
        TrainConfig(precision="fp8")


def _tiny_fit(digits, store, config, make_batch=None):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
    x, y = digits.x_train / 16, digits.y_train

    def batches(indices, generator, epoch):
        return x[indices], y[indices]

    return model, fit(model, n_train=len(y), make_batch=make_batch or batches,
                      loss_fn=lambda out, batch: torch.nn.functional.cross_entropy(out, batch[1]),
                      val=(digits.x_val / 16, digits.y_val), config=config, store=store, name="m")


def test_history_loss_is_the_epoch_mean(digits):
    seen = []

    def loss_fn(out, batch):
        loss = torch.nn.functional.cross_entropy(out, batch[1])
        seen.append(float(loss.detach()))
        return loss

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
    result = fit(model, n_train=len(digits.y_train), make_batch=lambda i, g, e: (digits.x_train[i] / 16, digits.y_train[i]),
                 loss_fn=loss_fn, val=(digits.x_val / 16, digits.y_val), config=TrainConfig(epochs=1, batch_size=256),
                 store=None, name="m")
    assert result.history[0]["loss"] == pytest.approx(sum(seen) / len(seen), rel=1e-5)


def test_signal_on_the_last_step_of_an_epoch_resumes(digits, tmp_path):
    """Stopped on the last step of an epoch, the checkpoint says batch == steps per epoch; the resumed
    run must close that epoch (it used to crash on an unbound loss)."""
    config = TrainConfig(epochs=2, batch_size=512)
    steps = -(-len(digits.y_train) // 512)
    x, y = digits.x_train / 16, digits.y_train

    def stop_on_last(indices, generator, epoch):
        if epoch == 0 and len(indices) < 512:   # the last, short batch of epoch 1
            os.kill(os.getpid(), signal.SIGINT)
        return x[indices], y[indices]

    with pytest.raises(Interrupted):
        _tiny_fit(digits, RunStore(tmp_path / "run", resume=False), config, stop_on_last)
    saved = json.loads((tmp_path / "run" / "m.ckpt.json").read_text())["position"]
    assert saved["batch"] == steps and saved["epoch"] == 0
    _, resumed = _tiny_fit(digits, RunStore(tmp_path / "run", resume=True), config)
    _, straight = _tiny_fit(digits, None, config)
    assert resumed.epochs_run == 2 and resumed.history[0]["loss"] == pytest.approx(straight.history[0]["loss"], rel=1e-6)
    assert resumed.val_accuracy == straight.val_accuracy


def test_non_finite_loss_is_reported_once_per_epoch(digits):
    def nan_batches(indices, generator, epoch):
        return torch.full((len(indices), 1, 8, 8), float("nan")), digits.y_train[indices]

    from edgekd.errors import TrainingError

    with pytest.raises(TrainingError, match="Non-finite loss .* during epoch 1"):
        _tiny_fit(digits, None, TrainConfig(epochs=1), nan_batches)


@pytest.mark.parametrize("argv, fix", [(["teacher", "train", "--arch", "mlp:hidden=16"], "rerun with a smaller --batch-size or with --device cpu."),
                                       (["bench", "--model", "M"], "rerun with a smaller --batch-sizes or with --device cpu."),
                                       (["evaluate", "M"], "rerun with --device cpu."),
                                       (["teacher", "train", "--arch", "mlp:hidden=16", "KEPT"],
                                        "rerun with a smaller --batch-size and --overwrite, or go on from the kept checkpoint on the CPU with --resume --device cpu.")])
def test_a_gpu_out_of_memory_is_one_line_saying_what_to_change(capsys, monkeypatch, tmp_path, argv, fix):
    """torch.OutOfMemoryError (a batch, model or split larger than the GPU) is the user's to fix, not an
    internal error: one line, exit 2, the way out (a checkpointing command can go on on the CPU)."""
    def out_of_memory(*_args, **_kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 3.06 GiB. GPU 0 has 1.20 GiB free.\nmore")

    monkeypatch.setattr("click.Context.invoke", out_of_memory)   # the command raises it once its options are parsed
    if "KEPT" in argv:   # a checkpoint kept to go on from
        argv = argv[:-1]
        (tmp_path / "o.partial").mkdir()
        (tmp_path / "o.partial" / "member-0.ckpt.json").write_text("{}")
    code = run_cli(cli, [*argv, *(["--out", str(tmp_path / "o")] if argv[0] != "evaluate" else [])])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "ran out of memory (CUDA out of memory." in err and err.endswith(fix), err


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=[pytest.mark.gpu, gpu])])
def test_accuracy_follows_the_logits_device(device):
    """CPU labels meet the logits on their device; accuracy and NLL come back as plain floats."""
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0]], device=device)
    accuracy, nll = accuracy_and_nll(logits, torch.tensor([0, 0]))
    assert accuracy == 0.5 and nll == pytest.approx((math.log1p(math.exp(-2)) + math.log1p(math.e)) / 2, rel=1e-6)


# --- on CUDA ---------------------------------------------------------------------------------------

@pytest.mark.gpu
@gpu
def test_a_split_crosses_to_the_gpu_in_pieces(monkeypatch):
    """copy_to_device: pageable pieces (nothing pinned whole), the same tensor on the other side."""
    import edgekd.device

    monkeypatch.setattr(edgekd.device, "RESIDENT_CHUNK_BYTES", 100)
    x = torch.arange(37 * 12, dtype=torch.int64).reshape(37, 3, 4) % 251
    moved = edgekd.device.copy_to_device(x.to(torch.uint8), torch.device("cuda"))
    assert moved.device.type == "cuda" and moved.dtype == torch.uint8 and torch.equal(moved.cpu(), x.to(torch.uint8))
    assert edgekd.device.copy_to_device(x, torch.device("cpu")) is x


@pytest.mark.gpu
@gpu
def test_the_random_draws_do_not_depend_on_where_the_data_lives(digits):
    """Batch order and per-step shifts come from CPU generators: data left on the host (too big for the GPU,
    or on one rank of a torchrun job) and data moved to the GPU give the same draws."""
    drawn = {}
    for where in ("cpu", "cuda"):
        x, y, seen = (digits.x_train / 16).to(where), digits.y_train.to(where), []

        def batches(indices, generator, epoch):
            seen.append((indices.cpu(), jitter_shifts(len(indices), 1, generator).cpu()))
            return x[indices], y[indices]

        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10)).cuda()
        fit(model, n_train=len(y), make_batch=batches, loss_fn=lambda out, b: torch.nn.functional.cross_entropy(out, b[1]),
            val=(digits.x_val / 16, digits.y_val), config=TrainConfig(epochs=2, device="cuda"), store=None, name="m",
            data_device=where)
        drawn[where] = seen
    assert len(drawn["cpu"]) == len(drawn["cuda"]) > 0
    assert all(torch.equal(a, c) and torch.equal(b, d) for (a, b), (c, d) in zip(drawn["cpu"], drawn["cuda"]))


TINY_CNN = "cnn:width=4,fc=16"


def _cli(*args):
    code = run_cli(cli, [str(a) for a in args])
    assert code == 0, f"edgekd {' '.join(map(str, args))} exited {code}"


@pytest.fixture(scope="module")
def cuda_teacher(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu") / "teacher"
    _cli("teacher", "train", "--arch", TINY_CNN, "--ensemble", "2", "--epochs", "3", "--jitter", "1",
         "--device", "cuda", "--quiet", "--out", out)
    return out


def _manifest(path):
    return json.loads((Path(path) / "manifest.json").read_text())


@pytest.mark.gpu
@gpu
def test_gpu_teacher_train(cuda_teacher):
    manifest = _manifest(cuda_teacher)
    assert manifest["config"]["params"]["device"] == "cuda" and manifest["metrics"]["test_accuracy"] > 0.8
    environment = manifest["environment"]   # what a same-seed rerun on a GPU must match
    assert environment["gpu"] == torch.cuda.get_device_name() and environment["cuda"] == torch.version.cuda
    assert environment["cudnn"] == torch.backends.cudnn.version()


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("extra", [[], ["--jitter", "1", "--views", "0"], ["--jitter", "1", "--views", "2"],
                                   ["--precision", "bf16", "-T", "auto", "--temperature-grid", "2,4"],
                                   ["--jitter", "1", "--mixup", "0.4"]],
                         ids=["cached", "online-teacher", "cached-views", "bf16-search", "mixup-function-matching"])
def test_gpu_distill(cuda_teacher, tmp_path, extra):
    out = tmp_path / "student"
    _cli("distill", "--teacher", cuda_teacher, "--student", "mlp:hidden=32", "--epochs", "3", "--baseline",
         "--device", "cuda", "--quiet", "--out", out, *extra)
    assert _manifest(out)["metrics"]["test_accuracy"] > 0.8


@pytest.mark.gpu
@gpu
def test_gpu_specialists_evaluate_and_pipeline(cuda_teacher, tmp_path):
    spec = tmp_path / "spec"
    _cli("specialists", "cluster", "--teacher", cuda_teacher, "--member", "0", "--clusters", "3", "--device", "cuda")
    _cli("specialists", "build", "--teacher", cuda_teacher, "--member", "0", "--clusters", "3", "--epochs", "1",
         "--device", "cuda", "--quiet", "--out", spec)
    _cli("specialists", "regate", spec, "--top-n", "2", "--device", "cuda", "--out", tmp_path / "regated")
    _cli("evaluate", spec, "--teacher", cuda_teacher, "--device", "cuda")
    _cli("pipeline", "--ensemble", "2", "--teacher-epochs", "2", "--epochs", "2", "--skip", "bench",
         "--device", "cuda", "--quiet", "--out", tmp_path / "pipe")
    assert (tmp_path / "pipe" / "summary.md").is_file()


@pytest.mark.gpu
@gpu
def test_gpu_torchrun_one_process_nccl(tmp_path):
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or shutil.which("torchrun")
    if torchrun is None:
        pytest.skip("torchrun not found")
    # WORLD_SIZE 1 is a single process; 2 ranks on the one visible GPU are refused in one line (nccl cannot
    # put two ranks on one GPU, and cudaSetDevice(1) failed as an internal error)
    for n in (1, 2):
        out = tmp_path / f"ddp{n}"
        proc = subprocess.run([torchrun, "--standalone", "--nproc-per-node", str(n), "-m", "edgekd", "teacher", "train",
                               "--arch", "mlp:hidden=32", "--epochs", "2", "--device", "cuda", "--quiet", "--out", str(out)],
                              capture_output=True, text=True, timeout=300, env={**os.environ, "CUDA_VISIBLE_DEVICES": "0"})
        if n == 2:
            assert proc.returncode == 2 and "one process per GPU" in proc.stderr, proc.stderr[-2000:]
            continue
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert _manifest(out)["metrics"]["test_accuracy"] > 0.8


@pytest.mark.gpu
@gpu
def test_gpu_interrupted_run_resumes(tmp_path):
    """SIGTERM mid-run on CUDA, then --resume: it finishes with the same config and a sane accuracy
    (bit-exact equality is promised on the CPU only)."""
    import time

    args = [sys.executable, "-m", "edgekd", "teacher", "train", "--arch", TINY_CNN, "--ensemble", "2", "--epochs", "4",
            "--device", "cuda", "--quiet", "--out", str(tmp_path / "t")]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and not list((tmp_path / "t.partial").glob("member-0.ckpt.json")):
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    # the signal is sent with training still to run: a run that finishes anyway has ignored it (never skipped)
    assert proc.returncode != 0, f"the run finished although it was stopped mid-training: {err[-300:]}"
    assert proc.returncode == 130, err
    done = subprocess.run([*args, "--resume"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    manifest = _manifest(tmp_path / "t")
    assert manifest["config"]["params"]["epochs"] == 4 and manifest["metrics"]["test_accuracy"] > 0.8


@pytest.mark.gpu
@gpu
def test_gpu_bench_runs_the_pytorch_rows_on_cuda(cuda_teacher, tmp_path):
    _cli("bench", "--model", cuda_teacher, "--runtimes", "pytorch,onnxruntime", "--batch-sizes", "1", "--threads", "1",
         "--seconds", "0.1", "--rounds", "1", "--device", "cuda", "--quiet", "--out", tmp_path / "r")
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    rows = [r for r in report["rows"] if r["status"] == "ok" and r["runtime"] == "pytorch"]
    assert rows and all(r["device"] == "cuda" for r in rows)


@pytest.mark.gpu
@gpu
def test_library_helpers_take_tensors_on_the_gpu(digits, tiny_student, tmp_path):
    """Public helpers a notebook calls with placed data: each counted or solved on the host from CUDA
    tensors (they made their buffers on the CPU and failed mixing devices)."""
    from edgekd.device import place_dataset
    from edgekd.distill import fit_omitted_bias
    from edgekd.evaluate import metrics_from_logits
    from export import ExportConfig, export_onnx
    from specialists.clustering import find_clusters

    logits = torch.randn(200, 10, device="cuda")
    y = torch.randint(0, 10, (200,), device="cuda")
    assert metrics_from_logits(logits, y, digits.classes)["n"] == 200
    assert math.isfinite(fit_omitted_bias(logits, y, [3]))
    assert find_clusters(logits, 2).clusters
    placed = place_dataset(digits, torch.device("cuda"))
    export_onnx(tiny_student, tmp_path / "s.onnx", ExportConfig(), data=placed)


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("net", [torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10)),
                                 torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.Flatten(), torch.nn.Linear(144, 10))],
                         ids=["mlp", "cnn"])
def test_a_torchscript_teacher_stays_on_the_gpu(digits, tmp_path, net):
    """Its first output was checked against a CPU tensor of ones: the device mix sent a CNN back to the host
    for good (with a warning) and stopped an MLP with an internal error."""
    import warnings

    from edgekd.errors import EdgekdWarning
    from edgekd.teachers import load_teacher

    path = tmp_path / "t.pt"
    torch.jit.save(torch.jit.script(net.eval()), str(path))
    teacher = load_teacher(path).to("cuda")
    with warnings.catch_warnings():
        warnings.simplefilter("error", EdgekdWarning)
        logits = teacher.logits(digits.x_test[:16].cuda())
    assert logits.device.type == "cuda" and teacher.device.type == "cuda" and logits.shape == (16, 10)


@pytest.mark.gpu
@gpu
def test_a_view_table_too_large_for_the_gpu_is_gathered_on_the_host(cuda_teacher, tmp_path, monkeypatch):
    """The split on the GPU, its teacher's view table left on the host (as one that does not fit is): the
    batches gather their targets there, and the student trains as with the table resident."""
    import edgekd.distill

    kept = []
    monkeypatch.setattr(edgekd.distill, "place_table", lambda table, _device: kept.append(table.device) or table)
    out = tmp_path / "student"
    _cli("distill", "--teacher", cuda_teacher, "--student", "mlp:hidden=32", "--epochs", "2", "--jitter", "1",
         "--views", "2", "--device", "cuda", "--quiet", "--out", out)
    assert kept and all(d.type == "cpu" for d in kept) and _manifest(out)["metrics"]["test_accuracy"] > 0.8


def test_the_command_line_takes_cuda_n(capsys):
    """--device was a choice of auto, cpu, cuda: cuda:1 was refused by the option before any check."""
    code = run_cli(cli, ["teacher", "train", "--device", "cuda:1", "--arch", "mlp:hidden=8", "--out", "/nonexistent/o"])
    err = capsys.readouterr().err
    if not CUDA:
        assert code == 2 and "The 'device' parameter (--device) is 'cuda:1' but no CUDA device is available" in err, err
    code = run_cli(cli, ["teacher", "train", "--device", "tpu", "--out", "/nonexistent/o"])
    assert code == 2 and "must be one of 'auto', 'cpu', 'cuda' or 'cuda:N'. Got 'tpu'" in capsys.readouterr().err


@pytest.mark.parametrize("exc", [MemoryError(), RuntimeError("[enforce fail at alloc_cpu.cpp:127] data. DefaultCPUAllocator: "
                                                             "can't allocate memory: you tried to allocate 17179869184 bytes.")])
def test_the_host_running_out_of_memory_is_one_line_not_an_internal_error(capsys, monkeypatch, exc):
    def out_of_memory(*_args, **_kwargs):
        raise exc

    monkeypatch.setattr("click.Context.invoke", out_of_memory)
    code = run_cli(cli, ["evaluate", "M"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and err.startswith("error: this machine ran out of memory (")
    assert ("17.2 GB asked for at once" in err) == isinstance(exc, RuntimeError) and "internal error" not in err

