"""torch.distributed helpers the method layer needs: rank, world size, broadcast, gradient and value all-reduce.

Everything is a no-op in a single process (no process group initialised), so callers need no branches of their
own. The process group itself is set up by the product layer (ipl.distributed, from torchrun's environment).
"""
from __future__ import annotations

from typing import Any, Iterable, Sequence

import torch
import torch.distributed as dist


def active() -> bool:
    """True when a torch.distributed process group of more than one process is running."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    """This process's global rank (0 without a process group)."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def world_size() -> int:
    """Processes in the job (1 without a process group)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def is_main() -> bool:
    """Rank 0 (or a single process): the one that writes files and prints results."""
    return rank() == 0


# Python objects travel over a CPU (gloo) group when the default one is NCCL: set by
# ipl.distributed.init_from_env (None: the default group).
OBJECT_GROUP = None


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank `src`'s `obj` on every rank (pickled; tensors arrive on the CPU)."""
    if not active():
        return obj
    box = [obj if rank() == src else None]
    dist.broadcast_object_list(box, src=src, group=OBJECT_GROUP)
    return box[0]


def all_gather_objects(obj: Any) -> list[Any]:
    """Every rank's `obj`, in rank order, on every rank."""
    if not active():
        return [obj]
    out: list[Any] = [None] * world_size()
    dist.all_gather_object(out, obj, group=OBJECT_GROUP)
    return out


def barrier() -> None:
    """Wait for every rank."""
    if active():
        dist.barrier(group=OBJECT_GROUP)


def all_reduce_grads(params: Iterable[torch.nn.Parameter], op: str = "mean") -> None:
    """Average (or sum) the gradients of `params` over the ranks, in one flat buffer per dtype/device.

    Parameters without a gradient are skipped: every rank runs the same graph, so they are the same on each.
    """
    if not active():
        return
    grads = [p.grad for p in params if p.grad is not None]
    buckets: dict[tuple, list[torch.Tensor]] = {}
    for g in grads:
        buckets.setdefault((g.dtype, g.device), []).append(g)
    for group in buckets.values():
        flat = torch.cat([g.reshape(-1) for g in group])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        if op == "mean":
            flat /= world_size()
        offset = 0
        for g in group:
            g.copy_(flat[offset:offset + g.numel()].view_as(g))
            offset += g.numel()


def mean_values(values: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """The mean over ranks of each scalar (detached; for logging and checks that every rank must agree on)."""
    if not active() or not values:
        return [v.detach() for v in values]
    flat = torch.stack([v.detach().float().reshape(()) for v in values])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    flat /= world_size()
    return list(flat.unbind())


def gather_with_grad(local: torch.Tensor) -> torch.Tensor:
    """Every rank's rows of `local` concatenated in rank order; only this rank's own rows carry its gradient.

    A loss over the gathered batch, differentiated on each rank and its gradients summed over the ranks
    (all_reduce_grads(op="sum")), gives the gradient of the one-process loss on the whole batch.
    """
    if not active():
        return local
    parts = [torch.empty_like(local) for _ in range(world_size())]
    dist.all_gather(parts, local.detach().contiguous())
    parts[rank()] = local
    return torch.cat(parts)
