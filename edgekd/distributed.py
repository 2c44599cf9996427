"""Data-parallel training under ``torchrun`` (gloo on CPU, nccl on GPU).

``torchrun --nproc-per-node N -m edgekd teacher train ...`` sets RANK / WORLD_SIZE; every rank sees
the same global batch order (same seed), takes its shard of each batch, and gradients are averaged
with each rank's loss weighted by its share of the rows (``shard_batch``), so N processes take the
same optimisation steps as one process with the same global batch, the last uneven batch included.
What differs: BatchNorm normalises each shard by its own statistics during a step (its running
statistics are averaged over the ranks after every epoch, ``average_buffers``), and dropout draws its
masks per rank. Only rank 0 writes checkpoints, caches and artifacts.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch


@dataclass
class Context:
    rank: int
    world_size: int
    device: torch.device

    def shard_batch(self, batch: tuple) -> tuple[tuple, float]:
        """This rank's contiguous slice of every tensor in the batch, shard sizes differing by at most one,
        and ``share`` = world size x (its rows / the batch's): a rank's mean loss scaled by its share and
        averaged over the ranks (``average_gradients``) is the batch's mean loss, however unevenly the rows
        of a last batch fall. A rank may get no rows (a last batch smaller than the world): share 0."""
        n = len(batch[0])
        base, extra = divmod(n, self.world_size)
        lo = self.rank * base + min(self.rank, extra)
        hi = lo + base + (1 if self.rank < extra else 0)
        return tuple(t[lo:hi] if torch.is_tensor(t) and len(t) == n else t for t in batch), \
            self.world_size * (hi - lo) / max(1, n)

    def average_gradients(self, model: torch.nn.Module) -> None:
        import torch.distributed as dist

        for p in model.parameters():
            if p.grad is not None:
                dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)
                p.grad /= self.world_size

    def average_buffers(self, model: torch.nn.Module) -> None:
        """BatchNorm's running statistics, each rank's from its own shards, averaged over the ranks: every
        rank then scores val alike and takes the same best-epoch and early-stopping decisions (a rank that
        decided otherwise would run other collectives and hang the job), and rank 0 saves all shards' statistics."""
        import torch.distributed as dist

        for buffer in model.buffers():
            if buffer.is_floating_point():
                dist.all_reduce(buffer.data, op=dist.ReduceOp.SUM)
                buffer.data /= self.world_size

    def broadcast_parameters(self, model: torch.nn.Module) -> None:
        import torch.distributed as dist

        model.to(self.device)   # nccl broadcasts GPU tensors only
        for tensor in list(model.parameters()) + list(model.buffers()):
            dist.broadcast(tensor.data, src=0)

    def gather_rows(self, local: torch.Tensor, total: int) -> torch.Tensor:
        """Concatenate each rank's rows (shards of ``total`` rows in rank order)."""
        import torch.distributed as dist

        per = -(-total // self.world_size)
        # nccl moves only GPU tensors: the exchange happens on this rank's device, the rows come back where they were
        padded = torch.zeros((per, *local.shape[1:]), dtype=local.dtype, device=self.device)
        padded[:len(local)] = local.to(self.device)
        gathered = [torch.zeros_like(padded) for _ in range(self.world_size)]
        dist.all_gather(gathered, padded)
        return torch.cat(gathered)[:total].to(local.device)

    def shard_range(self, total: int) -> tuple[int, int]:
        per = -(-total // self.world_size)
        return min(total, self.rank * per), min(total, (self.rank + 1) * per)

    def all_true(self, flag: bool) -> bool:
        import torch.distributed as dist

        value = torch.tensor([1 if flag else 0], device=self.device)
        dist.all_reduce(value, op=dist.ReduceOp.MIN)
        return bool(value.item())

    def barrier(self) -> None:
        import torch.distributed as dist

        dist.barrier()


def context_from_env(device: str = "auto") -> Context | None:
    """A Context when launched by torchrun with WORLD_SIZE > 1, else None (single process)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return None
    import torch.distributed as dist

    from edgekd.device import resolve_device

    use_cuda = resolve_device(device).type == "cuda"
    local = int(os.environ.get("LOCAL_RANK", os.environ.get("RANK", "0")))
    if use_cuda:
        if local >= torch.cuda.device_count():   # cudaSetDevice would fail as an internal error
            from edgekd.errors import ConfigError

            raise ConfigError(f"torchrun started local rank {local} but this machine has {torch.cuda.device_count()} "
                              f"CUDA device(s); pass --nproc-per-node {torch.cuda.device_count()} (one process per GPU) "
                              f"or --device cpu.")
        torch.cuda.set_device(local)   # before the process group, so nccl binds this rank to its GPU
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    rank = dist.get_rank()
    return Context(rank, world, torch.device("cuda", local) if use_cuda else torch.device("cpu"))
