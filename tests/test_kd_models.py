"""edgekd.kd_models: the KD literature's architectures, at the published sizes, through the export gates."""

import re

import numpy as np
import pytest
import torch

from edgekd.errors import ConfigError
from edgekd.models import count_parameters, create_model

TINY = {"resnet": "resnet:depth=8,channels=4-4-8-8", "wrn": "wrn:depth=10,width=1", "mobilenetv2": "mobilenetv2:width=0.1"}


@pytest.mark.parametrize("spec, published", [("resnet8x4", 1.23e6), ("resnet32x4", 7.43e6),
                                             ("wrn:depth=40,width=2", 2.26e6), ("wrn:depth=16,width=2", 0.70e6),
                                             ("resnet:depth=20,channels=16-16-32-64", 0.28e6)])
def test_parameter_counts_match_the_published_ones(spec, published):
    """CIFAR-100 (3x32x32, 100 classes), as the CRD tables count them, within 2%."""
    assert count_parameters(create_model(spec, (3, 32, 32), 100)) == pytest.approx(published, rel=0.02)


@pytest.mark.parametrize("spec", list(TINY.values()))
@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32), (3, 40, 36)])
def test_any_channels_and_sizes_from_28(spec, shape):
    model = create_model(spec, shape, 7).eval()
    assert model(torch.zeros(2, *shape)).shape == (2, 7)


@pytest.mark.parametrize("spec, message", [("resnet:depth=9", "depth = 6n + 2"), ("wrn:depth=12", "depth = 6n + 4"),
                                           ("resnet:channels=8-8-8", "4 channel counts")])
def test_bad_depths_are_refused(spec, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        create_model(spec, (3, 32, 32), 10)


def test_small_images_are_refused():
    with pytest.raises(ConfigError, match="at least 28x28"):
        create_model("resnet8x4", (1, 8, 8), 10)


@pytest.fixture(scope="module")
def digits32(tmp_path_factory):
    """The real digits, 8x8 scaled 4x to 32x32 and repeated over 3 channels (colour images)."""
    from sklearn.datasets import load_digits

    from edgekd.data import load_dataset

    bunch = load_digits()
    images = np.kron(bunch.images, np.ones((4, 4))).astype(np.float32)[:, None].repeat(3, axis=1)
    path = tmp_path_factory.mktemp("digits32") / "d.npz"
    np.savez(path, x=images, y=bunch.target)
    return load_dataset(f"npz:{path}")


@pytest.mark.slow
@pytest.mark.parametrize("arch", list(TINY))
def test_exports_through_the_fp32_and_int8_gates(arch, digits32, tmp_path):
    from edgekd.teacher_training import save_untrained
    from export import ExportConfig, export_onnx

    artifact = save_untrained(tmp_path / arch, TINY[arch], digits32)
    fp32 = export_onnx(artifact, tmp_path / f"{arch}.onnx", ExportConfig(), data=digits32)
    assert all(p.max_abs_diff <= 1e-4 and p.top1_agreement == 1.0 for p in fp32.parity)
    int8 = export_onnx(artifact, tmp_path / f"{arch}.int8.onnx",
                       ExportConfig(quantize="int8", calibration_size=64, max_accuracy_drop=100), data=digits32)
    assert int8.precision.startswith("int8") and int8.size_bytes < fp32.size_bytes * 1.2


def test_an_architecture_too_big_for_the_machine_is_refused_before_anything_is_allocated(monkeypatch):
    """Each option has a bound, their product none: mlp:hidden=65536-65536 asked for 17 GB and failed a minute later."""
    import resource

    import pytest

    from edgekd import models
    from edgekd.errors import ConfigError

    monkeypatch.setattr(models, "host_memory_bytes", lambda: 25 * 10**9)   # a 25 GB machine
    with pytest.raises(ConfigError, match=r"has 4.30 G parameters: 68.8 GB to train it .*Choose smaller options"):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        models.create_model("mlp:hidden=65536-65536", (1, 8, 8), 10, for_training=True)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 1 << 20   # (KiB) not a GB was touched
    monkeypatch.setattr(models, "host_memory_bytes", lambda: 1 << 20)   # a 1 MB machine: a cnn's 1.7 MB of weights is too much
    with pytest.raises(ConfigError, match="Architecture 'cnn.*' on inputs of shape \\(1, 28, 28\\).* for its float32 weights alone"):
        models.create_model("cnn", (1, 28, 28), 10)
    monkeypatch.setattr(models, "host_memory_bytes", lambda: 4 << 20)   # loadable (1.7 MB), not trainable (6.8 MB)
    models.create_model("cnn", (1, 28, 28), 10)
    with pytest.raises(ConfigError, match="to train it"):
        models.create_model("cnn", (1, 28, 28), 10, for_training=True)
    monkeypatch.setattr(models, "host_memory_bytes", lambda: None)   # unknown: nothing refused
    models.create_model("mlp:hidden=8", (1, 8, 8), 10)


def test_an_artifact_too_big_for_this_machine_is_not_called_broken(monkeypatch, tiny_teacher):
    import pytest

    from edgekd import models
    from edgekd.artifacts import load_artifact
    from edgekd.errors import ArtifactError

    monkeypatch.setattr(models, "host_memory_bytes", lambda: 1 << 10)
    with pytest.raises(ArtifactError, match="cannot be loaded on this machine: Architecture") as refused:
        load_artifact(tiny_teacher).build_members()
    assert "re-create" not in str(refused.value)
