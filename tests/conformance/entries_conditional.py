"""Conformance entries: conditional couplings and the conditional RealNVP builder.

The suite conditions each module on a random context (``Entry.context_dim``) and runs
every generic check on the resulting transform."""

import pyro_flows
from pyro_flows.builders.conditional import ConditionalVectorFlow
from pyro_flows.transforms import ConditionalAdditiveCoupling, ConditionalAffineCoupling

from .registry import Entry

ENTRIES = [
    Entry(
        "cond_additive_half",
        lambda: pyro_flows.conditional_additive_coupling(5, 3, (16,)),
        (5,),
        (ConditionalAdditiveCoupling,),
        context_dim=3,
    ),
    Entry(
        "cond_affine_alternating",
        lambda: pyro_flows.conditional_affine_coupling(6, 2, (16, 16), mask="alternating", parity=1),
        (6,),
        (ConditionalAffineCoupling,),
        context_dim=2,
    ),
    Entry(
        "cond_affine_2d",
        lambda: pyro_flows.conditional_affine_coupling(2, 1, (8,)),
        (2,),
        (ConditionalAffineCoupling,),
        context_dim=1,
    ),
    Entry(
        "cond_real_nvp",
        lambda: pyro_flows.conditional_real_nvp(4, 3, num_layers=3, hidden_dims=(16,)),
        (4,),
        (ConditionalVectorFlow, pyro_flows.conditional_real_nvp),
        context_dim=3,
    ),
]
