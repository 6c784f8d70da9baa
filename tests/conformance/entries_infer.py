"""Conformance entries: the transforms the flow guide adds (pyro_flows.infer)."""

import torch

from pyro_flows.infer import guide_real_nvp
from pyro_flows.transforms import LocScale, Permutation

from .registry import Entry

ENTRIES = [
    Entry("loc_scale", lambda: LocScale(torch.tensor([0.5, -1.0, 2.0]), init_scale=0.7), (3,), (LocScale,)),
    # a matrix event: the log-det sums over both event dimensions
    Entry(
        "loc_scale_matrix",
        lambda: LocScale(torch.tensor([[0.5, -1.0, 2.0], [0.0, 1.0, -2.0]]), init_scale=1.3),
        (2, 3),
        (LocScale,),
    ),
    # (a Permutation alone has no parameters; it is checked inside the guide's flow)
    Entry(
        "guide_real_nvp",
        lambda: guide_real_nvp(5, num_layers=4, hidden_dims=(8,)),
        (5,),
        (Permutation, guide_real_nvp),
    ),
]
