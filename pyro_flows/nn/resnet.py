"""Convolutional conditioner networks for coupling layers on images."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["ResNet", "ResidualBlock", "ConditionalResNet"]


class ResidualBlock(nn.Module):
    """A pre-activation residual block ``h + conv(relu(bn(conv(relu(bn(h))))))`` with
    3x3 convolutions that keep the spatial size.

    >>> ResidualBlock(4)(torch.randn(2, 4, 5, 5)).shape
    torch.Size([2, 4, 5, 5])
    """

    def __init__(self, channels: int, batch_norm: bool = True):
        super().__init__()
        norm = nn.BatchNorm2d if batch_norm else nn.Identity
        self.body = nn.Sequential(
            norm(channels),
            nn.ReLU(),
            nn.Conv2d(channels, channels, 3, padding=1),
            norm(channels),
            nn.ReLU(),
            nn.Conv2d(channels, channels, 3, padding=1),
        )

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h + self.body(h)


class ResNet(nn.Module):
    r"""A deep residual CNN, the :math:`(s_\theta, t_\theta)` network of RealNVP
    (Dinh et al., 2017): a 3x3 input convolution, ``num_blocks`` residual blocks of
    two 3x3 convolutions with batch normalization, and a 3x3 output convolution, so
    ``2 * num_blocks + 2`` convolutional layers in all (``num_blocks=9`` gives the
    20 of the RealNVP paper). Spatial size is preserved.

    The output convolution starts at zero (``zero_init=True``), so a fresh coupling layer
    is the identity map and a new flow starts as its base distribution.

    Accepts any leading batch shape: ``(*batch, in_channels, H, W)`` is flattened to
    ``(N, in_channels, H, W)`` for the convolutions and the result reshaped to
    ``(*batch, out_channels, H, W)``. With ``batch_norm=True`` the network behaves
    differently in train and eval mode (batch statistics vs running averages), like
    any batch-normalized network; call ``.eval()`` before evaluating or sampling
    single images.

    :param int in_channels: channels of the input.
    :param int out_channels: channels of the output.
    :param int hidden_channels: width of every hidden layer.
    :param int num_blocks: number of residual blocks (depth).
    :param bool batch_norm: batch normalization inside the blocks.
    :param bool zero_init: zero the weights and bias of the output convolution.

    >>> net = ResNet(2, 4, hidden_channels=8, num_blocks=1)
    >>> net(torch.randn(5, 3, 2, 6, 6)).shape
    torch.Size([5, 3, 4, 6, 6])
    >>> bool(net(torch.randn(2, 2, 4, 4)).eq(0).all())  # zero-initialised output layer
    True
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        hidden_channels: int = 64,
        num_blocks: int = 4,
        batch_norm: bool = True,
        zero_init: bool = True,
    ):
        super().__init__()
        if min(in_channels, out_channels, hidden_channels) < 1 or num_blocks < 0:
            raise ValueError(
                "ResNet needs positive channel counts and num_blocks >= 0, got "
                f"in={in_channels}, out={out_channels}, hidden={hidden_channels}, blocks={num_blocks}"
            )
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.input = nn.Conv2d(in_channels, hidden_channels, 3, padding=1)
        self.blocks = nn.Sequential(*[ResidualBlock(hidden_channels, batch_norm) for _ in range(num_blocks)])
        self.head = nn.Sequential(
            nn.BatchNorm2d(hidden_channels) if batch_norm else nn.Identity(),
            nn.ReLU(),
        )
        self.output = nn.Conv2d(hidden_channels, out_channels, 3, padding=1)
        if zero_init:
            nn.init.zeros_(self.output.weight)
            nn.init.zeros_(self.output.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() < 3 or x.shape[-3] != self.in_channels:
            raise ValueError(
                f"ResNet: expected input of shape (*batch, {self.in_channels}, H, W), got {tuple(x.shape)}"
            )
        batch, (c, h, w) = x.shape[:-3], x.shape[-3:]
        out = self.output(self.head(self.blocks(self.input(x.reshape(-1, c, h, w)))))
        return out.reshape(*batch, self.out_channels, h, w)


class ConditionalResNet(nn.Module):
    r"""A :class:`ResNet` that also sees a context vector :math:`c`: a linear embedding
    :math:`E c \in \mathbb R^k` is broadcast over the pixels and stacked onto the input
    channels, ``net([x, E c])``. Called as ``net(x, context)`` with ``x`` of shape
    ``(*batch, in_channels, H, W)`` and ``context`` of shape ``(*batch, context_dim)``,
    whose leading batch shapes are broadcast against each other (one context for a batch
    of images, a batch of contexts for one image, as in
    :class:`~pyro_flows.nn.ConditionalMLP`); output layer zero as in :class:`ResNet`.

    :param int context_channels: :math:`k`, channels of the embedded context.

    >>> net = ConditionalResNet(2, 4, context_dim=3, hidden_channels=8, num_blocks=1)
    >>> net(torch.randn(5, 2, 6, 6), torch.randn(3)).shape
    torch.Size([5, 4, 6, 6])
    >>> net(torch.randn(2, 6, 6), torch.randn(7, 3)).shape
    torch.Size([7, 4, 6, 6])
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        context_dim: int,
        hidden_channels: int = 64,
        num_blocks: int = 4,
        batch_norm: bool = True,
        context_channels: int = 8,
    ):
        super().__init__()
        self.context_dim = context_dim
        self.embed = nn.Linear(context_dim, context_channels)
        self.net = ResNet(
            in_channels + context_channels, out_channels, hidden_channels, num_blocks, batch_norm
        )

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        if x.dim() < 3 or context.shape[-1:] != (self.context_dim,):
            raise ValueError(
                f"ConditionalResNet: expected x of shape (*batch, C, H, W) and a context of shape "
                f"(*batch, {self.context_dim}), got {tuple(x.shape)} and {tuple(context.shape)}"
            )
        # the leading batch shapes broadcast against each other, as in ConditionalMLP: one
        # context for a batch of images, or a batch of contexts for one image
        batch = torch.broadcast_shapes(x.shape[:-3], context.shape[:-1])
        (c, h, w) = x.shape[-3:]
        embedded = self.embed(context.to(x.dtype)).expand(*batch, -1)
        maps = embedded[..., None, None].expand(*embedded.shape, h, w)
        return self.net(torch.cat([x.expand(*batch, c, h, w), maps], dim=-3))
