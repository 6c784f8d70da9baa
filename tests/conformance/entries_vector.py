"""Conformance entries: vector couplings, linear flows, batch norm and their builders."""

import pyro_flows
from pyro_flows.builders.vector import VectorFlow
from pyro_flows.transforms import (
    AdditiveCoupling,
    AffineCoupling,
    InvertibleLinear,
    RealNVPBatchNorm,
    Scaling,
)

from .registry import Entry

ENTRIES = [
    Entry("additive_half", lambda: pyro_flows.additive_coupling(5, (16,)), (5,), (AdditiveCoupling,)),
    Entry(
        "additive_alternating",
        lambda: pyro_flows.additive_coupling(4, (16,), mask="alternating", parity=1),
        (4,),
        (AdditiveCoupling,),
        compile=False,  # compiled once per class: additive_half
    ),
    Entry("affine_half", lambda: pyro_flows.affine_coupling(5, (16, 16)), (5,), (AffineCoupling,)),
    Entry(
        "affine_alternating",
        lambda: pyro_flows.affine_coupling(6, (16,), mask="alternating", parity=1),
        (6,),
        (AffineCoupling,),
        compile=False,  # compiled once per class: affine_half
    ),
    Entry("affine_2d", lambda: pyro_flows.affine_coupling(2, (8,)), (2,), (AffineCoupling,), compile=False),
    Entry("scaling", lambda: pyro_flows.scaling(3), (3,), (Scaling,)),
    Entry("invertible_linear", lambda: pyro_flows.invertible_linear(4), (4,), (InvertibleLinear,)),
    Entry(
        "batch_norm",
        lambda: pyro_flows.real_nvp_batch_norm(3),
        (3,),
        (RealNVPBatchNorm,),
        has_train_mode=True,
    ),
    Entry(
        "batch_norm_affine",
        lambda: pyro_flows.real_nvp_batch_norm(3, affine=True),
        (3,),
        (RealNVPBatchNorm,),
        has_train_mode=True,
        compile=False,  # compiled once per class: batch_norm
    ),
    Entry(
        "nice",
        lambda: pyro_flows.nice(4, num_layers=3, hidden_dims=(16,)),
        (4,),
        (VectorFlow, pyro_flows.nice),
    ),
    Entry(
        "real_nvp",
        lambda: pyro_flows.real_nvp(3, num_layers=3, hidden_dims=(16,)),
        (3,),
        (VectorFlow, pyro_flows.real_nvp),
    ),
    Entry(
        "real_nvp_bn",
        lambda: pyro_flows.real_nvp(4, num_layers=3, hidden_dims=(16,), batch_norm=True, mask="alternating"),
        (4,),
        (VectorFlow, pyro_flows.real_nvp),
        has_train_mode=True,
        compile=False,  # compiled once per builder: real_nvp
    ),
]
