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


def test_an_archive_with_more_than_one_program_would_hold_is_refused_before_torch_reads_it(tmp_path):
    """Three archives ran code through torch.export.load past a check of a few names: a name twice (zipfile reads
    the last copy, torch the first), an AOTInductor library (torch loads it), and the legacy format's pickles
    beside a pt2 marker (torch's fallback unpickles them). Only a program's own entries are let through."""
    good = _save(_net().eval(), tmp_path / "t.pt2", torch.rand(2, 1, 8, 8))
    with zipfile.ZipFile(good) as archive:
        prefix = archive.namelist()[0].split("/")[0]
    cases = {"twice.pt2": (f"{prefix}/data/weights/model_weights_config.json", "a name twice"),
             "aoti.pt2": (f"{prefix}/data/aotinductor/model/model.wrapper.so", "which is not part of a torch.export program"),
             "legacy.pt2": ("serialized_state_dict.pt", "several top-level folders")}
    for name, (extra, message) in cases.items():
        (tmp_path / name).write_bytes(good.read_bytes())
        with zipfile.ZipFile(tmp_path / name, "a") as archive, pytest.warns(UserWarning) if "twice" in name else _nothing():
            archive.writestr(extra, b"{}")
        with pytest.raises(TeacherError, match=message):
            load_teacher(tmp_path / name)


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_a_bounded_batch_a_keyword_input_and_raw_bytes_are_fed_as_the_program_takes_them(tmp_path, digits):
    class Keyword(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = _net()

        def forward(self, *, x):
            return self.net(x)

    class Bytes(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = _net()

        def forward(self, x):
            return self.net(x.float())

    x = digits.x_test[:4].float()
    batch = {0: torch.export.Dim("batch", max=32)}
    bounded = _net().eval()
    torch.export.save(torch.export.export(bounded, (x,), dynamic_shapes=(batch,)), str(tmp_path / "max32.pt2"))
    keyword = Keyword().eval()
    torch.export.save(torch.export.export(keyword, (), {"x": x}, dynamic_shapes={"x": {0: torch.export.Dim("b")}}),
                      str(tmp_path / "kw.pt2"))
    raw = Bytes().eval()
    torch.export.save(torch.export.export(raw, (x.to(torch.uint8),), dynamic_shapes=({0: torch.export.Dim("b")},)),
                      str(tmp_path / "u8.pt2"))
    rows = digits.x_test[:100]
    with torch.no_grad():
        for path, net in (("max32.pt2", bounded), ("kw.pt2", keyword.net), ("u8.pt2", raw.net)):
            teacher = load_teacher(tmp_path / path)
            assert torch.allclose(teacher.logits(rows), net(rows.float()), atol=1e-5), path
    assert load_teacher(tmp_path / "max32.pt2").batch_range == (0, 32)


def test_a_pt2_with_batch_statistics_on_is_refused(tmp_path, digits):
    """Train-mode BatchNorm gives the same outputs twice, so only an input alone against in a batch tells."""
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 16), torch.nn.BatchNorm1d(16), torch.nn.Linear(16, 10))
    teacher = load_teacher(_save(net.train(), tmp_path / "bn.pt2", torch.rand(4, 1, 8, 8)))
    with pytest.raises(TeacherError, match=r"other outputs alone than in a batch of 8 \(.*BatchNorm in training mode"):
        check_teacher_fits(teacher, digits)
    check_teacher_fits(load_teacher(_save(net.eval(), tmp_path / "ok.pt2", torch.rand(4, 1, 8, 8))), digits)
