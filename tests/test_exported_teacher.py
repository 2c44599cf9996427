"""edgekd.exported_teacher: a torch.export (.pt2) teacher runs its graph, as any teacher, and is never unpickled."""

from __future__ import annotations

import io
import json
import pickle
import zipfile

import pytest
import torch

from edgekd.errors import TeacherError
from edgekd.teachers import check_teacher_fits, load_teacher


def _net(*, flat=False, dropout=0.0):
    layers = [] if flat else [torch.nn.Flatten()]
    return torch.nn.Sequential(*layers, torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Dropout(dropout),
                               torch.nn.Linear(32, 10))


def _save(net, path, example, *, dynamic=True):
    dynamic_shapes = ({0: torch.export.Dim("batch")},) if dynamic else None
    torch.export.save(torch.export.export(net, (example,), dynamic_shapes=dynamic_shapes), str(path))
    return path


def _rewrite(src, dst, edit):
    """A copy of the archive ``src`` with ``edit(name, bytes) -> bytes`` applied to every entry."""
    with zipfile.ZipFile(src) as old, zipfile.ZipFile(dst, "w") as new:
        for name in old.namelist():
            new.writestr(name, edit(name, old.read(name)))
    return dst


@pytest.mark.parametrize("dynamic", [True, False])
def test_a_pt2_teacher_gives_its_modules_logits_at_any_batch(tmp_path, digits, dynamic):
    """A program exported without dynamic_shapes fixes the example's batch (3 here): fed in chunks of 3."""
    torch.manual_seed(0)
    net = _net().eval()
    teacher = load_teacher(_save(net, tmp_path / "t.pt2", digits.x_test[:3].float(), dynamic=dynamic))
    assert (teacher.kind, teacher.fixed_batch, teacher.input_shape) == ("pt2", None if dynamic else 3, (1, 8, 8))
    x = digits.x_test[:10]   # 10 = 3 + 3 + 3 + 1: the last chunk padded
    with torch.no_grad():
        expected = net(x.float())
    assert torch.allclose(teacher.logits(x), expected, atol=1e-6)
    assert check_teacher_fits(teacher, digits) == 10
    assert teacher.fingerprint == load_teacher(tmp_path / "t.pt2").fingerprint


def test_a_flat_pt2_teacher_is_fed_the_images_flattened(tmp_path, digits):
    net = _net(flat=True).eval()
    teacher = load_teacher(_save(net, tmp_path / "flat.pt2", torch.rand(2, 64)))
    with torch.no_grad():
        expected = net(digits.x_test[:5].float().reshape(5, -1))
    assert torch.allclose(teacher.logits(digits.x_test[:5]), expected, atol=1e-6)


def test_a_pt2_exported_in_training_mode_is_refused(tmp_path, digits):
    teacher = load_teacher(_save(_net(dropout=0.5).train(), tmp_path / "noisy.pt2", torch.rand(2, 1, 8, 8)))
    with pytest.raises(TeacherError, match="other outputs on a second run .* export or trace it in eval mode"):
        check_teacher_fits(teacher, digits)


def test_a_pt2_teacher_distils_a_student_from_the_command_line(edgekd, tmp_path, digits):
    path = _save(_net().eval(), tmp_path / "t.pt2", torch.rand(2, 1, 8, 8))
    code, stdout, err = edgekd("distill", "--teacher", path, "--student", "mlp:hidden=8", "--epochs", "1", "-T", "2",
                               "--alpha", "0.5", "--quiet", "--out", tmp_path / "s")
    assert code == 0, err
    assert "torch.export 't.pt2'" in stdout and (tmp_path / "s" / "manifest.json").is_file()


class _Boom:
    def __reduce__(self):   # runs at unpickling: what a hostile file would do
        return (open, ("/tmp/edgekd-pt2-unpickled", "w"))


def test_a_pt2_whose_loading_would_unpickle_is_refused_before_torch_reads_it(tmp_path):
    """torch.export.load unpickles weights marked use_pickle, and sample inputs it cannot read safely it reads
    again with weights_only=False: both are refused from the archive's own JSON and a safe torch.load."""
    import os

    good = _save(_net().eval(), tmp_path / "t.pt2", torch.rand(2, 1, 8, 8))
    marker = "/tmp/edgekd-pt2-unpickled"
    if os.path.exists(marker):
        os.remove(marker)

    def hostile_inputs(name, data):
        if "/data/sample_inputs/" not in name:
            return data
        buffer = io.BytesIO()
        torch.save(_Boom(), buffer)
        return buffer.getvalue()
    with pytest.raises(TeacherError, match="sample inputs that only a full unpickling reads"):
        load_teacher(_rewrite(good, tmp_path / "inputs.pt2", hostile_inputs))
    assert not os.path.exists(marker)

    def pickled_weight(name, data):
        if not name.endswith("model_weights_config.json"):
            return data
        config = json.loads(data)
        next(iter(config["config"].values()))["use_pickle"] = True
        return json.dumps(config).encode()
    with pytest.raises(TeacherError, match=r"stores 1 entry as pickles \(.*model_weights_config.json: 1.weight\)"):
        load_teacher(_rewrite(good, tmp_path / "weights.pt2", pickled_weight))

    (tmp_path / "legacy.pt2").write_bytes(b"")
    with zipfile.ZipFile(tmp_path / "legacy.pt2", "w") as archive:   # torch 2.7's format: a pickle-backed state dict
        archive.writestr("version", "8.0")
        archive.writestr("serialized_state_dict.pt", pickle.dumps({}))
    with pytest.raises(TeacherError, match="is not a torch.export archive"):
        load_teacher(tmp_path / "legacy.pt2")
    (tmp_path / "junk.pt2").write_bytes(b"not a zip")
    with pytest.raises(TeacherError, match="is not a readable torch.export archive"):
        load_teacher(tmp_path / "junk.pt2")


def test_a_pt2_with_two_inputs_or_a_tuple_output_is_one_clear_error(tmp_path, digits):
    class Two(torch.nn.Module):
        def forward(self, a, b):
            return a.flatten(1) + b.flatten(1)

    class Pair(torch.nn.Module):
        def forward(self, x):
            return x.flatten(1), x.flatten(1)

    x = torch.rand(2, 1, 8, 8)
    torch.export.save(torch.export.export(Two(), (x, x)), str(tmp_path / "two.pt2"))
    with pytest.raises(TeacherError, match="takes 2 inputs ; edgekd feeds one"):
        load_teacher(tmp_path / "two.pt2")
    teacher = load_teacher(_save(Pair(), tmp_path / "pair.pt2", x))
    with pytest.raises(TeacherError, match=r"returns a tuple for 2 inputs; a teacher returns one \(N, classes\)"):
        teacher.logits(digits.x_test[:2])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (torch.cuda.is_available() is False)")
def test_a_pt2_teacher_moves_to_the_gpu_with_its_devices(tmp_path, digits):
    class Made(torch.nn.Module):   # a tensor made in forward: its device is written into the graph
        def __init__(self):
            super().__init__()
            self.net = _net()

        def forward(self, x):
            return self.net(x) + torch.zeros(10, device=x.device)

    net = Made().eval()
    teacher = load_teacher(_save(net, tmp_path / "made.pt2", torch.rand(2, 1, 8, 8))).to("cuda")
    got = teacher.logits(digits.x_test[:5].cuda())
    assert got.device.type == "cuda"
    with torch.no_grad():
        assert torch.allclose(got.cpu(), net(digits.x_test[:5].float()), atol=1e-5)
