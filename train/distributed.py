"""Process-group set-up from torchrun's environment; the same code runs as a single process.

A process that joins a group must leave it before the interpreter exits. Gloo keeps worker threads
(``pt_gloo_runloop``, ``gloo_tcp_loop``) until its process group is destroyed, and a worker drops
its last reference to a finished collective *after* the caller's ``wait()`` returned. A barrier
also keeps the collectives still in flight when it was issued (its "prior work") until the barrier
itself is freed, so the tensors of the last ``all_reduce`` / ``all_gather_object`` before a run's
final barriers are often freed on a gloo thread just after ``train`` returned. Those tensors were
made in Python and own a Python object; freeing them takes the GIL. If the main thread is already
finalising the interpreter, CPython ends the worker thread with ``pthread_exit``; the unwind meets a
``noexcept`` destructor and the process dies with "terminate called without an active exception"
(SIGABRT) after the run had finished (issue 26). A process's entry point therefore leaves the group
with :func:`leave_process_group_on_exit`, which joins those threads, on every way out.
"""

from __future__ import annotations

import contextlib
import gc
import os
import traceback
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

__all__ = ["DistInfo", "init_distributed", "leave_process_group_on_exit", "is_distributed", "barrier", "shutdown"]


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed(device: torch.device) -> DistInfo:
    """Join the process group torchrun describes (RANK/WORLD_SIZE/LOCAL_RANK), NCCL on CUDA and
    gloo on CPU. Without those variables this is a single process and nothing is initialised.
    A group joined here must be left before the process exits (:func:`leave_process_group_on_exit`)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, timeout=timedelta(minutes=30),
                                device_id=device if device.type == "cuda" else None)
    return DistInfo(rank, world, local)


@contextlib.contextmanager
def leave_process_group_on_exit() -> Iterator[None]:
    """For a process's entry point: leave the process group, if the block joined one, on every way out.

    On return, on an exception and on KeyboardInterrupt (or an exception a signal handler raises)
    the group is destroyed before the block is left, so no gloo thread outlives it. In one process
    this does nothing. The group is left here rather than at the end of ``train``: joining it again
    in the same process (a second ``train`` call) can hang in gloo's rendezvous on keys the first
    group left in torchrun's store.

    When an exception leaves the block under DDP, the local variables of the frames it unwound are
    cleared first (``traceback.clear_frames``; the traceback's text is kept): otherwise they keep
    the DDP wrapper, and with it the process group and its threads, alive until interpreter exit.
    """
    try:
        yield
    except BaseException as e:
        if is_distributed():
            traceback.clear_frames(e.__traceback__)
        raise
    finally:
        shutdown()


def is_distributed() -> bool:
    """True inside an initialised process group (collectives must run); False in one process."""
    return dist.is_available() and dist.is_initialized()


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def shutdown() -> None:
    """Leave the process group: destroy it, which joins its backend's threads.

    Call it after the last collective, once the DDP wrapper and every other user of the group is
    gone. Garbage is collected first: a DDP wrapper caught in a reference cycle still holds the
    group, and freeing it later, from the garbage collector and with the GIL held, would run the
    backend's destructor (which joins threads that may need the GIL) there instead of here.
    """
    if is_distributed():
        gc.collect()
        dist.destroy_process_group()
