"""edgekd.distill: the honest comparison with the hard-label baseline."""

import dataclasses
import math
from pathlib import Path

import pytest

import torch

from edgekd.distill import describe_gain, distill, gap_closed


def test_gap_closed_is_a_share_of_a_real_gap():
    assert gap_closed(0.90, 0.88, 0.92) == pytest.approx(0.5)
    assert gap_closed(0.87, 0.88, 0.92) == pytest.approx(-0.25)   # a loss is negative, never a success
    assert gap_closed(0.86, 0.88, 0.87) is None                   # teacher below the baseline: no share
    assert gap_closed(0.90, None, 0.92) is None


def test_describe_gain_calls_a_loss_a_loss():
    assert describe_gain(0.90, 0.88, 0.92) == "distillation gains 2.00 points, closing 50.0% of the baseline->teacher gap"
    assert describe_gain(0.8638, 0.8680, 0.8856) == "distillation loses to its hard-label baseline by 0.42 points"
    text = describe_gain(0.86, 0.88, 0.87)
    assert text.startswith("the teacher (87.00%) is not above the hard-label baseline (88.00%)") and "loses 2.00 points" in text
    assert text.endswith("a teacher above the student's own baseline (more epochs or members) is what pays")
    assert "pays" not in describe_gain(0.885, 0.88, 0.87)   # a gain needs no advice
    assert "%" not in describe_gain(0.86, None, 0.87)
    above = describe_gain(0.9081, 0.3983, 0.7577)   # a student past its teacher gets no share over 100%
    assert "141" not in above and "closing all of the baseline->teacher gap" in above and "15.04 points above" in above


def test_baseline_gets_its_own_best_recipe(tmp_path, digits, tiny_teacher):
    """With jitter, the baseline is trained with jitter and without; the better on val is kept."""
    from edgekd.cache import LogitCache
    from edgekd.distill import DistillConfig, distill
    from edgekd.teachers import load_teacher
    from edgekd.training import TrainConfig

    config = DistillConfig(student="mlp:hidden=16", train=TrainConfig(epochs=2, jitter=1), views=2, baseline=True)
    result = distill(load_teacher(tiny_teacher), digits, config, tmp_path / "s", cache=LogitCache(tmp_path / "c"))
    tried = result.baseline_search
    assert [c["jitter"] for c in tried] == [1, 0] and sum(c["chosen"] for c in tried) == 1
    best = max(tried, key=lambda c: (c["val_accuracy"], -c["val_nll"]))
    assert best["chosen"]
    assert best["test_accuracy"] == pytest.approx(result.baseline_test_accuracy)   # each try's test figure, recorded after
    assert result.gap_closed == gap_closed(result.student_test_accuracy, result.baseline_test_accuracy,
                                           result.teacher_test_accuracy)


def test_a_fixed_baseline_recipe_is_the_only_one_trained(tmp_path, digits, tiny_teacher):
    """--baseline-jitter: the recipe an earlier seed chose on val, trained alone (no second full run)."""
    from edgekd.cache import LogitCache
    from edgekd.distill import DistillConfig, distill
    from edgekd.errors import ConfigError
    from edgekd.teachers import load_teacher
    from edgekd.training import TrainConfig

    teacher = load_teacher(tiny_teacher)
    config = DistillConfig(student="mlp:hidden=16", train=TrainConfig(epochs=1, jitter=1), views=2, baseline=True,
                           baseline_jitter=0)
    result = distill(teacher, digits, config, tmp_path / "s", cache=LogitCache(tmp_path / "c"))
    assert [(c["jitter"], c["chosen"]) for c in result.baseline_search] == [(0, True)]
    too_far = DistillConfig(student="mlp:hidden=16", train=TrainConfig(epochs=1), baseline=True, baseline_jitter=8)
    with pytest.raises(ConfigError, match="'baseline_jitter' parameter must be smaller than the images' side .* pass --baseline-jitter 2 or less"):
        distill(teacher, digits, too_far, tmp_path / "t", cache=LogitCache(tmp_path / "c"))
    assert not (tmp_path / "t").exists() and not (tmp_path / "t.partial").exists()
    with pytest.raises(ConfigError, match="'baseline_jitter' parameter must be"):
        DistillConfig(baseline_jitter=-1)


def test_a_fixed_baseline_recipe_can_carry_mixup():
    """--baseline-mixup with --baseline-jitter: the whole recipe an earlier seed kept (mixup and all) is
    fixed; a mixup alone would leave the jitter to a search, and is refused."""
    from edgekd.distill import DistillConfig, baseline_trials
    from edgekd.errors import ConfigError
    from edgekd.training import TrainConfig

    config = DistillConfig(train=TrainConfig(mixup=1.0), baseline=True, baseline_jitter=1, baseline_mixup=1.0)
    assert baseline_trials(config, (1, 28, 28)) == [{"jitter": 1, "mixup": 1.0, "flip": False}]
    assert baseline_trials(DistillConfig(baseline=True, baseline_jitter=0), (1, 28, 28)) == [{"jitter": 0, "mixup": 0.0, "flip": False}]
    with pytest.raises(ConfigError, match="'baseline_mixup' parameter fixes the baseline's recipe together with 'baseline_jitter'"):
        DistillConfig(baseline_mixup=1.0)
    with pytest.raises(ConfigError, match="'baseline_mixup' parameter must be in"):
        DistillConfig(baseline_jitter=0, baseline_mixup=-1.0)


def test_baseline_tries_augmentation_even_when_the_student_has_none():
    from edgekd.distill import baseline_recipes

    assert baseline_recipes(0, (1, 28, 28)) == [2, 0]      # images: ±2 px and none
    assert baseline_recipes(3, (1, 28, 28)) == [3, 0]      # the student's jitter and none
    assert baseline_recipes(0, (1, 4, 4)) == [1, 0]        # at most a quarter of the smaller side
    assert baseline_recipes(0, (1, 3, 3)) == [0]           # too small to shift
    assert baseline_recipes(0, (64,)) == [0]               # vectors are not shifted


def test_the_student_tries_augmentation_on_consistent_views_and_the_search_methods_when_it_has_none():
    from edgekd.distill import DistillConfig, student_recipes
    from edgekd.training import TrainConfig

    plain = {"method": "kd-ls", "jitter": 0, "views": 0, "view_grid": False, "mixup": 0.0, "flip": False}
    grid2 = {**plain, "jitter": 2, "view_grid": True}
    kd = {**plain, "method": "kd"}
    assert DistillConfig().method == "kd-ls" and DistillConfig().search_methods == ("kd",)
    assert student_recipes(DistillConfig(), (1, 28, 28)) == [grid2, kd, plain]   # the configured recipe last
    assert student_recipes(DistillConfig(), (1, 4, 4)) == [{**grid2, "jitter": 1}, kd, plain]
    assert student_recipes(DistillConfig(recipe_search=False), (1, 28, 28)) == [plain]
    assert student_recipes(DistillConfig(search_methods=()), (1, 28, 28)) == [grid2, plain]
    assert student_recipes(DistillConfig(method="kd", search_methods=("kd", "dkd", "kd")), (64,)) == [
        {**plain, "method": "dkd"}, kd]   # the configured method once, each other once
    own = DistillConfig(train=TrainConfig(jitter=1), views=4)
    assert student_recipes(own, (1, 28, 28)) == [{**plain, "jitter": 1, "views": 4}]   # the user's jitter stands
    assert student_recipes(DistillConfig(), (64,)) == [kd, plain] and student_recipes(DistillConfig(), (1, 3, 3)) == [kd, plain]
    mixed = DistillConfig(train=TrainConfig(mixup=0.4))
    assert student_recipes(mixed, (1, 28, 28)) == [{**plain, "mixup": 0.4}]   # with mixup the user's recipe stands
    mirrored = DistillConfig(train=TrainConfig(flip=True), view_grid=True)
    assert student_recipes(mirrored, (1, 28, 28)) == [{**plain, "view_grid": True, "flip": True}]   # so with flip


def test_a_search_method_must_be_known():
    from edgekd.distill import DistillConfig
    from edgekd.errors import ConfigError

    with pytest.raises(ConfigError, match="'search_methods' parameter must be one of 'kd', 'kd-ls', 'dkd', 'nckd'. Got 'crd'"):
        DistillConfig(search_methods=("crd",))


def test_the_baseline_gets_the_students_mixup_among_its_recipes():
    from edgekd.distill import DistillConfig, baseline_trials
    from edgekd.training import TrainConfig

    def trial(jitter, mixup=0.0, flip=False):
        return {"jitter": jitter, "mixup": mixup, "flip": flip}

    assert baseline_trials(DistillConfig(), (1, 28, 28)) == [trial(2), trial(0)]
    mixed = DistillConfig(train=TrainConfig(mixup=0.4, jitter=1))
    assert baseline_trials(mixed, (1, 28, 28)) == [trial(1, 0.4), trial(1), trial(0)]
    assert baseline_trials(DistillConfig(train=TrainConfig(mixup=0.4)), (64,)) == [trial(0, 0.4), trial(0)]
    fixed = DistillConfig(train=TrainConfig(mixup=0.4), baseline_jitter=2)   # a fixed recipe stands alone
    assert baseline_trials(fixed, (1, 28, 28)) == [trial(2)]


def test_mixup_needs_the_teacher_online():
    from edgekd.distill import DistillConfig
    from edgekd.errors import ConfigError
    from edgekd.training import TrainConfig

    with pytest.raises(ConfigError, match="'mixup' parameter needs the teacher online.*views=all"):
        DistillConfig(train=TrainConfig(mixup=0.2, jitter=1), views=0, view_grid=True)
    with pytest.raises(ConfigError, match="views=4"):
        DistillConfig(train=TrainConfig(mixup=0.2, jitter=1), views=4)
    with pytest.raises(ConfigError, match=r"'mixup' parameter must be in \[0, 100\]. Got -0.1"):
        TrainConfig(mixup=-0.1)


def test_with_mixup_the_teacher_judges_the_blend_the_student_sees(digits, tiny_teacher):
    """Function matching: the online teacher's logits are of the blended (and jittered) batch, and the
    batch carries the partner labels and lam for the blended hard term."""
    from edgekd.distill import distill_batches
    from edgekd.teachers import load_teacher
    from edgekd.training import apply_shifts, jitter_shifts, mix_inputs, step_generator

    teacher = load_teacher(tiny_teacher)
    indices = torch.arange(40)
    xb, yb, t, partner_y, lam = distill_batches(digits.x_train, digits.y_train, None, None, 1, teacher, 0.5)(
        indices, step_generator(0, 0, 0), 0)
    generator = step_generator(0, 0, 0)   # the same draws: the shifts first, then the blend
    shifted = apply_shifts(digits.x_train[indices], jitter_shifts(40, 1, generator), 1)
    expected, partner, expected_lam = mix_inputs(shifted, generator, 0.5)
    assert lam == expected_lam and torch.equal(xb, expected) and torch.equal(partner_y, digits.y_train[indices][partner])
    assert torch.allclose(t, teacher.logits(expected))


def test_distill_with_mixup_gives_the_baseline_the_same_augmentation(edgekd, tmp_path, tiny_teacher):
    from edgekd.artifacts import load_artifact

    code, out, err = edgekd("distill", "--teacher", tiny_teacher, "--student", "mlp:hidden=16", "--epochs", "2", "--mixup", "0.4",
                            "--baseline", "--quiet", "--out", tmp_path / "s")
    assert code == 0, err
    metrics = load_artifact(tmp_path / "s").manifest.metrics
    assert [(c["jitter"], c["mixup"]) for c in metrics["baseline_search"]] == [(0, 0.4), (2, 0.0), (0, 0.0)]
    assert metrics["student_search"] == []   # with mixup the student's recipe is the one asked
    assert "baseline recipe chosen on val: jitter" in out and "mixup 0.4" in out
    code, out, err = edgekd("distill", "--teacher", tiny_teacher, "--mixup", "0.4", "--views", "all", "--out", tmp_path / "v")
    assert code == 2 and "'mixup' parameter (--mixup) needs the teacher online" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "v").exists()


def test_the_distilled_student_keeps_its_better_recipe_on_val(tmp_path, digits, tiny_teacher):
    """Both recipes trained in full with the same seed and budget; the better on val kept and reported,
    the time of the other apart; --no-recipe-search trains the configured recipe only."""
    from edgekd.artifacts import load_artifact
    from edgekd.cache import LogitCache
    from edgekd.distill import DistillConfig, distill
    from edgekd.teachers import load_teacher
    from edgekd.training import TrainConfig, accuracy_and_nll

    teacher = load_teacher(tiny_teacher)
    config = DistillConfig(student="mlp:hidden=16", train=TrainConfig(epochs=2), baseline=True)
    result = distill(teacher, digits, config, tmp_path / "s", cache=LogitCache(tmp_path / "c"))
    tried = result.student_search
    assert [(c["method"], c["jitter"], c["view_grid"]) for c in tried] == [("kd-ls", 2, True), ("kd", 0, False), ("kd-ls", 0, False)]
    assert sum(c["chosen"] for c in tried) == 1
    chosen = max(tried, key=lambda c: (c["val_accuracy"], -c["val_nll"]))
    assert chosen["chosen"] and result.method == chosen["method"]
    assert len({c["val_nll"] for c in tried}) == 3   # each recipe trained its own student, kd with its own loss
    artifact = load_artifact(tmp_path / "s")
    assert artifact.manifest.metrics["student_search"] == list(tried) and artifact.manifest.config["method"] == chosen["method"]
    # the kept student's val figures, recorded whether or not a search ran
    assert (artifact.manifest.metrics["val_accuracy"], artifact.manifest.metrics["val_nll"]) == (chosen["val_accuracy"], chosen["val_nll"])
    assert artifact.manifest.timings["student_search_seconds"] == result.student_search_seconds > 0
    saved, _ = accuracy_and_nll(load_teacher(tmp_path / "s").logits(digits.x_test), digits.y_test)
    assert saved == pytest.approx(result.student_test_accuracy)   # the saved student is the chosen one
    # each try's test accuracy is recorded (never chosen by): the kept one's is the student's own
    assert chosen["test_accuracy"] == pytest.approx(result.student_test_accuracy)
    assert all(0 < c["test_accuracy"] <= 1 for c in tried)
    assert len(list((tmp_path / "c").glob("*.safetensors"))) >= 25   # the teacher on every ±2 px shift, cached
    fixed = distill(teacher, digits, DistillConfig(student="mlp:hidden=16", train=TrainConfig(epochs=2), recipe_search=False),
                    tmp_path / "f", cache=LogitCache(tmp_path / "c"))
    assert fixed.student_search == () and load_artifact(tmp_path / "f").manifest.metrics["student_search"] == []
    assert fixed.method == "kd-ls"


def test_view_grid_holds_every_integer_shift_once():
    import torch

    from edgekd.distill import view_shifts

    shifts = view_shifts(5, 0, 2, grid=True)
    assert shifts.shape == (25, 5, 2) and torch.equal(shifts[0], torch.zeros(5, 2, dtype=torch.long))
    assert len({tuple(v[0].tolist()) for v in shifts}) == 25 and (shifts == shifts[:, :1]).all()


def test_mirrored_view_grid_holds_every_shift_twice_and_shares_the_plain_caches(tmp_path, digits, tiny_teacher):
    """--flip with --views all: each integer shift also mirrored ((2j+1)^2 x 2 views); the unmirrored views
    keep the cache names they had before flip, so a cache made without it is reused; the teacher judges the
    very image the student sees."""
    from edgekd.cache import LogitCache
    from edgekd.distill import distill_batches, teacher_view_logits, view_shifts
    from edgekd.teachers import load_teacher
    from edgekd.training import step_generator

    shifts = view_shifts(5, 0, 1, grid=True, flip=True)
    assert shifts.shape == (18, 5, 3) and torch.equal(shifts[0], torch.zeros(5, 3, dtype=torch.long))
    assert len({tuple(v[0].tolist()) for v in shifts}) == 18 and int(shifts[:, 0, 2].sum()) == 9
    assert view_shifts(5, 3, 1, flip=True).shape == (3, 5, 3)
    teacher, cache = load_teacher(tiny_teacher), LogitCache(tmp_path / "c")
    teacher_view_logits(teacher, digits, 0, 1, cache, grid=True)
    assert cache.misses == 9
    logits, shifts = teacher_view_logits(teacher, digits, 0, 1, cache, grid=True, flip=True)
    assert (cache.misses, cache.hits) == (18, 9) and logits.shape[0] == 18
    xb, _, t = distill_batches(digits.x_train, digits.y_train, logits, shifts, 1, None)(torch.arange(64), step_generator(0, 0, 0), 0)
    assert torch.allclose(teacher.logits(xb), t, atol=1e-5)


def test_with_flip_the_baseline_tries_the_students_mirroring_first(edgekd, tmp_path, tiny_teacher):
    from edgekd.artifacts import load_artifact
    from edgekd.distill import DistillConfig, baseline_trials
    from edgekd.errors import ConfigError
    from edgekd.training import TrainConfig

    mirrored = DistillConfig(train=TrainConfig(jitter=1, flip=True))
    assert baseline_trials(mirrored, (1, 28, 28)) == [{"jitter": 1, "mixup": 0.0, "flip": True},
                                                      {"jitter": 1, "mixup": 0.0, "flip": False},
                                                      {"jitter": 0, "mixup": 0.0, "flip": False}]
    fixed = DistillConfig(baseline=True, baseline_jitter=1, baseline_flip=True)
    assert baseline_trials(fixed, (1, 28, 28)) == [{"jitter": 1, "mixup": 0.0, "flip": True}]
    with pytest.raises(ConfigError, match="'baseline_flip' parameter fixes the baseline's recipe together with 'baseline_jitter'"):
        DistillConfig(baseline_flip=True)
    code, out, err = edgekd("distill", "--teacher", tiny_teacher, "--student", "mlp:hidden=16", "--epochs", "2", "--flip",
                            "--views", "all", "--baseline", "--quiet", "--out", tmp_path / "s")
    assert code == 0, err
    metrics = load_artifact(tmp_path / "s").manifest.metrics
    assert [(c["jitter"], c["flip"]) for c in metrics["baseline_search"]] == [(0, True), (2, False), (0, False)]
    assert metrics["student_search"] == []   # with flip the student's recipe is the one asked
    assert "baseline recipe chosen on val: jitter" in out


def test_flip_on_data_that_are_not_images_is_refused(edgekd, tmp_path, tiny_teacher):
    import numpy as np

    path = tmp_path / "vectors.npz"
    np.savez(path, x=np.random.default_rng(0).random((60, 64), dtype=np.float32), y=np.arange(60) % 10)
    for args in (["teacher", "train", "--arch", "mlp:hidden=8", "--epochs", "1"], ["distill", "--teacher", tiny_teacher],
                 ["specialists", "build", "--teacher", tiny_teacher, "--member", "0"]):
        code, _, err = edgekd(*args, "--data", f"npz:{path}", "--flip", "--out", tmp_path / "o")
        assert code == 2 and "'flip' parameter (--flip) mirrors images, but the inputs have shape (64,)" in err, err
        assert len(err.strip().splitlines()) == 1 and not (tmp_path / "o").exists()


def test_consistent_teaching_and_methods_train(tmp_path, digits, tiny_teacher):
    """--views all: the student's shifted image is looked up among the teacher's cached shifts."""
    from edgekd.cache import LogitCache
    from edgekd.distill import DistillConfig, distill
    from edgekd.teachers import load_teacher

    from edgekd.training import TrainConfig

    teacher = load_teacher(tiny_teacher)
    cached = []
    for method in ("kd-ls", "dkd", "nckd"):
        config = DistillConfig(student="mlp:hidden=16", train=TrainConfig(epochs=6, jitter=1), view_grid=True,
                               method=method, temperature=2.0, alpha=0.5)
        result = distill(teacher, digits, config, tmp_path / method, cache=LogitCache(tmp_path / "c"))
        assert result.student_test_accuracy > 0.2   # learning (chance is 0.1) from 9 cached shifts
        cached.append(sorted(p.name for p in (tmp_path / "c").glob("*.safetensors")))
    # the 3x3 shifts (and the plain transfer set) are cached by the first run; the other methods only hit them
    assert len(cached[0]) >= 9 and cached[0] == cached[1] == cached[2]


def test_twin_logits_average_the_two_members_probabilities():
    from edgekd.distill import twin_logits

    a, b = torch.randn(5, 10), 3 * torch.randn(5, 10)
    mixed = twin_logits(a, b)
    assert torch.allclose(mixed.exp(), (a.softmax(-1) + b.softmax(-1)) / 2, atol=1e-6)
    wide = torch.randn(3000, 4000)   # 1.5 chunks of the 32 MiB bound, written in place
    expected = torch.logaddexp(wide.log_softmax(-1), wide.flip(0).log_softmax(-1)) - math.log(2)
    assert twin_logits(wide, wide.flip(0).contiguous(), out=wide) is wide and torch.allclose(wide, expected, atol=1e-6)


def test_a_teacher_below_the_baseline_gets_the_hard_label_twin_as_a_member(tmp_path, digits):
    """Born-again (Furlanello et al. 2018): with the teacher no better than the student's hard-label twin on
    val, a student is also distilled from the two together and the better on val kept; off, or with a
    fixed recipe, it is not tried."""
    from edgekd.artifacts import load_artifact
    from edgekd.cache import LogitCache
    from edgekd.distill import DistillConfig, distill, tries_twin
    from edgekd.models import create_model
    from edgekd.teachers import ModuleTeacher, load_teacher
    from edgekd.training import TrainConfig, accuracy_and_nll

    torch.manual_seed(0)   # an untrained cnn: a teacher far below any trained student
    weak = ModuleTeacher(create_model("cnn", digits.input_shape, digits.num_classes, options={"width": 4, "fc": 8}).eval(),
                         kind="module", classes=digits.classes, input_shape=digits.input_shape, fingerprint="untrained-cnn",
                         description="an untrained cnn")
    config = DistillConfig(student="mlp:hidden=16", train=TrainConfig(epochs=3), baseline=True, search_methods=(),
                           twin_teacher=True)
    result = distill(weak, digits, config, tmp_path / "s", cache=LogitCache(tmp_path / "c"))
    tried = result.student_search
    assert [(c["jitter"], c.get("twin", False)) for c in tried[:2]] == [(2, False), (0, False)] and tried[2]["twin"]
    before = max(tried[:2], key=lambda c: (c["val_accuracy"], -c["val_nll"]))   # the twin joins the recipe the search kept
    assert {k: tried[2][k] for k in ("method", "jitter", "views", "view_grid")} == {k: before[k] for k in ("method", "jitter", "views", "view_grid")}
    assert sum(c["chosen"] for c in tried) == 1
    assert max(tried, key=lambda c: (c["val_accuracy"], -c["val_nll"]))["chosen"]
    assert load_artifact(tmp_path / "s").manifest.metrics["student_search"] == list(tried)
    saved, _ = accuracy_and_nll(load_teacher(tmp_path / "s").logits(digits.x_test), digits.y_test)
    assert saved == pytest.approx(result.student_test_accuracy)   # the saved student is the one kept
    kept = next(c for c in tried if c["chosen"])
    assert kept["test_accuracy"] == pytest.approx(result.student_test_accuracy) and "test_accuracy" in tried[2]
    assert result.student_search_seconds > 0 and result.teacher_test_accuracy < result.baseline_test_accuracy
    off = distill(weak, digits, dataclasses.replace(config, twin_teacher=False), tmp_path / "o",   # the default
                  cache=LogitCache(tmp_path / "c"))
    assert not any(c.get("twin") for c in off.student_search)
    assert not tries_twin(DistillConfig(train=TrainConfig(jitter=1), baseline=True, twin_teacher=True), digits.input_shape)
    assert not tries_twin(DistillConfig(twin_teacher=True), digits.input_shape)   # no baseline, no twin


def test_a_teacher_above_the_baseline_is_not_joined_by_the_twin(tmp_path, digits, tiny_teacher):
    from edgekd.cache import LogitCache
    from edgekd.distill import DistillConfig, distill
    from edgekd.teachers import load_teacher
    from edgekd.training import TrainConfig

    config = DistillConfig(student="mlp:hidden=16", train=TrainConfig(epochs=2), baseline=True, search_methods=(),
                           twin_teacher=True)
    result = distill(load_teacher(tiny_teacher), digits, config, tmp_path / "s", cache=LogitCache(tmp_path / "c"))
    assert result.teacher_test_accuracy > result.baseline_test_accuracy
    assert [c.get("twin", False) for c in result.student_search] == [False, False]


def test_on_consistent_views_the_twin_judges_the_image_the_student_sees(tmp_path, digits, tiny_teacher):
    """twin_batches on ±1 px views: each batch's targets are twin_logits of the teacher and the twin on the
    very shifted image in the batch."""
    from edgekd.cache import LogitCache
    from edgekd.distill import twin_batches, twin_logits
    from edgekd.models import create_model
    from edgekd.teachers import load_teacher

    teacher = load_teacher(tiny_teacher)
    torch.manual_seed(0)
    twin = create_model("mlp", digits.input_shape, digits.num_classes, options={"hidden": (16,)}).eval()
    idx = torch.arange(0, len(digits.y_train), 2)
    recipe = {"method": "kd-ls", "jitter": 1, "views": 0, "view_grid": True, "mixup": 0.0, "flip": False}
    make_batch = twin_batches(recipe, teacher, twin, digits, digits.x_train[idx], digits.y_train[idx], idx,
                              LogitCache(tmp_path / "c"), False, None)
    xb, yb, targets = make_batch(torch.arange(64), torch.Generator().manual_seed(1), 0)
    assert not torch.equal(xb, digits.x_train[idx][:64])   # shifted views, not the plain images
    with torch.no_grad():
        expected = twin_logits(teacher.logits(xb), twin(xb.float()))
    assert torch.allclose(targets, expected, atol=1e-4)


def test_the_library_refuses_an_out_that_is_its_teacher_before_any_work(tmp_path, digits, tiny_teacher, monkeypatch):
    """The CLI is not the only caller: distill(..., out=<the teacher>, overwrite=True) from a notebook
    replaced the teacher it was reading with its own student. Refused before a target is computed."""
    import shutil

    from edgekd import distill as stage
    from edgekd.distill import DistillConfig, distill
    from edgekd.outputs import OutputError
    from edgekd.teachers import load_teacher

    teacher = tmp_path / "teacher"
    shutil.copytree(tiny_teacher, teacher)
    before = sorted((p.name, p.read_bytes()) for p in teacher.iterdir())
    monkeypatch.setattr(stage, "_recipe_batches", lambda *a, **k: pytest.fail("work began before the refusal"))
    with pytest.raises(OutputError, match="teacher|input"):
        distill(load_teacher(teacher), digits, DistillConfig(student="mlp:hidden=16"), teacher, overwrite=True)
    assert sorted((p.name, p.read_bytes()) for p in teacher.iterdir()) == before


def test_a_resume_with_other_settings_is_refused_before_the_targets(tmp_path, digits, tiny_teacher, monkeypatch):
    """The run's fingerprint is compared before the teacher runs over the views (minutes on real data)."""
    from edgekd import distill as stage
    from edgekd.distill import DistillConfig, distill
    from edgekd.errors import EdgekdError
    from edgekd.teachers import load_teacher
    from edgekd.training import RunStore

    out = tmp_path / "s"
    store = RunStore(tmp_path / "s.partial", resume=False, rank=0, fingerprint={"another": "run"})
    store.save("student", "ckpt", {"w": torch.zeros(1)}, {"epoch": 1})   # an interrupted run's state
    monkeypatch.setattr(stage, "_recipe_batches", lambda *a, **k: pytest.fail("targets computed before the refusal"))
    with pytest.raises(EdgekdError, match="resume"):
        distill(load_teacher(tiny_teacher), digits, DistillConfig(student="mlp:hidden=16"), out, resume=True)


def test_view_logits_of_a_transfer_subset_run_the_teacher_on_it_alone(tmp_path, digits, tiny_teacher):
    """With --transfer-limit the teacher ran over every view of the whole train split (25 x N rows for a few
    hundred used); now over the subset, cached apart, the same numbers as the whole table's rows. Grid shifts
    are one row per view, not (views, N, 2)."""
    from edgekd.cache import LogitCache
    from edgekd.distill import grid_offsets, teacher_view_logits
    from edgekd.teachers import load_teacher

    teacher, cache = load_teacher(tiny_teacher), LogitCache(tmp_path / "c")
    whole, shifts = teacher_view_logits(teacher, digits, 0, 1, cache, grid=True)
    assert torch.equal(shifts, grid_offsets(1)) and whole.shape == (9, len(digits.y_train), 10)
    seen = []
    logits = teacher.logits
    teacher.logits = lambda x, **k: seen.append(len(x)) or logits(x, **k)
    rows = torch.arange(0, len(digits.y_train), 7)
    part, _ = teacher_view_logits(teacher, digits, 0, 1, cache, grid=True, rows=rows)
    assert sum(seen) <= 9 * (len(rows) + 64)   # the subset, and the cache's check of a few rows
    torch.testing.assert_close(part, whole[:, rows])
    assert cache.misses == 18   # the subset is cached under keys of its own


def test_at_alpha_0_no_soft_term_method_is_tried():
    """Every method trains the same student without a soft term: the search tried kd and kd-ls to the same score."""
    from edgekd.distill import DistillConfig, student_recipes

    assert [r["method"] for r in student_recipes(DistillConfig(alpha=0.0), (64,))] == [DistillConfig().method]
    assert len(student_recipes(DistillConfig(), (64,))) == 2


def test_alpha_zero_never_runs_the_teacher_on_the_transfer_set(tmp_path, digits, tiny_teacher, monkeypatch):
    """At alpha 0 there is no soft term: the teacher's targets (and the twin's) are not computed, and the
    student is the hard-label baseline trained again with the same seed and recipe."""
    from edgekd.cache import LogitCache
    from edgekd.distill import DistillConfig, distill
    from edgekd.teachers import load_teacher
    from edgekd.training import TrainConfig

    teacher = load_teacher(tiny_teacher)
    rows = []
    inner = teacher._logits
    monkeypatch.setattr(teacher, "_logits", lambda x: rows.append(len(x)) or inner(x))
    config = DistillConfig(student="mlp:hidden=16", alpha=0.0, train=TrainConfig(epochs=2), baseline=True,
                           twin_teacher=True)
    result = distill(teacher, digits, config, tmp_path / "s", cache=LogitCache(tmp_path / "c"))
    assert sum(rows) <= len(digits.y_val) + len(digits.y_test) + 1   # its own accuracy only (and one probe row)
    assert result.student_test_accuracy == pytest.approx(result.baseline_test_accuracy)
    assert not any(r.get("twin") for r in result.student_search)


def test_the_library_refuses_a_jitter_the_command_line_refuses(tmp_path, digits, tiny_teacher):
    """distill() and build_specialists() trained on blank inputs with a jitter as large as the image (only the
    commands checked it)."""
    from edgekd.config import DistillConfig, TrainConfig
    from edgekd.errors import ConfigError
    from edgekd.teachers import load_teacher
    from specialists.build import build_specialists
    from specialists.config import SpecialistConfig

    with pytest.raises(ConfigError, match="The 'jitter' parameter must be smaller than the images' side"):
        distill(load_teacher(tiny_teacher), digits, DistillConfig(train=TrainConfig(epochs=1, jitter=9)), tmp_path / "s")
    with pytest.raises(ConfigError, match="The 'jitter' parameter must be smaller than the images' side"):
        build_specialists(tiny_teacher, digits, SpecialistConfig(member=0, clusters=3, train=TrainConfig(epochs=1, jitter=8)),
                          tmp_path / "sp")
    assert list(tmp_path.iterdir()) == []


def test_stages_take_a_teacher_or_its_path_and_a_dataset_or_its_spec(tmp_path, tiny_student):
    """evaluate("runs/S", d) and distill(Path(...), "digits", ...) were AttributeErrors deep inside."""
    from edgekd.config import DistillConfig, TrainConfig
    from edgekd.errors import ConfigError
    from edgekd.evaluate import evaluate

    by_path = evaluate(str(tiny_student), "digits")
    assert by_path.n > 0 and 0 <= by_path.accuracy <= 1
    result = distill(Path(tiny_student), "digits", DistillConfig(student="mlp:hidden=8", recipe_search=False,
                                                                 train=TrainConfig(epochs=1)), tmp_path / "s")
    assert (tmp_path / "s" / "manifest.json").is_file() and result.student_test_accuracy > 0
    with pytest.raises(ConfigError, match="The 'model' parameter must be a Teacher .* Got int instead"):
        evaluate(3, "digits")


def test_two_classes_refuse_the_non_target_terms_before_training_and_warn_of_standardised_targets(tmp_path):
    """With 2 classes NCKD is 0 for every input (alpha 1 trained nothing) and z-scored logits are +-0.71."""
    from edgekd.config import DistillConfig, TrainConfig
    from edgekd.data import load_dataset
    from edgekd.errors import ConfigError, EdgekdWarning
    from edgekd.teacher_training import save_untrained

    data = load_dataset("synthetic:classes=2,groups=1,dim=8,seed=0")
    teacher = save_untrained(tmp_path / "t", "mlp:hidden=8", data)
    quick = dict(student="mlp:hidden=8", train=TrainConfig(epochs=1), recipe_search=False)
    for bad in (dict(method="nckd"), dict(method="dkd"), dict(search_methods=("nckd",), recipe_search=True)):
        with pytest.raises(ConfigError, match="needs at least 3 classes .* has 2"):
            distill(teacher, data, DistillConfig(**{**quick, **bad}), tmp_path / "s")
        assert not (tmp_path / "s").exists() and not (tmp_path / "s.partial").exists()
    distill(teacher, data, DistillConfig(**quick, method="nckd", alpha=0.0), tmp_path / "hard")   # no soft term: no check
    with pytest.warns(EdgekdWarning, match="2 classes: logit standardization .* --method kd keeps that"):
        distill(teacher, data, DistillConfig(**quick, method="kd-ls"), tmp_path / "ls")
