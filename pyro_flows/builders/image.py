r"""Whole flows for images: multi-scale RealNVP (Dinh et al., 2017) and Glow (Kingma & Dhariwal, 2018).

Both return one :class:`~pyro_flows.transforms.MultiScale` transform whose base side has
the image's shape ``(C, H, W)``, so ``Flow(real_nvp_image(shape))`` or a
:class:`~pyro.distributions.TransformedDistribution` with a Normal base over
``(C, H, W)`` is a complete model. Each scale squeezes once and (except the last)
factors out half of its channels; for ``(C, H, W)`` and :math:`L` scales the latents are

.. math::

    Z_i \in \mathbb R^{2^i C \times H/2^i \times W/2^i} \;(i < L), \qquad
    Z_L \in \mathbb R^{2^{L+1} C \times H/2^L \times W/2^L},

e.g. :math:`2c{\times}16{\times}16,\ 4c{\times}8{\times}8,\ 16c{\times}4{\times}4` for
``(c, 32, 32)`` and three scales. See ``docs/images.md`` for the table of shapes.
"""

from __future__ import annotations

from typing import Callable, List, Optional, Sequence, Tuple, Union

import torch
from pyro.distributions.torch_transform import ComposeTransformModule

from ..nn.resnet import ConditionalResNet
from ..transforms._arguments import check_bound, check_count, check_flag
from ..transforms.coupling import ConditionalAffineCoupling, image_affine_coupling, image_mask
from ..transforms.linear import Invertible1x1Conv
from ..transforms.masks import IndexPartition, make_partition
from ..transforms.multiscale import SPLIT_PRIORS, ConditionalMultiScale, MultiScale
from ..transforms.normalization import ActNorm, RealNVPBatchNorm
from ..transforms.reshape import Squeeze, _image_shape
from ..transforms.spline import image_spline_coupling

__all__ = ["real_nvp_image", "glow"]

COUPLINGS = ("affine", "spline")


def _check_image_shape(shape: Sequence[int], num_scales: int, name: str) -> tuple:
    shape = _image_shape(shape, name)
    if isinstance(num_scales, bool) or not isinstance(num_scales, int) or num_scales < 1:
        raise ValueError(f"{name}: num_scales must be a positive integer, got {num_scales!r}")
    factor = 2**num_scales
    if shape[1] % factor or shape[2] % factor:
        raise ValueError(
            f"{name}: H and W must be divisible by 2**num_scales = {factor} (one squeeze per scale), "
            f"got shape {shape}; pad or crop the images, or use fewer scales"
        )
    return shape


def _check_options(
    name: str, split_prior: str, context_dim: Optional[int], coupling: str, scale_bound, **flags
) -> None:
    """The options every image builder shares, checked before any layer is built (so a
    bad ``context_dim`` is named, not reported by a conditioner's constructor); ``flags``
    must be bools (a truthy string such as ``"no"`` would switch them on)."""
    for flag, value in flags.items():
        check_flag(value, flag, name)
    check_bound(scale_bound, "scale_bound", name)
    if coupling not in COUPLINGS:
        raise ValueError(f"{name}: unknown coupling {coupling!r}; expected one of {COUPLINGS}")
    if split_prior not in SPLIT_PRIORS:
        raise ValueError(f"{name}: split_prior must be one of {SPLIT_PRIORS}, got {split_prior!r}")
    if context_dim is not None:
        check_count(context_dim, "context_dim", name)
        if coupling == "spline":
            raise ValueError(
                f"{name}: spline couplings are not available for conditional image flows (context_dim)"
            )


def _multi_scale(
    shape: Tuple[int, int, int],
    num_scales: int,
    scale_layers: Callable[[Tuple[int, int, int], Tuple[int, int, int], bool], List[torch.nn.Module]],
    split_prior: str = "fixed",
    memory_saving: bool = False,
    context_dim: Optional[int] = None,
) -> Union[MultiScale, ConditionalMultiScale]:
    """Nest one :class:`MultiScale` per scale. ``scale_layers(s, squeezed, last)`` returns
    the layers of the scale acting on ``s = (C, H, W)``, in RealNVP's order (data
    first, the normalizing direction), squeezing once to ``squeezed = (4C, H/2, W/2)``;
    every scale but the last then passes the kept half of the channels to the next."""

    def scale(s, level):
        c, h, w = s
        squeezed = (4 * c, h // 2, w // 2)
        last = level == num_scales - 1
        # Pyro composes from the base side, so the normalizing-order list is reversed.
        layers = list(reversed(scale_layers(s, squeezed, last)))
        if context_dim is not None:
            inner = None if last else scale((squeezed[0] - squeezed[0] // 2, h // 2, w // 2), level + 1)
            return ConditionalMultiScale(
                layers, s, context_dim, inner=inner, split_prior=split_prior, memory_saving=memory_saving
            )
        transform = ComposeTransformModule(layers)
        options = dict(split_prior=split_prior, memory_saving=memory_saving)
        if last:
            return MultiScale(transform, s, **options)
        kept = (squeezed[0] - squeezed[0] // 2, h // 2, w // 2)
        return MultiScale(transform, s, inner=scale(kept, level + 1), **options)

    return scale(shape, 0)


def _coupling(kind, shape, mask, parity, hidden_channels, num_blocks, batch_norm, scale_bound, context_dim):
    """An image coupling with a ResNet conditioner: affine, or a rational-quadratic spline
    (8 bins on [-3, 3], Durkan et al., 2019); with ``context_dim`` a conditional affine one
    whose :class:`~pyro_flows.nn.ConditionalResNet` conditioner also sees the context."""
    if kind == "spline":
        if context_dim is not None:
            raise ValueError("spline couplings are not available for conditional image flows (context_dim)")
        return image_spline_coupling(shape, mask, parity, hidden_channels, num_blocks, batch_norm)
    if context_dim is None:
        return image_affine_coupling(
            shape, mask, parity, hidden_channels, num_blocks, batch_norm, scale_bound
        )
    m = image_mask(shape, mask, parity)
    partition = make_partition(m, shape)
    c_in, c_out = partition.sizes if isinstance(partition, IndexPartition) else (shape[0], shape[0])
    conditioner = ConditionalResNet(c_in, 2 * c_out, context_dim, hidden_channels, num_blocks, batch_norm)
    return ConditionalAffineCoupling(m, conditioner, context_dim, event_shape=shape, scale_bound=scale_bound)


def real_nvp_image(
    shape: Sequence[int],
    num_scales: int = 3,
    hidden_channels: int = 64,
    num_blocks: int = 4,
    num_final_layers: int = 4,
    batch_norm: bool = False,
    conditioner_batch_norm: bool = True,
    scale_bound: Optional[float] = 3.0,
    momentum: float = 0.1,
    split_prior: str = "fixed",
    memory_saving: bool = False,
    context_dim: Optional[int] = None,
    coupling: str = "affine",
) -> Union[MultiScale, ConditionalMultiScale]:
    r"""Multi-scale RealNVP for images (Dinh et al., 2017).

    In the normalizing direction (data to latents), every scale applies

    * 3 affine couplings with alternating checkerboard masks on ``(C, H, W)``,
    * a squeeze to ``(4C, H/2, W/2)``,
    * 3 affine couplings with alternating channel masks,
    * a split: :math:`Z_i` = the first ``2C`` channels, the other ``2C`` go to the next scale;

    the last scale does not split, and ends with ``num_final_layers`` (4 in the paper)
    checkerboard couplings at the coarsest resolution. Conditioners are
    :class:`~pyro_flows.nn.ResNet`\ s with batch normalization, zero
    output layer, so the new flow is the identity.

    The final checkerboard couplings need at least 2x2 pixels at the coarsest scale:
    :math:`H/2^L, W/2^L \ge 2` (e.g. ``(1, 8, 8)`` allows ``num_scales <= 2``).

    :param shape: image shape ``(C, H, W)``.
    :param int num_scales: number of scales :math:`L` (squeezes).
    :param int hidden_channels: width of the conditioner networks.
    :param int num_blocks: residual blocks per conditioner (``2 * num_blocks + 2`` conv layers).
    :param int num_final_layers: checkerboard couplings after the last squeeze.
    :param bool batch_norm: a :class:`~pyro_flows.transforms.RealNVPBatchNorm` after every
        coupling.
    :param bool conditioner_batch_norm: batch normalization inside the conditioners.
    :param scale_bound: soft bound on each log-scale (see
        :class:`~pyro_flows.transforms.AffineCoupling`).
    :param float momentum: momentum of the flow's batch norms.
    :param str split_prior: ``"fixed"`` (standard Normal latents) or ``"learned"``: each
        factored-out latent gets a Normal prior whose mean and scale a zero-initialised
        convolution predicts from the kept half, and the last latent a learned mean and
        scale per coordinate (Glow; see :class:`~pyro_flows.transforms.MultiScale`).
    :param bool memory_saving: recompute activations from outputs in the backward pass
        (:mod:`pyro_flows.transforms.recompute`), so training memory does not grow with
        the number of layers; the same gradients for about 1.4x the time.
    :param int context_dim: build a conditional flow, a
        :class:`~pyro_flows.transforms.ConditionalMultiScale` whose conditioners and
        learned priors see a context vector of this size (e.g. a one-hot class label);
        ``flow.condition(context)`` is then the flow for that context.
    :param str coupling: ``"affine"`` (RealNVP) or ``"spline"``: rational-quadratic spline
        couplings (:class:`~pyro_flows.transforms.SplineCoupling`, 8 bins on [-3, 3]) with
        the same masks and conditioners; ``scale_bound`` then does not apply.

    Models with batch normalization differ between train and eval mode: call ``.eval()``
    before evaluating or sampling.

    >>> flow = real_nvp_image((1, 8, 8), num_scales=2, hidden_channels=8, num_blocks=1)
    >>> flow.latent_shapes
    [torch.Size([2, 4, 4]), torch.Size([8, 2, 2])]
    >>> x = torch.rand(5, 1, 8, 8)
    >>> flow.inv(x).shape
    torch.Size([5, 1, 8, 8])
    """
    shape = _check_image_shape(shape, num_scales, "real_nvp_image")
    check_count(hidden_channels, "hidden_channels", "real_nvp_image")
    check_count(num_blocks, "num_blocks", "real_nvp_image", minimum=0)
    check_count(num_final_layers, "num_final_layers", "real_nvp_image", minimum=0)
    _check_options(
        "real_nvp_image",
        split_prior,
        context_dim,
        coupling,
        scale_bound,
        batch_norm=batch_norm,
        conditioner_batch_norm=conditioner_batch_norm,
        memory_saving=memory_saving,
    )
    final = (shape[1] >> num_scales, shape[2] >> num_scales)
    if num_final_layers and min(final) < 2:
        raise ValueError(
            f"real_nvp_image: the final checkerboard couplings need at least 2x2 pixels after "
            f"{num_scales} squeezes, but shape {shape} leaves {final[0]}x{final[1]}; use "
            f"num_scales <= {min(shape[1:]).bit_length() - 2} or num_final_layers=0"
        )

    def couplings(s, mask, count):
        layers = []
        for parity in range(count):
            layers.append(
                _coupling(
                    coupling,
                    s,
                    mask,
                    parity % 2,
                    hidden_channels,
                    num_blocks,
                    conditioner_batch_norm,
                    scale_bound,
                    context_dim,
                )
            )
            if batch_norm:
                layers.append(RealNVPBatchNorm(s[0], event_dim=3, momentum=momentum))
        return layers

    def scale_layers(s, squeezed, last):
        layers = couplings(s, "checkerboard", 3) + [Squeeze(s)] + couplings(squeezed, "channel", 3)
        if last:
            layers += couplings(squeezed, "checkerboard", num_final_layers)
        return layers

    return _multi_scale(shape, num_scales, scale_layers, split_prior, memory_saving, context_dim)


def glow(
    shape: Sequence[int],
    num_scales: int = 3,
    steps_per_scale: int = 8,
    hidden_channels: int = 128,
    num_blocks: int = 1,
    conditioner_batch_norm: bool = False,
    scale_bound: Optional[float] = 3.0,
    split_prior: str = "fixed",
    memory_saving: bool = False,
    context_dim: Optional[int] = None,
    coupling: str = "affine",
) -> Union[MultiScale, ConditionalMultiScale]:
    r"""Glow (Kingma & Dhariwal, 2018).

    In the normalizing direction every scale applies a squeeze, then
    ``steps_per_scale`` steps of flow, each

    * :class:`~pyro_flows.transforms.ActNorm` (data-dependent initialisation on the
      first training batch),
    * :class:`~pyro_flows.transforms.Invertible1x1Conv` (LU-parameterized),
    * an affine coupling over halves of the channels with a
      :class:`~pyro_flows.nn.ResNet` conditioner (zero output layer),

    and then, except at the last scale, splits off half the channels as :math:`Z_i`.
    The latent shapes equal those of :func:`real_nvp_image` with the same ``shape`` and
    ``num_scales``. Conditioners have no batch normalization by default (ActNorm
    replaces it, as in Glow), so train and eval mode agree.

    :param shape: image shape ``(C, H, W)``; H and W divisible by ``2**num_scales``.
    :param int num_scales: number of scales :math:`L`.
    :param int steps_per_scale: steps of flow :math:`K` per scale.
    :param int hidden_channels: width of the conditioner networks.
    :param int num_blocks: residual blocks per conditioner.
    :param bool conditioner_batch_norm: batch normalization inside the conditioners.
    :param scale_bound: soft bound on each log-scale.
    :param str split_prior: ``"fixed"`` (standard Normal latents) or ``"learned"``: each
        factored-out latent gets a Normal prior whose mean and scale a zero-initialised
        convolution predicts from the kept half, and the last latent a learned mean and
        scale per coordinate (Glow; see :class:`~pyro_flows.transforms.MultiScale`).
    :param bool memory_saving: recompute activations from outputs in the backward pass
        (:mod:`pyro_flows.transforms.recompute`), so training memory does not grow with
        the number of layers; the same gradients for about 1.4x the time.
    :param int context_dim: build a conditional flow, a
        :class:`~pyro_flows.transforms.ConditionalMultiScale` whose conditioners and
        learned priors see a context vector of this size (e.g. a one-hot class label);
        ``flow.condition(context)`` is then the flow for that context.
    :param str coupling: ``"affine"`` (Glow) or ``"spline"`` (rational-quadratic spline
        couplings, as in the neural spline flow's Glow-like image model, Durkan et al., 2019).

    >>> flow = glow((3, 8, 8), num_scales=3, steps_per_scale=1, hidden_channels=8)
    >>> flow.latent_shapes
    [torch.Size([6, 4, 4]), torch.Size([12, 2, 2]), torch.Size([48, 1, 1])]
    """
    shape = _check_image_shape(shape, num_scales, "glow")
    check_count(steps_per_scale, "steps_per_scale", "glow")
    check_count(hidden_channels, "hidden_channels", "glow")
    check_count(num_blocks, "num_blocks", "glow", minimum=0)
    _check_options(
        "glow",
        split_prior,
        context_dim,
        coupling,
        scale_bound,
        conditioner_batch_norm=conditioner_batch_norm,
        memory_saving=memory_saving,
    )

    def scale_layers(s, squeezed, last):
        layers = [Squeeze(s)]
        for step in range(steps_per_scale):
            layers += [
                ActNorm(squeezed[0]),
                Invertible1x1Conv(squeezed[0]),
                _coupling(
                    coupling,
                    squeezed,
                    "channel",
                    step % 2,
                    hidden_channels,
                    num_blocks,
                    conditioner_batch_norm,
                    scale_bound,
                    context_dim,
                ),
            ]
        return layers

    return _multi_scale(shape, num_scales, scale_layers, split_prior, memory_saving, context_dim)
