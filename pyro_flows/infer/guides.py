"""Flow guides for Pyro's stochastic variational inference.

A flow guide approximates the posterior over all continuous latent variables of a model,
mapped to one unconstrained vector (Pyro's :class:`~pyro.infer.autoguide.AutoContinuous`),
by a normalizing flow pushed forward from :math:`\\mathcal N(0, I)`.
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence

import pyro.distributions as dist
import torch
from pyro.distributions.torch_transform import ComposeTransformModule
from pyro.infer.autoguide import AutoContinuous
from pyro.infer.autoguide.initialization import init_to_median
from torch import nn

from ..transforms.base import FlowTransform
from ..transforms.coupling import affine_coupling

__all__ = ["AutoRealNVP", "LocScale", "Permutation", "guide_real_nvp"]


class LocScale(FlowTransform):
    r"""A learnable elementwise affine map :math:`y = \mu + e^{\rho} \odot x`,
    :math:`\log|\det J| = \sum_i \rho_i`, started at a given location and scale.

    The last layer of a flow guide: it places the flow at the model's initial point and
    sets the initial spread, so the couplings only have to learn the shape.

    :param loc: initial :math:`\mu`, shape ``(D,)``.
    :param float init_scale: initial :math:`e^{\rho}` (all coordinates).

    >>> layer = LocScale(torch.tensor([1.0, -1.0]), init_scale=0.5)
    >>> layer(torch.ones(2)).tolist()
    [1.5, -0.5]
    """

    def __init__(self, loc: torch.Tensor, init_scale: float = 1.0):
        loc = torch.as_tensor(loc, dtype=torch.get_default_dtype())
        super().__init__(event_shape=loc.shape)
        if not init_scale > 0:
            raise ValueError(f"init_scale must be positive, got {init_scale}")
        self.loc = nn.Parameter(loc.detach().clone())
        self.log_scale = nn.Parameter(torch.full_like(self.loc, float(torch.log(torch.tensor(init_scale)))))

    def _ladj(self, x):
        return self.log_scale.sum().expand(x.shape[:-1])

    def _call_and_ladj(self, x):
        return self.loc + x * self.log_scale.exp(), self._ladj(x)

    def _inverse_and_ladj(self, y):
        return (y - self.loc) * torch.exp(-self.log_scale), self._ladj(y)


class Permutation(FlowTransform):
    r"""A fixed permutation of coordinates, :math:`y = x_{\pi}`, :math:`\log|\det J| = 0`.

    Between coupling layers it lets every pair of coordinates meet on opposite sides of
    some partition (with fixed half masks, coordinates in the same half never condition
    one another). The permutation is drawn from a generator seeded by ``seed`` so that a
    rebuilt guide has the same one: the parameter store alone restores a guide.

    :param int dim: size of the vectors.
    :param int seed: seed of the permutation.

    >>> p = Permutation(4, seed=0)
    >>> x = torch.randn(3, 4)
    >>> torch.equal(p.inv(p(x)), x)
    True
    """

    def __init__(self, dim: int, seed: int = 0):
        super().__init__(event_shape=(dim,))
        perm = torch.randperm(dim, generator=torch.Generator().manual_seed(seed))
        self.register_buffer("perm", perm)
        self.register_buffer("inverse_perm", torch.argsort(perm))

    def _call_and_ladj(self, x):
        return x[..., self.perm], x.new_zeros(x.shape[:-1])

    def _inverse_and_ladj(self, y):
        return y[..., self.inverse_perm], y.new_zeros(y.shape[:-1])


def _default_hidden_dims(dim: int) -> tuple:
    width = max(32, 4 * dim)
    return (width, width)


def guide_real_nvp(
    latent_dim: int,
    num_layers: int = 8,
    hidden_dims: Optional[Sequence[int]] = None,
    scale_bound: Optional[float] = 3.0,
    permute: bool = True,
    activation: Callable[[], nn.Module] = nn.ReLU,
    seed: int = 0,
) -> ComposeTransformModule:
    """The couplings of :class:`AutoRealNVP`: ``num_layers`` affine couplings with
    half masks of alternating parity and, when ``permute``, a fixed
    :class:`Permutation` before each pair. Usable as an ``init_transform_fn`` of
    :class:`~pyro.infer.autoguide.AutoNormalizingFlow`.

    >>> guide_real_nvp(5, num_layers=2, hidden_dims=(8,))(torch.zeros(5)).shape
    torch.Size([5])
    """
    if latent_dim < 2:
        return ComposeTransformModule([])
    hidden_dims = _default_hidden_dims(latent_dim) if hidden_dims is None else tuple(hidden_dims)
    parts = []
    for i in range(num_layers):
        if permute and i % 2 == 0 and i > 0:
            parts.append(Permutation(latent_dim, seed=seed + i))
        parts.append(affine_coupling(latent_dim, hidden_dims, "half", i % 2, activation, scale_bound))
    return ComposeTransformModule(parts)


class AutoRealNVP(AutoContinuous):
    r"""A RealNVP guide over all continuous latent variables of a model.

    The posterior over the unconstrained latent vector :math:`\theta` is

    .. math::

        \theta = \mu + \sigma \odot g(z), \qquad z \sim \mathcal N(0, I),

    with :math:`g` a stack of affine couplings (:func:`guide_real_nvp`) that starts as
    the identity, and :math:`\mu` started at the model's initial point
    (``init_loc_fn``), :math:`\sigma` at ``init_scale``. So before training the guide
    equals an :class:`~pyro.infer.autoguide.AutoNormal` started the same way.

    It is an :class:`~pyro.infer.autoguide.AutoContinuous` guide: it works with
    :class:`~pyro.infer.Predictive`, ``Trace_ELBO``/``TraceMeanField_ELBO`` with
    vectorised particles, and :class:`~pyro.infer.reparam.NeuTraReparam`. Its parameters
    live in Pyro's parameter store (``pyro.get_param_store().save/load``).

    Batch norm is deliberately not used: in a guide the flow only runs in the sampling
    direction, where RealNVP batch norm would use running statistics that never update.

    :param callable model: a Pyro model.
    :param int num_layers: number of coupling layers.
    :param hidden_dims: conditioner hidden sizes; default two layers of
        ``max(32, 4 * latent_dim)``.
    :param float scale_bound: soft bound of each coupling's log-scale.
    :param bool permute: fixed permutations between coupling pairs.
    :param float init_scale: initial :math:`\sigma`.
    :param callable init_loc_fn: per-site initialisation (default ``init_to_median``).

    >>> import pyro, pyro.distributions as dist
    >>> def model():
    ...     pyro.sample("a", dist.Normal(0.0, 1.0))
    ...     pyro.sample("b", dist.Normal(torch.zeros(2), 1.0).to_event(1))
    >>> guide = AutoRealNVP(model, num_layers=2, hidden_dims=(8,))
    >>> sorted(guide())
    ['a', 'b']
    """

    def __init__(
        self,
        model,
        num_layers: int = 8,
        hidden_dims: Optional[Sequence[int]] = None,
        scale_bound: Optional[float] = 3.0,
        permute: bool = True,
        init_scale: float = 1.0,
        init_loc_fn: Callable = init_to_median,
        activation: Callable[[], nn.Module] = nn.ReLU,
    ):
        super().__init__(model, init_loc_fn=init_loc_fn)
        self.num_layers = num_layers
        self.hidden_dims = hidden_dims
        self.scale_bound = scale_bound
        self.permute = permute
        self.init_scale = init_scale
        self.activation = activation
        self.transform = None

    def _setup_prototype(self, *args, **kwargs):
        super()._setup_prototype(*args, **kwargs)
        couplings = guide_real_nvp(
            self.latent_dim, self.num_layers, self.hidden_dims, self.scale_bound, self.permute, self.activation
        )
        loc_scale = LocScale(self._init_loc(), self.init_scale)
        self.transform = ComposeTransformModule([*couplings.parts, loc_scale])

    def get_base_dist(self):
        loc = self.transform.parts[-1].loc
        return dist.Normal(torch.zeros_like(loc), torch.ones_like(loc)).to_event(1)

    def get_transform(self, *args, **kwargs):
        return self.transform

    def get_posterior(self, *args, **kwargs):
        return dist.TransformedDistribution(self.get_base_dist(), self.transform)
