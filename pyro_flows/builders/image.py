r"""Whole flows for images: multi-scale RealNVP (lecture, Def. 10.30) and Glow (Def. 10.33).

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

from typing import Callable, List, Optional, Sequence, Tuple

import torch
from pyro.distributions.torch_transform import ComposeTransformModule

from ..transforms.coupling import image_affine_coupling
from ..transforms.linear import Invertible1x1Conv
from ..transforms.multiscale import MultiScale
from ..transforms.normalization import ActNorm, RealNVPBatchNorm
from ..transforms.reshape import Squeeze
from ..transforms.spline import image_spline_coupling

__all__ = ["real_nvp_image", "glow"]

COUPLINGS = ("affine", "spline")


def _image_coupling(kind, shape, mask, parity, hidden_channels, num_blocks, batch_norm, scale_bound):
    """An affine coupling or a rational-quadratic spline coupling (8 bins on [-3, 3],
    Durkan et al., 2019) on images, with a ResNet conditioner."""
    if kind == "affine":
        return image_affine_coupling(
            shape, mask, parity, hidden_channels, num_blocks, batch_norm, scale_bound
        )
    if kind == "spline":
        return image_spline_coupling(shape, mask, parity, hidden_channels, num_blocks, batch_norm)
    raise ValueError(f"unknown coupling {kind!r}; expected one of {COUPLINGS}")


def _check_image_shape(shape: Sequence[int], num_scales: int, name: str) -> tuple:
    try:
        shape = tuple(int(s) for s in shape)
    except TypeError:
        raise ValueError(f"{name}: expected an image shape (C, H, W), got {shape!r}") from None
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"{name}: expected an image shape (C, H, W) of positive sizes, got {shape}")
    if not isinstance(num_scales, int) or num_scales < 1:
        raise ValueError(f"{name}: num_scales must be a positive integer, got {num_scales!r}")
    factor = 2**num_scales
    if shape[1] % factor or shape[2] % factor:
        raise ValueError(
            f"{name}: H and W must be divisible by 2**num_scales = {factor} (one squeeze per scale), "
            f"got shape {shape}; pad or crop the images, or use fewer scales"
        )
    return shape


def _multi_scale(
    shape: Tuple[int, int, int],
    num_scales: int,
    scale_layers: Callable[[Tuple[int, int, int], Tuple[int, int, int], bool], List[torch.nn.Module]],
) -> MultiScale:
    """Nest one :class:`MultiScale` per scale. ``scale_layers(s, squeezed, last)`` returns
    the layers of the scale acting on ``s = (C, H, W)``, in the lecture's order (data
    first, the normalizing direction), squeezing once to ``squeezed = (4C, H/2, W/2)``;
    every scale but the last then passes the kept half of the channels to the next."""

    def scale(s, level):
        c, h, w = s
        squeezed = (4 * c, h // 2, w // 2)
        last = level == num_scales - 1
        # Pyro composes from the base side, so the normalizing-order list is reversed.
        transform = ComposeTransformModule(list(reversed(scale_layers(s, squeezed, last))))
        if last:
            return MultiScale(transform, s)
        kept = (squeezed[0] - squeezed[0] // 2, h // 2, w // 2)
        return MultiScale(transform, s, inner=scale(kept, level + 1))

    return scale(shape, 0)


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
    coupling: str = "affine",
) -> MultiScale:
    r"""Multi-scale RealNVP for images (Dinh et al., 2017; lecture Def. 10.30).

    In the normalizing direction (data to latents), every scale applies

    * 3 affine couplings with alternating checkerboard masks on ``(C, H, W)``,
    * a squeeze to ``(4C, H/2, W/2)``,
    * 3 affine couplings with alternating channel masks,
    * a split: :math:`Z_i` = the first ``2C`` channels, the other ``2C`` go to the next scale;

    the last scale does not split, and ends with ``num_final_layers`` (4 in the paper)
    checkerboard couplings at the coarsest resolution. Conditioners are
    :class:`~pyro_flows.nn.ResNet`\ s with batch normalization (Concept 10.32), zero
    output layer, so the new flow is the identity.

    The final checkerboard couplings need at least 2x2 pixels at the coarsest scale:
    :math:`H/2^L, W/2^L \ge 2` (e.g. ``(1, 8, 8)`` allows ``num_scales <= 2``).

    :param shape: image shape ``(C, H, W)``.
    :param int num_scales: number of scales :math:`L` (squeezes).
    :param int hidden_channels: width of the conditioner networks.
    :param int num_blocks: residual blocks per conditioner (``2 * num_blocks + 2`` conv layers).
    :param int num_final_layers: checkerboard couplings after the last squeeze.
    :param bool batch_norm: a :class:`~pyro_flows.transforms.RealNVPBatchNorm` after every
        coupling (Concept 10.31).
    :param bool conditioner_batch_norm: batch normalization inside the conditioners.
    :param scale_bound: soft bound on each log-scale (see
        :class:`~pyro_flows.transforms.AffineCoupling`).
    :param float momentum: momentum of the flow's batch norms.
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
    final = (shape[1] >> num_scales, shape[2] >> num_scales)
    if num_final_layers and min(final) < 2:
        raise ValueError(
            f"real_nvp_image: the final checkerboard couplings need at least 2x2 pixels after "
            f"{num_scales} squeezes, but shape {shape} leaves {final[0]}x{final[1]}; use "
            f"num_scales <= {min(shape[1:]).bit_length() - 2} or num_final_layers=0"
        )

    if coupling not in COUPLINGS:
        raise ValueError(f"real_nvp_image: unknown coupling {coupling!r}; expected one of {COUPLINGS}")

    def couplings(s, mask, count):
        layers = []
        for parity in range(count):
            layers.append(
                _image_coupling(
                    coupling,
                    s,
                    mask,
                    parity % 2,
                    hidden_channels,
                    num_blocks,
                    conditioner_batch_norm,
                    scale_bound,
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

    return _multi_scale(shape, num_scales, scale_layers)


def glow(
    shape: Sequence[int],
    num_scales: int = 3,
    steps_per_scale: int = 8,
    hidden_channels: int = 128,
    num_blocks: int = 1,
    conditioner_batch_norm: bool = False,
    scale_bound: Optional[float] = 3.0,
    coupling: str = "affine",
) -> MultiScale:
    r"""Glow (Kingma & Dhariwal, 2018; lecture Def. 10.33).

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
    :param str coupling: ``"affine"`` (Glow) or ``"spline"`` (rational-quadratic spline
        couplings, as in the neural spline flow's Glow-like image model, Durkan et al., 2019).

    >>> flow = glow((3, 8, 8), num_scales=3, steps_per_scale=1, hidden_channels=8)
    >>> flow.latent_shapes
    [torch.Size([6, 4, 4]), torch.Size([12, 2, 2]), torch.Size([48, 1, 1])]
    """
    shape = _check_image_shape(shape, num_scales, "glow")
    if steps_per_scale < 1:
        raise ValueError(f"glow: steps_per_scale must be at least 1, got {steps_per_scale}")
    if coupling not in COUPLINGS:
        raise ValueError(f"glow: unknown coupling {coupling!r}; expected one of {COUPLINGS}")

    def scale_layers(s, squeezed, last):
        layers = [Squeeze(s)]
        for step in range(steps_per_scale):
            layers += [
                ActNorm(squeezed[0]),
                Invertible1x1Conv(squeezed[0]),
                _image_coupling(
                    coupling,
                    squeezed,
                    "channel",
                    step % 2,
                    hidden_channels,
                    num_blocks,
                    conditioner_batch_norm,
                    scale_bound,
                ),
            ]
        return layers

    return _multi_scale(shape, num_scales, scale_layers)
