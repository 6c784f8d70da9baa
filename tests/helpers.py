"""Shared test helpers: autograd log-determinants, parameter randomisation, running the
command line and interrupting a training run."""

from __future__ import annotations

import math

import pyro
import torch


def autograd_logdet(fn, x: torch.Tensor, event_dim: int) -> torch.Tensor:
    """log|det dfn/dx| per batch element by the full autograd Jacobian (use float64)."""
    event_shape = x.shape[x.dim() - event_dim :]
    flat = x.reshape(-1, *event_shape)
    n = math.prod(event_shape)
    out = []
    for v in flat:
        jac = torch.autograd.functional.jacobian(
            lambda u: fn(u.view(1, *event_shape)).reshape(-1), v.reshape(-1)
        )
        out.append(torch.linalg.slogdet(jac.reshape(n, n))[1])
    return torch.stack(out).reshape(x.shape[: x.dim() - event_dim])


@torch.no_grad()
def randomize(module: torch.nn.Module, scale: float = 0.3, seed: int = 0) -> torch.nn.Module:
    """Perturb every parameter so that no layer is the identity."""
    g = torch.Generator().manual_seed(seed)
    for p in module.parameters():
        p.add_(scale * torch.randn(p.shape, generator=g, dtype=torch.float64).to(p))
    return module


def midpoint_density(log_prob, half: float = 9.0, n: int = 600):
    """``(grid, density, cell area)`` of ``exp(log_prob)`` at the midpoints of an ``n x n``
    grid on ``[-half, half]^2`` (float64, no gradients): ``density.sum() * cell`` is the
    midpoint rule for the mass of the box."""
    ticks = (torch.arange(n, dtype=torch.float64) + 0.5) / n * 2 * half - half
    grid = torch.cartesian_prod(ticks, ticks)
    with torch.no_grad():
        density = log_prob(grid).exp()
    return grid, density, (2 * half / n) ** 2


def run_cli(capsys, *argv):
    """Run ``pyro-flows ARGV`` in this process: ``(exit code, stdout, stderr)``."""
    from pyro_flows.cli import main

    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


class Interrupt(Exception):
    """Raised by :func:`interrupt_at` to stop a training run as a kill would."""


def interrupt_at(step: int):
    """An ``on_step`` callback of ``fit_run`` that raises :class:`Interrupt` at ``step``."""

    def on_step(current: int) -> None:
        if current == step:
            raise Interrupt

    return on_step


def trained_parameters() -> dict:
    """The parameter store's optimized parameters by name: all but the flow guides'
    curvature centeredness, which the store holds fixed (never traced, no gradient)."""
    params = dict(pyro.get_param_store().named_parameters())
    return {name: p for name, p in params.items() if ".curvature_centeredness." not in name}


def free_port() -> int:
    """A TCP port on localhost that nothing listens on now (for a Gloo rendezvous)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def join_gloo_environment(rank: int, world: int, port: int) -> None:
    """Set the variables ``torchrun`` would set for process ``rank`` of ``world`` on this
    machine, and one torch thread (two processes share the cores)."""
    import os

    import torch

    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_RANK=str(rank),
    )
    torch.set_num_threads(1)


def plated_model(n: int) -> None:
    """A global latent ``a`` and ``n`` local latents ``b`` in a plate of size ``n`` (a
    model whose latent shapes follow its argument)."""
    import pyro.distributions as dist

    a = pyro.sample("a", dist.Normal(0.0, 1.0))
    with pyro.plate("n", n):
        b = pyro.sample("b", dist.Normal(a, 1.0))
        pyro.sample("y", dist.Normal(b, 1.0), obs=torch.zeros(n))


def run_config(out, **options):
    """The configuration of a tiny test run in ``out``: quiet, without plots and without
    early stopping unless ``options`` say otherwise."""
    from pyro_flows.train import RunConfig

    return RunConfig(**{"quiet": True, "plots": False, "patience": 0, **options, "out": str(out)})


def sized_model(n: int, family: str = "Normal") -> None:
    """A latent ``a`` and a latent vector ``b`` of size ``n`` drawn around it from
    ``pyro.distributions.<family>`` (a latent shape that follows the argument without a
    plate)."""
    import pyro.distributions as dist

    law = getattr(dist, family)
    a = pyro.sample("a", law(0.0, 1.0))
    pyro.sample("b", law(a, 1.0).expand([n]).to_event(1))


def log_normal_sized_model(n: int) -> None:
    """:func:`sized_model` with log-normal laws (positive latents)."""
    sized_model(n, "LogNormal")
