"""Conformance entries: continuous-time flows (FFJORD, its conditional twin) and their builders."""

import pyro_flows
from pyro_flows.transforms import FFJORD, ConditionalFFJORD

from .registry import Entry

# The generic checks compare a round trip at 1e-10 and log-dets at 1e-8 in float64, so the
# solver runs at rtol = atol = 1e-12 (dopri5 then lands within ~1e-11 in ~100 evaluations
# for these tiny nets). Float32 solves are raised to the dtype's floor (64 eps) by FFJORD.
_TIGHT = dict(rtol=1e-12, atol=1e-12)

ENTRIES = [
    Entry(
        "ffjord",
        lambda: pyro_flows.ffjord(2, hidden_dims=(8,), **_TIGHT),
        (2,),
        (FFJORD, pyro_flows.ffjord),
        randomize_scale=0.1,
        # torch.compile cannot capture an adaptive solve: torchdiffeq's step-size loop
        # branches on tensor values (graph breaks at bisect) and the ODE function is
        # re-traced at every evaluation until the recompile limit, after which it runs
        # eagerly; the check then takes ~100 s and compares eager with eager
        compile=False,
    ),
    Entry(
        "cond_ffjord",
        lambda: pyro_flows.conditional_ffjord(2, 3, hidden_dims=(8,), **_TIGHT),
        (2,),
        (ConditionalFFJORD, pyro_flows.conditional_ffjord),
        randomize_scale=0.1,
        context_dim=3,
        compile=False,  # as above
    ),
]
