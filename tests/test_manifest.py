"""edgekd.manifest: the typed manifest, its checks, and the reader for format version 1."""

import json

import pytest

from edgekd.errors import ArtifactError
from edgekd.manifest import FORMAT_VERSION, Manifest, Member


def _v1():
    return {"format": "edgekd.artifact", "format_version": 1, "kind": "model", "classes": ["a", "b"], "input_shape": [4],
            "normalization": {"mean": [0.0], "std": [1.0]},
            "members": [{"arch": "mlp", "options": {"hidden": [8]}, "weights": "member-0.safetensors"}],
            "files": {"member-0.safetensors": "0" * 64}, "metrics": {"test_accuracy": 0.9, "seconds": 12.0,
                                                                     "timings_s": {"clustering": 1.5}}}


def test_version_1_is_read_into_version_2():
    manifest = Manifest.from_json(_v1())
    assert manifest.format_version == FORMAT_VERSION == 2
    assert manifest.metrics == {"test_accuracy": 0.9}                     # wall-clock figures left the metrics
    assert manifest.timings == {"clustering": 1.5, "seconds": 12.0}
    member = manifest.members[0]
    assert member.num_outputs == 2 and member.arch_options == {"hidden": (8,)}   # defaults filled, lists as tuples


def test_round_trip():
    manifest = Manifest(kind="model", classes=("a", "b"), input_shape=(1, 2, 2), normalization={"mean": [0.0], "std": [1.0]},
                        members=(Member(arch="mlp", options={}, weights="w.safetensors", num_outputs=2, seed=3),),
                        files={"w.safetensors": "0" * 64}, search=({"temperature": 4.0},))
    again = Manifest.from_json(json.loads(json.dumps(manifest.to_json())))
    assert again == manifest and "role" not in manifest.to_json()["members"][0]


@pytest.mark.parametrize("edit, message", [
    (lambda m: m.update(format="other"), "not an edgekd manifest"),
    (lambda m: m.update(format_version=3), "newer than this edgekd reads"),
    (lambda m: m.update(format_version="2"), "has 'format_version' '2'; expected a whole number from 1"),
    (lambda m: m.update(format_version=True), "has 'format_version' True"),
    (lambda m: m["members"][0].update(num_outputs=10), "lists 2 classes but member 0 has 10 outputs"),
    (lambda m: m.pop("members"), "lacks 'members'"),
    (lambda m: m.update(kind="zoo"), "unknown kind 'zoo'"),
    (lambda m: m.update(input_shape=[0]), "'input_shape'"),
    (lambda m: m["members"][0].update(weights="other.safetensors"), "does not list with a sha256"),
    (lambda m: m.update(metrics=[1]), "'metrics' that is not a table"),
    (lambda m: m["members"][0].update(dustbin_bias="big"), "'dustbin_bias' that is not a number"),
    (lambda m: m["members"][0].update(classes=[0, 99]), r"'classes' \[0, 99\] that are not distinct classes in \[0, 1\]"),
    (lambda m: m["members"][0].update(classes=[1, 1]), "not distinct classes"),
    (lambda m: m["members"][0].update(classes=[1], num_outputs=5), "has 5 outputs for its 1 classes and a dustbin"),
])
def test_malformed_manifests_are_one_clear_error(edit, message):
    data = _v1()
    edit(data)
    with pytest.raises(ArtifactError, match=message):
        Manifest.from_json(data, "x")
