"""Conformance entries: image couplings, Squeeze, MultiScale, ActNorm, 1x1 convolutions,
the logit preprocessing and the image builders (tiny shapes, exact Jacobians)."""

import torch
from pyro.distributions.torch_transform import ComposeTransformModule

import pyro_flows
from pyro_flows.transforms import (
    ActNorm,
    AdditiveCoupling,
    AffineCoupling,
    ConditionalMultiScale,
    Invertible1x1Conv,
    Logit,
    MemorySaving,
    MultiScale,
    RealNVPBatchNorm,
    Squeeze,
    act_norm,
    image_additive_coupling,
    image_affine_coupling,
    invertible_1x1_conv,
    logit,
    squeeze,
)

from .registry import Entry

TINY = dict(hidden_channels=4, num_blocks=1)
# Stacks of couplings use conditioners without batch norm here: the suite's stale-cache
# check takes SGD steps at lr 0.05 on a sum-over-pixels loss with a batch of 6, which a
# randomised stack of batch-normalised conditioners does not survive (the single-coupling
# entries keep batch norm, and tests/test_images.py trains the default builders).
PLAIN = dict(hidden_channels=4, num_blocks=1, batch_norm=False)
PLAIN_BUILDER = dict(hidden_channels=4, num_blocks=1, conditioner_batch_norm=False)


def score_once(transform, x):
    """Warm-up: one scoring pass in train mode (ActNorm's data-dependent init) on a
    shifted, scaled batch: initialised on ``x`` itself ActNorm would sit exactly at the
    maximum-likelihood point for ``x``, where every gradient check sees zero."""
    transform.train()
    transform.inv(1.7 * x + 0.4)


def score_data(transform, x):
    """Warm-up for whole flows: initialise every ActNorm on the test batch itself (inside
    a deep flow no single ActNorm sits at an optimum, and a shifted batch would start the
    suite's SGD steps far from it)."""
    transform.train()
    transform.inv(x)


def two_scale_multiscale():
    """(1, 4, 4) -> squeeze -> channel coupling on (4, 2, 2) -> split -> coupling on (2, 2, 2)."""
    inner = MultiScale(
        ComposeTransformModule([image_affine_coupling((8, 1, 1), "channel", 1, **PLAIN), squeeze((2, 2, 2))]),
        (2, 2, 2),
    )
    outer = ComposeTransformModule(
        [image_affine_coupling((4, 2, 2), "channel", 0, **PLAIN), squeeze((1, 4, 4))]
    )
    return MultiScale(outer, (1, 4, 4), inner=inner)


def coupling_stack_saving_memory():
    """Checkerboard and channel couplings and a 1x1 convolution, trained by recomputation
    (ActNorm is covered by the Glow entry)."""
    layers = [image_affine_coupling((2, 4, 4), "checkerboard", p % 2, **PLAIN) for p in range(2)]
    layers += [invertible_1x1_conv(2), image_additive_coupling((2, 4, 4), "channel", 1, **PLAIN)]
    return MemorySaving(ComposeTransformModule(layers), (2, 4, 4))


# compile=False: compiling a ResNet-conditioned flow takes 15-60 s on 2 cores; the
# compile check runs on the vector couplings, ActNorm, the 1x1 convolution and Logit.
ENTRIES = [
    Entry(
        "image_affine_checkerboard",
        lambda: image_affine_coupling((1, 4, 4), "checkerboard", 0, **TINY),
        (1, 4, 4),
        (AffineCoupling,),
        compile=False,
    ),
    Entry(
        "image_affine_channel",
        lambda: image_affine_coupling((4, 2, 2), "channel", 1, **TINY),
        (4, 2, 2),
        (AffineCoupling,),
        compile=False,
    ),
    Entry(
        "image_additive_checkerboard",
        lambda: image_additive_coupling((2, 4, 4), "checkerboard", 1, **TINY),
        (2, 4, 4),
        (AdditiveCoupling,),
        compile=False,
    ),
    Entry(
        "image_additive_channel",
        lambda: image_additive_coupling((3, 2, 2), "channel", 0, **TINY),
        (3, 2, 2),
        (AdditiveCoupling,),
        compile=False,
    ),
    Entry("act_norm_image", lambda: act_norm(3), (3, 2, 2), (ActNorm,), warmup=score_once),
    Entry(
        "act_norm_vector",
        lambda: act_norm(3, event_dim=1),
        (3,),
        (ActNorm,),
        warmup=score_once,
        compile=False,  # same code path as act_norm_image, which is compiled
    ),
    Entry("invertible_1x1_conv", lambda: invertible_1x1_conv(3), (3, 2, 2), (Invertible1x1Conv,)),
    Entry(
        "batch_norm_image",
        lambda: pyro_flows.real_nvp_batch_norm(2, event_dim=3, affine=True),
        (2, 3, 3),
        (RealNVPBatchNorm,),
        has_train_mode=True,
        compile=False,  # the vector batch_norm entries compile the same code
    ),
    # Squeeze changes the event shape, which the generic checks (same tensor on both
    # sides) cannot take on its own; inside a MultiScale both sides are (C, H, W).
    Entry("multiscale_squeeze", two_scale_multiscale, (1, 4, 4), (MultiScale, Squeeze), compile=False),
    Entry(
        "multiscale_last_scale_only",
        lambda: MultiScale(ComposeTransformModule([invertible_1x1_conv(8), squeeze((2, 2, 2))]), (2, 2, 2)),
        (2, 2, 2),
        (MultiScale, Squeeze),
        compile=False,
    ),
    Entry(
        "logit",
        lambda: logit((2, 3, 3), alpha=0.05),
        (2, 3, 3),
        (Logit,),
        sample_output=lambda shape, dtype: torch.sigmoid(torch.randn(shape, dtype=dtype)),
    ),
    Entry(
        "real_nvp_image_1x4x4",
        lambda: pyro_flows.real_nvp_image((1, 4, 4), num_scales=1, **PLAIN_BUILDER),
        (1, 4, 4),
        (MultiScale, pyro_flows.real_nvp_image),
        compile=False,
        randomize_scale=0.02,
    ),
    Entry(
        "real_nvp_image_2x8x8",
        lambda: pyro_flows.real_nvp_image((2, 8, 8), num_scales=2, num_final_layers=2, **PLAIN_BUILDER),
        (2, 8, 8),
        (MultiScale, pyro_flows.real_nvp_image),
        compile=False,
        randomize_scale=0.02,
        jacobian=False,  # 128x128 Jacobians of 14 couplings: tests/test_images.py checks one
        lr=0.005,
    ),
    Entry(
        "real_nvp_image_flow_bn",
        lambda: pyro_flows.real_nvp_image(
            (1, 4, 4), num_scales=1, num_final_layers=2, batch_norm=True, **PLAIN_BUILDER
        ),
        (1, 4, 4),
        (MultiScale, pyro_flows.real_nvp_image),
        compile=False,
        randomize_scale=0.02,
        has_train_mode=True,
    ),
    Entry(
        "glow_1x4x4",
        lambda: pyro_flows.glow((1, 4, 4), num_scales=2, steps_per_scale=2, **TINY),
        (1, 4, 4),
        (MultiScale, pyro_flows.glow),
        compile=False,
        randomize_scale=0.02,
        warmup=score_data,
    ),
    Entry(
        "glow_2x8x8",
        lambda: pyro_flows.glow((2, 8, 8), num_scales=3, steps_per_scale=1, **TINY),
        (2, 8, 8),
        (MultiScale, pyro_flows.glow),
        compile=False,
        randomize_scale=0.02,
        jacobian=False,  # checked on one sample in tests/test_images.py
        lr=0.005,
        warmup=score_data,
    ),
    Entry(
        "glow_learned_prior_memory_saving_1x4x4",
        lambda: pyro_flows.glow(
            (1, 4, 4), num_scales=2, steps_per_scale=2, split_prior="learned", memory_saving=True, **TINY
        ),
        (1, 4, 4),
        (MultiScale, pyro_flows.glow),
        compile=False,
        randomize_scale=0.02,
        warmup=score_data,
    ),
    Entry(
        "real_nvp_image_learned_prior_1x4x4",
        lambda: pyro_flows.real_nvp_image(
            (1, 4, 4), num_scales=1, split_prior="learned", memory_saving=True, **PLAIN_BUILDER
        ),
        (1, 4, 4),
        (MultiScale, pyro_flows.real_nvp_image),
        compile=False,
        randomize_scale=0.02,
    ),
    Entry(
        "memory_saving_coupling_stack",
        coupling_stack_saving_memory,
        (2, 4, 4),
        (MemorySaving,),
        compile=False,
        randomize_scale=0.05,
    ),
    Entry(
        "glow_conditional_learned_prior_1x4x4",
        lambda: pyro_flows.glow(
            (1, 4, 4), num_scales=2, steps_per_scale=1, split_prior="learned", context_dim=3, **TINY
        ),
        (1, 4, 4),
        (ConditionalMultiScale, pyro_flows.glow),
        compile=False,
        randomize_scale=0.02,
        warmup=score_data,
        context_dim=3,
    ),
    Entry(
        "real_nvp_image_conditional_1x4x4",
        lambda: pyro_flows.real_nvp_image((1, 4, 4), num_scales=1, context_dim=2, **PLAIN_BUILDER),
        (1, 4, 4),
        (ConditionalMultiScale, pyro_flows.real_nvp_image),
        compile=False,
        randomize_scale=0.02,
        context_dim=2,
    ),
]
