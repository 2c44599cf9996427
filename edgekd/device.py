"""Placement: the one place that decides where tensors and models live.

Every command resolves ``--device auto|cpu|cuda`` once (``resolve_device``); stages then put the data
where training happens with ``place_dataset`` (resident on the GPU when it fits, so batches, jitter
and views are made there without a host copy per step) and every helper follows the device of the
model or tensor it is given. Nothing defaults to the CPU behind the caller's back.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

import torch

from edgekd.config import PRECISIONS
from edgekd.errors import ConfigError
from edgekd.validation import check_device

if TYPE_CHECKING:
    from edgekd.data import Dataset

# share of the free GPU memory the resident data may take; the rest is for weights and activations
RESIDENT_SHARE = 0.5


def resolve_device(name: str | torch.device) -> torch.device:
    """``auto`` -> ``cuda`` when a GPU is visible, else ``cpu``; ``cuda`` without a GPU is an error."""
    if isinstance(name, torch.device):
        return name
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    check_device(name)
    if str(name).startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"The 'device' parameter is {str(name)!r} but no CUDA device is available; use --device cpu or auto.")
    device = torch.device(name)
    if device.index is not None and device.index >= torch.cuda.device_count():
        raise ConfigError(f"The 'device' parameter is {name!r} but this machine has {torch.cuda.device_count()} CUDA "
                          f"device(s), numbered from 0; pass one of them or 'cuda'.")
    if device.index is not None:   # cuda:N made current: what asks the current GPU (its random state, the name
        torch.cuda.set_device(device)   # recorded in a manifest, a plain "cuda") then means the one asked for
    return device


def module_device(module: torch.nn.Module) -> torch.device:
    """The device of a module's first parameter or buffer (the CPU for a module with neither)."""
    for tensor in module.parameters():
        return tensor.device
    for tensor in module.buffers():
        return tensor.device
    return torch.device("cpu")


def to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``tensor`` on ``device``; a host tensor bound for a GPU is pinned first so the copy is asynchronous."""
    if tensor.device == device:
        return tensor
    if device.type == "cuda" and tensor.device.type == "cpu":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)


RESIDENT_CHUNK_BYTES = 64 << 20   # a whole split crosses to a GPU in pieces this size


def copy_to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A whole split on ``device``, copied in 64 MiB pieces from pageable memory: pinning it at once would
    read a memory-mapped split whole into page-locked RAM, which may be smaller than the GPU's half."""
    device = torch.device(device)
    if tensor.device == device or device.type != "cuda" or tensor.device.type != "cpu":
        return tensor.to(device)
    out = torch.empty(tensor.shape, dtype=tensor.dtype, device=device)
    rows = max(1, RESIDENT_CHUNK_BYTES // max(1, tensor[:1].numel() * tensor.element_size()))
    for i in range(0, len(tensor), rows):
        out[i:i + rows].copy_(tensor[i:i + rows])
    return out


def fits_on_device(nbytes: int, device: torch.device) -> bool:
    """Whether ``nbytes`` of data can stay resident on ``device`` (always on the CPU)."""
    if device.type != "cuda":
        return True
    free, _total = torch.cuda.mem_get_info(device)
    return nbytes <= RESIDENT_SHARE * free


def place_table(table: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A table of teacher targets (a split's logits on every view) on ``device`` when it fits there beside
    what is resident already (copied in pieces), else left on the host, memory-mapped, for batches to be
    gathered from it there: 25 jittered views of a large split outgrow a GPU that holds the split itself."""
    device = torch.device(device)
    if table.device == device or not fits_on_device(table.numel() * table.element_size(), device):
        return table
    return copy_to_device(table, device)


def place_dataset(data: "Dataset", device: torch.device) -> "Dataset":
    """``data`` with every split on ``device`` when it fits there (copied in pieces, ``copy_to_device``);
    else unchanged (batches are then copied per step from the host, pinned and non-blocking). The
    fingerprints (sha256 of the host bytes, keys of the logit cache) are computed first, so a resident
    dataset keeps them."""
    device = resolve_device(device)
    tensors = {f"{kind}_{split}": getattr(data, f"{kind}_{split}") for split in ("train", "val", "test") for kind in "xy"}
    if all(t.device == device for t in tensors.values()):
        return data
    if not fits_on_device(sum(t.numel() * t.element_size() for t in tensors.values()), device):
        return data
    return data.to(device)


def autocast(device: torch.device, precision: str):
    """bf16 autocast for ``precision='bf16'``; a no-op context for fp32."""
    if precision not in PRECISIONS:
        raise ConfigError(f"The 'precision' parameter must be one of {', '.join(map(repr, PRECISIONS))}. Got {precision!r} instead.")
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def describe_device(device: torch.device) -> str:
    """``'cpu'`` or the GPU's name, for reports."""
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return "cpu"
