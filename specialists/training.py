"""Training one specialist per cluster (paper section 5.2).

A specialist for the special subset S is the generalist's architecture initialised from the
generalist's weights, with a new output layer of |S| + 1 units: the classes of S (in increasing
class order) and a *dustbin* for every other class. The new layer starts from the generalist's rows
for S; the dustbin row starts as the mean of the other classes' rows with bias + log(C - |S|), a
rough stand-in for the log-sum-exp of their logits (our choice; the paper does not say).

Training data: each epoch, a share ``special_fraction`` (the paper: half) of examples from S and the
rest drawn at random from the other classes, with the paper's input jitter if asked for; hard labels
(S class or dustbin); model selection and early stopping on a val set mixed in the same proportion.

Dustbin correction. Training sees S with share rho_S (about ``special_fraction``) while the data has
pi_S (the share of S in the train split), so the specialist's posteriors carry the training prior.
Bayes' rule moves each output's logit by log(true share / training share) of its data; the S outputs
all move by the same log(pi_S / rho_S) and a softmax ignores a common shift, so the whole correction
is one bias added to the dustbin logit:

    b = log(pi_dust / rho_dust) - log(pi_S / rho_S),   pi_dust = 1 - pi_S,  rho_dust = 1 - rho_S.

Worked example: S holds 30% of the data, trained half and half: b = log(0.7/0.5) - log(0.3/0.5)
= log(7/3) = 0.847. The paper increments the dustbin logit by "the log of the proportion by which the
specialist class is oversampled", log(rho_S / pi_S) = 0.511 here. The two differ by log(pi_dust /
rho_dust) (0.336 here), which does not vanish when S is a small share of the data: it tends to
log(1 / rho_dust), log 2 at half and half, and added to one logit alone it is no shift a softmax
ignores. The paper's increment leaves the dustbin that much too low; ours is the exact prior shift
for any share.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from edgekd.data import take_rows
from edgekd.errors import ConfigError, TrainingError
from edgekd.models import create_model, output_layer
from edgekd.training import TrainConfig, augment_batch, epoch_generator, fit
from specialists.config import SpecialistConfig

DATA_SEED_SALT = 7_777   # per-epoch draws of the "other" examples use their own generator stream


@dataclass(frozen=True)
class SpecialistFit:
    classes: tuple[int, ...]
    state: dict
    dustbin_bias: float
    true_share: float           # pi_S: share of S in the train split
    training_share: float       # rho_S: share of S in each training epoch
    val_accuracy: float         # (|S|+1)-way accuracy on the mixed val set, before the correction
    best_epoch: int
    epochs_run: int
    seconds: float
    history: list
    seed: int | None = None     # what its net was built under (a random buffer it does not save draws the same)

    def summary(self) -> dict:
        out = asdict(self)
        out.pop("state")
        return out


def dustbin_bias(true_share: float, training_share: float) -> float:
    """b = log((1 - pi_S) / (1 - rho_S)) - log(pi_S / rho_S): added to the dustbin logit (see module doc)."""
    for name, value in (("true_share", true_share), ("training_share", training_share)):
        if not 0 < value < 1:
            raise ConfigError(f"The '{name}' parameter must be in (0, 1). Got {value!r} instead.")
    return math.log((1 - true_share) / (1 - training_share)) - math.log(true_share / training_share)


def label_map(classes, num_classes: int, device=None) -> torch.Tensor:
    """(C,) long: class -> its position in S, or |S| (the dustbin)."""
    mapping = torch.full((num_classes,), len(classes), dtype=torch.long, device=device)
    mapping[list(classes)] = torch.arange(len(classes), device=device)
    return mapping


NEEDS_HEAD = "specialists replace the output layer and add the dustbin correction to its bias"


def head_name(model: nn.Module, outputs: int) -> str:
    """The name of the output layer (``edgekd.models.output_layer``), of ``outputs`` scores."""
    return output_layer(model, outputs, NEEDS_HEAD)[0]


def check_specialist_arch(generalist: nn.Module, arch: str, options: dict, input_shape, num_classes: int, *,
                          mean=(0.0,), std=(1.0,)) -> None:
    """Refuse, before any work, a generalist of ``num_classes`` scores whose specialists cannot be made: one whose
    output is not an nn.Linear with a bias, or whose architecture with fewer outputs does not take its other weights
    (``specialist_model`` for a cluster of two, built once and dropped)."""
    output_layer(generalist, num_classes, NEEDS_HEAD)
    if num_classes >= 3:
        specialist_model(generalist, arch, options, input_shape, mean, std, (0, 1))


def specialist_model(generalist: nn.Module, arch: str, options: dict, input_shape, mean, std, classes) -> nn.Module:
    """The generalist's architecture with |S|+1 outputs, every weight but the head copied from it."""
    try:
        model = create_model(arch, input_shape, len(classes) + 1, mean=mean, std=std, options=options)
    except ConfigError as exc:   # a user's factory that ignores num_classes: say what asked for the other count
        raise ConfigError(f"Specialists build the generalist's architecture with num_classes = the cluster's classes "
                          f"+ 1 (a dustbin), here {len(classes) + 1}, and '{arch}' cannot be built so: {exc}") from None
    head = head_name(model, len(classes) + 1)
    gen_state = generalist.state_dict()
    body = {k: v for k, v in gen_state.items() if not k.startswith(head + ".")}
    try:
        missing, unexpected = model.load_state_dict(body, strict=False)
    except RuntimeError as exc:   # a size mismatch: the layer after the one taken for the head depends on the classes
        raise TrainingError(f"The generalist's weights do not fit architecture '{arch}' with {len(classes) + 1} outputs "
                            f"({str(exc).splitlines()[-1].strip()[:160]}); {NEEDS_HEAD}, so the architecture must end in an "
                            f"nn.Linear with a bias.") from None
    if unexpected or any(not k.startswith(head + ".") for k in missing):
        raise TrainingError(f"The generalist's weights do not fit architecture '{arch}' (missing {missing[:3]}, "
                            f"unexpected {unexpected[:3]}).")
    weight, bias = gen_state[f"{head}.weight"], gen_state[f"{head}.bias"]
    others = [c for c in range(weight.shape[0]) if c not in set(classes)]
    layer = model.get_submodule(head)
    with torch.no_grad():
        layer.weight[:-1] = weight[list(classes)]
        layer.bias[:-1] = bias[list(classes)]
        layer.weight[-1] = weight[others].mean(0)
        layer.bias[-1] = bias[others].mean() + math.log(len(others))
    return model


def mixture_sizes(n_special: int, n_other: int, fraction: float) -> tuple[int, int]:
    """Examples per epoch (from S, from the rest): all of S and enough others for ``fraction``;
    if the rest is too small for that, all of the rest and S subsampled instead."""
    want_other = round(n_special * (1 - fraction) / fraction)
    if want_other <= n_other:
        return n_special, max(1, want_other)
    return max(1, min(n_special, round(n_other * fraction / (1 - fraction)))), n_other


def _mixture_batches(x, y_mapped, special_idx, other_idx, sizes, seed, pixels, mixup: float = 0.0, flip: bool = False):
    """``make_batch`` over one epoch's mixture: S examples then others, both drawn per epoch."""
    drawn = {}

    def epoch_pool(epoch):
        if epoch not in drawn:
            drawn.clear()
            generator = epoch_generator(seed + DATA_SEED_SALT, epoch)   # on the CPU: the draw is the seed's alone
            special = special_idx[torch.randperm(len(special_idx), generator=generator)[:sizes[0]].to(special_idx.device)]
            other = other_idx[torch.randperm(len(other_idx), generator=generator)[:sizes[1]].to(other_idx.device)]
            drawn[epoch] = torch.cat([special, other])
        return drawn[epoch]

    def make_batch(indices, generator, epoch):
        chosen = epoch_pool(epoch)[indices]
        return augment_batch(x[chosen], y_mapped[chosen], generator, pixels, mixup, flip)

    return make_batch


def _mixed_val(x_val, y_val, classes, mapping, fraction, seed):
    """The val split restricted to the training mixture: all of S, others drawn once (seeded)."""
    in_s = torch.isin(y_val.cpu(), torch.tensor(list(classes)))   # drawn on the host: the same val set on any device
    special, other = torch.nonzero(in_s).flatten(), torch.nonzero(~in_s).flatten()
    sizes = mixture_sizes(len(special), len(other), fraction)
    generator = torch.Generator().manual_seed(seed + DATA_SEED_SALT)
    keep = torch.cat([special[torch.randperm(len(special), generator=generator)[:sizes[0]]],
                      other[torch.randperm(len(other), generator=generator)[:sizes[1]]]]).to(y_val.device)
    return take_rows(x_val, keep), mapping[y_val[keep]]   # (rows gathered a batch at a time, not copied whole)


def _cross_entropy(outputs, batch):
    return F.cross_entropy(outputs, batch[1])


def train_specialist(generalist: nn.Module, arch: str, options: dict, data, classes, *, train: TrainConfig,
                     special_fraction: float = SpecialistConfig.special_fraction, store=None, name: str = "specialist",
                     progress: bool = False) -> SpecialistFit:
    """Train the specialist for ``classes`` and apply the dustbin correction to its output bias."""
    classes = tuple(sorted(int(c) for c in classes))
    if not 0 < special_fraction < 1:
        raise ConfigError(f"The 'special_fraction' parameter must be in (0, 1). Got {special_fraction!r} instead.")
    mapping = label_map(classes, data.num_classes, data.device)
    in_s = torch.isin(data.y_train, torch.tensor(classes, device=data.device))
    special_idx, other_idx = torch.nonzero(in_s).flatten(), torch.nonzero(~in_s).flatten()
    if len(special_idx) == 0 or len(other_idx) == 0:
        raise TrainingError(f"Specialist for classes {list(classes)} needs training examples both in and outside its "
                            f"classes; the train split has {len(special_idx)} and {len(other_idx)}.")
    sizes = mixture_sizes(len(special_idx), len(other_idx), special_fraction)
    pixels = train.jitter if len(data.input_shape) == 3 else 0
    make_batch = _mixture_batches(data.x_train, mapping[data.y_train], special_idx, other_idx, sizes, train.seed, pixels,
                                  train.mixup, train.flip)
    val = _mixed_val(data.x_val, data.y_val, classes, mapping, special_fraction, train.seed)
    torch.manual_seed(train.seed)
    model = specialist_model(generalist, arch, options, data.input_shape, data.mean, data.std, classes)
    started = time.perf_counter()
    fitted = fit(model, n_train=sum(sizes), make_batch=make_batch, loss_fn=_cross_entropy, val=val, config=train,
                 store=store, name=name, progress=progress, data_device=data.device)
    true_share = len(special_idx) / len(data.y_train)
    training_share = sizes[0] / sum(sizes)
    bias = dustbin_bias(true_share, training_share)
    state = {k: v.detach().clone().cpu() for k, v in fitted.state.items()}
    state[f"{head_name(model, len(classes) + 1)}.bias"][-1] += bias
    return SpecialistFit(classes=classes, state=state, dustbin_bias=bias, true_share=true_share,
                         training_share=training_share, val_accuracy=fitted.val_accuracy, best_epoch=fitted.best_epoch,
                         epochs_run=fitted.epochs_run, seconds=time.perf_counter() - started, history=fitted.history,
                         seed=train.seed)
