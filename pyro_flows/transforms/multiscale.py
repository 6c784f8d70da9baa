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
from typing import List, Optional, Sequence, Tuple

import torch
from pyro.distributions.conditional import ConditionalTransformModule
from pyro.distributions.torch_transform import ComposeTransformModule, TransformModule
from torch import nn

from ._arguments import check_flag
from .base import (
    FlowTransform,
    _module_dtype,
    _state_of,
    check_context,
    check_event,
    context_batch_shape,
    sum_event,
)
from .recompute import _check_blocks, normalize_recomputing, normalizing_blocks

__all__ = ["MultiScale", "ConditionalMultiScale"]

_LOG_SCALE_BOUND = 3.0

SPLIT_PRIORS = ("fixed", "learned")


def _prior_arguments(owner: str, scale, h, batch_shape, context=None):
    """The checked ``(h, batch_shape)`` of a call of ``prior``: ``h`` (the kept half, only
    for a scale with an inner flow, required by a learned prior) of shape
    ``(*batch, *kept_shape)``; ``batch_shape`` by default the batch shape of ``h`` (and of
    ``context``), ``()`` without them; ``h`` is returned expanded to ``batch_shape``."""
    name = f"{owner}.prior"
    batches = []
    if scale.inner is None:
        if h is not None:
            raise ValueError(
                f"{name}: the last scale's latent does not depend on a kept half h; call prior() "
                "without h (batch_shape=... for a batch)"
            )
    elif h is None:
        if scale.split_prior == "learned":
            raise ValueError(
                f"{name}: the learned prior of this scale's latent is predicted from the kept half; "
                f"pass h of shape (*batch, {', '.join(map(str, scale.kept_shape))})"
            )
    else:
        check_event(name, h, scale.kept_shape, "h")
        batches.append(h.shape[: h.dim() - 3])
    if context is not None:
        batches.append(context.shape[:-1])
    try:
        inferred = torch.broadcast_shapes(*batches)
    except RuntimeError:
        raise ValueError(
            f"{name}: the batch shape {tuple(batches[0])} of h does not broadcast with the context's "
            f"{tuple(batches[1])}"
        ) from None
    if batch_shape is None:
        batch_shape = inferred
    else:
        batch_shape = torch.Size(batch_shape)
        try:
            holds = torch.broadcast_shapes(inferred, batch_shape) == batch_shape
        except RuntimeError:
            holds = False
        if not holds:
            raise ValueError(
                f"{name}: batch_shape {tuple(batch_shape)} does not hold the batch shape "
                f"{tuple(inferred)} of h" + (" and the context" if context is not None else "")
            )
    if h is not None:
        h = h.expand(*batch_shape, *scale.kept_shape)
    return h, batch_shape


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
    :param str split_prior: ``"fixed"``: every latent is standard Normal (RealNVP).
        ``"learned"`` (Glow, Kingma & Dhariwal, 2018): the factored-out latent gets
        :math:`z \sim \mathcal N(\mu(h), \operatorname{diag}\sigma(h)^2)`, with
        :math:`(\mu, \log\sigma)` predicted from the kept half :math:`h` by a 3x3
        convolution, and the last scale's latent :math:`\mathcal N(\mu, \sigma^2)`
        with a learned mean and log-scale per coordinate. Written as the affine map
        :math:`z = \mu(h) + \sigma(h) \odot \varepsilon` of a standard Normal
        :math:`\varepsilon` (log-determinant :math:`\sum \log\sigma(h)`), the prior
        becomes part of the transform and the base stays :math:`\mathcal N(0, I)`: the
        density is exactly :math:`\prod_i \mathcal N(Z_i; \mu_i, \sigma_i^2)` times the
        Jacobian of the layers. The convolution and the last scale's parameters start at
        zero, so a new model equals the fixed-prior one. Log-scales are soft-bounded,
        :math:`\log\sigma = 3 \tanh(\cdot / 3)`, as the couplings' are.
    :param bool memory_saving: run ``transform`` in the normalizing direction with
        :func:`~pyro_flows.transforms.recompute.normalize_recomputing`: the backward pass
        rebuilds activations from outputs, so training memory does not grow with the
        number of layers. Setting the attribute later also sets it for ``inner``. A flag
        that is not a bool (e.g. the truthy string ``"no"``) raises a ``TypeError``.

    With ``split_prior="learned"`` the base-side tensor holds the standardised latents
    :math:`\varepsilon_i = (Z_i - \mu_i) / \sigma_i`; :meth:`latents` splits it as before.

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
        split_prior: str = "fixed",
        memory_saving: bool = False,
    ):
        event_shape = torch.Size(event_shape)
        if split_prior not in SPLIT_PRIORS:
            raise ValueError(f"MultiScale: split_prior must be one of {SPLIT_PRIORS}, got {split_prior!r}")
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
        self.split_prior = split_prior
        if split_prior == "learned":
            if inner is None:
                # N(loc, exp(log_scale)^2) per coordinate of the last latent
                self.prior_loc = nn.Parameter(torch.zeros(scale_shape))
                self.prior_log_scale = nn.Parameter(torch.zeros(scale_shape))
            else:
                # (loc, log_scale) of Z_i from the kept half h; zero: starts as N(0, I)
                self.prior_net = nn.Conv2d(self.kept_shape[0], 2 * self.factored_shape[0], 3, padding=1)
                nn.init.zeros_(self.prior_net.weight)
                nn.init.zeros_(self.prior_net.bias)
        self.memory_saving = memory_saving

    @property
    def memory_saving(self) -> bool:
        return self.__dict__["_memory_saving"]

    @memory_saving.setter
    def memory_saving(self, value: bool) -> None:
        check_flag(value, "memory_saving", "MultiScale")
        if value:
            _check_blocks(normalizing_blocks(self.transform), "MultiScale")
        self.__dict__["_memory_saving"] = bool(value)
        self._clear_cache()
        if isinstance(self.inner, MultiScale):
            self.inner.memory_saving = value

    def prior(
        self, h: Optional[torch.Tensor] = None, batch_shape: Optional[Sequence[int]] = None
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        r"""Mean and log-scale of this scale's latent (:math:`Z_i` given the kept half
        ``h``, or the last latent when ``inner`` is ``None``), each of shape
        ``(*batch_shape, *factored_shape)``. Zeros for the fixed prior, in the dtype and on
        the device of ``h`` or else of the flow's parameters.

        :param h: the kept half, shape ``(*batch, *kept_shape)``: required by the learned
            prior of a scale with ``inner``, optional for the fixed one, not taken by the
            last scale (whose prior does not depend on it).
        :param batch_shape: the batch shape of the result; by default that of ``h``
            (``()`` without ``h``). It must hold ``h``'s, which is broadcast to it.

        >>> from pyro_flows.transforms import squeeze
        >>> flow = MultiScale(squeeze((1, 4, 4)), (1, 4, 4), split_prior="learned")
        >>> [tuple(t.shape) for t in flow.prior(batch_shape=(3,))]
        [(3, 4, 2, 2), (3, 4, 2, 2)]
        """
        h, batch_shape = _prior_arguments("MultiScale", self, h, batch_shape)
        return self._prior(h, batch_shape)

    def _prior(self, h: Optional[torch.Tensor], batch_shape) -> Tuple[torch.Tensor, torch.Tensor]:
        """:meth:`prior` without the checks: ``h`` of batch shape ``batch_shape`` or ``None``."""
        if self.split_prior == "fixed":
            if h is None:
                # the dtype and device of the flow (of a layer or of an inner scale)
                h = next((t for t in _state_of(self) if t.is_floating_point()), torch.zeros(()))
            shape = (*batch_shape, *self.factored_shape)
            return h.new_zeros(shape), h.new_zeros(shape)
        if self.inner is None:
            loc, raw = self.prior_loc, self.prior_log_scale
            loc, raw = loc.expand(*batch_shape, *loc.shape), raw.expand(*batch_shape, *raw.shape)
        else:
            out = self.prior_net(h.reshape(-1, *self.kept_shape))
            loc, raw = out.reshape(*batch_shape, *out.shape[-3:]).chunk(2, dim=-3)
        return loc, _LOG_SCALE_BOUND * torch.tanh(raw / _LOG_SCALE_BOUND)

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
            eps = flat.reshape(*batch, *self.scale_shape)
            v, ladj = self._from_standard(eps, None, batch)
        else:
            n_z = math.prod(self.factored_shape)
            eps = flat[..., :n_z].reshape(*batch, *self.factored_shape)
            w = flat[..., n_z:].reshape(*batch, *self.kept_shape)
            h = self.inner(w)
            z, ladj = self._from_standard(eps, h, batch)
            ladj = ladj + self.inner.log_abs_det_jacobian(w, h)
            v = torch.cat([z, h], dim=-3)
        x = self.transform(v)
        return x, self.transform.log_abs_det_jacobian(v, x) + ladj

    def _inverse_and_ladj(self, x):
        batch = x.shape[:-3]
        if self.memory_saving:
            v, ladj = normalize_recomputing(normalizing_blocks(self.transform), x, 3)
        else:
            v = self.transform.inv(x)
            ladj = self.transform.log_abs_det_jacobian(v, x)
        if self.inner is None:
            eps, prior_ladj = self._to_standard(v, None, batch)
            u = eps.flatten(-3)
        else:
            z, h = v.split([self.factored_shape[0], self.kept_shape[0]], dim=-3)
            eps, prior_ladj = self._to_standard(z, h, batch)
            w = self.inner.inv(h)
            ladj = ladj + self.inner.log_abs_det_jacobian(w, h)
            u = torch.cat([eps.flatten(-3), w.flatten(-3)], dim=-1)
        return u.reshape(*batch, *self.event_shape), ladj + prior_ladj

    # The learned prior as an affine map of a standard Normal, z = loc + exp(log_scale) eps.
    def _from_standard(self, eps, h, batch):
        if self.split_prior == "fixed":
            return eps, 0.0
        loc, log_scale = self._prior(h, batch)
        return loc + log_scale.exp() * eps, sum_event(log_scale, 3)

    def _to_standard(self, z, h, batch):
        if self.split_prior == "fixed":
            return z, 0.0
        loc, log_scale = self._prior(h, batch)
        return (z - loc) * torch.exp(-log_scale), sum_event(log_scale, 3)

    def extra_repr(self):
        return (
            f"event_shape={tuple(self.event_shape)}, latent_shapes={[tuple(s) for s in self.latent_shapes]}, "
            f"split_prior={self.split_prior!r}, memory_saving={self.memory_saving}"
        )


class ConditionalMultiScale(ConditionalTransformModule):
    r"""The conditional twin of :class:`MultiScale`: a multi-scale flow whose couplings and
    learned priors also see a context vector :math:`c` (e.g. a one-hot class label).

    ``condition(context)`` returns a :class:`MultiScale` (sharing this module's weights)
    for a context of shape ``(*context_batch, context_dim)``; use it with
    :class:`pyro.distributions.ConditionalTransformedDistribution`. Layers that are
    :class:`~pyro.distributions.conditional.ConditionalTransformModule`\ s (conditional
    couplings) are conditioned, the others (squeezes, ActNorm, 1x1 convolutions) are used
    as they are. With ``split_prior="learned"`` the mean and log-scale of each
    factored-out latent are predicted from the kept half *and* the context (a zero
    convolution on ``[h, E c]``), and the last latent's from learned parameters plus a
    zero linear map of :math:`c`; with zero-initialised conditioners a new model is the
    same map for every context.

    :param layers: the per-scale layers in Pyro's order (base side first), conditional or not.
    :param event_shape: the image shape ``(C, H, W)``.
    :param int context_dim: size of the context.
    :param inner: the coarser scales, a :class:`ConditionalMultiScale` or ``None``.
    :param str split_prior: ``"fixed"`` or ``"learned"`` (see :class:`MultiScale`).
    :param int context_channels: channels of the embedded context in the split priors.
    :param bool memory_saving: run the per-scale layers of every conditioned flow in the
        normalizing direction with
        :func:`~pyro_flows.transforms.recompute.normalize_recomputing` (see
        :class:`MultiScale`); gradients also reach a context that requires them.

    >>> import pyro_flows
    >>> cflow = pyro_flows.glow((1, 4, 4), num_scales=2, steps_per_scale=1, hidden_channels=4,
    ...                         context_dim=10, split_prior="learned")
    >>> flow = cflow.condition(torch.eye(10)[3])
    >>> flow.inv(torch.rand(5, 1, 4, 4)).shape
    torch.Size([5, 1, 4, 4])
    """

    bijective = True

    def __init__(
        self,
        layers: Sequence[nn.Module],
        event_shape: Sequence[int],
        context_dim: int,
        inner: Optional[ConditionalMultiScale] = None,
        split_prior: str = "fixed",
        context_channels: int = 8,
        memory_saving: bool = False,
    ):
        super().__init__()
        event_shape = torch.Size(event_shape)
        if split_prior not in SPLIT_PRIORS:
            raise ValueError(
                f"ConditionalMultiScale: split_prior must be one of {SPLIT_PRIORS}, got {split_prior!r}"
            )
        if isinstance(context_dim, bool) or not isinstance(context_dim, int) or context_dim < 1:
            raise ValueError(
                f"ConditionalMultiScale: context_dim must be a positive int, got {context_dim!r}"
            )
        self.event_shape = event_shape
        self.context_dim = context_dim
        self.layers = nn.ModuleList(layers)
        self.inner = inner
        self.split_prior = split_prior
        # the shapes, from a version conditioned on a zero context (couplings keep shapes),
        # in the dtype of the layers' parameters (contexts are checked against it)
        zero = torch.zeros(context_dim, dtype=_module_dtype(self) or torch.get_default_dtype())
        probe = MultiScale(
            ComposeTransformModule([self._conditioned(layer, zero) for layer in layers]),
            event_shape,
            inner=None if inner is None else inner.condition(zero),
        )
        self.scale_shape, self.factored_shape = probe.scale_shape, probe.factored_shape
        self.kept_shape = probe.kept_shape
        self._probe_blocks = normalizing_blocks(probe.transform)
        self.memory_saving = memory_saving
        if split_prior == "learned":
            if inner is None:
                self.prior_loc = nn.Parameter(torch.zeros(self.scale_shape))
                self.prior_log_scale = nn.Parameter(torch.zeros(self.scale_shape))
                self.prior_context = nn.Linear(context_dim, 2 * math.prod(self.scale_shape))
                nn.init.zeros_(self.prior_context.weight)
                nn.init.zeros_(self.prior_context.bias)
            else:
                self.prior_embed = nn.Linear(context_dim, context_channels)
                self.prior_net = nn.Conv2d(
                    self.kept_shape[0] + context_channels, 2 * self.factored_shape[0], 3, padding=1
                )
                nn.init.zeros_(self.prior_net.weight)
                nn.init.zeros_(self.prior_net.bias)

    @property
    def memory_saving(self) -> bool:
        return self.__dict__["_memory_saving"]

    @memory_saving.setter
    def memory_saving(self, value: bool) -> None:
        check_flag(value, "memory_saving", "ConditionalMultiScale")
        if value:
            _check_blocks(self.__dict__["_probe_blocks"], "ConditionalMultiScale")
        self.__dict__["_memory_saving"] = bool(value)
        if isinstance(self.inner, ConditionalMultiScale):
            self.inner.memory_saving = value

    @staticmethod
    def _conditioned(layer, context):
        return layer.condition(context) if isinstance(layer, ConditionalTransformModule) else layer

    def condition(self, context: torch.Tensor) -> MultiScale:
        check_context(type(self).__name__, context, self.context_dim, self)
        return _ConditionedMultiScale(self, context)

    def prior(
        self,
        h: Optional[torch.Tensor] = None,
        batch_shape: Optional[Sequence[int]] = None,
        context: Optional[torch.Tensor] = None,
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """Mean and log-scale of this scale's latent given the kept half ``h`` and the
        context, each of shape ``(*batch_shape, *factored_shape)``; ``h`` and
        ``batch_shape`` as in ``MultiScale.prior`` (``batch_shape`` by default the
        broadcast batch shape of ``h`` and the context)."""
        if context is None:
            raise ValueError("ConditionalMultiScale.prior: the prior of a conditional flow needs the context")
        check_context(type(self).__name__, context, self.context_dim, self)
        h, batch_shape = _prior_arguments(type(self).__name__, self, h, batch_shape, context)
        return self._prior(h, batch_shape, context)

    def _prior(self, h: Optional[torch.Tensor], batch_shape, context: torch.Tensor):
        """:meth:`prior` without the checks: ``h`` of batch shape ``batch_shape`` or ``None``."""
        if self.split_prior == "fixed":
            shape = (*batch_shape, *self.factored_shape)
            return context.new_zeros(shape), context.new_zeros(shape)
        context = context.expand(*batch_shape, self.context_dim)
        if self.inner is None:
            extra = self.prior_context(context).reshape(
                *batch_shape, 2 * self.scale_shape[0], *self.scale_shape[1:]
            )
            extra_loc, extra_raw = extra.chunk(2, dim=-3)
            loc, raw = self.prior_loc + extra_loc, self.prior_log_scale + extra_raw
        else:
            embedded = self.prior_embed(context)
            maps = embedded[..., None, None].expand(*embedded.shape, *self.kept_shape[1:])
            stacked = torch.cat([h, maps], dim=-3)
            out = self.prior_net(stacked.reshape(-1, *stacked.shape[-3:]))
            loc, raw = out.reshape(*batch_shape, *out.shape[-3:]).chunk(2, dim=-3)
        return loc, _LOG_SCALE_BOUND * torch.tanh(raw / _LOG_SCALE_BOUND)

    def extra_repr(self) -> str:
        return (
            f"event_shape={tuple(self.event_shape)}, context_dim={self.context_dim}, "
            f"split_prior={self.split_prior!r}, memory_saving={self.memory_saving}"
        )


class _ConditionedMultiScale(MultiScale):
    """A :class:`MultiScale` made by :meth:`ConditionalMultiScale.condition`: conditioned
    layers, the conditional prior read with the bound context."""

    def __init__(self, parent: ConditionalMultiScale, context: torch.Tensor):
        # Bypasses MultiScale.__init__ on purpose: the priors are the parent's.
        FlowTransform.__init__(self, event_shape=parent.event_shape)
        self.transform = ComposeTransformModule(
            [parent._conditioned(layer, context) for layer in parent.layers]
        )
        self.inner = None if parent.inner is None else parent.inner.condition(context)
        self.scale_shape, self.factored_shape = parent.scale_shape, parent.factored_shape
        self.kept_shape, self.split_prior = parent.kept_shape, parent.split_prior
        self.parent = parent
        self.context = context
        self.__dict__["_memory_saving"] = parent.memory_saving

    def prior(self, h=None, batch_shape=None):
        h, batch_shape = _prior_arguments(type(self.parent).__name__, self, h, batch_shape, self.context)
        return self._prior(h, batch_shape)

    def _prior(self, h, batch_shape):
        return self.parent._prior(h, batch_shape, self.context)

    def _state_tensors(self):
        # A context changed in place must invalidate the cache like a parameter would.
        return [*super()._state_tensors(), self.context]

    def _check(self, x, what, dtype=None):
        # errors name the class the user built, not this private one
        check_event(type(self.parent).__name__, x, self.event_shape, what, dtype)

    def _expand(self, x, what: str = "input"):
        batch = context_batch_shape(type(self.parent).__name__, x.shape[:-3], self.context, what)
        return x.expand(*batch, *self.event_shape)

    def _call_and_ladj(self, u):
        return super()._call_and_ladj(self._expand(u))

    def _inverse_and_ladj(self, x):
        return super()._inverse_and_ladj(self._expand(x, "value"))
