r"""Reshaping flows for images: RealNVP's squeeze (Dinh et al., 2017, Sec. 3.6).

The squeeze operation trades spatial resolution for channels: every 2x2 block of pixels
of a channel becomes four channels at one pixel,

.. math::

    (C, H, W) \;\to\; (4C, H/2, W/2), \qquad
    y[4c + 2i + j,\, h,\, w] = x[c,\, 2h + i,\, 2w + j],

so the four sub-images of channel ``c`` are channels ``4c..4c+3`` (Glow's ordering). It
only permutes coordinates: :math:`\log|\det J| = 0`.
"""

from __future__ import annotations

from typing import Sequence

import torch

from .base import FlowTransform, check_event

__all__ = ["Squeeze", "squeeze", "space_to_depth", "depth_to_space"]


def _image_shape(shape, owner: str) -> tuple:
    """``shape`` as a tuple of three positive ints ``(C, H, W)``, else a ``ValueError``
    naming ``owner``. Integral floats (``28 / 2``) are accepted; ``8.5`` is refused, not
    truncated to 8, and so are bools and strings.

    >>> _image_shape((1, 14.0, 14), "Squeeze")
    (1, 14, 14)
    """
    try:
        sizes = tuple(shape)
        ints = tuple(int(s) for s in sizes)
        integral = all(
            not isinstance(s, (bool, str, bytes)) and bool(i == s) for i, s in zip(ints, sizes, strict=True)
        )
    except (TypeError, ValueError, RuntimeError):
        integral = False
    if not integral or len(ints) != 3 or min(ints) < 1:
        raise ValueError(f"{owner}: expected an image shape (C, H, W) of positive integers, got {shape!r}")
    return ints


def space_to_depth(x: torch.Tensor) -> torch.Tensor:
    """Squeeze ``(*batch, C, H, W)`` to ``(*batch, 4C, H/2, W/2)`` (H and W even).

    >>> x = torch.arange(4.0).view(1, 2, 2)
    >>> space_to_depth(x).flatten().tolist()
    [0.0, 1.0, 2.0, 3.0]
    """
    if x.dim() < 3 or x.shape[-2] % 2 or x.shape[-1] % 2:
        raise ValueError(
            f"space_to_depth: expected a tensor (*batch, C, H, W) with H and W even, got shape {tuple(x.shape)}"
        )
    *batch, c, h, w = x.shape
    x = x.reshape(*batch, c, h // 2, 2, w // 2, 2)
    n = len(batch)
    # (*batch, c, h/2, i, w/2, j) -> (*batch, c, i, j, h/2, w/2)
    x = x.permute(*range(n), n, n + 2, n + 4, n + 1, n + 3)
    return x.reshape(*batch, 4 * c, h // 2, w // 2)


def depth_to_space(y: torch.Tensor) -> torch.Tensor:
    """Undo :func:`space_to_depth`: ``(*batch, 4C, H, W)`` to ``(*batch, C, 2H, 2W)``.

    >>> x = torch.randn(3, 2, 4, 6)
    >>> torch.equal(depth_to_space(space_to_depth(x)), x)
    True
    """
    if y.dim() < 3 or y.shape[-3] % 4:
        raise ValueError(
            "depth_to_space: expected a tensor (*batch, 4C, H, W) with channels a multiple of 4, "
            f"got shape {tuple(y.shape)}"
        )
    *batch, c4, h, w = y.shape
    n = len(batch)
    y = y.reshape(*batch, c4 // 4, 2, 2, h, w)
    # (*batch, c, i, j, h, w) -> (*batch, c, h, i, w, j)
    y = y.permute(*range(n), n, n + 3, n + 1, n + 4, n + 2)
    return y.reshape(*batch, c4 // 4, 2 * h, 2 * w)


class Squeeze(FlowTransform):
    r"""RealNVP's squeeze as a flow layer: space-to-depth in the normalizing direction.

    Like every layer here it follows Pyro's direction convention, so inside a list of
    transforms (base first, data last) it sits where RealNVP's multi-scale architecture squeezes:

    * ``_inverse`` (data to base, what ``log_prob`` runs; the normalizing direction):
      :math:`(C, H, W) \to (4C, H/2, W/2)` by :func:`space_to_depth`;
    * ``_call`` (base to data, sampling): :math:`(4C, H/2, W/2) \to (C, H, W)` by
      :func:`depth_to_space`;
    * :math:`\log|\det J| = 0` (a permutation of coordinates).

    ``forward_shape`` and ``inverse_shape`` map batch shapes accordingly, so a
    :class:`~pyro.distributions.TransformedDistribution` over a ``(4C, H/2, W/2)`` base
    produces ``(C, H, W)`` samples.

    :param data_shape: the un-squeezed image shape ``(C, H, W)`` on the data side; H and
        W must be even. ``event_shape`` (the input of ``_call``) is ``(4C, H/2, W/2)``.

    >>> layer = squeeze((1, 4, 4))
    >>> x = torch.randn(2, 1, 4, 4)
    >>> layer.inv(x).shape                    # data -> base: squeezed
    torch.Size([2, 4, 2, 2])
    >>> torch.equal(layer(layer.inv(x)), x)
    True
    >>> layer.forward_shape((7, 4, 2, 2)), layer.inverse_shape((7, 1, 4, 4))
    (torch.Size([7, 1, 4, 4]), torch.Size([7, 4, 2, 2]))
    """

    def __init__(self, data_shape: Sequence[int]):
        data_shape = _image_shape(data_shape, "Squeeze")
        c, h, w = data_shape
        if h % 2 or w % 2:
            raise ValueError(f"Squeeze: H and W must be even to squeeze 2x2 blocks, got shape {data_shape}")
        super().__init__(event_shape=(4 * c, h // 2, w // 2))
        self.data_shape = torch.Size(data_shape)

    def _check(self, x, what, dtype=None):
        # The two sides have different shapes: inputs of _call are squeezed, values are not.
        shape = self.event_shape if what == "input" else self.data_shape
        check_event(type(self).__name__, x, shape, what, dtype)

    def _call_and_ladj(self, x):
        return depth_to_space(x), x.new_zeros(x.shape[:-3])

    def _inverse_and_ladj(self, y):
        return space_to_depth(y), y.new_zeros(y.shape[:-3])

    def forward_shape(self, shape):
        return self._swap(shape, self.event_shape, self.data_shape)

    def inverse_shape(self, shape):
        return self._swap(shape, self.data_shape, self.event_shape)

    def _swap(self, shape, expected, result):
        shape = torch.Size(shape)
        if shape[len(shape) - 3 :] != expected:
            raise ValueError(f"Squeeze: expected a shape ending in {tuple(expected)}, got {tuple(shape)}")
        return shape[: len(shape) - 3] + result

    def extra_repr(self):
        return f"data_shape={tuple(self.data_shape)}, event_shape={tuple(self.event_shape)}"


def squeeze(data_shape: Sequence[int]) -> Squeeze:
    """A :class:`Squeeze` layer for images of shape ``data_shape = (C, H, W)``.

    >>> squeeze((3, 8, 8)).event_shape
    torch.Size([12, 4, 4])
    """
    return Squeeze(data_shape)
