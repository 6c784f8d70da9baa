"""Flows by name: what ``pyro-flows fit --flow NAME`` builds.

Each entry names the ``pyro_flows`` attribute that builds the transform and is resolved
only when used, so a flow whose module is not installed gives a clear error instead of
breaking the command for every other flow.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Callable, Optional, Tuple

import torch

from ..flow import Flow

__all__ = ["FlowEntry", "FLOWS", "build_model", "flow_names"]


@dataclass(frozen=True)
class FlowEntry:
    """One selectable flow: the builder's dotted path, the event shapes it handles and
    how the run options map to its arguments."""

    name: str
    target: str
    #: "vector" (D,), "image" (C, H, W) or "any" (elementwise or ODE flows on vectors)
    kind: str
    arguments: Callable
    summary: str

    def resolve(self) -> Callable:
        builder = self._lookup()
        if builder is None:
            raise ValueError(
                f"--flow {self.name} needs {self.target}, which this installation of pyro_flows does not "
                f"have yet ({self.summary}); available now: {', '.join(available_flows())}"
            )
        return builder

    def _lookup(self) -> Optional[Callable]:
        module, _, attr = self.target.rpartition(".")
        try:
            return getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError):
            return None

    def check_shape(self, shape: Tuple[int, ...]) -> None:
        """Raise a ``ValueError`` unless points of ``shape`` suit this flow's ``kind``."""
        if self.kind == "vector" and len(shape) != 1:
            raise ValueError(
                f"--flow {self.name} models vectors, but the data has points of shape {shape}; "
                "use real_nvp_image or glow for images"
            )
        if self.kind == "image" and len(shape) != 3:
            raise ValueError(
                f"--flow {self.name} models images (C, H, W), but the data has points of shape {shape}"
            )


FLOWS = {
    e.name: e
    for e in [
        FlowEntry(
            "nice",
            "pyro_flows.nice",
            "vector",
            lambda c, s: dict(input_dim=s[0], num_layers=c.num_layers, hidden_dims=c.hidden_dims),
            "NICE additive couplings",
        ),
        FlowEntry(
            "real_nvp",
            "pyro_flows.real_nvp",
            "vector",
            lambda c, s: dict(
                input_dim=s[0],
                num_layers=c.num_layers,
                hidden_dims=c.hidden_dims,
                batch_norm=c.batch_norm,
            ),
            "RealNVP affine couplings",
        ),
        FlowEntry(
            "spline",
            "pyro_flows.spline_flow",
            "vector",
            lambda c, s: dict(input_dim=s[0], num_layers=c.num_layers, hidden_dims=c.hidden_dims),
            "rational-quadratic spline couplings with ActNorm (neural spline flow)",
        ),
        FlowEntry(
            "real_nvp_image",
            "pyro_flows.real_nvp_image",
            "image",
            lambda c, s: dict(
                shape=s,
                num_scales=c.num_scales,
                hidden_channels=c.hidden_channels,
                num_blocks=c.num_blocks,
                batch_norm=c.batch_norm,
            ),
            "multi-scale RealNVP for images",
        ),
        FlowEntry(
            "glow",
            "pyro_flows.glow",
            "image",
            lambda c, s: dict(
                shape=s,
                num_scales=c.num_scales,
                steps_per_scale=c.steps_per_scale,
                hidden_channels=c.hidden_channels,
                num_blocks=c.num_blocks,
            ),
            "Glow",
        ),
        FlowEntry(
            "ffjord",
            "pyro_flows.ffjord",
            "vector",
            lambda c, s: dict(
                input_dim=s[0],
                hidden_dims=c.hidden_dims,
                kinetic_weight=c.kinetic_weight,
                frobenius_weight=c.frobenius_weight,
            ),
            "continuous-time FFJORD",
        ),
        FlowEntry(
            "cdf",
            "pyro_flows.cdf_flow",
            "any",
            lambda c, s: dict(num_components=c.num_components, base=c.base, event_shape=s),
            "the 1-D mixture-CDF flow (coordinatewise)",
        ),
    ]
}


def flow_names() -> Tuple[str, ...]:
    return tuple(FLOWS)


def available_flows() -> Tuple[str, ...]:
    return tuple(entry.name for entry in FLOWS.values() if entry._lookup() is not None)


def build_model(config, event_shape, discrete: bool = False) -> Flow:
    """The :class:`~pyro_flows.Flow` (transform and base) a run configuration names.

    For ``discrete`` data (dequantized into [0, 1)) with ``config.logit_alpha > 0`` the
    flow ends in the logit preprocessing layer (data side), so the model's density is on
    [0, 1)^D and bits/dim follow from its ``log_prob`` directly.

    >>> from pyro_flows.train.config import RunConfig
    >>> build_model(RunConfig(num_layers=2, hidden_dims=(8,)), (2,)).event_shape
    torch.Size([2])
    """
    if config.flow not in FLOWS:
        raise ValueError(f"unknown --flow {config.flow!r}; expected one of {', '.join(FLOWS)}")
    entry = FLOWS[config.flow]
    builder = entry.resolve()
    shape = tuple(event_shape)
    entry.check_shape(shape)
    transform = builder(**entry.arguments(config, shape))
    if discrete and config.logit_alpha > 0:
        from ..transforms.preprocess import logit as make_logit

        transform = [transform, make_logit(tuple(event_shape), alpha=config.logit_alpha)]
    return Flow(transform, base=config.base, event_shape=torch.Size(event_shape))
