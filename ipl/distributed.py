"""`ipl adapt` / `ipl eval` under torchrun: the process group, per-rank devices, the same-config check.

torchrun (torch.distributed.run) starts one process per GPU and sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR
and MASTER_PORT; `init_from_env` joins them into one process group (NCCL on GPUs, gloo on CPUs). Without those
variables everything here is a no-op and ipl runs as one process. docs/distributed.md is the reference.
"""
from __future__ import annotations

import atexit
import datetime
import hashlib
import json
import os
import signal
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator, Optional

import torch
import torch.distributed as dist

from ipl.core import distributed as core
from ipl.core.distributed import active, barrier, broadcast_object, is_main, rank, world_size
from ipl.core.errors import IPLError

__all__ = ["Launch", "init_from_env", "launched", "local_device", "check_same", "main_first", "active", "rank",
           "world_size", "is_main", "barrier", "broadcast_object", "shard_of", "split_batch", "lost_peer", "parallel_record",
           "share_learners", "share_trainer", "shutdown"]

# Collectives wait this long for a slow rank (IPL_DIST_TIMEOUT, seconds). Spread targets wait at the end for the
# slowest rank's last run, and data-parallel ranks wait while rank 0 alone runs stage 1 or writes samples: hours
# are normal. A rank that dies does not hit it: torchrun's agent stops the whole job at once.
DEFAULT_TIMEOUT_S = 24 * 3600


@dataclass
class Launch:
    """This process's place in the job."""

    rank: int
    world_size: int
    local_rank: int
    backend: str


def launched() -> bool:
    """True when started by torchrun with more than one process (its environment variables are set)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and "RANK" in os.environ


def init_from_env(device: str = "auto") -> Optional[Launch]:
    """Join torchrun's process group (once); None in a single process.

    Backend: NCCL when the run uses CUDA GPUs, else gloo (CPU). Each process takes the GPU of its LOCAL_RANK.
    """
    if not launched():
        return None
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if dist.is_initialized():
        return Launch(dist.get_rank(), dist.get_world_size(), local_rank, dist.get_backend())
    use_cuda = torch.cuda.is_available() and device != "cpu"
    if use_cuda:
        if local_rank >= torch.cuda.device_count():
            raise IPLError(f"rank {os.environ.get('RANK')}: LOCAL_RANK {local_rank} but only "
                           f"{torch.cuda.device_count()} GPU(s) are visible; start at most that many processes per "
                           "node (torchrun --nproc_per_node)")
        torch.cuda.set_device(local_rank)
    backend = "nccl" if use_cuda else "gloo"
    timeout = datetime.timedelta(seconds=float(os.environ.get("IPL_DIST_TIMEOUT", DEFAULT_TIMEOUT_S)))
    dist.init_process_group(backend=backend, timeout=timeout)
    if backend == "nccl":  # pickled objects (configs, states, gathered features) travel on the CPU
        core.OBJECT_GROUP = dist.new_group(backend="gloo", timeout=timeout)
    atexit.register(shutdown)  # several commands may run in one process (tests): leave the group at exit only
    return Launch(dist.get_rank(), dist.get_world_size(), local_rank, backend)


def local_device(device: str) -> str:
    """The device of this rank: auto / cuda become this process's GPU (cuda:LOCAL_RANK) under torchrun."""
    if active() and device in ("auto", "cuda") and torch.cuda.is_available():
        return f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    return device


def config_hash(obj: Any) -> str:
    """SHA-256 of a JSON-able object (keys sorted)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode("utf-8")).hexdigest()


def check_same(obj: Any, what: str = "settings") -> None:
    """Refuse to start unless every rank sees the same `obj` (the hash of rank 0's is broadcast to all).

    Every rank raises the same error (each compares with rank 0's hash and all of them learn which ranks differ),
    so no rank is left waiting in a collective.
    """
    if not active():
        return
    mine = config_hash(obj)
    ref = broadcast_object(mine)
    differ = [r for r, ok in enumerate(core.all_gather_objects(mine == ref)) if not ok]
    if differ:
        raise IPLError(f"the {what} differ between ranks: rank(s) {', '.join(map(str, differ))} see other {what} "
                       f"than rank 0 (hash {ref[:12]}..., this is rank {rank()} with {mine[:12]}...). Start every "
                       "process with the same command line and the same files (on every node), then retry.")


@contextmanager
def main_first() -> Iterator[None]:
    """Rank 0 runs the block first (e.g. downloads into a shared cache), then the others."""
    if is_main():
        yield
        barrier()
    else:
        barrier()
        yield


def shard_of(index: int) -> bool:
    """Whether work item `index` (batch, target, ...) belongs to this rank (round robin)."""
    return index % world_size() == rank()


def lost_peer(error: BaseException) -> bool:
    """Whether an error is a collective failing because another process of the job died or went away."""
    text = str(error)
    return active() and any(k in text for k in ("Connection reset", "Connection closed", "connection closed",
                                                  "Broken pipe", "NCCL", "ProcessGroup", "gloo"))


def split_batch(batch: int, flag: str = "--batch") -> int:
    """This rank's share of a global batch; refused unless it divides evenly (as NVIDIA's StyleGAN trainers)."""
    n = world_size()
    if batch % n:
        raise IPLError(f"{flag} {batch} cannot be split evenly over {n} data-parallel processes; use a multiple of "
                       f"{n} (each process takes {flag} / {n})")
    return batch // n


def parallel_record(data_parallel: bool, batch: int, batch_prompt: int) -> dict[str, Any]:
    """What config.json records of the job: processes sharing this run and each one's batches."""
    n = world_size() if data_parallel and active() else 1
    return {"data_parallel_processes": n, "batch_per_process": batch // n, "batch_prompt_per_process":
            batch_prompt // n}


def share_learners(learners: Optional[list], clips: list) -> Optional[list]:
    """Data-parallel: rank 0's prompt learners (trained, or read from a resumed run folder) on every rank."""
    if not active():
        return learners
    from ipl.method.prompts import PromptLearner

    sent = broadcast_object([(dict(m.init_kwargs), {k: v.detach().cpu() for k, v in m.state_dict().items()})
                             for m in learners] if is_main() else None)
    if is_main():
        return learners
    out = []
    for (kwargs, state), clip in zip(sent, clips):
        m = PromptLearner(**kwargs)
        m.load_state_dict(state)
        out.append(m.to(clip.device).eval().requires_grad_(False))
    return out


def share_trainer(trainer: Any, resumed: bool) -> None:
    """Data-parallel: every rank starts stage 2 from rank 0's trainer state (its resumed checkpoint, if any).

    Without a checkpoint every rank builds the same trainer from the same source file, so only a flag travels.
    """
    if not active():
        return
    from ipl.method.stage2 import Stage2Trainer

    if type(trainer).step is not Stage2Trainer.step:  # e.g. the lean diffusion trainer: a step of its own
        raise IPLError(f"--data-parallel: this source's stage-2 trainer ({type(trainer).__name__}) has a step of "
                       "its own that does not share batches over processes; drop --data-parallel (spread several "
                       "--target runs over the processes instead) or use a trainer without it")
    state = broadcast_object(_to_cpu(trainer.state_dict()) if is_main() and resumed else None)
    if state is not None and not is_main():
        trainer.load_state_dict(state)


def _to_cpu(obj: Any) -> Any:
    """Tensors of a nested state moved to the CPU (pickled CUDA tensors would land on the sender's GPU)."""
    if torch.is_tensor(obj):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_cpu(v) for v in obj)
    return obj


@contextmanager
def held_signals() -> Iterator[None]:
    """SIGTERM and SIGINT wait until the block is done (then arrive as usual).

    When a process of the job dies, torchrun's agent sends SIGTERM to the others, often while one is already
    handling the failed collective: the run's final status is written before the signal stops the process.
    """
    held = {signal.SIGTERM, signal.SIGINT}
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "pthread_sigmask"):
        yield
        return
    before = signal.pthread_sigmask(signal.SIG_BLOCK, held)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, before)


def shutdown() -> None:
    """Leave the process group (at the end of a command that joined one)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
        core.OBJECT_GROUP = None
