"""Normalization layers for flows: RealNVP's batch normalization (Dinh et al., 2017)
and Glow's activation normalization (Kingma & Dhariwal, 2018)."""

from __future__ import annotations

import math
import numbers
import warnings

import torch
from torch import nn

from .base import FlowTransform, check_event

__all__ = ["RealNVPBatchNorm", "real_nvp_batch_norm", "ActNorm", "act_norm"]


def _check_eps(eps, owner: str, positive: bool) -> None:
    """``eps`` must be a finite number, ``> 0`` (``positive``) or ``>= 0``."""
    ok = isinstance(eps, numbers.Real) and not isinstance(eps, bool) and math.isfinite(eps)
    if not ok or not (eps > 0 if positive else eps >= 0):
        bound = "> 0 (it keeps a feature without spread finite)" if positive else ">= 0"
        raise ValueError(f"{owner}: eps must be a finite number {bound}, got {eps!r}")


class _PerFeature(FlowTransform):
    """Shared plumbing of layers with one statistic or parameter per feature (vectors,
    ``event_dim=1``) or per channel (images ``(C, H, W)``, ``event_dim=3``)."""

    def __init__(self, num_features: int, event_dim: int):
        name = type(self).__name__
        if event_dim not in (1, 3):
            raise ValueError(f"{name}: event_dim must be 1 (vectors) or 3 (images), got {event_dim!r}")
        if isinstance(num_features, bool) or not isinstance(num_features, int) or num_features < 1:
            raise ValueError(f"{name}: num_features must be a positive integer, got {num_features!r}")
        super().__init__()
        self.event_dim_ = event_dim
        self.num_features = num_features

    def _check(self, x, what, dtype=None):
        check_event(type(self).__name__, x, None, what, dtype)
        d = x.dim() - self.event_dim_
        if d < 0 or x.shape[d] != self.num_features:
            kind = "features" if self.event_dim_ == 1 else "channels (C, H, W)"
            raise ValueError(
                f"{type(self).__name__}: expected {what} with {self.num_features} {kind} at dim "
                f"{-self.event_dim_}, got shape {tuple(x.shape)}"
            )

    def _view(self, t: torch.Tensor) -> torch.Tensor:
        """Per-feature vector -> broadcastable over the event."""
        return t.view(-1, 1, 1) if self.event_dim_ == 3 else t

    def _spread_or_warn(self, y, consequence: str) -> bool:
        """Whether ``y`` holds at least two values per feature (a batch statistic needs
        them); if not, a ``RuntimeWarning`` that says what the layer does instead."""
        if y.numel() // self.num_features >= 2:
            return True
        warnings.warn(
            f"{type(self).__name__} in train mode got a single value per feature, {consequence}",
            RuntimeWarning,
            stacklevel=5,
        )
        return False

    def _is_initialized(self) -> bool:
        """``bool(self.initialized)`` without reading the device on every call.

        Reading a CUDA buffer into Python waits for the device (and breaks a
        ``torch.compile`` graph): once per layer and training step in a Glow. The flag
        only ever turns true during training, so a true value is remembered with the
        buffer's identity and version counter, and read again when either changed
        (``load_state_dict``, ``initialized.fill_(False)``, a replaced buffer). Like the
        transforms' cache it cannot see a write through ``.data``."""
        buffer = self.initialized
        seen = self.__dict__.get("_initialized_seen")
        if seen is not None and seen[0] is buffer:
            # compiled code trusts the remembered value (dynamo cannot read _version)
            if torch.compiler.is_compiling() or seen[1] == buffer._version:
                return True
        if not bool(buffer):
            return False
        self._remember_initialized()
        return True

    def _remember_initialized(self) -> None:
        """Record that ``initialized`` now holds true (after ``fill_(True)``)."""
        self.__dict__["_initialized_seen"] = (self.initialized, self.initialized._version)

    def __getstate__(self):
        state = super().__getstate__()
        state.pop("_initialized_seen", None)  # a copy has a buffer of its own
        return state

    def _per_event(self, per_feature: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """A per-feature log-det summed over the event (every pixel counts for images),
        expanded to ``x``'s batch shape."""
        positions = x.shape[-1] * x.shape[-2] if self.event_dim_ == 3 else 1
        return (per_feature.sum() * positions).expand(x.shape[: x.dim() - self.event_dim_])


class RealNVPBatchNorm(_PerFeature):
    r"""Batch normalization as a bijection (Dinh et al., 2017, Sec. 3.7).

    In the normalizing direction (data :math:`y` to base :math:`x`, Pyro's ``_inverse``,
    the direction ``log_prob`` takes)

    .. math::

        x = \frac{y - \tilde\mu}{\sqrt{\tilde\sigma^2 + \varepsilon}} \;(\odot e^{\gamma} + \beta),
        \qquad \log\left|\det\frac{\partial x}{\partial y}\right|
        = -\frac12 \sum_i \log(\tilde\sigma_i^2 + \varepsilon) \;(+\textstyle\sum_i \gamma_i),

    per feature for vectors and per channel for images (where the sum runs over every
    pixel). :math:`\gamma, \beta` exist only with ``affine=True``.

    **Train mode.** Each ``_inverse`` call computes the batch statistics
    :math:`\hat\mu_k, \hat\sigma^2_k` (biased variance over all batch dimensions, and over
    height and width for images) and uses the running averages *including* them,

    .. math::

        \tilde\mu_{k+1} = \rho\,\tilde\mu_k + (1-\rho)\,\hat\mu_k,\qquad
        \tilde\sigma^2_{k+1} = \rho\,\tilde\sigma^2_k + (1-\rho)\,\hat\sigma^2_k,

    with :math:`\rho = 1 -` ``momentum`` (``momentum`` follows ``torch.nn.BatchNorm``'s
    convention: the weight of the new batch). Gradients flow only through the current
    batch's :math:`\hat\mu_k, \hat\sigma^2_k`; the old averages are constants. The first
    training batch initialises the averages to its own statistics (no bias towards the
    initial 0/1). The log-determinant treats the statistics as constants, as the paper
    does, so it is exact for the map with the batch's statistics frozen. A batch with a
    single value per feature (one vector) has no variance to learn from: it is
    normalised with the running averages, as in eval mode, leaves them unchanged and
    raises a ``RuntimeWarning``.

    **Eval mode.** The running averages are fixed and the layer is an exact bijection:
    ``_call`` (sampling) and ``_inverse`` (scoring) invert each other. Sampling
    (``_call``) always uses the running averages, also in train mode.

    :param int num_features: features (vectors) or channels (images).
    :param int event_dim: 1 for vectors ``(D,)``, 3 for images ``(C, H, W)``.
    :param float momentum: weight of the new batch in the running averages, :math:`1-\rho`;
        ``None`` for the cumulative average, as in ``torch.nn.BatchNorm``: the :math:`k`-th
        training batch gets weight :math:`1/k`, so the averages are the plain means of the
        statistics of all batches so far (counted, for either setting, in the buffer
        ``num_batches_tracked``).
    :param float eps: :math:`\varepsilon`, keeps zero-variance features finite.
    :param bool affine: learn :math:`\gamma` (log-scale) and :math:`\beta` as well.

    >>> bn = real_nvp_batch_norm(3)
    >>> y = torch.randn(100, 3) * 5 + 2
    >>> x = bn.inv(y)                      # train mode: normalized with batch statistics
    >>> bool(x.mean(0).abs().max() < 1e-5)
    True
    >>> _ = bn.eval()
    >>> torch.allclose(bn(bn.inv(y)), y, atol=1e-5)
    True
    """

    def __init__(
        self,
        num_features: int,
        event_dim: int = 1,
        momentum: float = 0.1,
        eps: float = 1e-5,
        affine: bool = False,
    ):
        if momentum is not None and not (
            isinstance(momentum, numbers.Real) and not isinstance(momentum, bool) and 0.0 < momentum <= 1.0
        ):
            raise ValueError(
                f"{type(self).__name__}: momentum must be a number in (0, 1], or None for the cumulative "
                f"average of all batches, got {momentum!r}"
            )
        _check_eps(eps, type(self).__name__, positive=True)
        super().__init__(num_features, event_dim)
        self.momentum = momentum
        self.eps = eps
        self.affine = affine
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))
        self.register_buffer("initialized", torch.tensor(False))
        # the training batches averaged so far, whatever the momentum (as torch.nn.BatchNorm
        # keeps it), so that the state of either kind loads into the other
        self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long))
        if affine:
            self.log_gamma = nn.Parameter(torch.zeros(num_features))
            self.beta = nn.Parameter(torch.zeros(num_features))

    def _ladj(self, x, var):
        """log|det| of the de-normalizing ``_call``, shape batch_shape."""
        per_feature = 0.5 * torch.log(var + self.eps)
        if self.affine:
            per_feature = per_feature - self.log_gamma
        return self._per_event(per_feature, x)

    def _call_and_ladj(self, x):
        mean, var = self.running_mean, self.running_var
        z = x
        if self.affine:
            z = (z - self._view(self.beta)) * self._view(torch.exp(-self.log_gamma))
        y = z * self._view(torch.sqrt(var + self.eps)) + self._view(mean)
        return y, self._ladj(x, var)

    def _inverse_and_ladj(self, y):
        # an empty batch, or one value per feature (variance 0), has no statistics to learn from
        if self.training and y.numel() and self._has_spread(y):
            mean, var = self._training_statistics(y)
        else:
            mean, var = self.running_mean, self.running_var
        x = (y - self._view(mean)) * self._view(torch.rsqrt(var + self.eps))
        if self.affine:
            x = x * self._view(torch.exp(self.log_gamma)) + self._view(self.beta)
        return x, self._ladj(y, var)

    def _has_spread(self, y) -> bool:
        # A single value per feature has variance 0: normalising by it would send the
        # point to 0 with a log-det of -1/2 log eps per feature, and, as the first batch,
        # would set the running variance to 0 (eval mode would then scale by 1/sqrt(eps)).
        return self._spread_or_warn(
            y,
            "whose batch variance is 0: it is normalised with the running averages, which it "
            "leaves unchanged. Use a larger batch to train, or .eval() to score single points.",
        )

    def _training_statistics(self, y):
        event_dims = [y.dim() - self.event_dim_ + 1 + i for i in range(self.event_dim_ - 1)]
        reduce = list(range(y.dim() - self.event_dim_)) + event_dims
        batch_mean = y.mean(reduce)
        batch_var = y.var(reduce, unbiased=False)
        if not self._is_initialized():
            mean, var = batch_mean, batch_var
            self.initialized.fill_(True)
            self._remember_initialized()
            self.num_batches_tracked.fill_(1)
        else:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:
                # the k-th batch has weight 1/k: the running averages are the plain means of
                # the batch statistics so far (torch.nn.BatchNorm's momentum=None), read
                # without a device sync
                weight = self.num_batches_tracked.reciprocal().to(batch_mean.dtype)
            else:
                weight = self.momentum
            # The old averages are constants: gradients flow only through this batch.
            mean = (1 - weight) * self.running_mean + weight * batch_mean
            var = (1 - weight) * self.running_var + weight * batch_var
        with torch.no_grad():
            self.running_mean.copy_(mean)
            self.running_var.copy_(var)
        return mean, var

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # A state saved before the count was kept for every momentum has none: its
        # averages count as one batch if they were learnt (the cumulative average then
        # gives the next batch weight 1/2, not 1, which would discard them).
        key = prefix + "num_batches_tracked"
        if key not in state_dict and prefix + "running_mean" in state_dict:
            learnt = bool(state_dict.get(prefix + "initialized", False))
            state_dict[key] = torch.tensor(int(learnt), dtype=torch.long)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def extra_repr(self):
        return (
            f"num_features={self.num_features}, event_dim={self.event_dim_}, "
            f"momentum={self.momentum}, eps={self.eps}, affine={self.affine}"
        )


def real_nvp_batch_norm(
    input_dim: int, momentum: float = 0.1, eps: float = 1e-5, affine: bool = False, event_dim: int = 1
) -> RealNVPBatchNorm:
    """One :class:`RealNVPBatchNorm` over ``input_dim`` features (or channels with
    ``event_dim=3``).

    >>> real_nvp_batch_norm(4).running_var.tolist()
    [1.0, 1.0, 1.0, 1.0]
    """
    return RealNVPBatchNorm(input_dim, event_dim=event_dim, momentum=momentum, eps=eps, affine=affine)


# ---------------------------------------------------------------------------- images
class ActNorm(_PerFeature):
    r"""Glow's activation normalization (Kingma & Dhariwal, 2018): a
    per-channel affine map with data-dependent initialisation.

    Sampling (``_call``, base to data) and scoring (``_inverse``, data to base):

    .. math::

        y = e^{s} \odot x + b, \qquad x = (y - b) \odot e^{-s}, \qquad
        \log|\det J| = H W \textstyle\sum_c s_c

    with one :math:`s_c, b_c` per channel, broadcast over the pixels of ``(C, H, W)``
    events (for vectors ``(D,)``, one per feature and :math:`\log|\det J| = \sum_i s_i`).

    **Data-dependent initialisation.** The first call in the scoring direction
    (``log_prob``), in train mode, sets :math:`b` to the per-channel mean and
    :math:`e^{s}` to the per-channel standard deviation of that batch (over the batch
    and the pixels), so the layer's output on it has zero mean and unit variance per
    channel (a channel without spread in that batch keeps :math:`s = 0`). A batch with
    a single value per channel (one vector, or one image of one pixel) has no spread to
    learn a scale from: it is scored by the identity, leaves the layer uninitialised and
    raises a ``RuntimeWarning``. Afterwards :math:`s, b` are ordinary parameters. The
    ``initialized`` flag is a buffer, so it is saved in ``state_dict`` and a reloaded model is not
    re-initialised on its first batch. Sampling before initialisation uses the
    identity. A layer trained through sampling alone (a variational guide, whose
    ``rsample`` runs the sampling direction) is never overwritten: the data set
    :math:`s, b` only while both are still at their starting value zero.

    :param int num_features: channels (images) or features (vectors).
    :param int event_dim: 3 for images ``(C, H, W)``, 1 for vectors.
    :param float eps: added to the standard deviation at initialisation.

    >>> layer = act_norm(2)
    >>> y = torch.randn(64, 2, 4, 4) * torch.tensor([3.0, 0.5]).view(2, 1, 1) + 1.0
    >>> x = layer.inv(y)                          # first batch: initialises
    >>> bool(layer.initialized), round(float(x[:, 0].detach().std(unbiased=False)), 4)
    (True, 1.0)
    """

    def __init__(self, num_features: int, event_dim: int = 3, eps: float = 1e-6):
        _check_eps(eps, type(self).__name__, positive=False)
        super().__init__(num_features, event_dim)
        self.eps = eps
        self.loc = nn.Parameter(torch.zeros(num_features))
        self.log_scale = nn.Parameter(torch.zeros(num_features))
        self.register_buffer("initialized", torch.tensor(False))

    def _ladj(self, x):
        return self._per_event(self.log_scale, x)

    @torch.no_grad()
    def initialize(self, y: torch.Tensor) -> None:
        """Set :math:`b, s` from the per-channel statistics of the data batch ``y``
        (shape ``(*batch, C, H, W)`` or ``(*batch, D)``, not empty)."""
        self._check(y, "value")
        if not y.numel():
            raise ValueError(f"{type(self).__name__}: cannot initialise from an empty batch")
        channel_dim = y.dim() - self.event_dim_
        per_channel = y.detach().movedim(channel_dim, 0).reshape(self.num_features, -1)
        self.loc.copy_(per_channel.mean(1))
        std = per_channel.std(1, unbiased=False)
        # A channel without spread in this batch (one point, or a value that repeats, as in
        # a sparse column) says nothing about its scale: leave it at 1. log(eps) there
        # would blow every other point of that channel up by 1/eps.
        self.log_scale.copy_(torch.where(std > 0, torch.log(std + self.eps), torch.zeros_like(std)))
        self.initialized.fill_(True)
        self._remember_initialized()

    def _call_and_ladj(self, x):
        return x * self._view(self.log_scale.exp()) + self._view(self.loc), self._ladj(x)

    def _inverse_and_ladj(self, y):
        # not from an empty batch; the flag is read without a device sync once it is set
        if self.training and y.numel() and not self._is_initialized():
            if self.loc.any() or self.log_scale.any():
                self.initialized.fill_(True)  # already trained (by sampling): keep what it learned
                self._remember_initialized()
            elif self._has_spread(y):
                self.initialize(y)
        return (y - self._view(self.loc)) * self._view(torch.exp(-self.log_scale)), self._ladj(y)

    def _has_spread(self, y) -> bool:
        # One point (one vector, or an image batch of one at one pixel) has no spread in
        # any channel: initialised from it the layer would only shift by that point and
        # keep s = 0 for good, the scale it exists to set (a spline flow's data would stay
        # outside the splines' interval). It stays uninitialised, the identity, instead.
        return self._spread_or_warn(
            y,
            "which has no spread to initialise its scale from: it stays uninitialised (the "
            "identity) and initialises on the first batch with at least two values per feature.",
        )

    def extra_repr(self):
        return f"num_features={self.num_features}, event_dim={self.event_dim_}"


def act_norm(num_features: int, event_dim: int = 3) -> ActNorm:
    """An :class:`ActNorm` layer over ``num_features`` channels (``event_dim=3``) or
    features (``event_dim=1``).

    >>> act_norm(3).log_scale.shape
    torch.Size([3])
    """
    return ActNorm(num_features, event_dim=event_dim)
