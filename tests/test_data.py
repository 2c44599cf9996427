import gzip
import struct
from pathlib import Path

import numpy as np
import pytest

from edgekd.data import load_dataset
from edgekd.errors import DataError


def test_digits_splits_are_stratified_and_deterministic(digits):
    assert digits.input_shape == (1, 8, 8) and digits.num_classes == 10
    total = len(digits.y_train) + len(digits.y_val) + len(digits.y_test)
    assert total == 1797
    again = load_dataset("digits")
    assert (again.y_val == digits.y_val).all() and (again.x_train == digits.x_train).all()
    # every class in every split, in proportion (stratified: each class's share within 1.5 points of the whole's)
    whole = np.bincount(np.concatenate([digits.y_train, digits.y_val, digits.y_test]), minlength=10) / total
    for y in (digits.y_train, digits.y_val, digits.y_test):
        share = np.bincount(y.numpy(), minlength=10) / len(y)
        assert np.abs(share - whole).max() < 0.015, (share, whole)
    assert digits.x_train.max() == 16  # raw values kept


def test_train_limit_is_a_stratified_subset():
    data = load_dataset("digits", train_limit=200)
    assert 190 <= len(data.y_train) <= 210
    counts = np.bincount(data.y_train.numpy(), minlength=10)
    assert counts.min() >= 15


def test_stats_computed_on_train(digits):
    assert digits.mean[0] == pytest.approx(float(digits.x_train.mean()), rel=1e-4)


def _write_idx(path, array, gz=True):
    header = struct.pack(">HBB", 0, 8, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    payload = header + array.astype(np.uint8).tobytes()
    with (gzip.open if gz else open)(path, "wb") as handle:   # closed here: Python 3.12 flushes gzip only on close
        handle.write(payload)


def test_idx_folder_with_class_names(tmp_path):
    rng = np.random.default_rng(0)
    for stem, n in (("train", 60), ("t10k", 20)):
        _write_idx(tmp_path / f"{stem}-images-idx3-ubyte.gz", rng.integers(0, 255, (n, 28, 28)))
        _write_idx(tmp_path / f"{stem}-labels-idx1-ubyte", np.arange(n) % 10, gz=False)
    data = load_dataset(f"fashion-mnist:{tmp_path}")
    assert data.input_shape == (1, 28, 28) and data.classes[0] == "T-shirt/top"
    assert len(data.y_test) == 20


def test_idx_data_is_found_under_edgekd_data_before_the_system_folder(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    folder = tmp_path / "mnist"
    folder.mkdir()
    for stem, n in (("train", 40), ("t10k", 10)):
        _write_idx(folder / f"{stem}-images-idx3-ubyte.gz", rng.integers(0, 255, (n, 28, 28)))
        _write_idx(folder / f"{stem}-labels-idx1-ubyte.gz", np.arange(n) % 10)
    monkeypatch.setenv("EDGEKD_DATA", str(tmp_path))
    data = load_dataset("mnist")
    assert len(data.y_test) == 10 and len(data.y_train) + len(data.y_val) == 40 and data.classes[3] == "3"
    monkeypatch.setenv("EDGEKD_DATA", str(tmp_path / "elsewhere"))
    with pytest.raises(DataError, match=r"looked for .* in '.*elsewhere/mnist' or '/usr/share/datasets/mnist'"):
        load_dataset("mnist")


def test_missing_idx_folder_says_where_it_looked(tmp_path):
    with pytest.raises(DataError, match=r"looked for .* in '.*nowhere'.*dataset-fashion-mnist"):
        load_dataset(f"fashion-mnist:{tmp_path / 'nowhere'}")


def test_unknown_dataset():
    with pytest.raises(DataError, match="Unknown dataset 'cifar'; choose one of digits"):
        load_dataset("cifar")


def test_npz_with_test_split_and_names(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "d.npz"
    np.savez(path, x=rng.random((40, 6)).astype(np.float32), y=np.arange(40) % 4,
             x_test=rng.random((8, 6)).astype(np.float32), y_test=np.arange(8) % 4, class_names=np.array(list("abcd")))
    data = load_dataset(f"npz:{path}")
    assert data.input_shape == (6,) and data.classes == tuple("abcd") and len(data.y_test) == 8
    np.savez(path, x=rng.random((16, 6)).astype(np.float32), y=np.arange(16) % 2, class_names=np.array([b"cat", b"dog"]))
    assert load_dataset(f"npz:{path}").classes == ("cat", "dog")   # bytes names (h5py's) are text


def test_a_relative_or_home_path_is_recorded_absolute_and_the_split_guard_sees_one_file(tmp_path, monkeypatch):
    """A spec was recorded as typed: run from elsewhere, a model met another file of that name, and the held-out-rows
    guard let the same file through by its absolute path with other splits (rows it trained on scored as val)."""
    from edgekd.data import check_split_matches

    rng = np.random.default_rng(0)
    np.savez(tmp_path / "d.npz", x=rng.random((60, 6)).astype(np.float32), y=np.arange(60) % 3)
    monkeypatch.chdir(tmp_path)
    data = load_dataset("npz:d.npz")
    assert data.spec == f"npz:{tmp_path / 'd.npz'}" and data.describe()["spec"] == data.spec
    from edgekd.clicommon import _comparable_spec   # a model recorded before (relative) and one since: one data

    assert _comparable_spec("npz:d.npz") == _comparable_spec(data.spec) == data.spec
    monkeypatch.setenv("HOME", str(tmp_path))
    assert load_dataset("npz:~/d.npz").spec == data.spec
    monkeypatch.chdir(tmp_path.parent)
    with pytest.raises(DataError, match="held out as 6 val rows, but this run holds out 15"):
        check_split_matches(data.describe(), load_dataset(f"npz:{tmp_path / 'd.npz'}", val_fraction=0.3), "Model")


@pytest.mark.parametrize("arrays, message", [
    ({"y": np.arange(10)}, "needs 'x' and 'y'"),
    ({"x": np.full((10, 4), np.nan, np.float32), "y": np.arange(10) % 2}, "NaN"),
    ({"x": np.zeros(10), "y": np.arange(10) % 2}, "shape"),
    ({"x": np.zeros((10, 4)), "y": np.arange(9)}, "one entry per input"),
    ({"x": np.zeros((12, 0), np.float32), "y": np.arange(12) % 2}, r"each input must hold at least one value. Got inputs "
     r"of shape \(0,\) \(x/y\)"),
    ({"x": np.zeros((12, 4)), "y": np.arange(12) % 2, "x_test": np.zeros((0, 4)), "y_test": np.zeros(0, int)},
     r"it holds no samples \(x_test/y_test are empty\)"),
    ({"x": np.zeros((6, 4)), "y": np.arange(6) % 3}, r"at least 3 samples when there is no test split .* \[0, 1, 2\]"),
    ({"x": np.zeros((12, 16, 16, 3), np.uint8), "y": np.arange(12) % 2}, r"look channels-last .* x.transpose\(0, 3, 1, 2\)"),
    ({"x": np.zeros((12, 4)), "y": np.zeros(12, int)}, "it has 1 class; a classifier needs at least 2"),
    ({"x": np.zeros((16, 4)), "y": np.array([0, 1, 2, 7] * 4)}, r"class\(es\) \[3, 4, 5, 6\] have no training samples; number"),
    ({"x": np.zeros((12, 4)), "y": np.array(["cat", "dog"] * 6)},
     r"'y' must hold integer class indices. Got text labels .*'cat'.*numpy.unique\(labels, return_inverse=True\)"),
    ({"x": np.zeros((12, 4)), "y": np.array([0, 1] * 6, dtype=object)},
     r"array 'y' holds Python objects \(dtype object\), which edgekd does not unpickle; save it as class indices"),
    ({"x": np.zeros((12, 4)), "y": np.arange(12) % 2, "class_names": np.array(["cat", "dog"], dtype=object)},
     r"array 'class_names' holds Python objects .* numpy.asarray\(names, dtype=str\)"),
    ({"x": np.zeros((12, 4)), "y": np.arange(12) % 3, "class_names": np.array(["cat", "dog", "cat"])},
     r"'class_names' must name each class once. Got 'cat' more than once"),
])
def test_malformed_npz(tmp_path, arrays, message):
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    with pytest.raises(DataError, match=message):
        load_dataset(f"npz:{path}")


@pytest.mark.parametrize("labels, message", [(np.where(np.arange(60) == 5, -1, np.arange(60) % 3), r"in \[0, 59\] .* Got \[-1, 2\]"),
                                             (np.arange(60) % 3 + 0.5, "whole class indices")])
def test_a_compressed_npz_with_bad_labels_is_refused_before_its_inputs_are_unpacked(tmp_path, monkeypatch, labels,
                                                                                    message):
    """-1 for 'unlabelled' was refused only after x was inflated into the cache, where it stayed."""
    monkeypatch.setenv("EDGEKD_CACHE", str(tmp_path / "cache"))
    np.savez_compressed(tmp_path / "d.npz", x=np.ones((60, 6), np.float32), y=labels)
    with pytest.raises(DataError, match=message):
        load_dataset(f"npz:{tmp_path / 'd.npz'}")
    assert not [p for p in (tmp_path / "cache").rglob("*") if p.is_file()]


def test_npz_that_is_a_folder_text_or_npy_is_named_for_what_it_is(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "notes.npz").write_text("x,y\n1,2\n")
    with open(tmp_path / "one.npz", "wb") as handle:   # one .npy array behind an .npz suffix
        np.save(handle, np.zeros(3))
    for name, message in [("images", "is a folder; pass 'npz:FILE.npz'.*or 'imagefolder:"),
                          ("notes.npz", r"not an .npz archive \(not a zip archive\)"),
                          ("one.npz", r"not an .npz archive \(a single .npy array\)")]:
        with pytest.raises(DataError, match=message):
            load_dataset(f"npz:{tmp_path / name}")


def test_shaped_reads_flat_samples_as_images_without_copying(digits):
    flat = digits.shaped((64,))
    assert flat.x_train.shape == (len(digits.x_train), 64) and flat.x_train.data_ptr() == digits.x_train.data_ptr()
    assert flat.shaped((1, 8, 8)).x_test.equal(digits.x_test) and flat.mean == digits.mean
    assert flat.fingerprint("val") != digits.fingerprint("val")   # the shape is part of what a cache is keyed by
    assert len(flat.shaped((4, 4, 4)).mean) == 4   # flat rows read as four channels: their own statistics
    with pytest.raises(DataError, match="cannot be read as"):
        digits.shaped((65,))


def test_a_model_meets_the_data_it_was_trained_on_split_as_it_was(tmp_path, digits, edgekd):
    """Another --val-fraction would put rows the teacher trained on into val (which picks T, alpha and recipes)."""
    from edgekd.evaluate import evaluate
    from edgekd.teacher_training import save_untrained
    from edgekd.teachers import check_teacher_fits, load_teacher

    teacher = load_teacher(save_untrained(tmp_path / "t", "mlp:hidden=8", digits))   # val fraction 0.1
    wider = load_dataset("digits", val_fraction=0.3)
    with pytest.raises(DataError, match=r"held out as 143 val rows, but this run holds out 434 val rows of 'digits'"):
        check_teacher_fits(teacher, wider)
    assert evaluate(teacher, wider, split="test").n == len(wider.y_test)   # test rows are the same: allowed
    with pytest.raises(DataError, match="pass the --val-fraction"):
        evaluate(teacher, wider, split="val")
    check_teacher_fits(teacher, load_dataset("digits", train_limit=200))   # a subset of train: same val and test
    code, _, err = edgekd("distill", "--teacher", tmp_path / "t", "--data", "digits", "--val-fraction", "0.3",
                          "--epochs", "1", "--out", tmp_path / "s")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "rows it trained on would be scored as held out" in err
    assert not (tmp_path / "s").exists()


def test_npz_inputs_are_memory_mapped_and_split_into_the_cache_not_beside_the_file(tmp_path, monkeypatch):
    import torch

    from edgekd.data import _npz_member, _unpacked_member

    monkeypatch.setenv("EDGEKD_CACHE", str(tmp_path / "cache"))
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 256, (60, 1, 4, 4), dtype=np.uint8), np.arange(60) % 3
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    np.savez(data_dir / "plain.npz", x=x, y=y, notes=np.zeros(3))
    np.savez_compressed(data_dir / "packed.npz", x=x, y=y)
    assert isinstance(_npz_member(data_dir / "plain.npz", "x"), np.memmap)   # stored: mapped in place
    assert _npz_member(data_dir / "packed.npz", "x") is None                 # deflated: not mapped in place,
    unpacked = _unpacked_member(data_dir / "packed.npz", "x")                # but inflated into the cache once
    assert isinstance(unpacked, np.memmap) and np.array_equal(unpacked, x) and Path(unpacked.filename).parent.name == "splits"
    plain, packed = load_dataset(f"npz:{data_dir / 'plain.npz'}"), load_dataset(f"npz:{data_dir / 'packed.npz'}")
    for split in ("x_train", "x_val", "x_test"):
        assert torch.equal(getattr(plain, split), getattr(packed, split))
    assert plain.mean == packed.mean and plain.std == packed.std
    assert sorted(p.name for p in data_dir.iterdir()) == ["packed.npz", "plain.npz"]   # nothing written beside the data
    # each file's three splits and its rows' digests, and the packed file's x inflated (once: read again, it is the
    # same file)
    assert len(list((tmp_path / "cache" / "images" / "splits").glob("*.npy"))) == 9
    load_dataset(f"npz:{data_dir / 'packed.npz'}")
    assert len(list((tmp_path / "cache" / "images" / "splits").glob("*.npy"))) == 9


def test_a_rewritten_npz_with_its_mtime_put_back_is_read_again(tmp_path):
    """The split cache was keyed by size and mtime: new rows of the same shape, the mtime restored (cp -p,
    rsync -a, tar), and the old rows were trained on in silence."""
    import os

    import numpy as np

    from edgekd.data import load_dataset

    path = tmp_path / "s.npz"
    x, y = np.random.default_rng(0).random((300, 1, 8, 8), dtype=np.float32), np.arange(300) % 10
    np.savez(path, x=x, y=y)
    stat = os.stat(path)
    first = float(load_dataset(f"npz:{path}").x_train.sum())
    np.savez(path, x=x + 1.0, y=y)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert os.stat(path).st_size == stat.st_size
    second = load_dataset(f"npz:{path}")
    assert float(second.x_train.sum()) == pytest.approx(first + second.x_train.numel(), rel=1e-4)


def test_float64_inputs_beyond_float32_are_refused_not_blamed_on_the_model(tmp_path):
    """1e300 passed the NaN/Inf check and became Inf in the float32 cast: the model was then called broken."""
    import numpy as np

    from edgekd.data import load_dataset
    from edgekd.errors import DataError

    x = np.random.default_rng(0).random((60, 4))
    x[3, 1] = 1e300
    np.savez(tmp_path / "big.npz", x=x, y=np.arange(60) % 3)
    with pytest.raises(DataError, match="beyond float32's range"):
        load_dataset(f"npz:{tmp_path / 'big.npz'}")


def test_same_layout_reads_flat_and_single_channel_views_never_transposed_images():
    from edgekd.data import same_layout

    assert same_layout((1, 28, 28), (784,)) and same_layout((784,), (1, 28, 28))      # an MLP's flat view
    assert same_layout((1, 28, 28), (28, 28, 1)) and same_layout((1, 28, 28), (28, 28))   # the same values
    assert same_layout((None, 28, 28), (1, 28, 28))                                   # a dynamic axis
    assert not same_layout((1, 24, 16), (1, 16, 24))   # the same pixel count, the rows scrambled
    assert not same_layout((3, 16, 8), (1, 16, 24)) and not same_layout((3, 8, 8), (8, 8, 3))
    assert not same_layout((1, 8, 8), (65,)) and same_layout((1, 784), (1, 28, 28))


def test_a_dataset_is_not_read_as_an_image_of_other_sides(digits):
    digits.shaped((64,))   # flat: fine
    with pytest.raises(DataError, match=r"has inputs of shape \(1, 8, 8\), which cannot be read as \(1, 4, 16\)"):
        digits.shaped((1, 4, 16))


def test_a_model_is_refused_on_its_data_changed_since_with_the_same_counts(tmp_path):
    """An image added to a folder re-draws the held-out rows with the same counts; here every value of an
    npz changes in place: the val and test rows recorded with the model (sha256) no longer match."""
    from edgekd.teacher_training import save_untrained
    from edgekd.teachers import check_teacher_fits, load_teacher

    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 200, (60, 1, 4, 4), dtype=np.uint8), np.arange(60) % 3
    path = tmp_path / "d.npz"
    np.savez(path, x=x, y=y)
    teacher = load_teacher(save_untrained(tmp_path / "t", "mlp:hidden=8", load_dataset(f"npz:{path}")))
    check_teacher_fits(teacher, load_dataset(f"npz:{path}"))   # the same rows: fine
    np.savez(path, x=x + 1, y=y)
    changed = load_dataset(f"npz:{path}")
    with pytest.raises(DataError, match=r"whose val and test rows have changed since .* train it again"):
        check_teacher_fits(teacher, changed)
    with pytest.raises(DataError, match=r"whose test rows have changed since"):
        check_teacher_fits(teacher, changed, splits=("test",))


def test_a_train_limit_gives_that_many_rows_with_the_class_shares(digits):
    """Hamilton's method: each class's share rounded down, the rest to the largest remainders (rounding each
    share on its own gave 601 rows for 600)."""
    for n in (600, 501, 37):
        data = load_dataset("digits", train_limit=n)
        assert len(data.y_train) == n
        shares = np.bincount(data.y_train.numpy(), minlength=10) / n
        whole = np.bincount(digits.y_train.numpy(), minlength=10) / len(digits.y_train)
        assert np.abs(shares - whole).max() <= 1 / n + 1e-9


def test_ctrl_c_while_a_split_is_written_leaves_no_copy_of_it(tmp_path, monkeypatch):
    """The split's temporary file (a full copy of its rows) was removed on a disk error only: every Ctrl-C
    while a larger-than-memory folder was split left one in the cache until a prune."""
    import os

    monkeypatch.setenv("EDGEKD_CACHE", str(tmp_path / "cache"))
    x, y = np.zeros((60, 1, 4, 4), dtype=np.uint8), np.arange(60) % 3
    np.savez(tmp_path / "plain.npz", x=x, y=y)

    def interrupted(*_args):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", interrupted)   # the rows written, the rename not reached
    with pytest.raises(KeyboardInterrupt):
        load_dataset(f"npz:{tmp_path / 'plain.npz'}")
    monkeypatch.undo()
    assert [p.name for p in (tmp_path / "cache").rglob("*") if p.is_file()] == []


@pytest.mark.parametrize("kwargs, message", [
    (dict(spec=Path("digits")), "The 'spec' parameter must be a dataset spec such as 'digits'"),
    (dict(spec="digits", train_limit="100"), "The 'train_limit' parameter must be an integer >= 1. Got '100' instead."),
    (dict(spec="digits", train_limit=100.5), "The 'train_limit' parameter must be an integer >= 1"),
    (dict(spec="digits", split_seed=-1), "The 'split_seed' parameter must be an integer in [0,")])
def test_load_dataset_checks_its_arguments_before_reading(kwargs, message):
    """A Path spec was an AttributeError, a text or fractional limit a TypeError, a negative seed numpy's ValueError."""
    from edgekd.errors import EdgekdError

    with pytest.raises(EdgekdError) as refused:
        load_dataset(**kwargs)
    assert message in str(refused.value)


def test_copies_in_an_npz_are_named_by_their_rows_and_their_digests_cached(tmp_path, monkeypatch, digits):
    """As an image folder's: a test row that is a train row, and a row under two labels, each warn once."""
    import warnings

    from edgekd.data import load_dataset

    monkeypatch.setenv("EDGEKD_CACHE", str(tmp_path / "cache"))
    x, y = digits.x_train.numpy(), digits.y_train.numpy()
    x_test, y_test = digits.x_test.numpy().copy(), digits.y_test.numpy().copy()
    np.savez(tmp_path / "clean.npz", x=x, y=y, x_test=x_test, y_test=y_test)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_dataset(f"npz:{tmp_path / 'clean.npz'}")
    x_test[7], y_test[7] = x[3], y[3]
    x2, y2 = np.concatenate([x, x[5:6]]), np.concatenate([y, [(y[5] + 1) % 10]])
    np.savez_compressed(tmp_path / "copies.npz", x=x2, y=y2, x_test=x_test, y_test=y_test)
    with pytest.warns(Warning) as caught:
        load_dataset(f"npz:{tmp_path / 'copies.npz'}")
    said = sorted(str(w.message) for w in caught)
    assert len(said) == 2, said
    assert said[0].startswith("1 of the ") and "test sample 'x_test[7]' has the values of 'x[3]'" in said[0]
    assert said[1].startswith("1 sample of ") and "'x[5]' has the values of 'x[" in said[1]
    cached = sorted((tmp_path / "cache" / "images" / "splits").glob("*.npy"))
    import edgekd.imagefolder as imagefolder

    monkeypatch.setattr(imagefolder, "pixel_digest", lambda row: pytest.fail("digested again"))
    with pytest.warns(Warning):
        load_dataset(f"npz:{tmp_path / 'copies.npz'}")
    assert sorted((tmp_path / "cache" / "images" / "splits").glob("*.npy")) == cached


def test_as_float_gives_row_major_batches_even_from_a_one_channel_nhwc_permute():
    """(N, 1, H, W) permuted back from NHWC passes is_contiguous() with channels_last strides, which a
    convolution follows; a net that then flattens with view fails. as_float hands models row-major strides."""
    import torch

    from edgekd.data import as_float
    from edgekd.training import apply_shifts

    x = torch.rand(4, 1, 8, 8)
    shifted = apply_shifts(x, torch.tensor([[1, -1], [0, 0], [2, 2], [-2, 1]]), 2)
    assert shifted.is_contiguous() and shifted.stride() != x.stride()   # the trap
    fixed = as_float(shifted)
    assert fixed.stride() == x.stride() and torch.equal(fixed, shifted)
    assert as_float(x) is x and as_float((255 * x).to(torch.uint8)).stride() == x.stride()
    conv = torch.nn.Conv2d(1, 3, 3)
    conv(fixed).view(4, -1)   # raised "view size is not compatible" on the NHWC-strided batch
