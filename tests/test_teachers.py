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
