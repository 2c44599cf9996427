"""edgekd.imagefolder: a folder of images per class, decoded once into a verified, memory-mapped cache."""

import json
import os
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edgekd.data import load_dataset
from edgekd.errors import DataError


def _folder(root, per_class=14, colour=False, size=(8, 8), test=False):
    """Real digits written as PNG files: train/<name>/*.png (and test/ when asked)."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    names = {0: "zero", 1: "one", 2: "two"}
    for split, offset in (("train", 0), ("test", 500)) if test else (("train", 0),):
        for label, name in names.items():
            folder = root / split / name
            folder.mkdir(parents=True)
            images = bunch.images[bunch.target == label][offset // 100:offset // 100 + per_class]
            for i, image in enumerate(images):
                pixels = (image * 15).astype(np.uint8)
                picture = Image.fromarray(pixels).resize(size[::-1])
                (picture.convert("RGB") if colour and i == 0 else picture).save(folder / f"{i:03d}.png")
    return root


def test_classes_shapes_and_a_test_split_fixed_for_the_folder(tmp_path):
    root = _folder(tmp_path / "imgs")
    data = load_dataset(f"imagefolder:{root}")
    assert data.classes == ("one", "two", "zero") and data.input_shape == (1, 8, 8)
    assert len(data.y_train) + len(data.y_val) + len(data.y_test) == 42
    other = load_dataset(f"imagefolder:{root}", val_fraction=0.3, split_seed=5)
    assert np.array_equal(data.x_test.numpy(), other.x_test.numpy())   # the training seed never moves the test images
    assert float(data.x_train.max()) > 100   # raw pixels, as stored


def test_test_folder_colour_and_resize(tmp_path):
    root = _folder(tmp_path / "imgs", colour=True, test=True)
    data = load_dataset(f"imagefolder:{root},size=12x10")
    assert data.input_shape == (3, 12, 10) and len(data.y_test) == 42
    gray = load_dataset(f"imagefolder:{root},channels=1")
    assert gray.input_shape == (1, 8, 8)


def test_cache_is_reused_and_a_changed_file_is_never_served(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEKD_CACHE", str(tmp_path / "cache"))
    root = _folder(tmp_path / "imgs", per_class=10)   # 30 files: every one is in the re-hashed sample (32)
    png = root / "train" / "one" / "000.png"
    victim = png.with_suffix(".bmp")   # uncompressed: an edit keeps its size
    Image.open(png).save(victim)
    png.unlink()
    first = load_dataset(f"imagefolder:{root}")
    assert len(list((tmp_path / "cache" / "images").glob("*.x.npy"))) == 1
    again = load_dataset(f"imagefolder:{root}")
    assert np.array_equal(first.x_train.numpy(), again.x_train.numpy())
    # same size and modification time, other pixels: the key (the file's ctime changed with the write) no longer
    # finds the entry, so the folder is decoded again (the sampled content hashes are the second line of defence)
    stat = victim.stat()
    pixels = np.asarray(Image.open(victim)).copy()
    pixels[0, 0] = 255 - pixels[0, 0]
    Image.fromarray(pixels).save(victim)
    os.utime(victim, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert victim.stat().st_size == stat.st_size
    fresh = load_dataset(f"imagefolder:{root}")
    assert len(list((tmp_path / "cache" / "images").glob("*.x.npy"))) == 2
    # a key blind to the edit (as size and mtime alone were): the sampled content hashes catch it
    import edgekd.imagefolder as imagefolder

    monkeypatch.setattr(imagefolder, "file_identity", lambda st: f"{st.st_size}\0{st.st_mtime_ns}")
    load_dataset(f"imagefolder:{root}")
    pixels[0, 0] = 255 - pixels[0, 0]
    Image.fromarray(pixels).save(victim)
    os.utime(victim, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    with pytest.warns(UserWarning, match="no longer matches"):
        load_dataset(f"imagefolder:{root}")
    assert not np.array_equal(fresh.x_train.numpy(), first.x_train.numpy()) or not np.array_equal(
        fresh.x_test.numpy(), first.x_test.numpy()) or not np.array_equal(fresh.x_val.numpy(), first.x_val.numpy())


@pytest.mark.parametrize("case, message", [
    ("mixed sizes", "differ in size"), ("corrupt", "cannot be decoded"), ("truncated", "cannot be decoded"),
    ("no train", "has no 'train' folder"),
    ("test fraction beside test/", "has a test/ folder, so no test split is held out"), ("one class", "at least 2"),
    ("empty class", "hold no images"), ("bad option", "not understood"),
    ("bomb", "cannot be decoded \\(DecompressionBombError"), ("unreadable", "cannot be read \\(Permission denied\\)"),
])
def test_bad_folders_are_one_clear_error(tmp_path, monkeypatch, case, message):
    monkeypatch.setenv("EDGEKD_CACHE", str(tmp_path / "cache"))
    root = _folder(tmp_path / "imgs", test=case == "test fraction beside test/")
    if case == "mixed sizes":
        Image.fromarray(np.zeros((9, 9), np.uint8)).save(root / "train" / "one" / "big.png")
    elif case == "corrupt":
        (root / "train" / "one" / "bad.png").write_bytes(b"not a png")
    elif case == "truncated":   # its header reads (size, mode): the decode into the cache has begun when it fails
        whole = next((root / "train" / "one").iterdir())
        (root / "train" / "one" / "cut.png").write_bytes(whole.read_bytes()[:45])   # IHDR, part of IDAT
    elif case == "no train":
        root = tmp_path / "nothing"
        root.mkdir()
    elif case == "one class":
        for name in ("one", "two"):
            for f in (root / "train" / name).iterdir():
                f.unlink()
            (root / "train" / name).rmdir()
    elif case == "empty class":
        (root / "train" / "three").mkdir()
    elif case == "bomb":   # Pillow refuses over twice MAX_IMAGE_PIXELS when it opens the file, before any size is known
        monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
        Image.fromarray(np.zeros((16, 16), np.uint8)).save(root / "train" / "one" / "huge.png")
    elif case == "unreadable":   # as a file of another user reads (the tests may run as root, where chmod 000 does not)
        victim, real_open = root / "train" / "one" / "001.png", Image.open

        def guarded(path, *args, **kwargs):
            if str(path) == str(victim):
                raise PermissionError(13, "Permission denied", str(path))
            return real_open(path, *args, **kwargs)
        monkeypatch.setattr(Image, "open", guarded)
    spec = f"imagefolder:{root}" + {"bad option": ",size=big", "test fraction beside test/": ",test=0.5"}.get(case, "")
    with warnings.catch_warnings():
        with pytest.raises(DataError, match=message):
            load_dataset(spec)
    # nothing half-written is left in the cache (a corrupt image stopped a decode that had begun)
    assert [p.name for p in (tmp_path / "cache").rglob("*") if p.is_file()] == []


def test_a_cached_sample_that_cannot_be_read_is_one_clear_error(tmp_path, monkeypatch):
    from pathlib import Path

    monkeypatch.setenv("EDGEKD_CACHE", str(tmp_path / "cache"))
    root = _folder(tmp_path / "imgs")
    load_dataset(f"imagefolder:{root}")
    monkeypatch.setattr(Path, "read_bytes", lambda self: (_ for _ in ()).throw(PermissionError(13, "Permission denied")))
    with pytest.raises(DataError, match=r"Image '.*\.png' cannot be read \(Permission denied\); make it readable"):
        load_dataset(f"imagefolder:{root}")


def test_decoding_in_windows_keeps_every_image_in_its_place(tmp_path, monkeypatch):
    import edgekd.imagefolder as imagefolder

    monkeypatch.setenv("EDGEKD_CACHE", str(tmp_path / "whole"))
    root = _folder(tmp_path / "imgs")
    whole = load_dataset(f"imagefolder:{root}")
    monkeypatch.setenv("EDGEKD_CACHE", str(tmp_path / "windows"))
    monkeypatch.setattr(imagefolder, "DECODE_WINDOW", 5)   # 42 files: 9 windows, the last of 2
    windowed = load_dataset(f"imagefolder:{root}")
    assert np.array_equal(whole.x_train.numpy(), windowed.x_train.numpy())
    assert np.array_equal(whole.x_test.numpy(), windowed.x_test.numpy())


def test_train_distill_and_export_from_photos_through_the_cli(edgekd, tmp_path):
    root = _folder(tmp_path / "imgs", per_class=30, colour=True)
    teacher, student = tmp_path / "t", tmp_path / "s"
    data = ["--data", f"imagefolder:{root}", "--image-size", "8x8", "--channels", "3"]
    code, _, err = edgekd("teacher", "train", *data, "--arch", "cnn:width=4,fc=16", "--epochs", "3", "--quiet", "--out", teacher)
    assert code == 0, err
    code, _, err = edgekd("distill", "--teacher", teacher, *data, "--student", "mlp:hidden=16", "--epochs", "2",
                          "--quiet", "--out", student)
    assert code == 0, err
    # the recorded spec carries the folder's options: export reloads the very same images
    code, _, err = edgekd("export", student, "--onnx", "--out", tmp_path / "s.onnx")
    assert code == 0, err
    checked = json.loads((tmp_path / "s.onnx.json").read_text())["verification"]
    assert checked["data"].startswith(f"imagefolder:{root}") and "size=8x8" in checked["data"], checked["data"]
    assert all(p["top1_agreement"] == 1.0 for p in checked["fp32"]["parity"]) and checked["n_val"] > 0
    code, _, err = edgekd("teacher", "train", "--image-size", "8x8", "--quiet", "--out", tmp_path / "x")
    assert code == 2 and "apply to 'imagefolder:DIR' data" in err


def _mapped_file(tensor):
    """The file whose memory mapping holds ``tensor``'s data (Linux's /proc/self/maps), else None."""
    address = tensor.data_ptr()
    with open("/proc/self/maps") as maps:
        for line in maps:
            fields = line.split(maxsplit=5)
            low, high = (int(v, 16) for v in fields[0].split("-"))
            if low <= address < high:
                return fields[5].strip() if len(fields) == 6 else None
    return None


@pytest.mark.skipif(not os.path.exists("/proc/self/maps"), reason="needs Linux's /proc/self/maps")
def test_splits_are_uint8_memory_mapped_files_never_held_in_memory(tmp_path, monkeypatch):
    import torch

    monkeypatch.setenv("EDGEKD_CACHE", str(tmp_path / "cache"))
    root = _folder(tmp_path / "imgs", test=True)
    data = load_dataset(f"imagefolder:{root}")
    for split in ("train", "val", "test"):
        x, _ = data.split(split)
        assert x.dtype == torch.uint8
        assert (_mapped_file(x) or "").startswith(str(tmp_path / "cache" / "images" / "splits")), split
    files = sorted((tmp_path / "cache" / "images" / "splits").glob("*.npy"))
    assert len(files) == 3
    again = load_dataset(f"imagefolder:{root}")   # the same split: the same files, not written again
    assert sorted((tmp_path / "cache" / "images" / "splits").glob("*.npy")) == files
    assert torch.equal(again.x_train, data.x_train)
    other = load_dataset(f"imagefolder:{root}", split_seed=3)   # another split: its own train and val files
    assert len(list((tmp_path / "cache" / "images" / "splits").glob("*.npy"))) == 5
    assert not torch.equal(other.x_train, data.x_train)


def test_a_split_file_is_copied_in_chunks_and_matches_the_rows(tmp_path, monkeypatch):
    import edgekd.data as data_module

    monkeypatch.setenv("EDGEKD_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(data_module, "SPLIT_CHUNK_BYTES", 200)   # 3 images per chunk
    root = _folder(tmp_path / "imgs")
    x = np.concatenate([np.asarray(Image.open(p))[None, None] for p in sorted((root / "train").rglob("*.png"))])
    data = load_dataset(f"imagefolder:{root}")
    decoded = {bytes(row) for row in x.reshape(len(x), -1)}
    assert all(bytes(row) in decoded for row in data.x_train.numpy().reshape(len(data.x_train), -1))
    # the statistics accumulated over chunks equal those of the whole split at once
    whole = data.x_train.double()
    assert data.mean[0] == pytest.approx(float(whole.mean()), rel=1e-12)
    assert data.std[0] == pytest.approx(float(whole.std()), rel=1e-9)


def test_training_on_uint8_pixels_equals_training_on_their_float32_copy(tmp_path, monkeypatch):
    """Batches become float32 on the way into the model: the same numbers, a quarter of the memory."""
    import dataclasses

    import torch

    from edgekd.teacher_training import TeacherConfig, train_teachers
    from edgekd.training import TrainConfig

    monkeypatch.setenv("EDGEKD_CACHE", str(tmp_path / "cache"))
    data = load_dataset(f"imagefolder:{_folder(tmp_path / 'imgs')}")
    floats = dataclasses.replace(data, **{f"x_{s}": data.split(s)[0].float() for s in ("train", "val", "test")},
                                 _fingerprints={})
    config = TeacherConfig(arch="cnn:width=4,fc=16", train=TrainConfig(epochs=2, batch_size=16, jitter=1))
    a = train_teachers(data, config, tmp_path / "a")
    b = train_teachers(floats, config, tmp_path / "b")
    assert a.ensemble_test_accuracy == b.ensemble_test_accuracy and a.ensemble_test_nll == b.ensemble_test_nll
    from edgekd.artifacts import load_artifact

    (ma,), (mb,) = load_artifact(tmp_path / "a").build_members(), load_artifact(tmp_path / "b").build_members()
    assert all(torch.equal(pa, pb) for pa, pb in zip(ma.state_dict().values(), mb.state_dict().values()))


def test_a_torn_split_file_is_made_again_and_an_unwritable_one_is_one_clear_error(tmp_path, monkeypatch):
    import torch

    monkeypatch.setenv("EDGEKD_CACHE", str(tmp_path / "cache"))
    root = _folder(tmp_path / "imgs")
    first = load_dataset(f"imagefolder:{root}")
    expected = first.x_train.clone(), first.x_test.clone()
    del first   # its mappings: the files are torn below
    splits = tmp_path / "cache" / "images" / "splits"
    for path in splits.glob("*.npy"):
        torn = path.read_bytes()[:100]   # a header and a few bytes
        path.unlink()
        path.write_bytes(torn)
    again = load_dataset(f"imagefolder:{root}")
    assert torch.equal(again.x_train, expected[0]) and torch.equal(again.x_test, expected[1])

    shutil.rmtree(splits)
    splits.write_text("not a folder")   # the split files cannot be written there
    with pytest.raises(DataError, match="Cannot write the split file .*EDGEKD_CACHE"):
        load_dataset(f"imagefolder:{root}", split_seed=9)
    assert splits.read_text() == "not a folder"


def test_a_cache_that_cannot_be_written_is_one_clear_error(tmp_path, monkeypatch):
    (tmp_path / "cache").write_text("a file where the cache folder should be")
    monkeypatch.setenv("EDGEKD_CACHE", str(tmp_path / "cache"))
    with pytest.raises(DataError, match="Cannot write the decoded images of .*EDGEKD_CACHE"):
        load_dataset(f"imagefolder:{_folder(tmp_path / 'imgs')}")
    assert (tmp_path / "cache").read_text().startswith("a file")


def _in_a_small_filesystem(small, mib: int, script: str):
    """``script`` run by sh with a ``mib`` MiB tmpfs at $SMALL (the folder ``small``), in a mount namespace of its
    own (Linux, root); None where one cannot be made here."""
    import subprocess

    if not shutil.which("unshare") or os.geteuid() != 0:
        return None
    small.mkdir()
    probe = subprocess.run(["unshare", "-m", "sh", "-c", f"mount -t tmpfs -o size={mib}m tmpfs {small}"], capture_output=True)
    if probe.returncode:
        return None
    return subprocess.run(["unshare", "-m", "sh", "-c", f"mount -t tmpfs -o size={mib}m tmpfs {small} && export "
                           f"SMALL={small} && {script}; echo rc=$?; ls -A {small}/images {small}/images/splits 2>/dev/null"],
                          capture_output=True, text=True)


@pytest.mark.parametrize("mib, what", [(1, "decoded images"), (3, "split file")])
def test_a_full_disk_is_one_line_and_leaves_nothing_behind(tmp_path, mib, what):
    """numpy's .npy memory maps are sparse files: on a full disk a page written through one killed the process with
    SIGBUS (exit 135, no message, a partial file as large as the whole array left in the cache). The blocks are
    allocated first (cachedir.allocated_memmap): ENOSPC, one line, exit 2. 1 MiB holds no decode of these 2.3 MB of
    pixels; 3 MiB holds it but not the split files."""
    import sys

    root = _folder(tmp_path / "imgs", per_class=40, colour=True, size=(80, 80))
    done = _in_a_small_filesystem(tmp_path / "small", mib, f"EDGEKD_CACHE=$SMALL {sys.executable} -m edgekd teacher train --data "
                                       f"imagefolder:{root} --epochs 1 --out {tmp_path / 'out'}")
    if done is None:
        pytest.skip("a small filesystem needs root and unshare (Linux)")
    error = [line for line in done.stderr.splitlines() if line.strip()]
    assert "rc=2" in done.stdout and len(error) == 1 and f"Cannot write the {what}" in error[0], (done.stdout, done.stderr)
    assert "No space left on device" in error[0]
    assert not [name for name in done.stdout.split() if name.startswith(".")]   # no temporary, no lock


def test_a_photo_with_a_malformed_exif_block_is_turned_by_its_tag_not_an_internal_error(tmp_path):
    """Pillow's exif_transpose writes the EXIF block back and raised on these (byte flips inside it, found by
    fuzzing: struct.error, TypeError); the orientation tag itself (6: turn a quarter) is still read and applied."""
    fixtures = Path(__file__).parent / "fixtures"
    for label, name in (("a", "bad_exif_1.jpg"), ("b", "bad_exif_2.jpg")):
        (tmp_path / "photos" / "train" / label).mkdir(parents=True)
        for i in range(3):
            shutil.copy(fixtures / name, tmp_path / "photos" / "train" / label / f"{i}.jpg")
    data = load_dataset(f"imagefolder:{tmp_path / 'photos'}")
    assert data.input_shape == (3, 24, 16)   # stored 24 wide, 16 high, shown standing
    stored = np.asarray(Image.open(fixtures / "bad_exif_1.jpg").convert("RGB").transpose(Image.Transpose.ROTATE_270))
    assert any(np.array_equal(row.numpy().transpose(1, 2, 0), stored) for row in (*data.x_train, *data.x_test))


def test_a_file_name_that_is_not_utf8_is_read_and_a_class_name_is_refused_in_one_line(tmp_path):
    root = _folder(tmp_path / "imgs")
    one = root / "train" / "one"
    os.rename(one / "000.png", os.fsdecode(bytes(one / "000.png")[:-7] + b"caf\xe9.png"))   # a cp1252 name
    assert len(load_dataset(f"imagefolder:{root}").y_train) > 0
    os.rename(one, os.fsdecode(bytes(root / "train") + b"/chien\xe9"))
    with pytest.raises(DataError, match=r"class folder\(s\) whose names are not UTF-8 \('chien\\udce9'\); rename"):
        load_dataset(f"imagefolder:{root}")
    os.rename(os.fsdecode(bytes(root / "train") + b"/chien\xe9"), one)
    other = os.fsdecode(bytes(root) + b"\xe9")   # the folder's own path goes into every model's and export's record
    os.rename(root, other)
    with pytest.raises(DataError, match=r"has a path that is not UTF-8; rename it"):
        load_dataset(f"imagefolder:{other}")


def test_another_pillow_decodes_the_folder_again(tmp_path, monkeypatch):
    """Pillow's JPEG decoder and resize filter change between releases: its version is part of the decode's key."""
    import PIL

    monkeypatch.setenv("EDGEKD_CACHE", str(tmp_path / "cache"))
    root = _folder(tmp_path / "imgs")
    load_dataset(f"imagefolder:{root}")
    load_dataset(f"imagefolder:{root}")
    assert len(list((tmp_path / "cache" / "images").glob("*.json"))) == 1
    monkeypatch.setattr(PIL, "__version__", "1.0.0")
    load_dataset(f"imagefolder:{root}")
    assert len(list((tmp_path / "cache" / "images").glob("*.json"))) == 2


def test_a_class_with_too_few_images_is_refused_by_name_before_anything_is_decoded(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEKD_CACHE", str(tmp_path / "cache"))
    root = _folder(tmp_path / "imgs")
    for path in sorted((root / "train" / "two").iterdir())[2:]:
        path.unlink()
    with pytest.raises(DataError, match=r"every class needs at least 3 images \(one each for test, val and train\); "
                                        r"class folder\(s\) two have fewer; add images, or a test/ folder"):
        load_dataset(f"imagefolder:{root}")
    assert not list((tmp_path / "cache").rglob("*.npy"))


@pytest.mark.parametrize("change", ["replace", "add"])
def test_a_folder_changed_while_it_is_decoded_is_refused_and_nothing_is_kept(tmp_path, monkeypatch, change):
    """The run trained on a mix of old and new files and left an entry keyed by the old ones."""
    import edgekd.imagefolder as imagefolder

    monkeypatch.setenv("EDGEKD_CACHE", str(tmp_path / "cache"))
    root = _folder(tmp_path / "imgs")
    victim, real, seen = root / "train" / "one" / "000.png", imagefolder._upright, []

    def meanwhile(image):   # the first image decoded: the folder changes under the decode
        if not seen:
            seen.append(1)
            if change == "replace":
                victim.write_bytes(victim.read_bytes())
            else:
                shutil.copy(victim, victim.with_name("new.png"))
        return real(image)

    monkeypatch.setattr(imagefolder, "_upright", meanwhile)
    with pytest.raises(DataError, match="changed while it was decoded .*; rerun once it is complete"):
        load_dataset(f"imagefolder:{root}")
    assert not [p for p in (tmp_path / "cache").rglob("*") if p.is_file()]
    monkeypatch.undo()
    monkeypatch.setenv("EDGEKD_CACHE", str(tmp_path / "cache"))
    assert len(load_dataset(f"imagefolder:{root}").y_train) > 0   # and the folder as it is now decodes


@pytest.mark.parametrize("place", ["header", "trailing"])
def test_a_png_is_sized_and_turned_by_one_rule_whether_its_exif_comes_before_or_after_its_pixels(tmp_path, place):
    """The size check reads a PNG's header only (Pillow decodes the whole file to find a late eXIf chunk); the decode
    read the late chunk too, so such an image was turned, then squashed back to the unturned size."""
    import struct

    rng = np.random.default_rng(0)
    for label in "ab":
        (tmp_path / "p" / "train" / label).mkdir(parents=True)
        for i in range(3):
            path = tmp_path / "p" / "train" / label / f"{i}.png"
            exif = Image.Exif()
            exif[0x0112] = 6   # turn a quarter: stored 30 wide and 20 high, shown 20 wide and 30 high
            Image.fromarray(rng.integers(0, 255, (20, 30, 3), dtype=np.uint8)).save(path, exif=exif.tobytes())
            if place == "trailing":   # move the eXIf chunk after the pixels (IDAT), before IEND
                data, chunks, at = path.read_bytes(), [], 8
                while at < len(data):
                    size = struct.unpack(">I", data[at:at + 4])[0]
                    chunks.append((data[at + 4:at + 8], data[at:at + 12 + size]))
                    at += 12 + size
                order = [c for c in chunks if c[0] not in (b"eXIf", b"IEND")] + [c for c in chunks if c[0] == b"eXIf"]
                path.write_bytes(data[:8] + b"".join(raw for _, raw in order + [chunks[-1]]))
    data = load_dataset(f"imagefolder:{tmp_path / 'p'}")
    stored = np.asarray(Image.open(tmp_path / "p" / "train" / "a" / "0.png").convert("RGB"))
    shown = stored if place == "trailing" else np.asarray(Image.fromarray(stored).transpose(Image.Transpose.ROTATE_270))
    assert data.input_shape == (3, *shown.shape[:2])   # trailing: as stored, neither turned nor squashed
    assert any(np.array_equal(row.numpy().transpose(1, 2, 0), shown) for row in (*data.x_train, *data.x_val, *data.x_test))


def test_16_bit_grayscale_is_read_by_its_top_byte_not_clipped_white(tmp_path):
    eight = _folder(tmp_path / "eight")
    sixteen = tmp_path / "sixteen"
    for path in eight.rglob("*.png"):
        target = sixteen / path.relative_to(eight)
        target.parent.mkdir(parents=True, exist_ok=True)
        wide = np.asarray(Image.open(path)).astype(np.uint16) * 257   # v -> v * 257: the same image at 16 bits
        Image.fromarray(wide).save(target)
    assert Image.open(next(sixteen.rglob("*.png"))).mode.startswith("I")
    a, b = load_dataset(f"imagefolder:{eight}"), load_dataset(f"imagefolder:{sixteen}")
    assert np.array_equal(a.x_train.numpy(), b.x_train.numpy()) and float(b.x_train.min()) < 255


def test_images_in_nested_folders_count_and_hidden_files_are_skipped(tmp_path):
    flat = _folder(tmp_path / "flat")
    nested = tmp_path / "nested"
    shutil.copytree(flat, nested)
    for folder in (nested / "train").iterdir():   # half of each class moved one level down
        (folder / "more").mkdir()
        for path in sorted(folder.glob("*.png"))[::2]:
            path.rename(folder / "more" / path.name)
        (folder / "._000.png").write_bytes(b"\x00\x05\x16\x07 AppleDouble")   # a macOS resource fork: not an image
        (folder / ".thumbs").mkdir()
        shutil.copy(next((folder / "more").glob("*.png")), folder / ".thumbs" / "t.png")
    a, b = load_dataset(f"imagefolder:{flat}"), load_dataset(f"imagefolder:{nested}")
    assert len(b.y_train) + len(b.y_val) + len(b.y_test) == len(a.y_train) + len(a.y_val) + len(a.y_test) == 42


def test_a_large_test_fraction_leaves_every_class_one_train_and_one_val_image(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEKD_CACHE", str(tmp_path / "cache"))
    root = _folder(tmp_path / "imgs", per_class=3)
    data = load_dataset(f"imagefolder:{root},test=0.7")   # 0.7 of 3 is 2: then nothing would be left for val
    assert (len(data.y_train), len(data.y_val), len(data.y_test)) == (3, 3, 3)
    assert sorted(data.y_val.tolist()) == [0, 1, 2] and sorted(data.y_train.tolist()) == [0, 1, 2]


def test_two_processes_loading_one_new_folder_decode_it_once(tmp_path):
    """As torchrun's ranks do: the second waits for the first's entry instead of decoding the folder again
    (each decode takes two seconds here, so that the two overlap)."""
    import subprocess
    import sys

    root = _folder(tmp_path / "imgs")
    code = ("import sys, edgekd.imagefolder as f; real = f._decode_and_store\n"
            "def counted(*a):\n    import time; print('decoded', flush=True); time.sleep(2); return real(*a)\n"
            "f._decode_and_store = counted\n"
            "from edgekd.data import load_dataset; load_dataset(sys.argv[1])")
    env = {**os.environ, "EDGEKD_CACHE": str(tmp_path / "cache")}
    procs = [subprocess.Popen([sys.executable, "-c", code, f"imagefolder:{root}"], stdout=subprocess.PIPE, text=True, env=env)
             for _ in range(2)]
    outputs = [p.communicate(timeout=120)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs) and sum(o.count("decoded") for o in outputs) == 1, outputs
    assert not list((tmp_path / "cache" / "images").glob(".*.lock"))


def test_a_photo_is_decoded_upright_by_its_exif_orientation(tmp_path):
    """A phone stores a portrait photo lying down (24 wide, 16 high) with orientation 6 (turn it a quarter
    clockwise to show it): edgekd reads it as shown, 16 wide and 24 high, its stored left edge on top."""
    for c in range(2):
        folder = tmp_path / "photos" / "train" / f"c{c}"
        folder.mkdir(parents=True)
        for i in range(5):
            stored = np.zeros((16, 24), np.uint8)
            stored[:, :4] = 255   # a white stripe down the stored left edge
            image = Image.fromarray(stored)
            exif = image.getexif()
            exif[0x0112] = 6
            image.save(folder / f"{i}.png", exif=exif)
    data = load_dataset(f"imagefolder:{tmp_path / 'photos'}")
    assert tuple(data.input_shape) == (1, 24, 16)
    row_means = data.x_train[0, 0].float().mean(dim=1)
    assert float(row_means[:4].min()) == 255.0 and float(row_means[4:].max()) == 0.0   # the stripe is on top


def test_a_linked_sub_folder_of_a_class_counts_and_a_link_back_up_is_walked_once(tmp_path):
    flat = _folder(tmp_path / "flat")
    linked = tmp_path / "linked"
    shutil.copytree(flat, linked)
    elsewhere = tmp_path / "elsewhere"
    for folder in (linked / "train").iterdir():   # half of each class kept in a folder elsewhere, linked in
        (elsewhere / folder.name).mkdir(parents=True)
        for path in sorted(folder.glob("*.png"))[::2]:
            path.rename(elsewhere / folder.name / path.name)
        (folder / "more").symlink_to(elsewhere / folder.name, target_is_directory=True)
        (elsewhere / folder.name / "loop").symlink_to(folder, target_is_directory=True)   # back up: no endless walk
    a, b = load_dataset(f"imagefolder:{flat}"), load_dataset(f"imagefolder:{linked}")
    assert len(b.y_train) + len(b.y_val) + len(b.y_test) == len(a.y_train) + len(a.y_val) + len(a.y_test) == 42


def test_a_folder_whose_name_holds_a_comma_is_a_folder(tmp_path):
    from edgekd.imagefolder import parse_spec

    root = _folder(tmp_path / "my photos, 2024")
    data = load_dataset(f"imagefolder:{root},size=4x4")
    assert tuple(data.input_shape) == (1, 4, 4) and parse_spec(f"{root},channels=3").root == root
    with pytest.raises(DataError, match="option 'colour=red' is not understood"):
        parse_spec(f"{tmp_path / 'photos'},colour=red,size=4x4")


def test_copies_across_the_split_or_under_two_classes_are_named_once_decoded(tmp_path):
    """Byte-identical photos (or the same pixels in another format) in train/ and test/, or in two class folders,
    passed silently: the first inflates the test accuracy, the second contradicts its own label."""
    root = _folder(tmp_path / "imgs")
    with warnings.catch_warnings():
        warnings.simplefilter("error")   # real digits, no copies: nothing to say
        load_dataset(f"imagefolder:{root}")
    for name in ("zero", "one", "two"):
        (root / "test" / name).mkdir(parents=True)
        for i in (10, 11, 12):
            shutil.copy(root / "train" / name / f"{i:03d}.png", root / "test" / name / f"{i:03d}.png")
    Image.open(root / "train" / "one" / "000.png").save(root / "test" / "one" / "000.bmp")   # same pixels, other format
    shutil.copy(root / "train" / "two" / "001.png", root / "train" / "zero" / "extra.png")
    with pytest.warns(Warning) as caught:
        data = load_dataset(f"imagefolder:{root}")
    said = sorted(str(w.message) for w in caught)
    assert len(said) == 2 and len(data.y_test) == 10
    assert said[0].startswith("1 image of ") and "appears under more than one class" in said[0]
    assert "'train/two/001.png' has the pixels of 'train/zero/extra.png'" in said[0]
    assert said[1].startswith("10 of the 10 test images of ") and "are copies of train or val images" in said[1]
    assert "test image 'test/one/000.bmp' has the pixels of 'train/one/000.png'" in said[1]


def test_a_cache_entry_decoded_before_digests_were_kept_gets_them_without_a_decode(tmp_path, monkeypatch):
    import edgekd.imagefolder as imagefolder

    root = _folder(tmp_path / "imgs")
    monkeypatch.setenv("EDGEKD_CACHE", str(tmp_path / "cache"))
    first = load_dataset(f"imagefolder:{root}")
    (digests,) = list((tmp_path / "cache" / "images").glob("*.h.npy"))
    kept = np.load(digests)
    digests.unlink()   # as an entry made before them
    monkeypatch.setattr(imagefolder, "_decode_and_store", lambda *a: pytest.fail("decoded again"))
    again = load_dataset(f"imagefolder:{root}")
    assert np.array_equal(np.load(digests), kept) and again.fingerprint() == first.fingerprint()


def test_a_torn_cache_file_is_made_again_not_an_abort(tmp_path, monkeypatch):
    """A 0-byte file (a crash or a full disk after the rename) raised numpy's EOFError, which click reports as
    "aborted", exit 130, at every later run: a torn decoded folder, split or unpacked member is made again."""
    monkeypatch.setenv("EDGEKD_CACHE", str(tmp_path / "cache"))
    root = _folder(tmp_path / "imgs", per_class=10)
    first = load_dataset(f"imagefolder:{root}").x_train.numpy().copy()   # (a copy: the files it maps are torn next)
    cache = tmp_path / "cache" / "images"
    for path in [*cache.glob("*.x.npy"), *(cache / "splits").glob("*.npy")]:
        path.write_bytes(b"")
    assert np.array_equal(first, load_dataset(f"imagefolder:{root}").x_train.numpy())
    data = tmp_path / "packed.npz"
    np.savez_compressed(data, x=np.arange(60 * 16, dtype=np.uint8).reshape(60, 1, 4, 4), y=np.arange(60) % 3)
    first = load_dataset(f"npz:{data}").x_train.numpy().copy()
    for path in (cache / "splits").glob("*.npy"):
        path.write_bytes(b"")
    assert np.array_equal(first, load_dataset(f"npz:{data}").x_train.numpy())
