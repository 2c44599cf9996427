"""edgekd.cachedir and ``edgekd cache``: listing and pruning the cache folder, and only edgekd's entries."""

import json
import os
import time

import pytest
import torch

from edgekd.cache import LogitCache
from edgekd.cachedir import cache_entries, prune_cache
from edgekd.data import load_dataset
from tests.test_imagefolder import _folder

OLD = time.time() - 40 * 86400


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """A cache folder filled by edgekd itself (logits, a decoded image folder and its three split files, a
    conversion), plus a user's files that merely look alike."""
    root = tmp_path / "cache"
    monkeypatch.setenv("EDGEKD_CACHE", str(root))
    LogitCache(root).store("a" * 32, torch.randn(50, 3))
    load_dataset(f"imagefolder:{_folder(tmp_path / 'imgs', test=True)}")
    conversion = root / "convert" / f"mnn-{'b' * 32}-3.6.1"
    conversion.mkdir(parents=True)
    (conversion / "model.mnn").write_bytes(b"\0" * 100)
    (conversion / "conversion.json").write_text("{}")
    user = tmp_path / "user"
    user.mkdir()
    (user / "thesis.tex").write_text("mine")
    (root / "notes.txt").write_text("mine")
    (root / f"{'c' * 32}.safetensors").write_bytes(b"not edgekd's")          # a name like ours, not our header
    (root / "convert" / f"ncnn-{'d' * 32}-1.0").symlink_to(user)              # a link is never followed
    return root, user


def test_entries_are_edgekd_s_own_by_kind(cache):
    root, _ = cache
    kinds = sorted(e.kind for e in cache_entries(root))
    assert kinds == ["conversions", "decoded", "logits", "splits", "splits", "splits"]
    decoded = next(e for e in cache_entries(root) if e.kind == "decoded")
    assert {p.suffix for p in decoded.paths} == {".json", ".npy"} and len(decoded.paths) == 4   # header, pixels, labels, digests
    assert all(e.bytes > 0 for e in cache_entries(root))


def test_prune_all_removes_every_entry_and_nothing_else(cache):
    root, user = cache
    result = prune_cache(root)
    assert len(result.removed) == 6 and result.kept == 0 and result.bytes > 0
    assert cache_entries(root) == []
    left = sorted(p.name for p in root.rglob("*"))
    assert left == sorted(["notes.txt", f"{'c' * 32}.safetensors", "convert", f"ncnn-{'d' * 32}-1.0", "images",
                           "splits"])
    assert (user / "thesis.tex").read_text() == "mine"


def test_prune_by_age_and_kind_and_a_hit_counts_as_use(cache, tmp_path):
    root, _ = cache
    for entry in cache_entries(root):
        for path in entry.paths:
            os.utime(path, (OLD, OLD))
    LogitCache(root).load("a" * 32)                       # a hit: used now
    assert prune_cache(root, older_than_days=30, kinds=("splits",), dry_run=True).bytes > 0
    assert len(cache_entries(root)) == 6                  # a dry run removes nothing
    result = prune_cache(root, older_than_days=30, kinds=("splits", "logits"))
    assert sorted(e.kind for e in result.removed) == ["splits"] * 3
    assert sorted(e.kind for e in cache_entries(root)) == ["conversions", "decoded", "logits"]
    load_dataset(f"imagefolder:{tmp_path / 'imgs'}")      # the split files are made again when needed
    assert sorted(e.kind for e in cache_entries(root)).count("splits") == 3


def test_cli_lists_and_prunes(edgekd, cache):
    root, _ = cache
    code, out, _ = edgekd("cache", "list", "--json")
    assert code == 0 and len(json.loads(out)["entries"]) == 6
    code, out, _ = edgekd("cache", "list")
    assert code == 0 and "splits" in out and "3 entries" in out
    code, out, err = edgekd("cache", "prune")
    assert code == 2 and err.count("\n") == 1 and "--older-than DAYS or --all" in err
    code, out, _ = edgekd("cache", "prune", "--kind", "decoded", "--all")
    assert code == 0 and out.startswith("removed 1 entry")
    code, out, _ = edgekd("cache", "prune", "--all", "--cache-dir", root / "nowhere")
    assert code == 0 and out.startswith("removed 0 entries")


def test_temporary_files_of_a_dead_process_are_listed_and_pruned_of_a_live_one_never(cache, edgekd):
    import subprocess

    root, _ = cache
    gone = subprocess.Popen(["true"])
    gone.wait()   # a pid that no longer runs
    dead = [root / f".{'e' * 32}.{gone.pid}.tmp", root / "images" / f".{'e' * 32}.{gone.pid}.x.npy",
            root / "images" / f".{'e' * 32}.{gone.pid}.json.tmp", root / "images" / "splits" / f".{'e' * 32}.{gone.pid}.npy"]
    live = root / "images" / f".{'f' * 32}.{os.getppid()}.x.npy"   # a decode a running process is writing
    for path in [*dead, live]:
        path.write_bytes(b"\0" * 64)
    unfinished = [e for e in cache_entries(root) if e.kind == "unfinished"]
    assert sorted(p for e in unfinished for p in e.paths) == sorted(dead)
    code, out, err = edgekd("cache", "prune", "--cache-dir", root, "--kind", "unfinished", "--all")
    assert code == 0, err
    assert not any(p.exists() for p in dead) and live.exists() and (root / "notes.txt").exists()
    assert {e.kind for e in cache_entries(root)} == {"logits", "decoded", "splits", "conversions"}


def test_logits_are_hashed_in_place_with_the_digest_caches_already_carry():
    """The hash reads the tensor's buffer (no second copy of the logits); the digest is the one the bytes
    had before, so the caches already written stay valid."""
    import hashlib

    import torch

    from edgekd.cache import _tensor_sha256

    value = torch.randn(50, 7)
    assert _tensor_sha256(value) == hashlib.sha256(value.numpy().tobytes()).hexdigest()
    assert _tensor_sha256(value.t()) == hashlib.sha256(value.t().contiguous().numpy().tobytes()).hexdigest()


def test_a_conversion_being_made_is_not_an_entry_and_one_left_by_a_dead_process_is_unfinished(cache):
    root, _ = cache
    live = root / "convert" / f".ncnn-{'e' * 32}-1.0.{os.getppid()}-0123abcd.tmp"
    dead = root / "convert" / f".ncnn-{'f' * 32}-1.0.999999999-0123abcd.tmp"
    for folder in (live, dead):
        folder.mkdir()
        (folder / "model.ncnn.bin").write_bytes(b"\0" * 10)
    entries = cache_entries(root)
    assert [e.kind for e in entries if e.kind == "conversions"] == ["conversions"]   # the finished one only
    assert [(e.kind, e.paths) for e in entries if e.kind == "unfinished"] == [("unfinished", (dead,))]
    prune_cache(root)
    assert live.is_dir() and not dead.exists()   # a running conversion is never pruned


def test_a_logit_entry_pruned_as_it_is_read_is_a_miss_not_a_torn_file(tmp_path, monkeypatch):
    import edgekd.cache

    cache = LogitCache(tmp_path / "c")
    cache.store("a" * 32, torch.randn(4, 3))
    real = edgekd.cache._mapped_logits

    def pruned_first(path):   # `edgekd cache prune` lands between the check and the read
        os.unlink(path)
        return real(path)

    monkeypatch.setattr(edgekd.cache, "_mapped_logits", pruned_first)
    assert cache.load("a" * 32) is None


def test_a_logit_hit_is_the_file_mapped_not_a_copy_and_reads_as_safetensors_does(tmp_path):
    from safetensors.torch import load_file

    cache = LogitCache(tmp_path / "c")
    value = torch.randn(40, 7)
    cache.store("a" * 32, value)
    hit = cache.load("a" * 32)
    assert torch.equal(hit, value) and torch.equal(hit, load_file(cache.path("a" * 32))["logits"])
    assert str(cache.path("a" * 32)) in open("/proc/self/maps").read()   # file-backed pages, not a copy
    hit[0, 0] = 5.0   # copy-on-write: the file keeps its values
    assert torch.equal(LogitCache(tmp_path / "c").load("a" * 32), value)
    cache.store("b" * 32, torch.zeros(0, 7))   # an empty table cannot be mapped: read as safetensors reads it
    assert cache.load("b" * 32).shape == (0, 7)


def test_a_decode_killed_between_its_renames_is_unfinished_unless_one_runs(cache):
    """KEY.x.npy and KEY.y.npy renamed in, the kill before KEY.json: a whole decoded folder that no kind
    listed and no prune removed, with its .KEY.lock; while a decode of that key holds the lock, nothing."""
    import fcntl

    root, _ = cache
    images = root / "images"
    key = "d" * 32
    arrays = [images / f"{key}.x.npy", images / f"{key}.y.npy"]
    for path in arrays:
        path.write_bytes(b"\0" * 64)
    lock = images / f".{key}.lock"
    lock.write_bytes(b"")
    held = os.open(lock, os.O_RDWR)
    fcntl.flock(held, fcntl.LOCK_EX)   # a decode of that key running
    try:
        assert not [e for e in cache_entries(root) if key in e.name]
    finally:
        os.close(held)
    stopped = [e for e in cache_entries(root) if key in e.name]
    assert {e.kind for e in stopped} == {"unfinished"} and sorted(p for e in stopped for p in e.paths) == sorted([*arrays, lock])
    prune_cache(root, kinds=("unfinished",))
    assert not any(p.exists() for p in [*arrays, lock]) and {e.kind for e in cache_entries(root)} >= {"decoded"}
