"""edgekd.synthetic: generated many-class data with known groups, as a data spec of every command."""

import numpy as np
import pytest

from edgekd.data import load_dataset
from edgekd.errors import DataError
from edgekd.synthetic import class_means, parse_spec, true_groups

SPEC = "synthetic:classes=40,groups=4,dim=8,seed=3,train=30,test=5"


def test_spec_gives_the_same_arrays_every_time():
    data, again = load_dataset(SPEC), load_dataset(SPEC)
    assert data.input_shape == (8,) and data.num_classes == 40
    assert len(data.y_train) + len(data.y_val) == 40 * 30 and len(data.y_test) == 40 * 5
    assert (data.x_train == again.x_train).all() and (data.y_test == again.y_test).all()
    other = load_dataset(SPEC.replace("seed=3", "seed=4"))
    assert not (other.x_train == data.x_train).all()


def test_true_groups_are_balanced_and_named():
    groups = true_groups(SPEC)
    assert sorted(np.bincount(groups)) == [10, 10, 10, 10]
    data = load_dataset(SPEC)
    assert [int(name.split("/")[0][1:]) for name in data.classes] == groups.tolist()
    assert (true_groups(parse_spec("classes=40,groups=4,dim=8,seed=3")) == groups).all()   # examples do not matter


def test_classes_of_a_group_are_closer_than_groups():
    spec = parse_spec("classes=200,groups=10,dim=64,seed=0")
    means, groups = class_means(spec), true_groups(spec)
    dist = np.linalg.norm(means[:, None] - means[None], axis=-1)
    same = groups[:, None] == groups[None]
    off_diagonal = ~np.eye(len(means), dtype=bool)
    within, between = dist[same & off_diagonal].mean(), dist[~same].mean()
    assert within == pytest.approx(spec.spread, rel=0.15)          # the documented meaning of spread and sep
    assert between == pytest.approx(np.hypot(spec.sep, spec.spread), rel=0.15)
    easy = parse_spec("classes=200,groups=10,dim=64,seed=0,sep=2")
    assert np.linalg.norm(class_means(easy)[:, None] - class_means(easy)[None], axis=-1)[~same].mean() < between / 2


@pytest.mark.parametrize("arg, message", [
    ("classes=1", r"option 'classes=1' is not understood; expected classes=N \(2\.\.100000\)"),
    ("classes=10,groups=20", "'groups' must be at most 'classes' \\(10\\)"),
    ("classes=10,colour=red", "option 'colour=red' is not understood"),
    ("classes=10,sep=-1", "option 'sep=-1'"),
    ("classes=10,sep=nan", "option 'sep=nan'"),
    ("classes=10,dim", "option 'dim' is not understood"),
    ("classes=10,dim=3,dim=4", "option 'dim=4'"),
    ("classes=100000,dim=4096,train=100", "over the 1,000,000,000"),
])
def test_bad_options_are_one_clear_error(arg, message):
    with pytest.raises(DataError, match=message):
        load_dataset(f"synthetic:{arg}")


def test_cli_trains_and_refuses_through_the_spec(edgekd, tmp_path):
    code, _, err = edgekd("teacher", "train", "--data", "synthetic:classes=12,groups=3,dim=6,seed=0,train=20",
                          "--arch", "mlp:hidden=16", "--epochs", "1", "--out", tmp_path / "t", "--quiet")
    assert code == 0, err
    code, _, err = edgekd("evaluate", tmp_path / "t", "--data", "synthetic:classes=12,groups=3,dim=6,seed=0,train=20")
    assert code == 0, err
    code, _, err = edgekd("evaluate", tmp_path / "t", "--data", "synthetic:classes=12,groups=30")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "'groups' must be at most" in err



def test_class_means_added_in_float32_chunks_give_the_values_of_the_whole_cast():
    """No float64 (N, dim) copy of the means while drawing, and the same arrays as before it was removed."""
    import edgekd.synthetic as synthetic

    spec = parse_spec("classes=50,groups=5,dim=16,seed=3")
    means = class_means(spec)
    x, labels = synthetic._draw(spec, means, 7, np.random.default_rng(11))
    rng = np.random.default_rng(11)
    want_labels = rng.permutation(np.repeat(np.arange(50, dtype=np.int64), 7))
    want = rng.standard_normal((350, 16), dtype=np.float32) + means[want_labels].astype(np.float32)
    assert np.array_equal(labels, want_labels) and np.array_equal(x, want)
