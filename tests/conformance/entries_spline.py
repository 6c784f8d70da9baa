"""Conformance entries: rational-quadratic spline couplings (vector, image and
conditional), autoregressive spline layers and the spline flow builder."""

import pyro_flows
from pyro_flows.builders.vector import VectorFlow
from pyro_flows.transforms import (
    ConditionalSplineCoupling,
    ElementwiseSpline,
    SplineAutoregressive,
    SplineCoupling,
    conditional_spline_coupling,
    image_spline_coupling,
    spline_autoregressive,
    spline_coupling,
)

from .entries_images import score_data
from .registry import Entry

TINY_IMAGE = dict(hidden_channels=4, num_blocks=1, batch_norm=False, num_bins=3)

ENTRIES = [
    Entry("spline_half", lambda: spline_coupling(5, (16,), num_bins=4), (5,), (SplineCoupling,)),
    Entry(
        "spline_alternating",
        lambda: spline_coupling(4, (16, 16), mask="alternating", parity=1, tail_bound=1.5),
        (4,),
        (SplineCoupling,),
        compile=False,  # compiled once per class: spline_half
    ),
    Entry(
        "spline_affine",
        lambda: spline_coupling(4, (16,), num_bins=3, affine=True),
        (4,),
        (SplineCoupling,),
        compile=False,  # compiled once per class: spline_half
    ),
    Entry(
        "spline_checkerboard",
        lambda: image_spline_coupling((2, 4, 4), "checkerboard", 1, **TINY_IMAGE),
        (2, 4, 4),
        (SplineCoupling,),
        compile=False,
    ),
    Entry(
        "spline_channel",
        lambda: image_spline_coupling((4, 2, 2), "channel", 0, **TINY_IMAGE),
        (4, 2, 2),
        (SplineCoupling,),
        compile=False,
    ),
    Entry(
        "cond_spline_half",
        lambda: conditional_spline_coupling(4, 3, (16,), num_bins=4),
        (4,),
        (ConditionalSplineCoupling,),
        context_dim=3,
        compile=False,  # the conditioned layer runs SplineCoupling's code, compiled in spline_half
    ),
    Entry(
        "spline_flow",
        lambda: pyro_flows.spline_flow(4, num_layers=3, hidden_dims=(16,), num_bins=4),
        (4,),
        (VectorFlow, pyro_flows.spline_flow),
        warmup=score_data,  # initialises the ActNorms on the test batch
    ),
    Entry(
        "elementwise_spline",
        lambda: ElementwiseSpline(3, num_bins=4, tail_bound=2.0),
        (3,),
        (ElementwiseSpline,),
    ),
    Entry(
        "spline_flow_mixed_elementwise",
        lambda: pyro_flows.spline_flow(
            4, num_layers=4, hidden_dims=(8,), num_bins=3, mask="mixed", elementwise=True
        ),
        (4,),
        (VectorFlow, pyro_flows.spline_flow),
        warmup=score_data,
        compile=False,  # compiled once per builder: spline_flow
    ),
    Entry(
        "spline_flow_linear",
        lambda: pyro_flows.spline_flow(3, num_layers=2, hidden_dims=(8,), act_norm=False, linear=True),
        (3,),
        (VectorFlow, pyro_flows.spline_flow),
        compile=False,  # compiled once per builder: spline_flow
    ),
    Entry(
        "spline_autoregressive",
        lambda: spline_autoregressive(4, (16,), num_bins=4),
        (4,),
        (SplineAutoregressive,),
    ),
    Entry(
        "spline_autoregressive_affine_order",
        lambda: spline_autoregressive(3, (8, 8), num_bins=3, tail_bound=2.0, order=[1, 2, 0], affine=True),
        (3,),
        (SplineAutoregressive,),
        compile=False,  # compiled once per class: spline_autoregressive
    ),
    Entry(
        "spline_flow_residual",
        lambda: pyro_flows.spline_flow(
            4, num_layers=3, hidden_dims=(8, 8), num_bins=4, conditioner="residual"
        ),
        (4,),
        (VectorFlow, pyro_flows.spline_flow),
        warmup=score_data,
        compile=False,  # compiled once per builder: spline_flow
        lr=0.01,  # the stale-cache check's SGD steps overflow at 0.05 through the deeper conditioners
    ),
    Entry(
        "spline_flow_autoregressive",
        lambda: pyro_flows.spline_flow(4, num_layers=3, hidden_dims=(8,), num_bins=4, autoregressive=True),
        (4,),
        (VectorFlow, pyro_flows.spline_flow),
        warmup=score_data,
        compile=False,  # compiled once per builder: spline_flow
    ),
    Entry(
        "glow_spline",
        lambda: pyro_flows.glow((1, 4, 4), 1, 1, hidden_channels=4, coupling="spline"),
        (1, 4, 4),
        (pyro_flows.glow,),
        warmup=score_data,
        compile=False,
        lr=0.005,  # the stale-cache check's SGD steps diverge at 0.05 on this sum over pixels
    ),
    Entry(
        "real_nvp_image_spline",
        lambda: pyro_flows.real_nvp_image(
            (1, 4, 4),
            1,
            hidden_channels=4,
            num_blocks=1,
            num_final_layers=2,
            conditioner_batch_norm=False,
            coupling="spline",
        ),
        (1, 4, 4),
        (pyro_flows.real_nvp_image,),
        compile=False,
        # Eight spline layers with ResNet conditioners perturbed at 0.3 reach bins of the
        # minimum width (derivatives near 1e-3): the stack is then so ill-conditioned that
        # the round trip loses ~1e-1 in float64 (each layer alone is exact to 1e-11).
        randomize_scale=0.1,
        lr=0.005,
    ),
]
