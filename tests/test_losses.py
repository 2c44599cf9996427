import pytest
import torch

from edgekd.losses import distillation_loss, soft_cross_entropy, soft_targets


def test_soft_targets_worked_example():
    q = soft_targets(torch.tensor([3.0, 1.5, -2.0]), 4.0)
    assert torch.allclose(q, torch.tensor([0.507, 0.348, 0.145]), atol=1e-3)
    q_s = soft_targets(torch.tensor([1.5, 1.0, 0.8]), 4.0)
    assert torch.allclose(q_s, torch.tensor([0.367, 0.324, 0.308]), atol=1e-3)


def test_soft_cross_entropy_worked_example():
    ce = soft_cross_entropy(torch.tensor([[1.5, 1.0, 0.8]]), torch.tensor([[3.0, 1.5, -2.0]]), 4.0)
    assert float(ce) == pytest.approx(1.071, abs=1e-3)


def test_kl_equals_soft_ce_minus_teacher_entropy():
    s, t = torch.tensor([[1.5, 1.0, 0.8]]), torch.tensor([[3.0, 1.5, -2.0]])
    q_t = soft_targets(t, 4.0)
    entropy = -(q_t * q_t.log()).sum()
    loss = distillation_loss(s, t, None, temperature=4.0, alpha=1.0)
    assert float(loss) == pytest.approx(16 * float(soft_cross_entropy(s, t, 4.0) - entropy), rel=1e-5)


def test_alpha_zero_is_cross_entropy_and_needs_no_teacher():
    s, y = torch.tensor([[1.5, 1.0, 0.8]]), torch.tensor([0])
    assert float(distillation_loss(s, None, y, temperature=4.0, alpha=0.0)) == pytest.approx(
        float(torch.nn.functional.cross_entropy(s, y)))


def test_alpha_one_needs_no_labels():
    s, t = torch.randn(4, 5), torch.randn(4, 5)
    assert torch.isfinite(distillation_loss(s, t, None, temperature=2.0, alpha=1.0))


def _soft_grad_norm(temperature, scale_t2=True):
    torch.manual_seed(0)
    t = torch.randn(64, 10)
    s = torch.randn(64, 10, requires_grad=True)
    loss = distillation_loss(s, t, None, temperature=temperature, alpha=1.0)
    if not scale_t2:
        loss = loss / temperature ** 2
    loss.backward()
    return float(s.grad.norm())


def test_t_squared_keeps_gradient_size_across_temperatures():
    # With T^2 the soft-target gradient is nearly T-independent at high T; without it, it shrinks as 1/T^2.
    with_t2 = _soft_grad_norm(10.0) / _soft_grad_norm(20.0)
    without = _soft_grad_norm(10.0, False) / _soft_grad_norm(20.0, False)
    assert with_t2 == pytest.approx(1.0, abs=0.1)
    assert without == pytest.approx(4.0, rel=0.1)


def test_decoupled_kd_decomposes_plain_kd():
    """Zhao et al. (CVPR 2022), eq. 5: KL(p^T || p^S) = TCKD + (1 - p^T_target) * NCKD, per sample."""
    from edgekd.losses import dkd_terms

    torch.manual_seed(0)
    s, t, y = torch.randn(8, 5), torch.randn(8, 5) * 3, torch.randint(0, 5, (8,))
    tckd, nckd = dkd_terms(s, t, y, 2.0)
    p_t = torch.softmax(t / 2, -1)
    kl = (p_t * (torch.log_softmax(t / 2, -1) - torch.log_softmax(s / 2, -1))).sum(-1)
    assert torch.allclose(kl, tckd + (1 - p_t.gather(1, y[:, None])[:, 0]) * nckd, atol=1e-5)
    assert (tckd >= -1e-6).all() and (nckd >= -1e-6).all()


def test_dkd_with_beta_one_minus_target_prob_is_kd_and_needs_labels():
    s, t = torch.tensor([[1.5, 1.0, 0.8]]), torch.tensor([[3.0, 1.5, -2.0]])
    y = torch.tensor([0])
    beta = 1 - float(torch.softmax(t / 4, -1)[0, 0])   # one sample: the weight that makes DKD plain KD
    kd = distillation_loss(s, t, y, temperature=4.0, alpha=1.0)
    dkd = distillation_loss(s, t, y, temperature=4.0, alpha=1.0, method="dkd", dkd_beta=beta)
    assert float(dkd) == pytest.approx(float(kd), rel=1e-5)
    from edgekd.errors import ConfigError

    with pytest.raises(ConfigError, match="needs hard labels"):
        distillation_loss(s, t, None, temperature=4.0, alpha=1.0, method="dkd")


def test_nckd_is_dkds_non_target_term_and_ignores_the_teachers_belief_in_the_label():
    """Zhao et al. (CVPR 2022): NCKD alone; the teacher's target logit (how sure it is of the label,
    right or wrong) does not enter, its ranking of the other classes does."""
    from edgekd.errors import ConfigError
    from edgekd.losses import dkd_terms

    torch.manual_seed(2)
    s, t, y = torch.randn(6, 5), torch.randn(6, 5) * 2, torch.randint(0, 5, (6,))
    loss = distillation_loss(s, t, y, temperature=2.0, alpha=1.0, method="nckd")
    assert float(loss) == pytest.approx(4.0 * float(dkd_terms(s, t, y, 2.0)[1].mean()), rel=1e-5)
    surer = t.scatter_add(1, y[:, None], torch.full((6, 1), 5.0))   # the teacher far surer of the label
    assert float(distillation_loss(s, surer, y, temperature=2.0, alpha=1.0, method="nckd")) == pytest.approx(float(loss), rel=1e-5)
    reranked = t.clone()
    reranked[:, :] = t.flip(-1)
    assert float(distillation_loss(s, reranked, y, temperature=2.0, alpha=1.0, method="nckd")) != pytest.approx(float(loss), rel=1e-3)
    with pytest.raises(ConfigError, match="needs hard labels"):
        distillation_loss(s, t, None, temperature=2.0, alpha=1.0, method="nckd")


def test_logit_standardization_ignores_the_teachers_offset_and_scale():
    """Sun et al. (CVPR 2024): z-scored logits make the soft term blind to a ∙ t + b (a > 0)."""
    torch.manual_seed(1)
    s, t = torch.randn(4, 6), torch.randn(4, 6)
    base = distillation_loss(s, t, None, temperature=2.0, alpha=1.0, method="kd-ls")
    moved = distillation_loss(s, 5 * t + 3, None, temperature=2.0, alpha=1.0, method="kd-ls")
    assert float(base) == pytest.approx(float(moved), rel=1e-4)
    assert float(distillation_loss(s, 5 * t, None, temperature=2.0, alpha=1.0)) != pytest.approx(
        float(distillation_loss(s, t, None, temperature=2.0, alpha=1.0)), rel=1e-2)   # plain KD is not


def test_standardize_is_the_z_score_and_bounded_on_a_row_without_spread():
    from edgekd.losses import standardize

    z = torch.tensor([[3.0, 1.5, -2.0]])   # mean 0.8333, unbiased std 2.5658
    assert torch.allclose(standardize(z), torch.tensor([[0.8444, 0.2598, -1.1043]]), atol=1e-4)
    flat = torch.zeros(2, 10, requires_grad=True)   # e.g. a student whose every unit is dead on an input
    target = torch.softmax(standardize(torch.randn(2, 10)) / 2, -1)
    (-(torch.log_softmax(standardize(flat) / 2, -1) * target).sum()).backward()
    assert torch.isfinite(flat.grad).all() and flat.grad.abs().max() < 1 / 1e-5 ** 0.5   # was about 4e5 with std + 1e-7


def test_unknown_method_is_refused():
    from edgekd.errors import ConfigError

    with pytest.raises(ConfigError, match="'method' parameter must be one of 'kd', 'kd-ls', 'dkd', 'nckd'"):
        distillation_loss(torch.zeros(1, 3), torch.zeros(1, 3), None, temperature=1.0, alpha=1.0, method="crd")


def test_corrected_teacher_swaps_only_the_wrong_rows_top_and_true_logits():
    """Knowledge adjustment (Wen et al. 2021): a wrong row's top logit and the label's trade places."""
    from edgekd.losses import corrected_teacher

    teacher = torch.tensor([[3.0, 1.0, 0.5, -1.0],    # right (label 0): unchanged
                            [0.2, 2.5, 1.0, -0.5]])   # wrong: top is 1, label 2
    fixed = corrected_teacher(teacher, torch.tensor([0, 2]))
    assert torch.equal(fixed[0], teacher[0])
    assert torch.equal(fixed[1], torch.tensor([0.2, 1.0, 2.5, -0.5]))
    assert torch.equal(teacher[1], torch.tensor([0.2, 2.5, 1.0, -0.5]))   # the input is not modified


def test_correcting_a_right_teacher_changes_nothing_and_a_wrong_one_lowers_the_loss_toward_the_label():
    torch.manual_seed(0)
    student, teacher = torch.randn(8, 5), torch.randn(8, 5)
    right = teacher.argmax(-1)
    kw = dict(temperature=2.0, alpha=0.5, method="kd-ls")
    assert float(distillation_loss(student, teacher, right, correct=True, **kw)) == pytest.approx(
        float(distillation_loss(student, teacher, right, **kw)))
    # a student that predicts the labels is pulled less by a corrected teacher than by the wrong one
    labels = (right + 1) % 5
    confident = 6 * torch.nn.functional.one_hot(labels, 5).float()
    assert float(distillation_loss(confident, teacher, labels, correct=True, **kw)) < float(
        distillation_loss(confident, teacher, labels, **kw))


def test_correcting_the_teacher_needs_labels():
    from edgekd.errors import ConfigError

    with pytest.raises(ConfigError, match="needs hard labels"):
        distillation_loss(torch.zeros(1, 3), torch.zeros(1, 3), None, temperature=1.0, alpha=1.0, correct=True)


def test_method_targets_are_what_each_soft_term_matches():
    """kd's targets sharpen with the teacher's scale; kd-ls's depend on T alone."""
    from edgekd.losses import method_targets, target_sharpness

    t = torch.tensor([[2.0, 0.5, -1.0, -1.5]])
    assert torch.allclose(method_targets(t, 2.0, "kd"), soft_targets(t, 2.0))
    assert torch.allclose(method_targets(t, 2.0, "dkd"), soft_targets(t, 2.0))
    y = torch.arange(len(t)) % t.shape[1]
    others = method_targets(t, 2.0, "nckd", y)   # the wrong classes alone: nothing on the label
    assert torch.allclose(others.sum(1), torch.ones(len(t))) and (others.gather(1, y[:, None]) == 0).all()
    assert target_sharpness(t, y, 2.0, "nckd")["p_true"] == 0.0
    assert torch.allclose(method_targets(10 * t, 2.0, "kd-ls"), method_targets(t, 2.0, "kd-ls"), atol=1e-6)
    assert method_targets(t, 1.0, "kd-ls").max() > method_targets(t, 2.0, "kd-ls").max()
    sharp = target_sharpness(t, t.argmax(1), 2.0, "kd")   # the top class is the label: p_true is p_max
    assert sharp["p_max"] == pytest.approx(float(soft_targets(t, 2.0).max())) and sharp["p_true"] == pytest.approx(sharp["p_max"])
    with pytest.raises(Exception, match="'method' parameter must be one of"):
        method_targets(t, 1.0, "crd")


@pytest.mark.parametrize("method", ["kd", "kd-ls", "dkd", "nckd"])
def test_every_soft_term_sends_finite_gradients_to_a_teacher_trained_alongside(method):
    """dkd and nckd computed (-inf) - (-inf) on the label's column: NaN gradients for a teacher that learns too."""
    torch.manual_seed(3)
    s, t = torch.randn(6, 5, requires_grad=True), torch.randn(6, 5, requires_grad=True)
    distillation_loss(s, t, torch.randint(0, 5, (6,)), temperature=2.0, alpha=1.0, method=method).backward()
    assert torch.isfinite(s.grad).all() and torch.isfinite(t.grad).all() and t.grad.abs().sum() > 0
