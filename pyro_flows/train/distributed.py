"""Data-parallel training across processes: ``torchrun`` + ``DistributedDataParallel``.

``torchrun --nproc_per_node N -m pyro_flows fit ...`` (and multi-node ``torchrun``) starts
N processes with ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and a rendezvous address in
their environment. :func:`setup` reads them and joins the process group: **NCCL** when
the run's device is CUDA (each process takes GPU ``LOCAL_RANK``), **Gloo** on CPU.

How a step is split. The global batch ``--batch-size B`` is cut into ``B / N`` points per
process; a :class:`torch.utils.data.DistributedSampler` (seeded by ``--seed``, reshuffled
every epoch with ``set_epoch``) gives each process every N-th index of one shared
permutation, so the N local batches of a step are exactly the single-process batch of
that step. Each process averages its loss over its local batch, and DDP averages the
gradients over processes, which is the gradient of the mean over the global batch.
Parameters start equal (DDP broadcasts rank 0's at construction) and stay equal because
every process applies the same averaged gradient.

Batch-norm statistics (``--batch-norm``). :class:`~pyro_flows.transforms.RealNVPBatchNorm`
computes its statistics over the batch it is given, which under DDP is the local batch
(as with ``torch.nn.BatchNorm`` without ``SyncBatchNorm``); we do not change that layer.
What we do: DDP copies rank 0's running averages (and the layer's ``initialized`` flag)
to every process at the start of each forward pass, and :func:`sync_buffers` does so again
before every evaluation, so all processes evaluate, stop, checkpoint and sample with the
*same* running statistics, namely those rank 0 accumulated from its local batches. The
same holds for the ``torch.nn.BatchNorm2d`` layers inside the image flows' conditioners.
Training normalizes with local-batch statistics, so with batch norm the result is close
to, not identical with, a single-process run; without batch norm it matches up to
floating-point summation order (the tests check both properties). Use local batches of
at least a few hundred points with batch norm so the local statistics are good estimates.

Only rank 0 writes metrics, plots, checkpoints and the progress bar; every process
evaluates the validation NLL (the same number on each, from identical parameters) so the
early-stopping decision is the same everywhere without extra communication.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional

import torch
import torch.distributed as dist

__all__ = [
    "DistContext",
    "setup",
    "teardown",
    "launched_by_torchrun",
    "all_reduce_mean",
    "initialize_consistently",
    "wrap_model",
    "sync_buffers",
    "fail_together",
    "FailedElsewhere",
    "process_rank",
]


@dataclass(frozen=True)
class DistContext:
    """Where this process stands: its rank, the number of processes and its device."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


SINGLE = DistContext()


def launched_by_torchrun() -> bool:
    """Whether ``torchrun`` (or another launcher setting ``WORLD_SIZE``) started us."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def setup(device: torch.device) -> DistContext:
    """Join the process group named by the environment (NCCL on CUDA, Gloo on CPU).

    Returns :data:`SINGLE` when not launched by ``torchrun``.
    """
    if not launched_by_torchrun():
        return SINGLE
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend=backend, rank=rank, world_size=world)
    return DistContext(rank, world, local_rank)


def process_rank() -> int:
    """This process's rank as the launcher set it (0 when not launched by ``torchrun``),
    known before the process group exists."""
    if not launched_by_torchrun():
        return 0
    try:
        return int(os.environ.get("RANK", "0"))
    except ValueError:
        return 0


class FailedElsewhere(ValueError):
    """Another process of the run failed; this one stops with it (its message is the
    other process's, which rank 0 reports)."""


def fail_together(error: Optional[BaseException], context: DistContext) -> None:
    """Make a failure on any process a failure on every process, with one message.

    Every process calls it at the same point with the exception it met (or ``None``).
    In a single process the error is simply raised. Under ``torchrun`` the processes
    exchange their messages: if any failed, the first failing process re-raises its own
    error and every other raises :class:`FailedElsewhere` carrying that message, so
    all stop together (no process waits forever for the others) and rank 0, which is
    the one that reports, can name the problem even when it arose elsewhere.
    """
    if not context.distributed:
        if error is not None:
            raise error
        return
    mine = None if error is None else str(error)
    messages = [None] * context.world_size
    dist.all_gather_object(messages, mine)
    failed = [rank for rank, message in enumerate(messages) if message is not None]
    if not failed:
        return
    if error is not None and context.rank == failed[0]:
        raise error
    where = "" if failed[0] == 0 else f"process {failed[0]}: "
    raise FailedElsewhere(where + messages[failed[0]])


def teardown(context: DistContext) -> None:
    if context.distributed and dist.is_initialized():
        dist.destroy_process_group()


def process_device(device: torch.device, context: DistContext) -> torch.device:
    """Each process of a multi-GPU run takes the GPU of its local rank."""
    if context.distributed and device.type == "cuda":
        return torch.device("cuda", context.local_rank)
    return device


def wrap_model(module: torch.nn.Module, context: DistContext, device: torch.device) -> torch.nn.Module:
    """``module`` itself in a single process, else a ``DistributedDataParallel`` around it."""
    if not context.distributed:
        return module
    from torch.nn.parallel import DistributedDataParallel

    device_ids = [device.index] if device.type == "cuda" else None
    # Buffers (batch-norm running averages) are synced from rank 0 at every forward pass
    # (DDP's default) and explicitly before every evaluation (sync_buffers).
    return DistributedDataParallel(module, device_ids=device_ids)


def sync_buffers(module: torch.nn.Module, context: DistContext) -> None:
    """Copy rank 0's buffers to every process, so that evaluations, early-stopping
    decisions and checkpoints agree across processes."""
    if not context.distributed:
        return
    for buffer in module.buffers():
        dist.broadcast(buffer.data, src=0)


def initialize_consistently(flow: torch.nn.Module, first_batch: torch.Tensor, context: DistContext) -> None:
    """Run data-dependent initialisation once and give every process rank 0's result.

    Layers such as Glow's ActNorm set their parameters from the first batch they see;
    under DDP each process would see its own local batch and the processes' parameters
    would differ from then on (DDP only copies parameters when it is constructed). So
    before wrapping, each process scores its first local batch once (no gradients) and
    rank 0's parameters and buffers are broadcast to all. Nothing happens in a single
    process or when no layer still waits for its initialisation.
    """
    if not context.distributed:
        return
    waiting = [b for name, b in flow.named_buffers() if name.endswith("initialized") and not bool(b.all())]
    if not waiting:
        return
    with torch.no_grad():
        flow.log_prob(first_batch)
    for tensor in [*flow.parameters(), *flow.buffers()]:
        dist.broadcast(tensor.data, src=0)


def all_reduce_mean(value: torch.Tensor, context: DistContext) -> torch.Tensor:
    """The mean of a (detached) tensor over processes; the tensor itself in one process."""
    if not context.distributed:
        return value
    value = value.detach().clone()
    dist.all_reduce(value, op=dist.ReduceOp.SUM)
    return value / context.world_size
