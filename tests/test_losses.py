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
