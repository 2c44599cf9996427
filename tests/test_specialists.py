"""Specialists (paper section 5): clustering, the dustbin correction, the KL combination solver, the
build stage through the CLI, and the specialist ensemble as a teacher."""

from __future__ import annotations

import json
import math
import re
import shutil
from dataclasses import replace

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from edgekd.artifacts import load_artifact
from edgekd.cli import cli
from specialists.clustering import (auto_max_k, choose_k, class_covariance, cluster_covariance, covariance_png,
                                    find_clusters, kmeans_labels, labels_to_clusters, logit_covariance)
from specialists.combine import (active_specialists, combine, expand_specialist, gated_combine, kl_objective,
                                 membership_matrix, solve_kl)
from specialists.training import dustbin_bias, label_map, mixture_sizes, specialist_model

BLOCKS = [(0, 1, 2), (3, 4), (5, 6, 7, 8)]


# --- clustering --------------------------------------------------------------------------------

def test_kmeans_recovers_blocks_of_a_block_covariance():
    rng = np.random.default_rng(0)
    cov = np.full((9, 9), -0.01)
    for block in BLOCKS:
        cov[np.ix_(block, block)] = 0.05
    cov[np.diag_indices(9)] = 0.12
    cov += rng.normal(0, 0.003, cov.shape)
    cov = (cov + cov.T) / 2
    assert labels_to_clusters(kmeans_labels(cov, 3, seed=0)) == BLOCKS
    best, scores = choose_k(cov, seed=0)
    assert best == 3 and set(scores) == set(range(2, 9))


def test_find_clusters_recovers_confusable_groups_from_logits():
    """Synthetic generalist: confident on the true class, confuses it with its own block only."""
    gen = torch.Generator().manual_seed(0)
    y = torch.randint(0, 9, (3000,), generator=gen)
    logits = torch.randn(3000, 9, generator=gen) * 0.3
    for block in BLOCKS:
        rows = torch.isin(y, torch.tensor(block))
        confused = torch.tensor(block)[torch.randint(0, len(block), (int(rows.sum()),), generator=gen)]
        logits[rows, confused] += 4.0
    logits[torch.arange(3000), y] += 8.0
    found = find_clusters(logits, None, temperature=4.0)
    assert sorted(found.clusters) == BLOCKS and found.k == (3,)
    assert found.specialist_clusters == tuple(sorted(BLOCKS))
    assert np.allclose(found.covariance, class_covariance(torch.softmax(logits.double() / 4, 1).numpy()))
    # the reason for the default temperature: at T=1 this confident generalist's clusters are degenerate
    assert sorted(find_clusters(logits, 3, temperature=1.0).clusters) != BLOCKS


def test_merged_clusterings_give_overlapping_clusters():
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(500, 6, generator=gen) * 3
    found = find_clusters(logits, (2, 3), temperature=4.0)
    covered = [c for s in found.clusters for c in s]
    assert len(found.clusters) == len(set(found.clusters)) and sorted(set(covered)) == list(range(6))


def test_auto_range_grows_with_the_classes():
    assert [auto_max_k(c) for c in (3, 9, 10, 16, 100, 1000, 10_000)] == [2, 8, 8, 8, 20, 64, 200]


def test_chunked_covariance_is_the_covariance():
    logits = torch.randn(1000, 12, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 3
    expected = class_covariance(torch.softmax(logits / 4, 1).numpy())
    assert np.allclose(logit_covariance(logits, 4.0, chunk=64), expected, atol=1e-15, rtol=1e-10)


def _block_logits(groups: np.ndarray, per_class=30, seed=0):
    """A generalist that confuses each class with the classes of its group only."""
    gen = torch.Generator().manual_seed(seed)
    c = len(groups)
    y = torch.arange(c).repeat(per_class)
    logits = torch.randn(len(y), c, generator=gen) * 0.3
    members = [torch.tensor(np.flatnonzero(groups == g)) for g in range(groups.max() + 1)]
    for i, label in enumerate(y.tolist()):
        block = members[groups[label]]
        logits[i, block] += 10.0 + torch.randn(len(block), generator=gen)
    logits[torch.arange(len(y)), y] += 3.0
    return logits


def test_auto_finds_tens_of_clusters_with_a_zooming_search():
    from sklearn.metrics import adjusted_rand_score

    groups = np.random.default_rng(0).permutation(np.arange(300) % 30)     # 30 groups of 10 classes
    found = find_clusters(_block_logits(groups), None, temperature=4.0)
    assert found.k == (30,) and auto_max_k(300) == 35
    assert len(found.silhouette) < 34                                       # not every K in 2..35
    labels = np.empty(300, int)
    for i, cluster in enumerate(found.clusters):
        labels[list(cluster)] = i
    assert adjusted_rand_score(groups, labels) == 1.0


def test_large_heatmap_is_drawn_by_cluster():
    cov = np.eye(100)
    clusters = [tuple(range(i, i + 10)) for i in range(0, 100, 10)]
    assert np.allclose(cluster_covariance(cov, clusters), np.eye(10) / 10)
    png = covariance_png(cov, clusters, [str(i) for i in range(100)])
    width, height = int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")
    assert png[:4] == b"\x89PNG" and width < 1000 and height < 1000      # 100 classes by class would be 5,000 px


# --- dustbin correction --------------------------------------------------------------------------

def test_dustbin_bias_worked_example():
    # S holds 30% of the data and was trained half and half: b = log(0.7/0.5) - log(0.3/0.5) = log(7/3)
    assert dustbin_bias(0.3, 0.5) == pytest.approx(math.log(7 / 3), abs=1e-12)
    assert dustbin_bias(0.3, 0.5) == pytest.approx(0.8473, abs=1e-4)
    assert dustbin_bias(0.5, 0.5) == 0.0
    # Bayes check: a specialist unsure under the training prior (p_dust = 0.5) is 70% dustbin under the true one
    logits = torch.tensor([0.0, 0.0 + dustbin_bias(0.3, 0.5)])
    assert torch.softmax(logits, 0)[1].item() == pytest.approx(0.7, abs=1e-6)
    # S oversampled (S = 60% of data, trained at 50%): the dustbin logit goes down
    assert dustbin_bias(0.6, 0.5) == pytest.approx(math.log(0.4 / 0.6), abs=1e-12)


def test_mixture_sizes_and_label_map():
    assert mixture_sizes(300, 700, 0.5) == (300, 300)
    assert mixture_sizes(600, 400, 0.5) == (400, 400)        # rest too small: S subsampled
    assert mixture_sizes(200, 800, 0.25) == (200, 600)
    assert label_map((2, 5), 6).tolist() == [2, 2, 0, 2, 2, 1]


def test_specialist_starts_from_the_generalist(digits):
    from edgekd.models import create_model, parse_arch

    arch, options = parse_arch("cnn:width=4,fc=16")
    torch.manual_seed(0)
    generalist = create_model(arch, digits.input_shape, 10, mean=digits.mean, std=digits.std, options=options).eval()
    special = specialist_model(generalist, arch, options, digits.input_shape, digits.mean, digits.std, (1, 7)).eval()
    with torch.no_grad():
        zg, zs = generalist(digits.x_val[:20]), special(digits.x_val[:20])
    assert zs.shape == (20, 3)
    assert torch.allclose(zs[:, :2], zg[:, [1, 7]], atol=1e-5)



@pytest.mark.parametrize("arch, why", [("py:my_arch.tiny_net:head=false", "16 -> 4, without a bias"),
                                       # the excitation's Linear is not the head, whatever its size
                                       ("py:my_arch.conv_head_net:width=8", "output is not an nn.Linear's"),
                                       ("py:my_arch.conv_head_net:width=4", "output is not an nn.Linear's")])
def test_an_architecture_without_a_linear_head_with_a_bias_is_refused(arch, why, digits, monkeypatch):
    from pathlib import Path

    from edgekd.errors import EdgekdError
    from edgekd.models import create_model, parse_arch
    from specialists.training import specialist_model

    monkeypatch.syspath_prepend(str(Path(__file__).parent / "fixtures"))
    name, options = parse_arch(arch)
    generalist = create_model(arch, digits.input_shape, digits.num_classes, mean=digits.mean, std=digits.std)
    with pytest.raises(EdgekdError, match=f"{why}.*must end in an nn.Linear with a bias"):
        specialist_model(generalist, name, options, digits.input_shape, digits.mean, digits.std, (0, 1, 2))


def test_a_specialist_trains_with_mixup(digits, monkeypatch):
    """``--mixup`` reaches the specialists too: their mixture batches are blended like any other (every
    training batch goes through ``mix_inputs``; none does without mixup)."""
    import edgekd.training
    from edgekd.models import create_model, parse_arch
    from edgekd.training import TrainConfig
    from specialists.training import train_specialist

    blended, real_mix = [], edgekd.training.mix_inputs
    monkeypatch.setattr(edgekd.training, "mix_inputs", lambda x, *a: blended.append(len(x)) or real_mix(x, *a))
    arch, options = parse_arch("mlp:hidden=16")
    torch.manual_seed(0)
    generalist = create_model(arch, digits.input_shape, 10, mean=digits.mean, std=digits.std, options=options).eval()
    plain = train_specialist(generalist, arch, options, digits, (1, 7), train=TrainConfig(epochs=2))
    assert blended == [] and plain.epochs_run == 2
    fitted = train_specialist(generalist, arch, options, digits, (1, 7), train=TrainConfig(epochs=2, mixup=0.3))
    assert fitted.epochs_run == 2 and len(fitted.history) == 2 and 0 < fitted.val_accuracy <= 1
    assert len(blended) >= 2 and all(n > 1 for n in blended)   # at least one batch an epoch, each a real batch

def test_the_dustbin_correction_is_added_to_the_saved_weights_once(digits, monkeypatch):
    """Only the formula and the recorded value were tested: the saved state could lack the correction unnoticed.
    The dustbin's bias is the trained one plus b, every other tensor the trained one."""
    import specialists.training as training
    from edgekd.models import create_model, parse_arch
    from edgekd.training import TrainConfig

    trained, real_fit = [], training.fit
    monkeypatch.setattr(training, "fit", lambda *a, **k: trained.append(real_fit(*a, **k)) or trained[-1])
    arch, options = parse_arch("mlp:hidden=16")
    torch.manual_seed(0)
    generalist = create_model(arch, digits.input_shape, 10, mean=digits.mean, std=digits.std, options=options).eval()
    fitted = training.train_specialist(generalist, arch, options, digits, (1, 7), train=TrainConfig(epochs=1))
    before = trained[0].state
    head = [k for k in fitted.state if k.endswith(".bias")][-1]
    assert fitted.dustbin_bias == pytest.approx(dustbin_bias(fitted.true_share, fitted.training_share)) != 0
    assert fitted.state[head][-1].item() == pytest.approx(before[head][-1].item() + fitted.dustbin_bias, abs=1e-6)
    assert torch.equal(fitted.state[head][:-1], before[head][:-1].cpu())
    assert all(torch.equal(v, before[k].cpu()) for k, v in fitted.state.items() if k != head)


# --- the solver -----------------------------------------------------------------------------------

def _random_case(batch=64, classes=8, clusters=((0, 1, 2), (2, 3, 4), (5, 6)), scale=3.0, seed=0):
    gen = torch.Generator().manual_seed(seed)
    zg = torch.randn(batch, classes, generator=gen, dtype=torch.float64) * scale
    zs = [torch.randn(batch, len(s) + 1, generator=gen, dtype=torch.float64) * scale for s in clusters]
    return zg, zs, [tuple(s) for s in clusters]


def _pieces(zg, zs, clusters):
    c = zg.shape[1]
    parts = [expand_specialist(torch.log_softmax(z, -1), s, c) for z, s in zip(zs, clusters)]
    return (torch.log_softmax(zg, -1), torch.stack([p[0] for p in parts], 1), torch.stack([p[1] for p in parts], 1),
            membership_matrix(clusters, c))


def test_no_active_specialist_gives_the_generalist_exactly():
    zg, zs, clusters = _random_case()
    zg[:, 7] += 20.0                     # class 7 is in no cluster: top-1 gating activates nobody
    result = combine(zg, zs, clusters, top_n=1)
    assert not result.active.any()
    assert torch.equal(result.log_q, torch.log_softmax(zg, -1))


def test_one_active_specialist_matches_the_closed_form():
    zg, zs, clusters = _random_case(clusters=((1, 3, 4),))
    result = combine(zg, zs, clusters, top_n=8)
    p_g, p_m = torch.softmax(zg, -1), torch.softmax(zs[0], -1)
    s, out = [1, 3, 4], [0, 2, 5, 6, 7]
    expected = torch.empty_like(p_g)
    expected[:, s] = (p_g[:, s] + p_m[:, :3]) / 2
    outside = p_g[:, out].sum(1, keepdim=True)
    expected[:, out] = p_g[:, out] * (outside + p_m[:, 3:]) / (2 * outside)
    assert torch.allclose(result.log_q.exp(), expected, atol=1e-12)
    assert result.steps.max() == 1


def test_single_class_dustbins_give_the_arithmetic_mean():
    """The paper: when every model gives a probability for each class, the minimiser of
    sum KL(p_i || q) is the arithmetic mean. A specialist whose dustbin is one class is such a model."""
    zg, zs, clusters = _random_case(classes=5, clusters=((0, 1, 2, 3), (1, 2, 3, 4)))
    result = combine(zg, zs, clusters, top_n=5)
    full1 = torch.softmax(zs[0], -1)                               # classes 0,1,2,3 then dustbin = class 4
    full2 = torch.cat([torch.softmax(zs[1], -1)[:, 4:], torch.softmax(zs[1], -1)[:, :4]], 1)   # dustbin = class 0
    expected = (torch.softmax(zg, -1) + full1 + full2) / 3
    assert torch.allclose(result.log_q.exp(), expected, atol=1e-9)


def test_overlapping_specialists_objective_decreases_and_gradient_vanishes():
    zg, zs, clusters = _random_case()
    result = combine(zg, zs, clusters, top_n=8, trace=True)
    assert result.active.all() and result.steps.max() > 1
    trace = torch.stack(result.objective_trace)
    assert (trace[1:] <= trace[:-1] + 1e-12).all()
    # the stopping rule: no log-probability would move by 1e-6, so |df/dz_k| < (1 + |A|) q_k 1e-6 <= 4e-6
    assert result.change_max.max() < 1e-6 and result.grad_max.max() < 4e-6
    # gradient by autograd at the returned q, w.r.t. the logits
    log_pg, log_t, log_pd, membership = _pieces(zg, zs, clusters)
    z = result.log_q.clone().requires_grad_(True)
    kl_objective(torch.log_softmax(z, -1), log_pg, log_t, log_pd, membership, result.active).sum().backward()
    assert z.grad.abs().max() < 4e-6
    # and it is the minimum: a general-purpose optimiser does not find lower
    from scipy.optimize import minimize

    i = 0
    def f(v):
        zt = torch.tensor(v, dtype=torch.float64, requires_grad=True)
        val = kl_objective(torch.log_softmax(zt, -1)[None], log_pg[i:i + 1], log_t[i:i + 1], log_pd[i:i + 1],
                           membership, result.active[i:i + 1]).sum()
        val.backward()
        return val.item(), zt.grad.numpy()
    best = minimize(f, log_pg[i].numpy(), jac=True, method="BFGS", options={"gtol": 1e-10})
    ours = kl_objective(result.log_q[i:i + 1], log_pg[i:i + 1], log_t[i:i + 1], log_pd[i:i + 1], membership,
                        result.active[i:i + 1]).item()
    assert ours <= best.fun + 1e-9


def test_float32_module_moves_tiny_probabilities_like_the_solver():
    """A near-certain generalist (q ~ 1e-10 outside S) and a specialist sure it is not the dustbin:
    the small classes must still be scaled by (G + p_dust) / 2G ~ 1/2, in float32 too."""
    zg = torch.tensor([[-22.0, -25.0, -23.6, -29.5, -24.8, 0.0, -25.1, -13.9, -15.7, -21.3]])
    zs = [torch.tensor([[-17.0, -16.6, -25.1, -19.0, -18.6, 0.0]]), torch.tensor([[0.0, -17.0, -24.4, -20.1]])]
    clusters = [(0, 2, 3, 4, 6), (5, 7, 9)]
    eager = combine(zg.double(), [z.double() for z in zs], clusters, top_n=1)
    fixed32 = combine(zg, zs, clusters, top_n=1, fixed_steps=1)
    assert (eager.log_q[0, [0, 1, 8]] - torch.log_softmax(zg.double(), -1)[0, [0, 1, 8]]).abs().min() > 0.5
    assert torch.allclose(fixed32.log_q.double(), eager.log_q, atol=1e-4)


def test_fixed_steps_reproduce_the_eager_solver():
    zg, zs, clusters = _random_case(batch=16, scale=1.5)
    eager = combine(zg, zs, clusters, top_n=2)
    fixed = combine(zg, zs, clusters, top_n=2, fixed_steps=int(eager.steps.max()) + 3)
    assert torch.equal(eager.log_q, fixed.log_q)


def test_the_exportable_module_stops_where_the_eager_solver_does_at_its_tol():
    """The artifact's --tol is the module's too: with the eager solver's step count it gives the eager answer."""
    from specialists.combine import SpecialistEnsembleModule

    class Table(torch.nn.Module):   # input i -> row i of fixed logits
        def __init__(self, z):
            super().__init__()
            self.register_buffer("z", z)

        def forward(self, x):
            return self.z[x.long().flatten()]

    zg, zs, clusters = _random_case(batch=32, scale=1.5)
    eager = combine(zg, zs, clusters, top_n=2, tol=1e-2)
    module = SpecialistEnsembleModule(Table(zg), [Table(z) for z in zs], clusters, zg.shape[1], top_n=2,
                                      steps=int(eager.steps.max()), tol=1e-2).double()   # the eager solver's float64
    assert 1 < int(eager.steps.max()) < int(combine(zg, zs, clusters, top_n=2).steps.max())   # the tol matters here
    torch.testing.assert_close(module(torch.arange(32)[:, None]), eager.log_q, atol=1e-12, rtol=0)


def test_solver_is_batched_and_stops_at_max_steps():
    zg, zs, clusters = _random_case(batch=8, scale=6.0)
    log_pg, log_t, log_pd, membership = _pieces(zg, zs, clusters)
    active = torch.ones((8, 3), dtype=torch.bool)
    capped = solve_kl(log_pg, log_t, log_pd, membership, active, max_steps=2)
    assert capped.steps.max() <= 2
    one = solve_kl(log_pg[3:4], log_t[3:4], log_pd[3:4], membership, active[3:4])
    full = solve_kl(log_pg, log_t, log_pd, membership, active)
    assert torch.allclose(one.log_q, full.log_q[3:4], atol=1e-12)


def test_float64_update_is_the_log_domain_update():
    from specialists.combine import NEG, _fixed_parts, _update, _update_fast

    for membership_per_input in (False, True):
        zg, zs, clusters = _random_case(batch=32, classes=10, clusters=((0, 1, 2), (2, 3, 4), (5, 6), (1, 6)), seed=5)
        log_pg, log_t, log_pd, membership = _pieces(zg, zs, clusters)
        active = torch.rand(32, 4, generator=torch.Generator().manual_seed(1)) < 0.6
        if membership_per_input:
            membership = membership.expand(32, -1, -1).clone()
        log_q = torch.log_softmax(torch.randn(32, 10, dtype=torch.float64) * 4, -1)
        slow = _update(log_q, log_pg, log_t, log_pd, torch.where(membership, NEG, 0.0).double(), active)
        fast = _update_fast(log_q, *_fixed_parts(log_pg, log_t, log_pd, membership, active))
        for a, b in zip(slow, fast):
            assert torch.allclose(a, b, atol=1e-12, rtol=1e-10)


def test_inputs_whose_dustbin_mass_underflows_float64_are_solved_in_the_log_domain():
    """The generalist leaves e^-720 outside the specialist's classes, which says 99% "not mine": the fast
    update's q_dust underflowed to 0 and the outside classes got nothing (closed form: 0.2467 each)."""
    from specialists.combine import combine

    g = torch.tensor([[0.0, -1.0, -720.0, -720.0], [0.0, -1.0, -3.0, -3.0]], dtype=torch.float64)
    s = [torch.tensor([[0.0, 0.0, 5.0], [0.0, 0.0, 5.0]], dtype=torch.float64)]
    mixed = combine(g, s, [(0, 1)]).log_q.exp()
    assert torch.allclose(mixed[0, 2:], torch.full((2,), 0.2467, dtype=torch.float64), atol=1e-4)
    for row in (0, 1):   # each input's answer is its own, alone or in a batch with the other kind
        assert torch.allclose(mixed[row], combine(g[row:row + 1], [s[0][row:row + 1]], [(0, 1)]).log_q.exp()[0], atol=1e-12)
    assert torch.allclose(mixed.log(), combine(g.float(), [s[0].float()], [(0, 1)]).log_q.double(), atol=1e-4)


def test_gated_combination_is_the_dense_one_and_runs_only_active_specialists():
    clusters = ((0, 1, 2), (2, 3, 4), (5, 6), (1, 6), (7, 8, 9))
    zg, zs, clusters = _random_case(batch=40, classes=10, clusters=clusters, scale=2.0, seed=3)
    log_pg, log_t, log_pd, membership = _pieces(zg, zs, clusters)
    for top_n in (1, 3):
        active = active_specialists(log_pg, membership, top_n)
        dense = solve_kl(log_pg, log_t, log_pd, membership, active)
        dense_q = torch.where(active.any(-1, keepdim=True), dense.log_q, log_pg)
        calls = []

        def run(m, rows):
            calls.append((m, sorted(rows.tolist())))
            return zs[m][rows]
        gated = gated_combine(zg, run, clusters, top_n=top_n)
        assert torch.allclose(gated.log_q, dense_q, atol=1e-12) and torch.equal(gated.active, active)
        assert torch.equal(gated.steps, dense.steps)
        assert sorted(calls) == sorted((m, torch.nonzero(active[:, m]).flatten().tolist())
                                       for m in range(len(clusters)) if active[:, m].any())
        assert len({m for m, _ in calls}) == len(calls)                    # each specialist once per batch


# --- the stage, through the CLI ----------------------------------------------------------------------

@pytest.fixture(scope="session")
def generalist(tmp_path_factory, digits):
    """One small CNN on digits: a single-model generalist."""
    from edgekd.teacher_training import TeacherConfig, train_teachers
    from edgekd.training import TrainConfig

    out = tmp_path_factory.mktemp("specialists") / "generalist"
    train_teachers(digits, TeacherConfig(arch="cnn:width=8,fc=32", ensemble=1, train=TrainConfig(epochs=3, lr=3e-3)), out)
    return out


@pytest.fixture(scope="session")
def spec_artifact(tmp_path_factory, generalist):
    out = tmp_path_factory.mktemp("specialists") / "spec"
    result = CliRunner().invoke(cli, ["specialists", "build", "--teacher", str(generalist), "--clusters", "3",
                                      "--epochs", "1", "--out", str(out), "--quiet"], catch_exceptions=False)
    assert result.exit_code == 0, result.output   # (a session fixture: capsys is function-scoped)
    assert "covered classes:" in result.output
    return out


def test_the_ensemble_records_the_normalisation_its_weights_carry(generalist, tmp_path, edgekd):
    """Built on a subset (other train statistics), it records the generalist's mean and std, which every
    member's weights hold and the exports copy into their metadata."""
    from safetensors.torch import load_file

    out = tmp_path / "spec"
    code, _, err = edgekd("specialists", "build", "--teacher", generalist, "--clusters", "2", "--epochs", "1",
                          "--train-limit", "300", "--out", out, "--quiet")
    assert code == 0, err
    recorded = json.loads((out / "manifest.json").read_text())["normalization"]
    assert recorded == json.loads((generalist / "manifest.json").read_text())["normalization"]
    weights = load_file(out / "specialist-0.safetensors")
    assert weights["normalize.mean"].flatten().tolist() == pytest.approx(recorded["mean"])


def test_combine_is_refused_for_a_specialist_ensemble(spec_artifact):
    """Its members are combined by the KL solve, so --combine would be silently ignored: refused instead."""
    from edgekd.errors import TeacherError
    from edgekd.teachers import load_teacher

    with pytest.raises(TeacherError, match="'specialist-ensemble' artifact, which combines its members by its own rule"):
        load_teacher(spec_artifact, combine="probs")
    assert load_teacher(spec_artifact).kind == "specialist-ensemble"


def test_build_writes_a_specialist_ensemble_artifact(spec_artifact, digits):
    from edgekd.artifacts import load_artifact

    artifact = load_artifact(spec_artifact)
    manifest = artifact.manifest
    assert artifact.kind == "specialist-ensemble"
    roles = [m.role for m in manifest.members]
    assert roles[0] == "generalist" and set(roles[1:]) == {"specialist"} and len(roles) >= 2
    for member in manifest.members[1:]:
        assert member.num_outputs == len(member.classes) + 1 and len(member.classes) > 1
        assert member.dustbin_bias == pytest.approx(dustbin_bias(member.true_share, member.training_share))
    assert manifest.solver["module_steps"] == 1 and manifest.solver["top_n"] == 1
    for name in ("report.md", "report.json", "clusters.json", "covariance.npy", "covariance.png"):
        assert name in manifest.files
    covariance = np.load(spec_artifact / "covariance.npy", allow_pickle=False)
    assert covariance.shape == (10, 10) and covariance.dtype == np.float32
    assert "covariance" not in json.loads((spec_artifact / "clusters.json").read_text())
    assert (spec_artifact / "covariance.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = json.loads((spec_artifact / "report.json").read_text())
    assert sum(row["n_test"] for row in report["test"]["by_coverage"]) == len(digits.y_test)
    assert "Table 4" in (spec_artifact / "report.md").read_text()


def test_specialist_ensemble_is_a_teacher(spec_artifact, digits):
    from edgekd.teachers import load_teacher

    teacher = load_teacher(spec_artifact)
    assert teacher.kind == "specialist-ensemble" and teacher.classes == digits.classes
    logits = teacher.logits(digits.x_test)
    assert torch.allclose(logits.exp().sum(1), torch.ones(len(logits)), atol=1e-5)   # log q
    report = json.loads((spec_artifact / "report.json").read_text())
    accuracy = float((logits.argmax(1) == digits.y_test).float().mean())
    assert accuracy == pytest.approx(report["test"]["ensemble"]["accuracy"], abs=1e-6)
    with torch.no_grad():
        assert torch.allclose(teacher.dense_logits(digits.x_test), logits, atol=1e-6)   # every specialist, (B, n, C)
    module = teacher.module()
    with torch.no_grad():
        assert torch.allclose(module(digits.x_test), logits, atol=1e-4)
        exported = torch.export.export(module.eval(), (digits.x_test[:4],))
        assert torch.allclose(exported.module()(digits.x_test[:4]), logits[:4], atol=1e-4)


def test_the_specialist_ensemble_quantizes_dynamically(spec_artifact, tmp_path, edgekd):
    """onnxruntime's symbolic shape inference cannot follow the ensemble's gather/scatter: pre-processing
    runs without it, and the int8 graph is gated on accuracy like any other (static int8 fails that gate:
    the solver's log-probabilities do not survive int8 activations)."""
    code, out, err = edgekd("export", spec_artifact, "--onnx", "--quantize", "dynamic", "--out", tmp_path / "s.onnx", "--json")
    assert code == 0, err
    summary = json.loads(out)
    assert summary["quantization"]["mode"] == "dynamic" and summary["quantization"]["symbolic_shape_inference"] is False
    v = summary["verification"]
    assert v["reference_test_accuracy"] - v["int8"]["test_accuracy"] <= 0.01   # the gate's default 1 point
    code, _, err = edgekd("export", spec_artifact, "--onnx", "--quantize", "int8", "--out", tmp_path / "s8.onnx")
    assert code == 2 and "accuracy points on the test split" in err and not (tmp_path / "s8.onnx").exists()


@pytest.mark.parametrize("edit, message", [
    (lambda m: m.pop("solver"), "no valid solver top_n, max_steps, module_steps, tol"),
    (lambda m: m["solver"].update(top_n=0), "no valid solver top_n "),
    (lambda m: m["solver"].update(module_steps="x"), "no valid solver module_steps "),
    (lambda m: m["members"][1].update(classes=[0, 4, 99]), "not distinct classes in \\[0, 9\\]"),
    (lambda m: m.pop("generalist"), "no valid generalist record"),
    (lambda m: m["generalist"].pop("fingerprint"), "no valid generalist record"),
])
def test_an_edited_specialist_manifest_is_one_clear_error(edit, message, spec_artifact, tmp_path, edgekd):
    """The manifest is not covered by a hash; what the solver and the gating read from it is checked, by
    evaluate and by regate (which indexed it and failed as an internal KeyError/TypeError)."""
    crafted = tmp_path / "crafted"
    shutil.copytree(spec_artifact, crafted)
    manifest = json.loads((crafted / "manifest.json").read_text())
    edit(manifest)
    (crafted / "manifest.json").write_text(json.dumps(manifest))
    for command in (("evaluate", crafted), ("specialists", "regate", crafted, "--out", tmp_path / "again")):
        code, _, err = edgekd(*command)
        assert code == 2 and len(err.strip().splitlines()) == 1 and re.search(message, err), err


def test_evaluate_and_distill_accept_the_specialist_ensemble(spec_artifact, tmp_path, edgekd):
    code, out_text, err = edgekd("evaluate", spec_artifact, "--json")
    assert code == 0, err
    assert json.loads(out_text)["model"].startswith("specialist-ensemble")
    out = tmp_path / "student"
    code, _, err = edgekd("distill", "--teacher", spec_artifact, "--student", "mlp:hidden=16", "--epochs", "1",
                          "--out", out, "--quiet")
    assert code == 0, err
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["teacher"]["description"].startswith("specialist-ensemble")


def test_regate_rescores_without_training(spec_artifact, tmp_path, edgekd):
    code, _, err = edgekd("specialists", "regate", spec_artifact, "--out", tmp_path / "same")
    assert code == 0, err
    before = json.loads((spec_artifact / "report.json").read_text())["test"]
    after = json.loads((tmp_path / "same" / "report.json").read_text())["test"]
    assert after["ensemble"]["accuracy"] == before["ensemble"]["accuracy"]
    code, _, err = edgekd("specialists", "regate", spec_artifact, "--top-n", "2", "--out", tmp_path / "top2")
    assert code == 0, err
    manifest = json.loads((tmp_path / "top2" / "manifest.json").read_text())
    assert manifest["solver"]["top_n"] == 2 and manifest["kind"] == "specialist-ensemble"
    assert json.loads((tmp_path / "top2" / "report.json").read_text())["test"]["active"]["mean_active"] >= \
        before["active"]["mean_active"]
    code, _, err = edgekd("specialists", "regate", spec_artifact, "--out", spec_artifact)
    assert code == 2 and "--overwrite" in err


def test_a_cluster_without_test_examples_is_printed_as_unmeasured(spec_artifact, capsys):
    """A cluster whose classes have no test examples has no accuracy (None): '-', not a crash after the artifact is written."""
    from types import SimpleNamespace

    from edgekd.commands.specialists import _echo_result

    result = SimpleNamespace(path=spec_artifact, k=(2,), silhouette=False, seconds=1.0, report_md="report.md",
                             per_cluster=[{"specialist": True, "class_names": ["0", "4"], "generalist_accuracy": None,
                                           "ensemble_accuracy": None}],
                             covered_relative_change=None, covered_generalist_accuracy=None, covered_ensemble_accuracy=None,
                             generalist_test_accuracy=0.9, ensemble_test_accuracy=0.91, solver={})
    _echo_result(result)
    out = capsys.readouterr().out
    assert "{0, 4}: test accuracy - -> - with its specialist" in out and "covered classes: - -> -;" in out


def test_regate_reads_an_artifact_from_before_covariance_npy(spec_artifact, tmp_path, edgekd):
    """Artifacts written before covariance.npy kept the covariance as a list in clusters.json."""
    import shutil

    from edgekd.artifacts import sha256_file

    def rewrite(clusters):   # as an older edgekd wrote it: no covariance.npy, the manifest's hashes to match
        (old / "clusters.json").write_text(json.dumps(clusters))
        manifest = json.loads((old / "manifest.json").read_text())
        manifest["files"].pop("covariance.npy", None)
        manifest["files"]["clusters.json"] = sha256_file(old / "clusters.json")
        (old / "manifest.json").write_text(json.dumps(manifest))

    old = tmp_path / "old"
    shutil.copytree(spec_artifact, old)
    clusters = json.loads((old / "clusters.json").read_text())
    clusters["covariance"] = np.load(old / "covariance.npy").astype(float).tolist()
    (old / "covariance.npy").unlink()
    rewrite(clusters)
    code, _, err = edgekd("specialists", "regate", old, "--out", tmp_path / "again")
    assert code == 0, err
    assert np.allclose(np.load(tmp_path / "again" / "covariance.npy"), clusters["covariance"], atol=1e-7)
    rewrite({k: v for k, v in clusters.items() if k != "covariance"})
    code, _, err = edgekd("specialists", "regate", old, "--out", tmp_path / "refused")
    assert code == 2 and "neither covariance.npy nor a covariance" in err


@pytest.mark.parametrize("case", ["k_too_large", "ensemble", "onnx", "k_equals_classes"])
def test_bad_inputs_exit_2_with_one_line(case, generalist, tiny_teacher, tmp_path, edgekd):
    teacher, extra = str(generalist), []
    if case == "k_too_large":
        extra = ["--clusters", "11"]
    elif case == "ensemble":
        teacher = str(tiny_teacher)
    elif case == "onnx":
        teacher = str(tmp_path / "model.onnx")
        (tmp_path / "model.onnx").write_bytes(b"not really onnx")
    else:
        extra = ["--clusters", "10"]
    code, _, err = edgekd("specialists", "build", "--teacher", teacher, *extra, "--epochs", "1",
                          "--out", tmp_path / "out", "--quiet")
    assert code == 2
    assert err.startswith("error: ") and err.strip().count("\n") == 0
    expected = {"k_too_large": "[2, 9]", "ensemble": "--member", "onnx": "ONNX", "k_equals_classes": "fewer than the 10 classes"}[case]
    assert expected in err
    assert not (tmp_path / "out.partial").exists() and not (tmp_path / "out").exists()


def test_flat_data_of_the_generalists_size_is_read_as_its_images(generalist, tmp_path, edgekd, digits):
    # a state_dict size mismatch, an internal error, before Dataset.shaped
    x = np.concatenate([digits.x_train, digits.x_val, digits.x_test]).reshape(-1, 64)
    np.savez(tmp_path / "flat.npz", x=x, y=np.concatenate([digits.y_train, digits.y_val, digits.y_test]))
    code, stdout, err = edgekd("specialists", "build", "--teacher", generalist, "--data", f"npz:{tmp_path / 'flat.npz'}",
                               "--clusters", "2", "--epochs", "1", "--out", tmp_path / "spec", "--quiet")
    assert code == 0, err
    assert load_artifact(tmp_path / "spec").input_shape == (1, 8, 8)
    code, stdout, err = edgekd("specialists", "regate", tmp_path / "spec", "--data", f"npz:{tmp_path / 'flat.npz'}",
                               "--top-n", "2", "--out", tmp_path / "regated", "--quiet")
    assert code == 0, err


def test_several_specialists_per_cluster_are_counted_as_coverage(generalist, tmp_path):
    """--per-cluster 2: two specialists per cluster with seeds 0 and 1 (different weights), every covered
    class counted twice in Table 4, and the artifact is a teacher like any other."""
    import specialists.build as build
    from edgekd.artifacts import load_artifact
    from edgekd.data import load_dataset
    from edgekd.errors import ConfigError
    from edgekd.teachers import load_teacher
    from edgekd.training import TrainConfig

    digits = load_dataset("digits", train_limit=500)
    config = build.SpecialistConfig(clusters=(3,), train=TrainConfig(epochs=1, lr=5e-4), per_cluster=2)
    result = build.build_specialists(generalist, digits, config, tmp_path / "spec")
    members = load_artifact(tmp_path / "spec").manifest.members[1:]
    assert len(members) == 2 * len(result.specialist_clusters)
    assert [m.classes for m in members[::2]] == [m.classes for m in members[1::2]] == [tuple(c) for c in result.specialist_clusters]
    artifact = load_artifact(tmp_path / "spec")
    first, second = (artifact.load_tensors(m.weights) for m in members[:2])
    assert any(not torch.equal(first[k], second[k]) for k in first)   # two opinions, not one twice
    covering = {row["specialists_covering"] for row in result.by_coverage}
    assert 2 in covering and covering <= {0, 2}   # every covered class has both opinions
    assert load_teacher(tmp_path / "spec").logits(digits.x_test[:8]).shape == (8, 10)
    with pytest.raises(ConfigError, match="'per_cluster' parameter"):
        build.SpecialistConfig(per_cluster=0)


def test_one_k_may_be_given_as_an_int():
    """SpecialistConfig(clusters=3) raised "'int' object is not iterable"; it means clusters=(3,)."""
    from edgekd.errors import ConfigError
    from specialists.config import SpecialistConfig

    assert SpecialistConfig(clusters=3).clusters == (3,)
    with pytest.raises(ConfigError, match="'clusters' parameter"):
        SpecialistConfig(clusters=1)


def test_regate_keep_drops_specialists_and_copy_zero_is_the_one_per_cluster_build(generalist, tmp_path, edgekd):
    """--keep: the first copy of each cluster from a 2-per-cluster build is the 1-per-cluster build
    (copy j trains with seed + j), so coverage can be varied per cluster with the clusters held fixed."""
    import specialists.build as build
    from edgekd.artifacts import load_artifact
    from edgekd.data import load_dataset
    from edgekd.errors import ConfigError
    from edgekd.teachers import load_teacher
    from edgekd.training import TrainConfig

    digits = load_dataset("digits", train_limit=500)
    config = build.SpecialistConfig(clusters=(3,), train=TrainConfig(epochs=1, lr=5e-4))
    one = build.build_specialists(generalist, digits, config, tmp_path / "one")
    build.build_specialists(generalist, digits, replace(config, per_cluster=2), tmp_path / "two")
    firsts = list(range(0, 2 * len(one.specialist_clusters), 2))
    kept = build.regate_specialists(tmp_path / "two", digits, tmp_path / "kept", keep=firsts)
    assert kept.ensemble_test_accuracy == one.ensemble_test_accuracy and kept.by_coverage == one.by_coverage
    assert len(load_artifact(tmp_path / "kept").manifest.members) == 1 + len(firsts)
    # one cluster with two opinions, the others with one: coverage 2 and 1 side by side in one ensemble
    mixed = build.regate_specialists(tmp_path / "two", digits, tmp_path / "mixed", keep=[0, 1, *firsts[1:]])
    assert {row["specialists_covering"] for row in mixed.by_coverage} - {0} == {1, 2}
    pruned = load_teacher(tmp_path / "mixed").logits(digits.x_test[:64])   # a pruned ensemble is a teacher like any other
    assert float((pruned.argmax(1) == digits.y_test[:64]).float().mean()) > 0.5
    for bad in ([], [0, 0], [99], [-1]):
        with pytest.raises(ConfigError, match="'keep' parameter must be distinct integers"):
            build.regate_specialists(tmp_path / "two", digits, tmp_path / "bad", keep=bad)
    assert not (tmp_path / "bad").exists()
    code, _, err = edgekd("specialists", "regate", tmp_path / "two", "--data", "digits", "--train-limit", "500",
                          "--keep", "0,x", "--out", tmp_path / "bad")
    assert code == 2 and "comma-separated specialist indices" in err and "Traceback" not in err
    code, out, err = edgekd("specialists", "regate", tmp_path / "two", "--data", "digits", "--train-limit", "500",
                          "--keep", ",".join(map(str, firsts[1:])), "--out", tmp_path / "dropped")
    assert code == 0, err
    assert "(its specialist was left out (--keep))" in out, out   # a dropped cluster of several classes
    assert "no specialist (left out by --keep)" in (tmp_path / "dropped" / "report.md").read_text()   # and so says its report
    code, _, err = edgekd("specialists", "regate", tmp_path / "two", "--data", "digits", "--train-limit", "500",
                          "--keep", "99", "--out", tmp_path / "bad")
    assert code == 2 and "'keep' parameter" in err and len(err.strip().splitlines()) == 1
    with pytest.raises(ConfigError, match=r"'top_n' parameter must be in \[1, 10\]"):   # 11 of 10 classes
        build.regate_specialists(tmp_path / "two", digits, tmp_path / "bad", top_n=11)
    assert not (tmp_path / "bad").exists()


def test_resume_reuses_finished_specialists(generalist, tmp_path, monkeypatch):
    import specialists.build as build
    from edgekd.data import load_dataset
    from edgekd.training import TrainConfig

    digits = load_dataset("digits", train_limit=500)

    config = build.SpecialistConfig(clusters=(3,), train=TrainConfig(epochs=1, lr=5e-4))
    real, calls = build.train_specialist, []

    def failing_second(*args, **kwargs):
        calls.append(kwargs["name"])
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(build, "train_specialist", failing_second)
    with pytest.raises(KeyboardInterrupt):
        build.build_specialists(generalist, digits, config, tmp_path / "spec")
    assert (tmp_path / "spec.partial" / "specialist-0.done.json").is_file()
    from edgekd.training import RunStore

    loads, real_load = [], RunStore.load
    def spy(self, name, kind):
        found = real_load(self, name, kind)
        loads.append((name, kind, found is not None))
        return found
    monkeypatch.setattr(RunStore, "load", spy)
    monkeypatch.setattr(build, "train_specialist", real)
    # a resume with other settings is refused before the generalist's pass over the train split and the clustering
    real_logits = build.teacher_logits
    monkeypatch.setattr(build, "teacher_logits", lambda *a, **k: pytest.fail("logits computed before the check"))
    from edgekd.errors import ResumeMismatch

    with pytest.raises(ResumeMismatch, match="'train.lr' was 0.0005, now 0.001\\)"):
        build.build_specialists(generalist, digits, replace(config, train=TrainConfig(epochs=1, lr=1e-3)),
                                tmp_path / "spec", resume=True)
    monkeypatch.setattr(build, "teacher_logits", real_logits)
    # the solver's settings combine the trained specialists afterwards (regate changes them): not bound to the run
    result = build.build_specialists(generalist, digits, replace(config, top_n=2, max_steps=50), tmp_path / "spec",
                                     resume=True)
    assert result.path.is_dir() and not (tmp_path / "spec.partial").exists()
    assert ("specialist-0", "done", True) in loads          # answered from the store, not retrained
    assert ("specialist-1", "done", False) in loads


def test_pipeline_hook_on_an_ensemble_teacher(tiny_teacher, tmp_path):
    from edgekd.artifacts import load_artifact
    from edgekd.pipeline import build_for_pipeline

    from edgekd.data import load_dataset

    result = build_for_pipeline(tiny_teacher, load_dataset("digits", train_limit=500), tmp_path / "spec", quick=True)
    artifact = load_artifact(result.path)
    assert artifact.kind == "specialist-ensemble" and artifact.manifest.generalist["member"] == 0
    assert 0 < result.ensemble_test_accuracy <= 1


def test_cluster_command_prints_class_names(generalist, edgekd):
    code, out, err = edgekd("specialists", "cluster", "--teacher", generalist, "--clusters", "auto")
    assert code == 0, err
    assert "silhouette" in out and "{" in out


@pytest.mark.slow
def test_benchmark_smoke(generalist, tmp_path, capsys):
    from benchmarks.specialists_fmnist import main

    out = tmp_path / "spec_smoke"
    assert main(["--smoke", "--teacher", str(generalist), "--out", str(out)]) == 0
    text = out.with_suffix(".md").read_text()
    assert text.startswith("# Specialists on `digits`")
    assert text.splitlines()[2] == f"- command: `python -m benchmarks.specialists_fmnist --smoke --teacher {generalist} --out {out}`"
    record = json.loads(out.with_suffix(".json").read_text())
    assert record["generalist_training"]["seconds"] > 0
    assert [s["teacher"] for s in record["students"]] == ["specialist ensemble", "generalist alone"]
    assert out.with_suffix(".png").read_bytes()[:4] == b"\x89PNG"


    # a rerun reuses the specialists when only the combination differs, and retrains them otherwise
    from dataclasses import replace

    from benchmarks.specialists_fmnist import _reusable, parse_args, specialist_config
    from edgekd.data import load_dataset
    from specialists.build import open_generalist

    args = parse_args(["--smoke", "--teacher", str(generalist)])
    config, spec_dir = specialist_config(args), out.parent / (out.name + "-work") / "specialists"
    reuse = lambda c: _reusable(spec_dir, c, open_generalist(str(generalist), None), load_dataset("digits"))  # noqa: E731
    assert reuse(config) and reuse(replace(config, top_n=2))
    assert not reuse(replace(config, train=replace(config.train, epochs=2)))
    assert not reuse(replace(config, train=replace(config.train, mixup=0.5)))
    assert not _reusable(out.parent, config, open_generalist(str(generalist), None), load_dataset("digits"))


@pytest.mark.slow
def test_scale_benchmark_quick(tmp_path):
    from benchmarks.specialists_scale import main

    out = tmp_path / "scale"
    assert main(["--quick", "--out", str(out)]) == 0
    record = json.loads(out.with_suffix(".json").read_text())
    assert record["clustering"][0]["spec"].startswith("synthetic:classes=40,groups=4")
    assert {"auto", "true_k", "old_auto"} <= set(record["clustering"][0])
    assert [s["teacher"] for s in record["students"]] == ["specialists", "generalist"]
    assert record["gating"]["max_abs_diff"] < 1e-4 and set(record["aims"]) >= {"overall_gain_at_least_4.4%"}
    text = out.with_suffix(".md").read_text()
    assert "- command: `python -m benchmarks.specialists_scale --quick" in text and "**Extrapolated**" in text


@pytest.mark.slow
def test_scale_benchmark_gain_parts_only(tmp_path):
    """--parts gain: clustering quality, the ensemble against the generalist and the students (with
    their hard-label baseline), none of the cost sweeps; the reading is worded from the figures."""
    from benchmarks.specialists_scale import _students_suffix, main, parse_args
    from edgekd.config import DistillConfig

    out = tmp_path / "gain"
    assert main(["--quick", "--parts", "gain", "--sizes", "40:4", "--seps", "8", "--out", str(out)]) == 0
    record = json.loads(out.with_suffix(".json").read_text())
    assert record["clustering_cost"] == [] and record["builds"] == [] and record["gating"] is None
    assert "old_auto" not in record["clustering"][0] and record["control"]["generalist_epochs"] == 1
    assert record["clustering"][0]["generalist"]["epochs_run"] == 5
    hard = [r["baseline_test_accuracy"] for r in record["students"][1]["runs"]]
    assert record["students"][1]["teacher"] == "generalist" and all(0 <= h <= 1 for h in hard)
    text = out.with_suffix(".md").read_text()
    assert "| none (hard labels) |" in text and "**Extrapolated**" not in text
    assert all(0 <= s["teacher_transfer_accuracy"] <= 1 for s in record["students"]) and "on the transfer set (train)" in text
    assert "Reading: the clustering aims" in text and "with the control trained 1 epochs" in text
    # controlled coverage: the same clusters with 1 and 2 specialists each
    assert [(o["per_cluster"], o["specialists"] / record["opinions"][0]["specialists"]) for o in record["opinions"]] == [(1, 1), (2, 2)]
    assert "gain_rises_with_specialists_per_cluster" in record["aims"] and "several specialists per cluster" in text
    # Table 4 inside one ensemble: the same clusters, each keeping 1 or 2 of its specialists, no training
    mixed = record["mixed"]
    assert [row["specialists_covering"] for row in mixed["rows"]] == [1, 2] and mixed["levels"] == [1, 2]
    assert sum(row["clusters"] for row in mixed["rows"]) == record["opinions"][0]["specialists"]
    assert mixed["specialists"] == sum(row["clusters"] * row["specialists_covering"] for row in mixed["rows"])
    assert "table4_rises_with_coverage_in_one_ensemble_same_clusters" in record["aims"]
    assert "Table 4 inside one ensemble" in text and "inside one ensemble with the clusters fixed" in text
    # what each teacher asks the students to match: edgekd's default soft term, beside uniform
    targets = record["targets"]
    assert set(targets["teachers"]) == {"specialists", "generalist"} and "What the students are asked to match" in text
    assert all(targets["uniform"] < r["p_max"] <= 1 and 0 < r["p_true"] <= r["p_max"] and r["method"] == DistillConfig.method
               for t in targets["teachers"].values() for r in t["recipes"])
    # the students' settings name their own part: a rerun without students reads everything else back
    assert main(["--quick", "--parts", "gain", "--sizes", "40:4", "--seps", "8", "--seeds", "0", "--out", str(out)]) == 0
    again = json.loads(out.with_suffix(".json").read_text())
    assert again["students"] == [] and len(again["parts_read_back"]) == len(record["parts_seconds"]) - 1   # all but the students
    assert "Not run (`--seeds 0`)." in out.with_suffix(".md").read_text()
    date_line = next(line for line in out.with_suffix(".md").read_text().splitlines() if line.startswith("- date: "))
    assert "parts were read back from earlier runs" in date_line   # not a bare "run time 0.0 min"
    # the students taught by the 2-per-cluster build: their own part and folders, the rest read back
    assert main(["--quick", "--parts", "gain", "--sizes", "40:4", "--seps", "8", "--teacher-per-cluster", "2", "--out", str(out)]) == 0
    taught = json.loads(out.with_suffix(".json").read_text())
    r2 = next(o for o in taught["opinions"] if o["per_cluster"] == 2)
    assert taught["students"][0]["runs"][0]["teacher_test_accuracy"] == pytest.approx(r2["ensemble_accuracy"], abs=1e-6)
    assert f"| specialists (K = {r2['k'][0]}, 2 per cluster: {r2['specialists']}) |" in out.with_suffix(".md").read_text()
    assert len(taught["parts_read_back"]) == len(record["parts_seconds"]) - 2   # the students and their teachers' targets
    with pytest.raises(SystemExit) as refused:
        main(["--quick", "--parts", "gain", "--teacher-per-cluster", "3", "--out", str(out)])
    assert refused.value.code == 2
    # students on a fresh, smaller draw (the same test set): their own part and folders, the teachers read back
    assert main(["--quick", "--parts", "gain", "--sizes", "40:4", "--seps", "8", "--student-train", "6", "--out", str(out)]) == 0
    fresh = json.loads(out.with_suffix(".json").read_text())
    assert len(fresh["parts_read_back"]) == len(record["parts_seconds"]) - 2   # the students and their teachers' targets
    suffix = _students_suffix(parse_args(["--quick", "--student-train", "6"]))   # -t6, and the recipe unless the unnamed one
    assert sorted(p.name for p in (tmp_path / "gain-work").glob("student-*-t6*")) == sorted(
        f"student-{t}-mlp-hidden-16-e1-s{seed}{suffix}" for t in ("specialists", "generalist") for seed in (0, 1))
    assert all(",train=6," in t["transfer_data"] for t in fresh["students"])
    assert "drawn afresh from the same classes" in out.with_suffix(".md").read_text()
    with pytest.raises(SystemExit) as refused:
        main(["--quick", "--parts", "gain", "--student-train", "1", "--out", str(out)])
    assert refused.value.code == 2
    # the students distilled otherwise (plain KD, T=4, alpha=0.9): their own part and folders
    assert main(["--quick", "--parts", "gain", "--sizes", "40:4", "--seps", "8", "--student-train", "6", "--student-method", "kd",
                 "--student-temperature", "4", "--student-alpha", "0.9", "--out", str(out)]) == 0
    kd = json.loads(out.with_suffix(".json").read_text())
    assert len(kd["parts_read_back"]) == len(record["parts_seconds"]) - 2   # the students and their teachers' targets
    assert len(list((tmp_path / "gain-work").glob("student-*-t6-kdT4a0.9"))) == 4
    assert "distilled with (plain KD, T=4, alpha=0.9)" in out.with_suffix(".md").read_text()
    assert [(r["method"], r["temperature"]) for r in kd["targets"]["teachers"]["generalist"]["recipes"]] == [
        (DistillConfig.method, DistillConfig.temperature), ("kd", 4.0)]   # default, theirs
    for bad in (["--student-method", "kl"], ["--student-alpha", "1.5"], ["--student-temperature", "0"]):
        with pytest.raises(SystemExit) as refused:
            main(["--quick", "--parts", "gain", *bad, "--out", str(out)])
        assert refused.value.code == 2


def test_scale_students_are_named_by_recipe_unless_it_made_the_unnamed_runs():
    """Parts and folders without a recipe in their name were made with UNNAMED_RECIPE; any other recipe, a
    changed default included, gets its own, so a rerun never reads back students distilled otherwise."""
    from benchmarks.specialists_scale import UNNAMED_RECIPE, _students_suffix, parse_args, student_recipe

    unnamed = ["--student-method", UNNAMED_RECIPE["method"], "--student-temperature", str(UNNAMED_RECIPE["temperature"]),
               "--student-alpha", str(UNNAMED_RECIPE["alpha"])]
    assert _students_suffix(parse_args(["--quick", *unnamed])) == ""
    assert _students_suffix(parse_args(["--quick", "--student-method", "kd", "--student-temperature", "4"])) == "-kdT4a0.5"
    default = student_recipe(parse_args(["--quick"]))
    assert _students_suffix(parse_args(["--quick"])) == ("" if default == UNNAMED_RECIPE else
                                                        f"-{default['method']}T{default['temperature']:g}a{default['alpha']:g}")


def test_scale_report_names_every_method():
    """The report words each of edgekd's soft terms by its paper's name, not by its flag."""
    from benchmarks.specialists_scale import _recipe_words

    from edgekd.config import METHODS

    words = {m: _recipe_words({"student_method": m, "student_temperature": 2.0, "student_alpha": 0.5}) for m in METHODS}
    assert words["nckd"] == "distilled with (NCKD, T=2, alpha=0.5)" and words["kd"].startswith("distilled with (plain KD,")
    assert all(f"({m}," not in w for m, w in words.items()), words


def test_the_scale_benchmark_reuses_a_work_folder_only_as_asked(generalist, digits):
    """Its folder names leave options out (--gen-epochs, --spec-lr): a folder made otherwise is refused."""
    from benchmarks.specialists_scale import _made_as_asked
    from edgekd.teacher_training import TeacherConfig
    from edgekd.training import TrainConfig

    asked = TeacherConfig(arch="cnn:width=8,fc=32", ensemble=1, train=TrainConfig(epochs=3, lr=3e-3))
    _made_as_asked(generalist, "teacher", asked, digits)
    with pytest.raises(SystemExit, match="was made with other settings or data than this run asks for"):
        _made_as_asked(generalist, "teacher", replace(asked, train=TrainConfig(epochs=4, lr=3e-3)), digits)


def test_the_combination_is_solved_in_chunks_with_the_same_result(spec_artifact, digits):
    """The whole test split at once held about ten float64 (rows, active, classes) temporaries (1.4 GB at 40k
    rows and 100 classes); chunks of rows give the same answer, each row being solved on its own."""
    from specialists.build import SpecialistConfig, _gated

    artifact = load_artifact(spec_artifact)
    models = [m.eval() for m in artifact.build_members()]
    clusters = [tuple(m.classes) for m in artifact.manifest.members[1:]]
    x = digits.x_test
    with torch.no_grad():
        gen = models[0](x.float())
    config = SpecialistConfig(top_n=2)
    whole, chunked = _gated(gen, models[1:], clusters, x, config), _gated(gen, models[1:], clusters, x, config, chunk=37)
    torch.testing.assert_close(chunked.log_q, whole.log_q)
    assert torch.equal(chunked.steps, whole.steps) and torch.equal(chunked.active, whole.active)


def test_a_cluster_without_a_specialist_says_why(capsys):
    """A cluster of every class got the tag 'one class'."""
    from edgekd.commands.specialists import _echo_clusters
    from specialists.clustering import Clustering

    _echo_clusters(Clustering(clusters=((0,), (0, 1, 2)), specialist_clusters=(), k=(2,)), ["a", "b", "c"])
    out = capsys.readouterr().out
    assert "{a}   (one class: no specialist)" in out and "{a, b, c}   (every class" in out


def test_the_generalist_is_read_once_and_shares_the_teachers_fingerprint(generalist, monkeypatch):
    """Its teacher is the artifact already read (its files hashed once), with the fingerprint every other
    command gives it, so the generalist's cached logits are shared."""
    import edgekd.teachers as teachers
    import specialists.build as build

    reads = []
    load = build.load_artifact
    for module in (build, teachers):
        monkeypatch.setattr(module, "load_artifact", lambda p: reads.append(p) or load(p))
    opened = build.open_generalist(str(generalist))
    assert len(reads) == 1 and opened.teacher.fingerprint == teachers.load_teacher(generalist).fingerprint


def test_regate_meets_the_split_its_ensemble_was_built_on_and_keeps_its_record(spec_artifact, tmp_path, edgekd):
    """Another --val-fraction would score rows its specialists trained on and record that split as the new
    artifact's own: refused; a regate on the same split records the build's data."""
    code, _, err = edgekd("specialists", "regate", spec_artifact, "--val-fraction", "0.2", "--out", tmp_path / "leak")
    assert code == 2 and "rows it trained on would be scored as held out" in err and not (tmp_path / "leak").exists()
    code, _, err = edgekd("specialists", "regate", spec_artifact, "--top-n", "2", "--quiet", "--out", tmp_path / "r")
    assert code == 0, err
    read = lambda p: json.loads((p / "manifest.json").read_text())["data"]  # noqa: E731
    assert read(tmp_path / "r") == read(spec_artifact)
    code, out, err = edgekd("specialists", "regate", spec_artifact, "--top-n", "2", "--json", "--out", tmp_path / "j")
    assert code == 0 and json.loads(out)["solver"]["top_n"] == 2, err   # --json, as build has


def test_a_capped_solve_or_a_departing_module_is_said_in_the_commands_output():
    from edgekd.commands.specialists import _solver_notes

    assert _solver_notes({"test_capped": 0, "module_max_abs_diff": 0.01}) == []
    notes = _solver_notes({"test_capped": 9, "max_steps": 5000, "module_max_abs_diff": 0.57, "module_steps": 20,
                           "module_checked_inputs": 512})
    assert "step cap (5000) on 9 test input(s)" in notes[0] and "differs from the solve by up to 0.57 nats" in notes[1]


def test_the_generalists_training_time_is_its_whole_run_or_every_process_epochs_when_resumed():
    """A resumed teacher's ``seconds`` are its last process's; its ``train_seconds`` (epochs only) are every process's."""
    from types import SimpleNamespace

    from specialists.build import generalist_train_seconds

    manifest = lambda **timings: SimpleNamespace(timings=timings, members=[0, 1])  # noqa: E731
    assert generalist_train_seconds(manifest(seconds=10.0, train_seconds=4.0, resumed=False)) == 5.0
    assert generalist_train_seconds(manifest(seconds=3.0, train_seconds=8.0, resumed=True)) == 4.0
    assert generalist_train_seconds(manifest(seconds=10.0)) == 5.0   # a manifest from before


def test_a_generalist_whose_specialists_cannot_be_made_is_refused_before_its_pass_over_the_data(tmp_path, digits,
                                                                                                 monkeypatch):
    """The head was first checked at the first specialist, after the generalist's logits and the clustering."""
    from pathlib import Path

    import specialists.build as build
    from edgekd.errors import ConfigError
    from edgekd.models import trust_code
    from edgekd.teacher_training import TeacherConfig, train_teachers
    from edgekd.training import TrainConfig
    from specialists.build import SpecialistConfig, build_specialists

    monkeypatch.syspath_prepend(str(Path(__file__).parent / "fixtures"))
    with trust_code():
        train_teachers(digits, TeacherConfig(arch="py:my_arch.conv_head_net:width=4", train=TrainConfig(epochs=1)),
                       tmp_path / "conv")
        monkeypatch.setattr(build, "_clusters", lambda *a: pytest.fail("clustered before the refusal"))
        with pytest.raises(ConfigError, match="output is not an nn.Linear's"):
            build_specialists(tmp_path / "conv", digits, SpecialistConfig(train=TrainConfig(epochs=1)), tmp_path / "s")
    assert not (tmp_path / "s.partial").exists()


def test_a_generalist_that_tells_no_classes_apart_is_named_as_such(tmp_path, digits, generalist):
    """A constant generalist put every class in one cluster, and the refusal said each cluster had one class."""
    import shutil

    from safetensors.torch import load_file, save_file

    from edgekd.artifacts import sha256_file
    from edgekd.errors import ConfigError
    from edgekd.training import TrainConfig
    from specialists.build import SpecialistConfig, build_specialists

    dead = tmp_path / "dead"
    shutil.copytree(generalist, dead)
    manifest = json.loads((dead / "manifest.json").read_text())
    weights = manifest["members"][0]["weights"]
    state = {k: torch.zeros_like(v) if k.endswith(("fc.weight", "fc.bias")) or "classifier" in k else v
             for k, v in load_file(dead / weights).items()}
    head = [k for k in state if k.endswith(".weight")][-1]
    state[head] = torch.zeros_like(state[head])
    state[head.replace(".weight", ".bias")] = torch.zeros_like(state[head.replace(".weight", ".bias")])
    save_file(state, dead / weights)
    manifest["files"][weights] = sha256_file(dead / weights)
    (dead / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ConfigError, match="do not tell any classes apart .* all 10 in one cluster"):
        build_specialists(dead, digits, SpecialistConfig(clusters=3, train=TrainConfig(epochs=1)), tmp_path / "s")


@pytest.mark.parametrize("given, message", [(dict(tol=0.0), "'tol' parameter must be > 0"),
                                            (dict(max_steps=0), "'max_steps' parameter must be an integer >= 1")])
def test_regate_refuses_a_zero_solver_setting_rather_than_replacing_it(spec_artifact, digits, tmp_path, given, message):
    from edgekd.errors import ConfigError
    from specialists.build import regate_specialists

    with pytest.raises(ConfigError, match=message):
        regate_specialists(spec_artifact, digits, tmp_path / "r", **given)
    with pytest.raises(ConfigError, match="'special_fraction' parameter must be in"):
        from specialists.build import SpecialistConfig

        SpecialistConfig(special_fraction="0.5")


def test_a_specialist_ensemble_edited_by_hand_is_another_teacher(spec_artifact, tmp_path):
    """Its fingerprint hashed the weights and the solver settings only: a member's classes reordered in the (unhashed)
    manifest changed its outputs but kept the key, so the logit cache served the first ensemble's logits."""
    import shutil

    from edgekd.teachers import load_teacher

    edited = tmp_path / "edited"
    shutil.copytree(spec_artifact, edited)
    manifest = json.loads((edited / "manifest.json").read_text())
    manifest["members"][1]["classes"] = manifest["members"][1]["classes"][::-1]
    (edited / "manifest.json").write_text(json.dumps(manifest))
    assert load_teacher(edited).fingerprint != load_teacher(spec_artifact).fingerprint
    shutil.rmtree(edited)
    shutil.copytree(spec_artifact, edited)   # an untouched copy is the same teacher
    assert load_teacher(edited).fingerprint == load_teacher(spec_artifact).fingerprint


def test_clustering_alone_takes_a_generalist_whose_head_specialists_could_not_replace(tmp_path, digits, edgekd,
                                                                                       monkeypatch):
    """`specialists cluster` trains nothing: a head without a bias is no reason to refuse it (build refuses it)."""
    from pathlib import Path

    monkeypatch.syspath_prepend(str(Path(__file__).parent / "fixtures"))
    code, _, err = edgekd("teacher", "train", "--arch", "py:my_arch.tiny_net:head=false", "--epochs", "1", "--quiet",
                          "--out", tmp_path / "g")
    assert code == 0, err
    code, out, err = edgekd("specialists", "cluster", "--teacher", tmp_path / "g", "--clusters", "3", "--trust-code")
    assert code == 0, err
    code, _, err = edgekd("specialists", "build", "--teacher", tmp_path / "g", "--clusters", "3", "--trust-code",
                          "--epochs", "1", "--quiet", "--out", tmp_path / "s")
    assert code == 2 and "without a bias" in err and not (tmp_path / "s.partial").exists()
