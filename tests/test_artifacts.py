import json
import shutil

import pytest
import torch

from edgekd.artifacts import load_artifact, save_artifact
from edgekd.errors import ArtifactError, EdgekdError
from edgekd.teachers import load_teacher


def _copy(src, tmp_path):
    dst = tmp_path / "copy"
    shutil.copytree(src, dst)
    return dst


def test_manifest_records_what_a_user_needs(tiny_student):
    manifest = load_artifact(tiny_student).manifest
    written = json.loads((tiny_student / "manifest.json").read_text())
    for key in ("classes", "input_shape", "normalization", "members", "config", "data", "seed", "metrics", "versions", "files"):
        assert key in written
    assert written["format_version"] == 2 and manifest.members[0].arch == "mlp"
    assert manifest.versions["torch"].startswith("2.")
    assert manifest.config["temperature"] > 0
    # what a same-seed rerun must match (benchmarks/determinism.py: either changes the weights)
    assert manifest.environment == {"torch_threads": torch.get_num_threads(),
                                    "cpu_capability": torch.backends.cpu.get_cpu_capability()}


def test_after_cuda_the_environment_names_the_gpu_and_its_libraries(monkeypatch):
    from types import SimpleNamespace

    from edgekd.artifacts import numerics

    if not torch.cuda.is_initialized():
        assert "gpu" not in numerics()   # a process that never touched CUDA: nothing is asked of it
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device: "NVIDIA H200")
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: SimpleNamespace(major=9, minor=0))
    monkeypatch.setattr(torch.backends.cudnn, "version", lambda: 91002)
    facts = numerics()
    assert facts["gpu"] == "NVIDIA H200" and facts["gpu_capability"] == "9.0" and facts["cudnn"] == 91002
    assert facts["cuda"] == torch.version.cuda and isinstance(facts["tf32_matmul"], bool)
    assert facts["torch_threads"] == torch.get_num_threads()


def test_a_manifest_written_before_the_environment_was_recorded_still_loads(tiny_student, tmp_path):
    copy = _copy(tiny_student, tmp_path)
    written = json.loads((copy / "manifest.json").read_text())
    del written["environment"]
    (copy / "manifest.json").write_text(json.dumps(written))
    assert load_artifact(copy).manifest.environment is None
    written["environment"] = [1]
    (copy / "manifest.json").write_text(json.dumps(written))
    with pytest.raises(ArtifactError, match="'environment' that is not a table"):
        load_artifact(copy)


def test_edited_weights_are_detected(tiny_student, tmp_path):
    copy = _copy(tiny_student, tmp_path)
    weights = copy / "member-0.safetensors"
    data = bytearray(weights.read_bytes())
    data[-5] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="sha256"):
        load_artifact(copy)


def test_truncated_manifest_is_detected(tiny_student, tmp_path):
    copy = _copy(tiny_student, tmp_path)
    (copy / "manifest.json").write_text((copy / "manifest.json").read_text()[:50])
    with pytest.raises(ArtifactError, match="corrupt"):
        load_artifact(copy)


def test_manifest_paths_cannot_leave_the_folder(tiny_student, tmp_path):
    copy = _copy(tiny_student, tmp_path)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["files"] = {"../outside.safetensors": "0" * 64}
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="outside the artifact folder"):
        load_artifact(copy)


def _manifest(seed=0):
    from edgekd.manifest import Manifest, Member

    return Manifest(kind="model", classes=("a", "b"), input_shape=(2,), normalization={"mean": [0.0], "std": [1.0]},
                    members=(Member(arch="mlp", options={}, weights="w.safetensors", num_outputs=2),), seed=seed)


def test_existing_output_not_overwritten(tmp_path):
    out = tmp_path / "a"
    save_artifact(out, _manifest(), {"w.safetensors": {"w": torch.ones(2)}})
    before = (out / "manifest.json").read_text()
    with pytest.raises(EdgekdError, match="already exists"):
        save_artifact(out, _manifest(), {"w.safetensors": {"w": torch.zeros(2)}})
    assert (out / "manifest.json").read_text() == before
    save_artifact(out, _manifest(seed=1), {"w.safetensors": {"w": torch.zeros(2)}}, overwrite=True)
    assert load_artifact(out).manifest.seed == 1
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())  # no temporary folders left


def test_artifact_teacher_reproduces_saved_metrics(tiny_student, digits):
    from edgekd.training import accuracy_and_nll

    teacher = load_teacher(tiny_student)
    acc, _ = accuracy_and_nll(teacher.logits(digits.x_test), digits.y_test)
    assert acc == pytest.approx(load_artifact(tiny_student).manifest.metrics["test_accuracy"])


def test_fixture_artifacts_load(tiny_teacher, tiny_student):
    teacher = load_artifact(tiny_teacher)
    assert teacher.kind == "ensemble" and len(teacher.manifest.members) == 2
    student = load_artifact(tiny_student)
    assert student.kind == "model"
    assert load_artifact(tiny_student / "baseline").kind == "model"


def test_every_file_and_the_renames_reach_the_disk_before_the_old_artifact_goes(tiny_student, tmp_path, monkeypatch):
    """Only the manifest was fsynced: after a power cut the new artifact's weights could fail their hashes while
    the old artifact was already removed."""
    import os

    from safetensors.torch import load_file

    artifact = load_artifact(tiny_student)
    weights = {n: load_file(tiny_student / n) for n in artifact.manifest.files if n.endswith(".safetensors") and "/" not in n}
    out = tmp_path / "copy"
    save_artifact(out, artifact.manifest, weights)
    synced, fsync = [], os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: synced.append(os.readlink(f"/proc/self/fd/{fd}")) or fsync(fd))
    save_artifact(out, artifact.manifest, weights, overwrite=True)
    names = {os.path.basename(p) for p in synced}
    assert set(weights) <= names and any("manifest.json" in n for n in names) and str(tmp_path) in synced   # renames


def test_an_artifact_replaced_while_it_is_read_is_never_half_loaded(tiny_student, tiny_teacher, tmp_path):
    """Its manifest read, then the folder swapped for another (another command's --overwrite): the weights
    are checked against the manifest read, so the old manifest never meets the new weights."""
    path = _copy(tiny_student, tmp_path)
    artifact = load_artifact(path)
    shutil.rmtree(path)
    shutil.copytree(tiny_teacher, path)
    with pytest.raises(ArtifactError, match="was replaced while it was being read .* run the command again"):
        artifact.build_members()
    edited = _copy(tiny_student, tmp_path / "e")
    artifact = load_artifact(edited)
    weights = next(edited.glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:-4] + b"\0\0\0\0")
    with pytest.raises(ArtifactError, match="does not match its manifest's sha256"):
        artifact.build_members()


def test_tensors_are_written_at_their_path_alone_and_as_safetensors_writes_them(tmp_path):
    """The weights file is byte for byte safetensors' own, with the umask's mode, and written at its path:
    safetensors 0.8 writes through a .tmpXXXXXX of its own, which a kill -9 left in a run's checkpoint
    folder, where it was refused as a user's file on --resume."""
    import os
    import threading

    from safetensors.torch import load_file, save_file

    from edgekd.artifacts import save_tensors, sha256_file

    tensors = {"w": torch.randn(2048, 4096), "b": torch.randn(7).to(torch.bfloat16), "steps": torch.tensor(3),
               "mask": torch.tensor([True, False]), "t": torch.randn(4, 3).t(), "a32": torch.arange(5, dtype=torch.int32),
               "h": torch.randn(3).half(), "d": torch.randn(2).double(), "u": torch.arange(3, dtype=torch.uint8),
               "i8": torch.arange(3, dtype=torch.int8), "i16": torch.arange(3, dtype=torch.int16), "é": torch.zeros(2),
               "u16": torch.zeros(2, dtype=torch.uint16), "u32": torch.zeros(2, dtype=torch.uint32),
               "u64": torch.zeros(2, dtype=torch.uint64), "f8": torch.zeros(2, dtype=torch.float8_e4m3fn),
               "f8b": torch.zeros(2, dtype=torch.float8_e5m2)}   # (every type, pairs of a width, a name not in ASCII)
    seen, done = set(), threading.Event()

    def watch():
        while not done.is_set():
            seen.update(os.listdir(tmp_path / "w"))

    (tmp_path / "w").mkdir()
    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        digest = save_tensors(tmp_path / "w" / "a.safetensors", tensors, metadata={"sha256": "x", "n": "3"})
    finally:
        done.set()
        watcher.join()
    assert seen <= {"a.safetensors"} and digest == sha256_file(tmp_path / "w" / "a.safetensors")
    # one metadata key: save_file writes several in its hash map's order, which changes from process to process
    save_tensors(tmp_path / "a.safetensors", tensors, metadata={"sha256": "é"})
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp_path / "b.safetensors"), metadata={"sha256": "é"})
    assert (tmp_path / "a.safetensors").read_bytes() == (tmp_path / "b.safetensors").read_bytes()
    back = load_file(tmp_path / "w" / "a.safetensors")
    assert all(torch.equal(back[k].reshape(-1).view(torch.uint8), v.contiguous().reshape(-1).view(torch.uint8)) and back[k].dtype == v.dtype
               for k, v in tensors.items())
    with pytest.raises(ArtifactError, match="metadata maps text to text"):
        save_tensors(tmp_path / "c.safetensors", tensors, metadata={"n": 3})
    assert (tmp_path / "w" / "a.safetensors").stat().st_mode & 0o777 == 0o666 & ~_umask()


def _umask() -> int:
    import os

    mask = os.umask(0)
    os.umask(mask)
    return mask
