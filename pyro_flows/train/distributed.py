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

Randomness. The processes start from the run's seed, and then every process but rank 0
reseeds (:func:`separate_random_streams`), so each draws its own dequantization noise,
flow-matching times and base samples, dropout masks and trace estimators for its local
batch; checkpoints hold every process's generator state, so ``fit --resume`` continues each
stream exactly. Data-dependent initialisation (ActNorm) runs once, from the global first
batch, and rank 0's result goes to every process (:func:`initialize_consistently`).

A process group the caller initialised before :func:`setup` is used and left open.

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
    "waits_for_data",
    "separate_random_streams",
    "gather_objects",
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
    #: whether :func:`setup` created the process group (and :func:`teardown` destroys it)
    owns_group: bool = False

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

    Returns :data:`SINGLE` when not launched by ``torchrun``. A process group the caller
    already initialised is used as it is and left open by :func:`teardown`.

    :raises ValueError: if ``RANK`` or ``LOCAL_RANK`` is missing or not a rank of the run.
    """
    if not launched_by_torchrun():
        return SINGLE
    world = int(os.environ["WORLD_SIZE"])
    rank = _rank_from_environment("RANK", world, required=True)
    local_rank = _rank_from_environment("LOCAL_RANK", world, required=False)
    owns_group = not dist.is_initialized()
    if owns_group:
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend=backend, rank=rank, world_size=world)
    return DistContext(rank, world, local_rank, owns_group)


def _rank_from_environment(name: str, world: int, required: bool) -> int:
    value = os.environ.get(name)
    if value is None:
        if not required:
            return 0
        raise ValueError(
            f"WORLD_SIZE is {world} but {name} is not set: start the processes with torchrun "
            "(which sets both), or unset WORLD_SIZE to run in one process"
        )
    try:
        rank = int(value)
    except ValueError:
        raise ValueError(f"{name} must be an integer rank, got {value!r}") from None
    if not 0 <= rank < world:
        raise ValueError(
            f"{name} {rank} is not a rank of a run of WORLD_SIZE {world} processes (0 to {world - 1})"
        )
    return rank


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
    """Leave the process group :func:`setup` created; one the caller made stays open."""
    if context.distributed and context.owns_group and dist.is_initialized():
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


def waits_for_data(flow: torch.nn.Module) -> bool:
    """Whether a layer of ``flow`` still waits for its data-dependent initialisation
    (an ``initialized`` buffer that is false: ActNorm, RealNVP batch norm)."""
    return any(name.endswith("initialized") and not bool(b.all()) for name, b in flow.named_buffers())


def initialize_consistently(flow: torch.nn.Module, first_batch: torch.Tensor, context: DistContext) -> None:
    """Run data-dependent initialisation once and give every process rank 0's result.

    Layers such as Glow's ActNorm set their parameters from the first batch they see;
    under DDP each process would see its own local batch and the processes' parameters
    would differ from then on (DDP only copies parameters when it is constructed). So
    before wrapping, each process scores ``first_batch`` once (no gradients) and rank 0's
    parameters and buffers are broadcast to all. Given the *global* first batch (the
    union of the processes' first local batches, as the training loop passes), ActNorm
    starts as in a single-process run. Nothing happens in a single process or when no
    layer still waits for its initialisation.
    """
    if not context.distributed or not waits_for_data(flow):
        return
    with torch.no_grad():
        flow.log_prob(first_batch)
    for tensor in [*flow.parameters(), *flow.buffers()]:
        dist.broadcast(tensor.data, src=0)


def separate_random_streams(context: DistContext) -> None:
    """Give every process but rank 0 a random stream of its own.

    The processes of a run start from the same seed, so without this they would draw
    the same dequantization noise, flow-matching times and base samples, dropout masks
    and trace estimators for their different local batches, and the global batch would
    see 1/N of the noise a single process draws. Each process ``r > 0`` reseeds torch's
    generators with a number drawn from the shared stream plus ``r``, so the streams
    are distinct, and still fixed by the run's seed.
    """
    if not context.distributed or context.rank == 0:
        return
    seed = int(torch.randint(0, 2**62, ()))
    torch.manual_seed(seed + context.rank)


def gather_objects(value, context: DistContext) -> list:
    """``[value of rank 0, value of rank 1, ...]`` on every process (``[value]`` in one)."""
    if not context.distributed:
        return [value]
    values = [None] * context.world_size
    dist.all_gather_object(values, value)
    return values


def all_reduce_mean(value: torch.Tensor, context: DistContext) -> torch.Tensor:
    """The mean of a (detached) tensor over processes; the tensor itself in one process."""
    if not context.distributed:
        return value
    value = value.detach().clone()
    dist.all_reduce(value, op=dist.ReduceOp.SUM)
    return value / context.world_size
