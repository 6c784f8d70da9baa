r"""A Gaussian mixture density model, the classical baseline for flows.

.. math::

    p_\theta(x) = \sum_{k=1}^{K} \pi_k\, \mathcal N(x;\, \mu_k, \Sigma_k),

fitted by expectation-maximization (:meth:`GaussianMixture.fit_em`) or by gradient descent
on the negative log-likelihood (:meth:`GaussianMixture.fit_sgd`). It has the same
``log_prob``/``sample`` interface as a :class:`~pyro_flows.Flow`, so the two can be
compared on the same data.

Its weakness in high dimension is why flows exist: a sample is "pick a centre, add
Gaussian noise", so it is realistic only if the centres already are realistic data. On
8x8 digits (64-D) the samples are blurred class averages with pixel noise (see
``docs/one-d.md`` and ``examples/gmm_digits.py``).
"""

from __future__ import annotations

from typing import List, Optional

import pyro.distributions as dist
import torch
from torch import nn

from .transforms.base import check_event

__all__ = ["GaussianMixture"]

_COVARIANCES = ("diag", "full")


class GaussianMixture(nn.Module):
    r"""Gaussian mixture with ``num_components`` components over scalars or ``dim``-vectors.

    :param int num_components: :math:`K`.
    :param dim: ``None`` for scalar data (shape ``(N,)``), else the dimension :math:`D`
        of vector data (shape ``(N, D)``).
    :param str covariance: ``"diag"`` (:math:`\Sigma_k` diagonal) or ``"full"``
        (:math:`\Sigma_k = L_k L_k^\top`, :math:`L_k` lower-triangular with a positive
        diagonal). Ignored for scalars.

    Parameters (``logits``, ``loc`` and ``log_scale`` or ``scale_tril_raw``) are
    :class:`~torch.nn.Parameter` s, so the model trains with any optimizer, follows
    ``.to()`` and round-trips through ``state_dict``.

    >>> x = torch.cat([torch.randn(200) - 3, torch.randn(200) + 3])
    >>> gmm = GaussianMixture(2).fit_em(x)
    >>> sorted(round(m) for m in gmm.loc.flatten().tolist())
    [-3, 3]
    >>> gmm.log_prob(torch.zeros(5)).shape
    torch.Size([5])
    """

    def __init__(self, num_components: int, dim: Optional[int] = None, covariance: str = "diag"):
        super().__init__()
        if not isinstance(num_components, int) or num_components < 1:
            raise ValueError(f"num_components must be a positive integer, got {num_components!r}")
        if dim is not None and (not isinstance(dim, int) or dim < 1):
            raise ValueError(f"dim must be None (scalar data) or a positive integer, got {dim!r}")
        if covariance not in _COVARIANCES:
            raise ValueError(f"covariance must be one of {_COVARIANCES}, got {covariance!r}")
        self.num_components = num_components
        self.dim = dim
        self.covariance = "diag" if dim is None else covariance
        self.event_shape = torch.Size(() if dim is None else (dim,))
        d = 1 if dim is None else dim
        self.logits = nn.Parameter(torch.zeros(num_components))
        self.loc = nn.Parameter(torch.linspace(-1.0, 1.0, num_components).unsqueeze(-1).expand(-1, d).clone())
        if self.covariance == "diag":
            self.log_scale = nn.Parameter(torch.zeros(num_components, d))
        else:
            # strictly lower part as is, diagonal as log
            self.scale_tril_raw = nn.Parameter(torch.zeros(num_components, d, d))
        #: mean log-likelihood per data point of the parameters after each EM iteration
        #: (the last value is the fitted model's); for SGD, of each step's minibatch before
        #: that step
        self.history: List[float] = []

    # --------------------------------------------------------------- distribution
    def scale_tril(self) -> torch.Tensor:
        """:math:`L_k` with :math:`\\Sigma_k = L_k L_k^\\top`, shape ``(K, D, D)``."""
        if self.covariance == "diag":
            return torch.diag_embed(self.log_scale.exp())
        raw = self.scale_tril_raw
        return raw.tril(-1) + torch.diag_embed(raw.diagonal(dim1=-2, dim2=-1).exp())

    def forward(self) -> dist.MixtureSameFamily:
        """The mixture as a Pyro distribution with event shape ``()`` or ``(D,)``."""
        mixing = dist.Categorical(logits=self.logits)
        if self.dim is None:
            components = dist.Normal(self.loc[:, 0], self.log_scale[:, 0].exp())
        elif self.covariance == "diag":
            components = dist.Normal(self.loc, self.log_scale.exp()).to_event(1)
        else:
            components = dist.MultivariateNormal(self.loc, scale_tril=self.scale_tril())
        return dist.MixtureSameFamily(mixing, components)

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """:math:`\\log p_\\theta(x)` for ``x`` of shape ``(*batch, *event_shape)``."""
        check_event(type(self).__name__, x, self.event_shape, "value")
        return self().log_prob(x)

    def sample(self, sample_shape=()) -> torch.Tensor:
        """Pick a component by :math:`\\pi`, add its Gaussian noise (no gradients)."""
        with torch.no_grad():
            return self().sample(torch.Size(sample_shape))

    # ------------------------------------------------------------------ fitting
    def _as_matrix(self, data: torch.Tensor) -> torch.Tensor:
        check_event(type(self).__name__, data, self.event_shape, "data")
        x = data.reshape(-1, 1 if self.dim is None else self.dim)
        if x.shape[0] < self.num_components:
            raise ValueError(f"need at least num_components={self.num_components} points, got {x.shape[0]}")
        return x

    @torch.no_grad()
    def _initialize(self, x: torch.Tensor, generator: torch.Generator) -> None:
        """k-means++ seeding followed by a few Lloyd iterations."""
        n, k = x.shape[0], self.num_components
        centres = x[torch.randint(n, (1,), generator=generator, device="cpu").to(x.device)]
        for _ in range(1, k):
            d2 = torch.cdist(x, centres).square().amin(1)
            probs = (d2 / d2.sum()).cpu() if float(d2.sum()) > 0 else torch.full((n,), 1.0 / n)
            pick = torch.multinomial(probs, 1, generator=generator).to(x.device)
            centres = torch.cat([centres, x[pick]])
        for _ in range(10):
            assign = torch.cdist(x, centres).argmin(1)
            for j in range(k):
                members = x[assign == j]
                if len(members):
                    centres[j] = members.mean(0)
        self.loc.copy_(centres)
        self.logits.zero_()
        variance = x.var(0, correction=0) + 1e-6  # a single point has no unbiased variance
        if self.covariance == "diag":
            self.log_scale.copy_(0.5 * variance.log().expand(k, -1))
        else:
            self.scale_tril_raw.copy_(torch.diag_embed(0.5 * variance.log()).expand(k, -1, -1))

    @torch.no_grad()
    def fit_em(
        self,
        data: torch.Tensor,
        max_iter: int = 200,
        tol: float = 1e-6,
        reg_covar: float = 1e-6,
        seed: int = 0,
        init: bool = True,
    ) -> "GaussianMixture":
        r"""Maximum likelihood by EM.

        E-step: responsibilities :math:`r_{nk} \propto \pi_k \mathcal N(x_n; \mu_k, \Sigma_k)`.
        M-step: :math:`N_k = \sum_n r_{nk}`, :math:`\pi_k = N_k/N`,
        :math:`\mu_k = \sum_n r_{nk} x_n / N_k`,
        :math:`\Sigma_k = \sum_n r_{nk}(x_n-\mu_k)(x_n-\mu_k)^\top / N_k + \lambda I`
        (diagonal part only for ``"diag"``). Stops when an iteration changes the mean
        log-likelihood by less than ``tol``; ``history`` holds it after every iteration,
        so ``history[-1]`` is the fitted parameters' own. The likelihood is non-convex:
        the result depends on the k-means++ seeding (``seed``).

        :param data: shape ``(N, *event_shape)``.
        :param float reg_covar: :math:`\lambda`, keeps covariances invertible.
        :param bool init: re-seed the components first (``False`` continues from the
            current parameters).
        :returns: ``self``.
        """
        x = self._as_matrix(data).to(self.loc)
        if init:
            self._initialize(x, torch.Generator().manual_seed(seed))
        self.history = []
        n, d = x.shape
        eye = torch.eye(d, dtype=x.dtype, device=x.device)
        # the E-step of each iteration also scores the parameters the last one left, so
        # ``history`` holds the log-likelihood after every M-step, the last one included
        joint = self._component_log_prob(x) + torch.log_softmax(self.logits, -1)
        log_lik = torch.logsumexp(joint, -1)
        previous = float(log_lik.mean())
        for _ in range(max_iter):
            resp = torch.exp(joint - log_lik.unsqueeze(-1))  # (N, K)
            # a floor, not an offset, so that a component's mean is its points' mean exactly
            counts = resp.sum(0).clamp_min(10 * torch.finfo(x.dtype).eps)
            loc = resp.T @ x / counts.unsqueeze(-1)
            self.logits.copy_(torch.log(counts / n))
            self.loc.copy_(loc)
            # spreads about the new means, never E[x^2] - mu^2: far from the origin that
            # difference cancels to nothing in float32 (at x ~ 1000 its error is ~0.1)
            centred = x.unsqueeze(1) - loc  # (N, K, D)
            if self.covariance == "diag":
                variance = torch.einsum("nk,nki->ki", resp, centred.square()) / counts.unsqueeze(-1)
                self.log_scale.copy_(0.5 * torch.log(variance + reg_covar))
            else:
                cov = torch.einsum("nk,nki,nkj->kij", resp, centred, centred) / counts.view(-1, 1, 1)
                chol = torch.linalg.cholesky(cov + reg_covar * eye)
                raw = chol.tril(-1) + torch.diag_embed(chol.diagonal(dim1=-2, dim2=-1).log())
                self.scale_tril_raw.copy_(raw)
            joint = self._component_log_prob(x) + torch.log_softmax(self.logits, -1)
            log_lik = torch.logsumexp(joint, -1)
            mean_ll = float(log_lik.mean())
            self.history.append(mean_ll)
            if abs(mean_ll - previous) < tol:
                break
            previous = mean_ll
        return self

    def _component_log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """:math:`\\log \\mathcal N(x_n; \\mu_k, \\Sigma_k)`, shape ``(N, K)`` for ``x`` ``(N, D)``."""
        if self.covariance == "diag":
            return dist.Normal(self.loc, self.log_scale.exp()).log_prob(x.unsqueeze(1)).sum(-1)
        return dist.MultivariateNormal(self.loc, scale_tril=self.scale_tril()).log_prob(x.unsqueeze(1))

    def fit_sgd(
        self, data: torch.Tensor, steps: int = 500, lr: float = 0.05, batch_size: int = 512, seed: int = 0
    ) -> "GaussianMixture":
        """Maximum likelihood by Adam on minibatches (after k-means++ seeding).

        :returns: ``self``.
        """
        x = self._as_matrix(data).to(self.loc)
        generator = torch.Generator().manual_seed(seed)
        self._initialize(x, generator)
        optimizer = torch.optim.Adam(self.parameters(), lr=lr)
        self.history = []
        for _ in range(steps):
            idx = torch.randint(x.shape[0], (min(batch_size, x.shape[0]),), generator=generator)
            joint = self._component_log_prob(x[idx.to(x.device)]) + torch.log_softmax(self.logits, -1)
            loss = -torch.logsumexp(joint, -1).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            self.history.append(-float(loss.detach()))
        return self

    def extra_repr(self) -> str:
        return f"num_components={self.num_components}, dim={self.dim}, covariance={self.covariance!r}"
