"""edgekd.teachers: the channels_last inference copy of convolutional teachers."""

from __future__ import annotations

import torch


def test_conv_teacher_runs_a_channels_last_copy_with_the_same_logits(tiny_teacher, digits):
    from edgekd.teachers import load_teacher
    from edgekd.training import predict_logits

    teacher = load_teacher(tiny_teacher)
    expected = predict_logits(teacher.net, digits.x_val.reshape(-1, *digits.input_shape))
    got = teacher.logits(digits.x_val)
    copy = teacher.channels_last_net()
    assert copy is not None and copy is not teacher.net
    assert torch.allclose(got, expected, atol=1e-5) and torch.equal(got.argmax(1), expected.argmax(1))
    # the net itself stays contiguous: it is what gets saved (safetensors) and exported
    assert all(p.is_contiguous() for p in teacher.net.parameters())
    assert any(p.dim() == 4 and p.is_contiguous(memory_format=torch.channels_last) and not p.is_contiguous()
               for p in copy.parameters())
    teacher.to("cpu")   # moving the teacher drops the copy; the next call makes a fresh one
    assert teacher.channels_last_net() is not copy


def test_teacher_without_convolutions_keeps_its_net(tiny_student, digits):
    from edgekd.teachers import load_teacher

    teacher = load_teacher(tiny_student)
    assert teacher.channels_last_net() is None
    assert teacher.logits(digits.x_val[:4]).shape == (4, len(digits.classes))



def test_ensemble_module_means_logits_or_probabilities():
    """z = (1/M) sum_m z_m for "logits"; log((1/M) sum_m softmax(z_m)) for "probs"; one member is itself."""
    from torch import nn

    from edgekd.teachers import EnsembleModule

    torch.manual_seed(0)
    members = [nn.Linear(6, 4) for _ in range(3)]
    x = torch.randn(5, 6)
    zs = torch.stack([m(x) for m in members])
    with torch.no_grad():
        torch.testing.assert_close(EnsembleModule(members, "logits")(x), zs.mean(0))
        torch.testing.assert_close(EnsembleModule(members, "probs")(x), torch.softmax(zs, -1).mean(0).log())
        torch.testing.assert_close(EnsembleModule(members[:1], "probs")(x), members[0](x))


def test_class_names_in_another_order_are_refused_and_other_names_warned(tiny_teacher, digits):
    import dataclasses
    import warnings

    import pytest

    from edgekd.errors import TeacherError
    from edgekd.teachers import check_teacher_fits, load_teacher

    teacher = load_teacher(tiny_teacher)   # trained on digits: classes '0'..'9'
    with pytest.raises(TeacherError, match="in another order"):   # labels would meet the wrong outputs
        check_teacher_fits(teacher, dataclasses.replace(digits, classes=digits.classes[::-1]))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_teacher_fits(teacher, dataclasses.replace(digits, classes=tuple("abcdefghij")))   # numbered: unknown
        check_teacher_fits(teacher, digits)
    teacher.classes = tuple("ABCDEFGHIJ")
    with pytest.warns(UserWarning, match=r"are not those of dataset 'digits' \(a, b, c, d, ...\)"):
        check_teacher_fits(teacher, dataclasses.replace(digits, classes=tuple("abcdefghij")))


def test_onnx_teacher_with_a_fixed_batch_is_fed_chunks_of_it(tiny_teacher, digits, tmp_path):
    """Some exporters fix the batch (often 1): such a teacher gives the same logits, the last chunk padded."""
    from edgekd.teachers import load_teacher

    reference = load_teacher(tiny_teacher)
    path = tmp_path / "fixed3.onnx"
    torch.onnx.export(reference.module().eval(), (digits.x_val[:3],), str(path), input_names=["x"],
                      output_names=["y"], dynamo=False)   # no dynamic axes: batch 3 only
    fixed = load_teacher(path)
    assert fixed.fixed_batch == 3
    x = digits.x_val[:10]   # 3 + 3 + 3 + 1 (padded)
    assert torch.allclose(fixed.logits(x), reference.logits(x), atol=1e-4)


class _RGBNet(torch.nn.Module):
    """A tiny colour classifier; with ``nhwc`` it takes (N, H, W, C) as TensorFlow's exports do."""

    def __init__(self, nhwc=False):
        super().__init__()
        torch.manual_seed(0)
        self.conv, self.head, self.nhwc = torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.Linear(4, 10), nhwc

    def forward(self, x):
        x = x.permute(0, 3, 1, 2) if self.nhwc else x
        return self.head(self.conv(x).amax((2, 3)))


def _onnx(module, example, path, dims=(0,)):
    names = {0: "batch", 2: "height", 3: "width"}
    torch.onnx.export(module.eval(), (example,), str(path), dynamo=True, input_names=["x"],
                      dynamic_shapes=({d: torch.export.Dim(names[d]) for d in dims},))
    return path


def test_onnx_teachers_in_their_own_layout_and_sizes_give_the_modules_logits(tmp_path):
    """Channels last is transposed, not reshaped (which scrambled every colour image); a graph with a
    dynamic height and width is fed the images as they are (a reshape could not infer two sizes)."""
    from edgekd.teachers import load_teacher

    x = torch.rand(6, 3, 8, 8) * 255
    want = _RGBNet()(x)
    nhwc = load_teacher(_onnx(_RGBNet(nhwc=True), x.permute(0, 2, 3, 1), tmp_path / "nhwc.onnx"))
    dynamic = load_teacher(_onnx(_RGBNet(), x, tmp_path / "dyn.onnx", dims=(0, 2, 3)))
    for teacher in (nhwc, dynamic):
        torch.testing.assert_close(teacher.logits(x), want, atol=1e-4, rtol=1e-4)


def test_an_onnx_teachers_fingerprint_covers_its_external_weights(tmp_path):
    """torch writes big graphs as NAME.onnx plus NAME.onnx.data: other weights in the data file are another teacher."""
    import onnx

    from edgekd.teachers import load_teacher

    path = _onnx(_RGBNet(), torch.rand(2, 3, 8, 8), tmp_path / "t.onnx")
    onnx.save(onnx.load(str(path)), str(path), save_as_external_data=True, all_tensors_to_one_file=True,
              location="t.onnx.data", size_threshold=256)   # the weights, not the small shape constants
    before = load_teacher(path).fingerprint
    data = bytearray((tmp_path / "t.onnx.data").read_bytes())
    data[0] ^= 0xFF   # one weight's byte: the graph file itself is the same
    (tmp_path / "t.onnx.data").write_bytes(bytes(data))
    assert load_teacher(path).fingerprint != before


def test_a_torchscript_teacher_returning_a_tuple_is_one_clear_error(tmp_path, digits):
    from edgekd.errors import TeacherError
    from edgekd.teachers import load_teacher

    class Pair(torch.nn.Module):
        def forward(self, x):
            return x.flatten(1)[:, :10], x.flatten(1)

    torch.jit.save(torch.jit.script(Pair()), str(tmp_path / "pair.pt"))
    try:
        load_teacher(tmp_path / "pair.pt").logits(digits.x_test[:4])
    except TeacherError as exc:
        assert "returns a tuple for 4 inputs; a teacher returns one (N, classes) tensor" in str(exc)
    else:
        raise AssertionError("a tuple output was taken for logits")


def test_a_foreign_teacher_is_read_as_probabilities_or_logits_once(tmp_path):
    """Decided on the first output, for every later batch: a softmax teacher gives log-probabilities
    throughout; sigmoid outputs (in [0, 1], rows not summing to 1) are read as logits and said once."""
    import pytest

    from edgekd.errors import EdgekdWarning
    from edgekd.teachers import load_teacher

    class Head(torch.nn.Module):
        def __init__(self, squash):
            super().__init__()
            self.squash = squash

        def forward(self, x):
            z = x.flatten(1)[:, :10] / 8
            if self.squash == "confident":   # wrong classes at down to exp(-48) = 1e-21: kept apart, not floored
                return torch.softmax(z * 24, -1)
            return torch.softmax(z, -1) if self.squash == "softmax" else torch.sigmoid(z)

    x = torch.rand(5, 1, 8, 8) * 16
    torch.jit.save(torch.jit.script(Head("softmax")), str(tmp_path / "soft.pt"))
    torch.jit.save(torch.jit.script(Head("sigmoid")), str(tmp_path / "sig.pt"))
    soft = load_teacher(tmp_path / "soft.pt")
    torch.testing.assert_close(soft.logits(x), torch.log_softmax(x.flatten(1)[:, :10] / 8, -1), atol=1e-5, rtol=1e-5)
    torch.jit.save(torch.jit.script(Head("confident")), str(tmp_path / "sure.pt"))
    sure = load_teacher(tmp_path / "sure.pt").logits(x)
    torch.testing.assert_close(sure, torch.log_softmax(x.flatten(1)[:, :10] * 3, -1), atol=1e-3, rtol=1e-4)
    assert sure.min() < -27.7   # below log(1e-12), where a floor made every such class one value
    sigmoid = load_teacher(tmp_path / "sig.pt")
    with pytest.warns(EdgekdWarning, match="read as logits"):
        sigmoid.logits(x)
    torch.testing.assert_close(sigmoid.logits(x), torch.sigmoid(x.flatten(1)[:, :10] / 8))


def test_a_two_output_onnx_teacher_with_the_wrong_one_names_its_outputs(tmp_path, digits):
    import pytest

    from edgekd.errors import TeacherError
    from edgekd.teachers import check_teacher_fits, load_teacher

    class Both(torch.nn.Module):
        def forward(self, x):
            features = x.flatten(1)[:, :32]
            return features, features[:, :10]

    torch.onnx.export(Both(), (digits.x_test[:2],), str(tmp_path / "two.onnx"), dynamo=True, input_names=["x"],
                      output_names=["features", "logits"], dynamic_shapes=({0: torch.export.Dim("batch")},))
    with pytest.raises(TeacherError, match="take another of its outputs with --teacher-output \\('features'.*'logits'"):
        check_teacher_fits(load_teacher(tmp_path / "two.onnx"), digits)
    check_teacher_fits(load_teacher(tmp_path / "two.onnx", output="logits"), digits)


def test_a_teacher_traced_in_training_mode_is_refused(tmp_path, digits):
    """Its dropout stays on: noisy targets, and every cache hit would look edited."""
    import pytest

    from edgekd.errors import TeacherError
    from edgekd.teachers import check_teacher_fits, load_teacher

    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 32), torch.nn.Dropout(0.5), torch.nn.Linear(32, 10))
    torch.jit.save(torch.jit.trace(net.train(), digits.x_test[:2], check_trace=False), str(tmp_path / "noisy.pt"))
    with pytest.raises(TeacherError, match="other outputs on a second run .* export or trace it in eval mode"):
        check_teacher_fits(load_teacher(tmp_path / "noisy.pt"), digits)


def test_a_torch_save_file_given_as_teacher_is_told_apart_from_torchscript(tmp_path):
    import pytest

    from edgekd.errors import TeacherError
    from edgekd.teachers import load_teacher

    torch.save(torch.nn.Linear(64, 10).state_dict(), tmp_path / "weights.pt")
    with pytest.raises(TeacherError, match="written by torch.save .* not TorchScript; edgekd never unpickles"):
        load_teacher(tmp_path / "weights.pt")


def test_a_torchscript_teacher_moves_with_to_and_falls_back_once_where_its_graph_cannot(tmp_path, monkeypatch):
    """TorchScript teachers ignored .to(device): an online teacher ran on the host, each batch crossing twice.
    A graph whose devices are written in runs where it can, said once."""
    import pytest

    from edgekd.errors import EdgekdWarning
    from edgekd.teachers import load_teacher

    torch.jit.save(torch.jit.script(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))), str(tmp_path / "t.pt"))
    teacher = load_teacher(tmp_path / "t.pt")
    moved = []
    monkeypatch.setattr(type(teacher.net), "to", lambda net, device: moved.append(torch.device(device)) or net, raising=False)
    x = torch.rand(4, 1, 8, 8)
    want = teacher.logits(x)
    teacher.to("meta")   # a device other than the host, as 'cuda' is, without a GPU
    assert teacher.device == torch.device("meta") and moved == [torch.device("meta")]
    with pytest.warns(EdgekdWarning, match="does not run on meta; it runs on the CPU"):
        got = teacher.logits(x)
    torch.testing.assert_close(got, want)
    assert teacher.device == torch.device("cpu")


def test_a_teacher_of_other_image_sides_with_the_same_pixel_count_is_refused(digits):
    """(1, 4, 16) and the data's (1, 8, 8) hold 64 values each; reading one as the other scrambles every image."""
    import pytest

    from edgekd.errors import TeacherError
    from edgekd.models import create_model
    from edgekd.teachers import ModuleTeacher, check_teacher_fits

    def teacher(shape):
        net = create_model("mlp:hidden=8", shape, digits.num_classes).eval()
        return ModuleTeacher(net, kind="model", classes=digits.classes, input_shape=shape, fingerprint=str(shape),
                             description="a test teacher")

    check_teacher_fits(teacher((64,)), digits)   # a flat model reads the images as rows: the same values
    with pytest.raises(TeacherError, match=r"takes inputs of shape \(1, 4, 16\) but dataset 'digits' has \(1, 8, 8\)"):
        check_teacher_fits(teacher((1, 4, 16)), digits)


def test_a_float64_torchscript_teacher_is_fed_float64_and_its_errors_keep_their_cause(tmp_path, digits):
    import pytest

    from edgekd.errors import TeacherError
    from edgekd.teachers import load_teacher

    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10)).double()
    torch.jit.save(torch.jit.script(net), str(tmp_path / "f64.pt"))
    logits = load_teacher(tmp_path / "f64.pt").logits(digits.x_test[:4])
    assert logits.dtype == torch.float32 and torch.allclose(logits, net(digits.x_test[:4].double()).float(), atol=1e-5)

    class Picky(torch.nn.Module):
        def forward(self, x):
            if x.shape[1] != 3:
                raise ValueError("wants three channels")
            return x.flatten(1)[:, :10]

    torch.jit.save(torch.jit.script(Picky()), str(tmp_path / "picky.pt"))
    with pytest.raises(TeacherError, match=r"failed on inputs of shape \(1, 8, 8\) \(.*ValueError: wants three channels\)"):
        load_teacher(tmp_path / "picky.pt").logits(digits.x_test[:4])
    # an RGB net on gray images: its error on the images is told, not the one of the flat rows tried after
    torch.jit.save(torch.jit.script(torch.nn.Conv2d(3, 4, 3).eval()), str(tmp_path / "rgb.pt"))
    with pytest.raises(TeacherError, match=r"to have 3 channels, but got 1 channels instead"):
        load_teacher(tmp_path / "rgb.pt").logits(digits.x_test[:4])


def test_an_onnx_teacher_declaring_channels_last_fits_channels_first_data(tmp_path):
    """TensorFlow's exporters declare (H, W, C): the data's channels are moved last for it, so it fits."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from edgekd.data import load_dataset
    from edgekd.teachers import check_teacher_fits, load_teacher

    rng = np.random.default_rng(0)
    np.savez(tmp_path / "d.npz", x=rng.integers(0, 255, (60, 3, 8, 8)).astype(np.float32), y=np.arange(60) % 4)
    w = numpy_helper.from_array(rng.normal(0, 0.01, (192, 4)).astype(np.float32), "w")
    shape = numpy_helper.from_array(np.array([-1, 192], np.int64), "shape")
    graph = helper.make_graph([helper.make_node("Reshape", ["x", "shape"], ["f"]), helper.make_node("MatMul", ["f", "w"], ["z"])],
                              "nhwc", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 8, 8, 3])],
                              [helper.make_tensor_value_info("z", TensorProto.FLOAT, ["n", 4])], initializer=[w, shape])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(tmp_path / "t.onnx"))
    data = load_dataset(f"npz:{tmp_path / 'd.npz'}")
    teacher = load_teacher(tmp_path / "t.onnx")
    check_teacher_fits(teacher, data)
    assert teacher.logits(data.x_val[:3]).shape == (3, 4)


def test_foreign_teachers_that_scale_their_input_in_place_leave_the_callers_rows_alone(tmp_path):
    """``x /= 16`` in a TorchScript or torch.export teacher divided edgekd's own rows, and on float data a second
    pass then disagreed with the first (refused as "dropout or batch statistics left on")."""
    from torch import nn

    from edgekd.teachers import load_teacher

    class InPlace(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(64, 10)

        def forward(self, x):
            x /= 16.0
            return self.fc(torch.flatten(x, 1))

    torch.manual_seed(0)
    net = InPlace().eval()
    x = torch.rand(6, 1, 8, 8) * 16
    torch.jit.save(torch.jit.script(net), str(tmp_path / "inplace.pt"))
    batch = torch.export.Dim("batch")
    torch.export.save(torch.export.export(net, (x[:4].clone(),), dynamic_shapes=({0: batch},)), str(tmp_path / "inplace.pt2"))
    want = net.fc(x.flatten(1) / 16)
    for path in ("inplace.pt", "inplace.pt2"):
        teacher, rows = load_teacher(tmp_path / path), x.clone()
        first, second = teacher.logits(rows), teacher.logits(rows)
        assert torch.equal(rows, x) and torch.allclose(first, want, atol=1e-5) and torch.equal(first, second), path
