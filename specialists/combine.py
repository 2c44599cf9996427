"""Combining a generalist with specialists at inference (paper section 5.4), and the specialist
ensemble as a teacher.

For an input, take the generalist's ``top_n`` most probable classes; the *active* specialists are
those whose special subset S_m meets them. The output is the full distribution

    q* = argmin_q  KL(p_g || q) + sum_{m active} KL(p_m || c_m(q))

where ``c_m(q) = (q_S, 1 - sum_{k in S_m} q_k)`` collapses q onto S_m plus a dustbin that holds all
of q's mass outside S_m. With no active specialist, q* = p_g exactly. The ensemble's logits are
``log q*``.

Solver. Writing q = softmax(z), the gradient of the objective f with respect to the logits is

    df/dz_k = (1 + |A|) q_k - N_k(q),
    N_k(q)  = p_g,k + sum_{m in A} ( p_m,k            if k in S_m
                                     p_m,dust q_k / q_dust,m   otherwise ),

with |A| the number of active specialists and ``q_dust,m`` q's mass outside S_m. We iterate

    q <- q - (df/dz) / (1 + |A|)  =  N(q) / (1 + |A|),

a step along the logits' gradient taken in probability space. It is the EM (minorise-maximise)
update that spreads each specialist's dustbin mass over its outside classes in proportion to q, so
the objective never increases and q stays a distribution; f is convex in q, so the fixed point is the
global minimum. Started from q = p_g it is *exact after one step* when at most one specialist is
active (the closed form: q_k = (p_g,k + p_m,k)/2 on S, p_g,k (G + p_dust)/(2G) outside, with G the
generalist's mass outside S), which is always the case for disjoint clusters with top-1 gating.

Deviation from the paper, stated: the paper runs plain gradient descent on z. On 2,000 random
inputs with three active specialists plain gradient descent (fixed or backtracking step) had not
reached max|df/dz| < 1e-6 after 5,000 steps, because a step on z_k scales with q_k; this update
reached it for all of them in 259 steps. It converges linearly: under the stopping rule below those
adversarial inputs (specialists disagreeing with the generalist at random) need 10 updates at the
median, over 300 for 1 in 1,000, and 3,392 for the worst; real specialists, which mostly agree with
their generalist, need a handful.

Stopping rule: per input, stop when an update would move no log-probability by ``tol`` (default 1e-6)
or more, i.e. max_k |df/dz_k| / ((1 + |A|) q_k) < tol, or after ``max_steps`` (default 5000) updates.
The rule is relative because the output is log q, which distillation softens: an absolute rule on
df/dz stops while classes with q_k ~ 1e-10 are still off by a factor of 2 (seen on Fashion-MNIST).
``tol`` bounds the last update, not the distance to the optimum: converging linearly at rate r, what is
left is about change * r / (1 - r), up to a few hundred times ``tol`` on adversarial inputs (5.6e-5 at
1e-6 in one draw) and about ``tol`` for specialists that agree with their generalist.
An input that has converged is frozen, so a fixed number of updates (the exportable module) gives the
eager solver's answer once that number covers the updates the eager solver needed.

Everything is computed in the log domain (log-probabilities, logsumexp), so no probability
underflows to zero and log q* is finite. The eager float64 solver takes the same update with the
parts that do not change with q computed once and the rest in probability space, shifted per
class (``_update_fast``: 4 exp/log per class and update instead of about 3 + 3|A|); float64
underflows only below e^-745, so it is taken only where no active specialist's outside-S mass
under the generalist lies below e^-700 (``_dust_underflows``); the inputs where one does are solved in
the log domain, as their q_dust would underflow to 0 and lose the mass the dustbin sends outside S.

Scale (``gated_combine``). An input only needs its active specialists: each specialist runs on the
inputs that activate it, and the solver holds (B, A, C) tensors, A the most specialists any input of
the batch activates (1 with disjoint clusters and top-1 gating), not (B, n, C) for all n
specialists: at 1,000 classes and 150 specialists, 150x less memory and time. An input's answer does
not depend on the other inputs of the batch. The exportable module (fixed control flow) still runs
every specialist on every input, but solves on (B, A, C) too, A the bound on active specialists
(``max_active_bound``), gathered and scattered into place.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from edgekd.errors import ArtifactError
from edgekd.teachers import ModuleTeacher, register_teacher_kind
from specialists.config import DEFAULT_MAX_STEPS, DEFAULT_TOL

NEG = -1e30  # log(0) stand-in that stays finite in float32 (exportable, no inf - inf = nan)


@dataclass(frozen=True)
class SolveResult:
    log_q: torch.Tensor          # (B, C) log of the combined distribution
    steps: torch.Tensor          # (B,) updates taken per input
    grad_max: torch.Tensor       # (B,) max_k |df/dz_k| at the returned q
    change_max: torch.Tensor     # (B,) largest log-probability change one more update would make
    active: torch.Tensor         # (B, n) bool, active specialists
    objective_trace: list | None = None   # per step, (B,) objective values (only with trace=True)


# --- pieces --------------------------------------------------------------------------------------

def membership_matrix(clusters, num_classes: int) -> torch.Tensor:
    """(n, C) bool: row m marks the classes of specialist m."""
    member = torch.zeros((len(clusters), num_classes), dtype=torch.bool)
    for m, classes in enumerate(clusters):
        member[m, list(classes)] = True
    return member


def active_specialists(log_pg: torch.Tensor, membership: torch.Tensor, top_n: int) -> torch.Tensor:
    """(B, n) bool: specialist m is active when S_m holds one of the generalist's top-n classes."""
    top = log_pg.topk(min(top_n, log_pg.shape[-1]), dim=-1).indices
    in_top = torch.zeros_like(log_pg).scatter(-1, top, 1.0)
    return (in_top @ membership.to(log_pg.dtype).T) > 0


def expand_specialist(log_pm: torch.Tensor, classes, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A specialist's (B, |S|+1) log-probabilities as (B, C) on its classes (NEG elsewhere) and (B,) dustbin."""
    full = torch.full((log_pm.shape[0], num_classes), NEG, dtype=log_pm.dtype, device=log_pm.device)
    full[:, list(classes)] = log_pm[:, :-1]
    return full, log_pm[:, -1]


def kl_objective(log_q, log_pg, log_t, log_pd, membership, active) -> torch.Tensor:
    """(B,) value of KL(p_g || q) + sum_active KL(p_m || c_m(q)); ``log_t`` (B, n, C), ``log_pd`` (B, n),
    ``membership`` (n, C) or per input (B, n, C)."""
    p_g = log_pg.exp()
    value = (p_g * (log_pg - log_q)).sum(-1)
    log_out = torch.where(membership, NEG, 0.0).to(log_q.dtype)
    log_qd = torch.logsumexp(log_q[:, None, :] + log_out, -1)
    p_t = torch.where(membership, log_t.exp(), 0.0)
    kl_in = (p_t * (torch.where(membership, log_t, 0.0) - log_q[:, None, :])).sum(-1)
    kl_m = kl_in + log_pd.exp() * (log_pd - log_qd)
    return value + (kl_m * active.to(log_q.dtype)).sum(-1)


def _update(log_q, log_pg, log_t, log_pd, log_out, active):
    """One update q <- N(q) / (1 + |A|), in the log domain; also returns, at the old q, the largest
    change of a log-probability the update makes and max_k |df/dz_k|."""
    log_qd = torch.logsumexp(log_q[:, None, :] + log_out, -1)                    # (B, n)
    spread = log_pd[..., None] + log_q[:, None, :] - log_qd[..., None] + log_out  # dustbin mass spread outside S
    on = active[..., None]
    terms = torch.cat([log_pg[:, None, :], torch.where(on, log_t, NEG), torch.where(on, spread, NEG)], dim=1)
    log_new = torch.log_softmax(torch.logsumexp(terms, dim=1), dim=-1)            # normalising = dividing by 1 + |A|
    weight = 1.0 + active.to(log_q.dtype).sum(-1, keepdim=True)
    grad_max = (weight * (log_q.exp() - log_new.exp())).abs().amax(-1)
    return log_new, (log_new - log_q).abs().amax(-1), grad_max


def _fixed_parts(log_pg, log_t, log_pd, membership, active):
    """What the update needs that does not change with q (float64 eager path, ``_update_fast``):
    a shift s_k = max(log p_g,k, max over active m with k in S_m of log p_m,k), the constant part of
    N(q) scaled by e^-s, the outside-S masks and the active dustbin masses."""
    dtype = log_pg.dtype
    on = active[..., None] & membership
    shift = torch.maximum(log_pg, torch.where(on, log_t, NEG).amax(1))
    base = (log_pg - shift).exp() + torch.where(on, (log_t - shift[:, None, :]).exp(), 0.0).sum(1)
    return shift, base, (~membership).to(dtype), log_pd.exp() * active.to(dtype), active.to(dtype).sum(-1, keepdim=True)


def _update_fast(log_q, shift, base, outside, p_dust, count):
    """``_update`` in float64 with the constant parts precomputed: N_k(q) e^-s_k = base_k
    + e^(log q_k - s_k) sum_{m active, k not in S_m} p_m,dust / q_dust,m, with q_dust,m a sum of
    q over the classes outside S_m (positive terms, no cancellation). Four exp/log per class and
    update whatever the number of active specialists, against about 3 + 3|A| in the log domain."""
    q = log_q.exp()
    per_input = outside.dim() == 3
    q_dust = torch.bmm(outside, q[..., None])[..., 0] if per_input else q @ outside.T
    ratio = p_dust / q_dust.clamp_min(torch.finfo(q.dtype).tiny)
    spread = torch.bmm(ratio[:, None, :], outside)[:, 0] if per_input else ratio @ outside
    log_new = torch.log_softmax(shift + torch.log(base + spread * (log_q - shift).exp()), dim=-1)
    grad_max = ((1.0 + count) * (q - log_new.exp())).abs().amax(-1)
    return log_new, (log_new - log_q).abs().amax(-1), grad_max


LOG_DUST_FLOOR = -700.0   # below e^-745 float64 underflows; the fast update's q_dust is a sum of exp(log q)


def _dust_underflows(log_pg, log_out, active) -> torch.Tensor:
    """(B,) bool: an active specialist's classes hold all but less than e^-700 of the generalist's mass, so
    ``_update_fast``'s q_dust (a sum of probabilities) would underflow to 0 (one (B, n, C) logsumexp, once)."""
    outside = torch.logsumexp(log_pg[:, None, :] + log_out, -1)   # (B, n), log_out: (n, C) or (B, n, C)
    return ((outside < LOG_DUST_FLOOR) & active).any(-1)


def _rows(keep, log_pg, log_t, log_pd, membership, active) -> tuple:
    return (log_pg[keep], log_t[keep], log_pd[keep], membership[keep] if membership.dim() == 3 else membership, active[keep])


def _merged(second, a: SolveResult, b: SolveResult) -> SolveResult:
    """One result from ``a`` (the inputs where ``second`` is False) and ``b`` (where it is True), in order."""
    def put(x, y):
        out = x.new_empty((len(second), *x.shape[1:]))
        out[~second], out[second] = x, y
        return out
    return SolveResult(log_q=put(a.log_q, b.log_q), steps=put(a.steps, b.steps), grad_max=put(a.grad_max, b.grad_max),
                       change_max=put(a.change_max, b.change_max), active=put(a.active, b.active))


def solve_kl(log_pg, log_t, log_pd, membership, active, *, tol: float = DEFAULT_TOL,
             max_steps: int = DEFAULT_MAX_STEPS, fixed_steps: int | None = None, trace: bool = False,
             log_domain: bool = False) -> SolveResult:
    """Minimise the section-5.4 objective per input, batched; see the module docstring.

    ``log_pg`` (B, C) generalist log-probabilities; ``log_t`` (B, n, C) specialists' log-probabilities
    on their classes (anything elsewhere); ``log_pd`` (B, n) their dustbin log-probabilities;
    ``membership`` (n, C) bool, or (B, n, C) when the n slots of each input hold its own specialists
    (``gated_combine``); ``active`` (B, n) bool. ``fixed_steps`` runs exactly that many updates
    (no data-dependent stopping, for export; ``grad_max``/``change_max`` are then measured before the last update);
    otherwise stop when every input has converged or after ``max_steps`` updates. float64 takes
    ``_update_fast`` unless ``log_domain`` (the update float32 takes; kept to measure against).
    """
    log_out = torch.where(membership, NEG, 0.0).to(log_pg.dtype)
    per_input = membership.dim() == 3
    if log_pg.dtype == torch.float64 and not log_domain:
        risky = _dust_underflows(log_pg, log_out, active)
        if bool(risky.any()):
            if trace or bool(risky.all()):   # (a trace is one objective per step for the whole batch)
                log_domain = True
            else:
                args = dict(tol=tol, max_steps=max_steps, fixed_steps=fixed_steps)
                return _merged(risky, solve_kl(*_rows(~risky, log_pg, log_t, log_pd, membership, active), **args),
                               solve_kl(*_rows(risky, log_pg, log_t, log_pd, membership, active), **args, log_domain=True))
    batch = log_pg.shape[0]
    steps = torch.zeros(batch, dtype=torch.long, device=log_pg.device)
    objective = [kl_objective(log_pg, log_pg, log_t, log_pd, membership, active)] if trace else None
    fast = _fixed_parts(log_pg, log_t, log_pd, membership, active) \
        if log_pg.dtype == torch.float64 and not log_domain else None
    if fixed_steps is not None:   # exportable: the same updates on every input, converged ones frozen
        log_q = log_pg
        grad_max = change = torch.zeros(batch, dtype=log_pg.dtype, device=log_pg.device)
        for _ in range(fixed_steps):
            if fast is not None:
                log_new, change, grad_max = _update_fast(log_q, *fast)
            else:
                log_new, change, grad_max = _update(log_q, log_pg, log_t, log_pd, log_out, active)
            moving = change >= tol
            log_q = torch.where(moving[:, None], log_new, log_q)
            steps = steps + moving.long()
        return SolveResult(log_q=log_q, steps=steps, grad_max=grad_max, change_max=change, active=active)
    log_q = log_pg.clone()
    grad_max = torch.zeros(batch, dtype=log_pg.dtype, device=log_pg.device)
    change_max = torch.zeros_like(grad_max)
    live = torch.arange(batch, device=log_pg.device)   # inputs not yet converged: only they are updated
    for step in range(max_steps + 1):
        if fast is not None:
            shift, base, outside, p_dust, count = fast
            log_new, change, grad_live = _update_fast(log_q[live], shift[live], base[live],
                                                      outside[live] if per_input else outside, p_dust[live], count[live])
        else:
            log_new, change, grad_live = _update(log_q[live], log_pg[live], log_t[live], log_pd[live],
                                                 log_out[live] if per_input else log_out, active[live])
        grad_max[live], change_max[live] = grad_live, change
        moving = change >= tol
        if step == max_steps or not bool(moving.any()):
            break   # grad_max and change_max are now measured at the returned q of every input
        live, log_new = live[moving], log_new[moving]
        log_q[live] = log_new
        steps[live] += 1
        if trace:
            objective.append(kl_objective(log_q, log_pg, log_t, log_pd, membership, active))
    return SolveResult(log_q=log_q, steps=steps, grad_max=grad_max, change_max=change_max, active=active,
                       objective_trace=objective)


def combine(generalist_logits: torch.Tensor, specialist_logits: list, clusters, *, top_n: int = 1,
            tol: float = DEFAULT_TOL, max_steps: int = DEFAULT_MAX_STEPS, fixed_steps: int | None = None,
            trace: bool = False) -> SolveResult:
    """Combine raw logits: generalist (B, C), specialist m (B, |S_m|+1) with its dustbin last.

    Solved in the logits' dtype (the teacher passes float64). Inputs without an active specialist get
    ``log_softmax(generalist_logits)`` exactly. Only the active specialists' rows are used
    (``gated_combine``).
    """
    return gated_combine(generalist_logits, lambda m, rows: specialist_logits[m][rows], clusters, top_n=top_n,
                         tol=tol, max_steps=max_steps, fixed_steps=fixed_steps, trace=trace)


def gated_combine(generalist_logits: torch.Tensor, specialist_fn, clusters, *, top_n: int = 1,
                  tol: float = DEFAULT_TOL, max_steps: int = DEFAULT_MAX_STEPS, fixed_steps: int | None = None,
                  trace: bool = False) -> SolveResult:
    """``combine`` where ``specialist_fn(m, rows)`` gives specialist m's raw logits (len(rows), |S_m|+1)
    on the inputs ``rows`` (a long tensor of batch positions) and is called only for the inputs that
    activate m. The solver holds (B, A, C), A the most specialists one input activates; ``active`` in
    the result is (B, n) as in ``combine``.
    """
    num_classes = generalist_logits.shape[-1]
    device, dtype = generalist_logits.device, generalist_logits.dtype
    membership = membership_matrix(clusters, num_classes).to(device)
    log_pg = torch.log_softmax(generalist_logits, -1)
    active = active_specialists(log_pg, membership, top_n)
    counts = active.sum(-1)
    slots = int(counts.max()) if len(counts) else 0
    batch = log_pg.shape[0]
    if slots == 0:   # nobody active: the generalist, exactly
        zeros = torch.zeros(batch, dtype=dtype, device=device)
        return SolveResult(log_q=log_pg, steps=torch.zeros(batch, dtype=torch.long, device=device), grad_max=zeros,
                           change_max=zeros, active=active, objective_trace=[zeros] if trace else None)
    # slot a of input b holds its a-th active specialist (in increasing order); unused slots are off
    slot_spec = torch.argsort((~active).to(torch.int8), dim=1, stable=True)[:, :slots]
    slot_on = torch.arange(slots, device=device)[None, :] < counts[:, None]
    log_t = torch.full((batch, slots, num_classes), NEG, dtype=dtype, device=device)
    log_pd = torch.full((batch, slots), NEG, dtype=dtype, device=device)
    for m in torch.unique(slot_spec[slot_on]).tolist():
        rows, slot = torch.nonzero(slot_on & (slot_spec == m), as_tuple=True)
        log_pm = torch.log_softmax(specialist_fn(m, rows).to(dtype), -1)
        log_t[rows, slot, torch.tensor(clusters[m], device=device)[:, None]] = log_pm[:, :-1].T
        log_pd[rows, slot] = log_pm[:, -1]
    slot_members = membership[slot_spec] & slot_on[..., None]
    result = solve_kl(log_pg, log_t, log_pd, slot_members, slot_on, tol=tol, max_steps=max_steps,
                      fixed_steps=fixed_steps, trace=trace)
    exact = torch.where((counts > 0)[:, None], result.log_q, log_pg)
    return SolveResult(log_q=exact, steps=result.steps, grad_max=result.grad_max, change_max=result.change_max,
                       active=active, objective_trace=result.objective_trace)


def check_top_n(top_n: int, num_classes: int) -> int:
    """The generalist's top-n classes gate the specialists: n in [1, C] (n = C activates every one)."""
    from edgekd.errors import ConfigError

    if not isinstance(top_n, int) or isinstance(top_n, bool) or not 1 <= top_n <= num_classes:
        raise ConfigError(f"The 'top_n' parameter must be in [1, {num_classes}] (the number of classes). Got {top_n!r} "
                          f"instead; pass --top-n 1 (the paper's gating) or up to {num_classes}.")
    return top_n


def max_active_bound(clusters, num_classes: int, top_n: int) -> int:
    """An upper bound on how many specialists one input can activate: the sum of the top_n largest
    per-class cluster counts. When it is 1 a single update is exact."""
    counts = membership_matrix(clusters, num_classes).sum(0).sort(descending=True).values
    return min(len(clusters), int(counts[:top_n].sum()))


# --- the ensemble as a module and as a teacher ------------------------------------------------------

class SpecialistEnsembleModule(nn.Module):
    """Raw inputs -> log q*: generalist, every specialist, gating, and a FIXED number of solver updates
    (no data-dependent control flow, so it traces and exports).

    Every specialist runs on every input (a graph cannot skip them), but the solver holds only
    A = ``max_active_bound`` slots per input, (B, A, C), filled with each input's active specialists
    by gather/scatter, instead of (B, n, C); with A >= n it is the dense form (``branches``)."""

    def __init__(self, generalist: nn.Module, specialists: list, clusters, num_classes: int, *,
                 top_n: int = 1, steps: int = 1, tol: float = DEFAULT_TOL):
        super().__init__()
        self.tol = float(tol)   # the eager solver's: an input it had stopped on stays frozen here too
        self.generalist = generalist
        self.specialists = nn.ModuleList(specialists)
        self.clusters = [tuple(int(c) for c in s) for s in clusters]
        self.top_n, self.steps = int(top_n), int(steps)
        self.num_classes = int(num_classes)
        self.slots = max_active_bound(self.clusters, num_classes, self.top_n)
        self.register_buffer("membership", membership_matrix(self.clusters, num_classes), persistent=False)
        width = max(len(s) for s in self.clusters)
        index = torch.full((len(self.clusters), width), num_classes, dtype=torch.long)   # padding: a spare column
        for m, classes in enumerate(self.clusters):
            index[m, :len(classes)] = torch.tensor(classes)
        self.register_buffer("class_index", index, persistent=False)
        for m, classes in enumerate(self.clusters):   # (|S|, C) one-hot scatter, export-friendly
            self.register_buffer(f"scatter_{m}", F.one_hot(torch.tensor(classes), num_classes).float(), persistent=False)

    def branches(self, x: torch.Tensor):
        """Generalist log-probabilities (B, C), specialists' (B, n, C) on their classes, dustbins (B, n)."""
        log_pg = torch.log_softmax(self.generalist(x), -1)
        log_t, log_pd = [], []
        for m, specialist in enumerate(self.specialists):
            log_pm = torch.log_softmax(specialist(x), -1)
            spread = log_pm[:, :-1] @ getattr(self, f"scatter_{m}")
            log_t.append(torch.where(self.membership[m], spread, NEG))
            log_pd.append(log_pm[:, -1])
        return log_pg, torch.stack(log_t, 1), torch.stack(log_pd, 1)

    def forward(self, x):
        if self.slots >= len(self.specialists):
            log_pg, log_t, log_pd = self.branches(x)
            active = active_specialists(log_pg, self.membership, self.top_n)
            solved = solve_kl(log_pg, log_t, log_pd, self.membership, active, fixed_steps=self.steps, tol=self.tol)
            return torch.where(active.any(-1, keepdim=True), solved.log_q, log_pg)
        log_pg = torch.log_softmax(self.generalist(x), -1)
        active = active_specialists(log_pg, self.membership, self.top_n)
        width = self.class_index.shape[1]
        table = []   # (B, n, width + 1): each specialist's class log-probabilities, padded, then its dustbin
        for specialist in self.specialists:
            log_pm = torch.log_softmax(specialist(x), -1)
            pad = log_pm.new_full((log_pm.shape[0], width + 1 - log_pm.shape[1]), NEG)
            table.append(torch.cat([log_pm[:, :-1], pad, log_pm[:, -1:]], 1))
        table = torch.stack(table, 1)
        slot_spec = torch.topk(active.to(log_pg.dtype), self.slots, dim=1).indices          # (B, A), active first
        slot_on = torch.gather(active, 1, slot_spec)
        picked = torch.gather(table, 1, slot_spec[..., None].expand(-1, -1, width + 1))
        spread = log_pg.new_full((log_pg.shape[0], self.slots, self.num_classes + 1), NEG)
        log_t = spread.scatter(2, self.class_index[slot_spec], picked[..., :width])[..., :self.num_classes]
        members = self.membership[slot_spec] & slot_on[..., None]
        solved = solve_kl(log_pg, log_t, picked[..., width], members, slot_on, fixed_steps=self.steps, tol=self.tol)
        return torch.where(active.any(-1, keepdim=True), solved.log_q, log_pg)


def check_specialist_artifact(artifact) -> None:
    """What every reader of a specialist-ensemble artifact indexes, checked once where it is opened (the
    manifest is not hashed and may be edited: a missing key was an internal KeyError in ``regate``)."""
    manifest, path = artifact.manifest, artifact.path
    roles = [member.role for member in manifest.members]
    if roles.count("generalist") != 1 or roles[0] != "generalist" or len(roles) < 2:
        raise ArtifactError(f"Artifact '{path}' of kind 'specialist-ensemble' must list the generalist first "
                            f"and at least one specialist; re-create it with 'edgekd specialists build'.")
    _check_solver(manifest.solver, path)
    source = manifest.generalist
    if (not isinstance(source, dict) or not isinstance(source.get("fingerprint"), str)
            or not isinstance(source.get("description"), str)
            or not (source.get("member") is None or (isinstance(source.get("member"), int) and source["member"] >= 0))):
        raise ArtifactError(f"Artifact '{path}' of kind 'specialist-ensemble' has no valid generalist record (its "
                            f"fingerprint, description and member); re-create it with 'edgekd specialists build'.")


def _check_solver(solver, path) -> None:
    """The manifest's solver settings, each of its type and range (a manifest is not hashed: it may be edited)."""
    wanted = {"top_n": int, "max_steps": int, "module_steps": int, "tol": (int, float)}
    bad = [key for key, kind in wanted.items() if not isinstance(solver, dict) or not isinstance(solver.get(key), kind)
           or isinstance(solver.get(key), bool) or not solver[key] > 0]
    if bad:
        raise ArtifactError(f"Artifact '{path}' of kind 'specialist-ensemble' has no valid solver {', '.join(bad)} (each a "
                            f"positive number); re-create it with 'edgekd specialists build'.")


class SpecialistTeacher(ModuleTeacher):
    """A specialist-ensemble artifact as a teacher: ``logits`` solves to ``tol`` in float64 (eager);
    ``module()`` runs the fixed number of updates recorded in the artifact."""

    kind = "specialist-ensemble"

    def __init__(self, artifact, *, top_n: int | None = None):
        manifest = artifact.manifest
        solver = manifest.solver
        models = artifact.build_members()
        check_specialist_artifact(artifact)
        self.clusters = [tuple(member.classes) for member in manifest.members[1:]]
        self.top_n = int(top_n or solver["top_n"])
        self.tol, self.max_steps = float(solver["tol"]), int(solver["max_steps"])
        net = SpecialistEnsembleModule(models[0], models[1:], self.clusters, len(artifact.classes),
                                       top_n=self.top_n, steps=int(solver["module_steps"]), tol=self.tol)
        # what decides its outputs beyond the weights (the files' hashes): which scores are which classes, the members'
        # architectures, the normalisation and the unrolled steps. A manifest is not hashed: one edited by hand must
        # not be served another ensemble's cached logits (keys made before this included: computed again once)
        settings = json.dumps({"top_n": self.top_n, "tol": self.tol, "max_steps": self.max_steps,
                               "members": [[m.arch, m.arch_options, m.classes, m.num_outputs] for m in manifest.members],
                               "normalization": manifest.normalization, "module_steps": solver["module_steps"]},
                              sort_keys=True, default=str)
        super().__init__(net, kind=self.kind, classes=artifact.classes, input_shape=artifact.input_shape,
                         fingerprint=hashlib.sha256((artifact.fingerprint + settings).encode()).hexdigest(),
                         description=(f"specialist-ensemble '{artifact.path}' (generalist {manifest.members[0].arch} + "
                                      f"{len(self.clusters)} specialist(s), top-{self.top_n} gating)"),
                         artifact=artifact)

    def _logits(self, x):
        """Generalist on every input, each specialist only on the inputs that activate it, float64 solve."""
        inputs = x.reshape(len(x), *self.input_shape).to(self.device)
        net = self.net
        solved = gated_combine(net.generalist(inputs).double(), lambda m, rows: net.specialists[m](inputs[rows]).double(),
                               self.clusters, top_n=self.top_n, tol=self.tol, max_steps=self.max_steps)
        return solved.log_q.float().to(x.device)   # on the caller's device, as Teacher.logits promises

    def dense_logits(self, x):
        """The former ``_logits``: every specialist on every input, a (B, n, C) float64 solve with
        log-domain updates. Kept to measure the gated path against (benchmarks/specialists_scale.py);
        same answer."""
        log_pg, log_t, log_pd = (t.double() for t in self.net.branches(x.reshape(len(x), *self.input_shape).to(self.device)))
        membership = self.net.membership
        active = active_specialists(log_pg, membership, self.top_n)
        solved = solve_kl(log_pg, log_t, log_pd, membership, active, tol=self.tol, max_steps=self.max_steps,
                          log_domain=True)
        return torch.where(active.any(-1, keepdim=True), solved.log_q, log_pg).float().to(x.device)


@register_teacher_kind("specialist-ensemble")
def load_specialist_teacher(artifact) -> SpecialistTeacher:
    """The teacher of artifacts of kind "specialist-ensemble" (registered with ``edgekd.teachers``)."""
    return SpecialistTeacher(artifact)
