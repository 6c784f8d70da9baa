r"""The multi-scale architecture of RealNVP and Glow: factoring out half of the variables
at each scale (Dinh et al., 2017, Section 3.6).

At every scale the normalizing direction runs a per-scale flow (couplings, a squeeze,
more couplings), then *splits* its output along channels: the first half leaves the
flow as the latent :math:`Z_i`, the second half goes on to the next scale. For a
``(3, 32, 32)`` image and three scales the latents are
:math:`Z_1 \in \mathbb R^{6 \times 16 \times 16}`,
:math:`Z_2 \in \mathbb R^{12 \times 8 \times 8}` and
:math:`Z_3 \in \mathbb R^{48 \times 4 \times 4}`.

:class:`MultiScale` is one scale and, through its ``inner`` flow, all the coarser ones:
a single :class:`~pyro.distributions.TransformModule` whose base side has the same
shape as its data side, so a plain Normal base over ``(C, H, W)`` works.
"""

from __future__ import annotations

import math
from typing import List, Optional, Sequence

import torch
from pyro.distributions.torch_transform import TransformModule

from .base import FlowTransform

__all__ = ["MultiScale"]


class MultiScale(FlowTransform):
    r"""One scale of a multi-scale flow, with the coarser scales nested in ``inner``.

    Normalizing direction (data :math:`x` to base :math:`u`, Pyro's ``_inverse``, what
    ``log_prob`` runs):

    .. math::

        &v = T^{-1}(x) \in \mathbb R^{C' \times H' \times W'},\qquad
        (z, h) = (v_{1:\lfloor C'/2 \rfloor},\, v_{\lfloor C'/2 \rfloor+1:C'}), \\
        &u = \operatorname{reshape}_{(C, H, W)}\big(\operatorname{flat}(z),\,
        \operatorname{flat}(S^{-1}(h))\big),

    where :math:`T` is ``transform`` (typically couplings, a squeeze and more couplings)
    and :math:`S` is ``inner`` (the next scales). Without ``inner`` (the last scale) all
    of :math:`v` is the latent: :math:`u = \operatorname{reshape}(v)`. Sampling
    (``_call``) runs the same steps backwards, and

    .. math::

        \log\left|\det\frac{\partial x}{\partial u}\right|
        = \log\left|\det\frac{\partial T}{\partial v}\right|
        + \log\left|\det\frac{\partial S}{\partial w}\right|.

    The base-side tensor ``u`` has the data's shape ``(C, H, W)``: its flattened
    coordinates hold :math:`Z_1, Z_2, \dots, Z_L` one after another (see
    :meth:`latents` and :attr:`latent_shapes`). Reshaping only relabels coordinates, so
    a standard Normal base over ``(C, H, W)`` is exactly the product of standard Normal
    bases over every :math:`Z_i`.

    :param transform: the per-scale flow :math:`T` in Pyro's direction (base side first),
        whose data side has shape ``event_shape`` and whose base side shape
        ``transform.inverse_shape(event_shape)`` has at least 2 channels when ``inner`` is
        given (e.g. a :class:`~pyro.distributions.torch_transform.ComposeTransformModule`
        ending in a :class:`~pyro_flows.transforms.Squeeze`).
    :param event_shape: the image shape ``(C, H, W)`` (data side and base side).
    :param inner: the flow :math:`S` of the coarser scales, acting on the kept half
        ``(C' - C'//2, H', W')`` (usually another :class:`MultiScale`), or ``None`` for
        the last scale.

    >>> from pyro.distributions.torch_transform import ComposeTransformModule
    >>> from pyro_flows.transforms import squeeze, image_affine_coupling
    >>> last = MultiScale(ComposeTransformModule([image_affine_coupling((8, 1, 1), "channel",
    ...     hidden_channels=4, num_blocks=1, batch_norm=False), squeeze((2, 2, 2))]), (2, 2, 2))
    >>> flow = MultiScale(squeeze((1, 4, 4)), (1, 4, 4), inner=last)
    >>> flow.latent_shapes
    [torch.Size([2, 2, 2]), torch.Size([8, 1, 1])]
    >>> x = torch.randn(5, 1, 4, 4)
    >>> u = flow.inv(x)
    >>> [tuple(z.shape) for z in flow.latents(u)]
    [(5, 2, 2, 2), (5, 8, 1, 1)]
    >>> torch.allclose(flow(u), x, atol=1e-6)
    True
    """

    def __init__(
        self,
        transform: TransformModule,
        event_shape: Sequence[int],
        inner: Optional[TransformModule] = None,
    ):
        event_shape = torch.Size(event_shape)
        if len(event_shape) != 3:
            raise ValueError(f"MultiScale: expected an image event shape (C, H, W), got {tuple(event_shape)}")
        super().__init__(event_shape=event_shape)
        self.transform = transform
        self.inner = inner
        scale_shape = torch.Size(transform.inverse_shape(event_shape))
        if len(scale_shape) != 3 or math.prod(scale_shape) != math.prod(event_shape):
            raise ValueError(
                f"MultiScale: the per-scale transform must map {tuple(event_shape)} to an image of the "
                f"same size, got base-side shape {tuple(scale_shape)}"
            )
        self.scale_shape = scale_shape
        channels, height, width = scale_shape
        if inner is None:
            self.factored_shape = scale_shape
            self.kept_shape = None
        else:
            if channels < 2:
                raise ValueError(
                    f"MultiScale: cannot split {channels} channel(s) of {tuple(scale_shape)} between a "
                    "latent and the next scale"
                )
            self.factored_shape = torch.Size((channels // 2, height, width))
            self.kept_shape = torch.Size((channels - channels // 2, height, width))
            inner_shape = getattr(inner, "event_shape", None)
            if inner_shape is not None and torch.Size(inner_shape) != self.kept_shape:
                raise ValueError(
                    f"MultiScale: inner flow must act on the kept half {tuple(self.kept_shape)}, "
                    f"but its event shape is {tuple(inner_shape)}"
                )

    @property
    def latent_shapes(self) -> List[torch.Size]:
        """Shapes of :math:`Z_1, \\dots, Z_L`, finest scale first."""
        rest = [] if self.inner is None else getattr(self.inner, "latent_shapes", [self.kept_shape])
        return [self.factored_shape, *rest]

    def latents(self, u: torch.Tensor) -> List[torch.Tensor]:
        """Split a base-side tensor ``(*batch, C, H, W)`` into :math:`Z_1, \\dots, Z_L`
        of shapes ``(*batch, *latent_shapes[i])`` (views, no copies)."""
        self._check(u, "input")
        batch = u.shape[:-3]
        shapes = self.latent_shapes
        parts = u.flatten(-3).split([math.prod(s) for s in shapes], -1)
        return [p.reshape(*batch, *s) for p, s in zip(parts, shapes, strict=True)]

    def _call_and_ladj(self, u):
        batch = u.shape[:-3]
        flat = u.flatten(-3)
        if self.inner is None:
            v = flat.reshape(*batch, *self.scale_shape)
            ladj = 0.0
        else:
            n_z = math.prod(self.factored_shape)
            z = flat[..., :n_z].reshape(*batch, *self.factored_shape)
            w = flat[..., n_z:].reshape(*batch, *self.kept_shape)
            h = self.inner(w)
            ladj = self.inner.log_abs_det_jacobian(w, h)
            v = torch.cat([z, h], dim=-3)
        x = self.transform(v)
        return x, self.transform.log_abs_det_jacobian(v, x) + ladj

    def _inverse_and_ladj(self, x):
        batch = x.shape[:-3]
        v = self.transform.inv(x)
        ladj = self.transform.log_abs_det_jacobian(v, x)
        if self.inner is None:
            u = v.flatten(-3)
        else:
            z, h = v.split([self.factored_shape[0], self.kept_shape[0]], dim=-3)
            w = self.inner.inv(h)
            ladj = ladj + self.inner.log_abs_det_jacobian(w, h)
            u = torch.cat([z.flatten(-3), w.flatten(-3)], dim=-1)
        return u.reshape(*batch, *self.event_shape), ladj

    def extra_repr(self):
        return (
            f"event_shape={tuple(self.event_shape)}, latent_shapes={[tuple(s) for s in self.latent_shapes]}"
        )
