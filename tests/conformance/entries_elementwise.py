"""Conformance entries: the elementwise 1-D flows (mixture CDF, base CDFs, change of base)
and the ``cdf_flow`` builder.

Transforms whose domain is (0, 1) get inputs from ``open_unit`` and a base on (0, 1);
those whose codomain is (0, 1) get data from ``open_unit``.
"""

import pyro.distributions as dist
import torch

import pyro_flows
from pyro_flows.builders.cdf import CDFFlow
from pyro_flows.transforms import BaseCDF, ChangeOfBase, MixtureCDF

from .registry import Entry, open_unit


def uniform_base(shape, dtype, device="cpu"):
    return dist.Uniform(torch.zeros(shape, dtype=dtype, device=device), 1.0).to_event(len(shape))


def beta_base(shape, dtype, device="cpu"):
    five = torch.full(shape, 5.0, dtype=dtype, device=device)
    return dist.Beta(five, five).to_event(len(shape))


ENTRIES = [
    Entry(
        "mixture_cdf_gaussian",
        lambda: pyro_flows.mixture_cdf(4, event_shape=(3,)),
        (3,),
        (MixtureCDF,),
        sample_input=open_unit,
        base=uniform_base,
        compile=False,  # compiled once per class: mixture_cdf_scalar
    ),
    Entry(
        "mixture_cdf_logistic_image",
        lambda: pyro_flows.mixture_cdf(3, event_shape=(2, 2), component="logistic"),
        (2, 2),
        (MixtureCDF,),
        sample_input=open_unit,
        base=uniform_base,
        compile=False,  # compiled once per class: mixture_cdf_scalar
    ),
    Entry(
        "mixture_cdf_scalar",
        lambda: pyro_flows.mixture_cdf(5),
        (),
        (MixtureCDF,),
        sample_input=open_unit,
        base=uniform_base,
    ),
    Entry(
        "base_cdf_normal",
        lambda: pyro_flows.base_cdf("normal", (3,)),
        (3,),
        (BaseCDF,),
        sample_output=open_unit,
    ),
    Entry(
        "base_cdf_beta",
        lambda: pyro_flows.base_cdf("beta", (2,), a=2.0, b=3.5),
        (2,),
        (BaseCDF,),
        sample_input=open_unit,
        sample_output=open_unit,
        base=beta_base,
        compile=False,  # the continued fraction loops with data-dependent exits
    ),
    Entry(
        "change_of_base_uniform",
        lambda: pyro_flows.change_of_base("uniform", "normal", (3,)),
        (3,),
        (ChangeOfBase,),
        sample_input=open_unit,
        base=uniform_base,
        compile=False,  # made of BaseCDFs, compile-checked in base_cdf_normal
    ),
    Entry(
        "change_of_base_beta",
        lambda: pyro_flows.change_of_base("beta", "normal", (2,)),
        (2,),
        (ChangeOfBase,),
        sample_input=open_unit,
        base=beta_base,
        compile=False,
    ),
    Entry(
        "cdf_flow_normal",
        lambda: pyro_flows.cdf_flow(4, event_shape=(3,)),
        (3,),
        (CDFFlow, pyro_flows.cdf_flow, MixtureCDF, BaseCDF),
        compile=False,  # its parts are compile-checked on their own; saves ~10 s
    ),
    Entry(
        "cdf_flow_beta",
        lambda: pyro_flows.cdf_flow(3, base="beta", event_shape=(2,)),
        (2,),
        (CDFFlow, pyro_flows.cdf_flow),
        sample_input=open_unit,
        base=beta_base,
        compile=False,
    ),
]
