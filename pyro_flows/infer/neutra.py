r"""NeuTra HMC: NUTS in the latent space of a trained flow guide (Hoffman et al., 2019).

A trained guide :math:`q` writes the model's unconstrained latent vector as
:math:`\theta = T(z)`, :math:`z \sim \mathcal N(0, I)`. NeuTra runs Hamiltonian Monte
Carlo on the pulled-back posterior

.. math::

    \tilde p(z) \propto p\big(T(z), \mathrm{data}\big)\, \big|\det J_T(z)\big|,

which is close to a standard normal where the guide is good, so NUTS needs short
trajectories and a unit step size; where the guide is poor the chain still targets the
exact posterior (the guide only changes the geometry, never the target). Samples are
pushed back through :math:`T` to the model's sites. This module wraps Pyro's
:class:`~pyro.infer.reparam.NeuTraReparam` with the bookkeeping a user otherwise writes
by hand: freezing the guide, timing, divergences and the transform back to model space.
"""

from __future__ import annotations

import contextlib
import time
import warnings
from dataclasses import dataclass
from typing import Dict, Optional

import numpy as np
import torch
from pyro.infer import MCMC, NUTS
from pyro.infer.autoguide import AutoContinuous
from pyro.infer.reparam import NeuTraReparam

from .diagnostics import _divergences_by_chain
from .noncentered import NonCenteredNeuTraReparam

__all__ = ["NeuTraRun", "neutra_mcmc"]


@dataclass
class NeuTraRun:
    """The result of :func:`neutra_mcmc`.

    :ivar dict samples: model-space samples, ``site -> (num_chains * num_samples, *site_shape)``
        (chains concatenated, as :meth:`pyro.infer.MCMC.get_samples` returns them).
    :ivar torch.Tensor latent: the chain in the guide's latent space, shape
        ``(num_chains, num_samples, latent_dim)``.
    :ivar pyro.infer.MCMC mcmc: the finished sampler (its ``diagnostics()``, ``summary()``).
    :ivar reparam: the :class:`~pyro.infer.reparam.neutra.NeuTraReparam` reparameterizer (its guide and transform).
    :ivar float seconds: wall-clock seconds of warmup and sampling (not of training).
    """

    samples: Dict[str, torch.Tensor]
    latent: torch.Tensor
    mcmc: MCMC
    reparam: NeuTraReparam
    seconds: float

    def to_model_space(self, latent: torch.Tensor) -> Dict[str, torch.Tensor]:
        """Map latent draws of shape ``(num_draws, latent_dim)`` to the model's sites,
        ``site -> (num_draws, *site_shape)``, as ``samples`` was made."""
        return _to_model_space(self.reparam, latent)

    @property
    def num_chains(self) -> int:
        return self.latent.shape[0]

    @property
    def divergences(self) -> int:
        """Number of divergent transitions after warmup, over all chains."""
        return sum(len(where) for where in _divergences_by_chain(self.mcmc))

    def to_inference_data(self):
        """The model-space samples as an :class:`arviz.InferenceData` grouped by chain,
        with the divergences in ``sample_stats.diverging``."""
        import arviz as az

        chains, draws = self.latent.shape[:2]
        posterior = {}
        for name, value in self.samples.items():
            # the sites' own shapes (_to_model_space removed the padding of plate dimensions)
            posterior[name] = value.detach().cpu().double().numpy().reshape(chains, draws, *value.shape[1:])
        diverging = np.zeros((chains, draws), dtype=bool)
        for chain, where in enumerate(_divergences_by_chain(self.mcmc)):
            diverging[chain, where] = True
        return az.from_dict(posterior=posterior, sample_stats={"diverging": diverging})


@contextlib.contextmanager
def _frozen(guide: torch.nn.Module):
    # NUTS differentiates the potential with respect to z only; parameters that require
    # grad would only make every leapfrog step record a larger graph. Restore afterwards,
    # so the caller can keep training the guide.
    flags = [(p, p.requires_grad) for p in guide.parameters()]
    training = guide.training
    guide.requires_grad_(False).eval()
    try:
        yield guide
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
        guide.train(training)


@torch.no_grad()
def _to_model_space(reparam: NeuTraReparam, latent: torch.Tensor) -> Dict[str, torch.Tensor]:
    # NeuTraReparam.transform_sample wants the draws' batch dimension left of the model's
    # plates, so give it max_plate_nesting singleton dimensions and remove them after.
    guide = reparam.guide
    num = latent.shape[0]
    nesting = max([-plate.dim for plate in guide.plates.values() if plate.dim is not None], default=0)
    if isinstance(reparam, NonCenteredNeuTraReparam) and reparam.runs_model:  # all the model's plates
        nesting = max(nesting, reparam.model_plate_nesting())
    padded = latent.reshape(num, *[1] * nesting, latent.shape[-1])
    shapes = {name: site["value"].shape for name, site in guide.prototype_trace.iter_stochastic_nodes()}
    return {
        name: value.reshape(num, *shapes[name]).detach()
        for name, value in reparam.transform_sample(padded).items()
    }


def neutra_mcmc(
    model,
    guide: AutoContinuous,
    num_samples: int = 500,
    warmup_steps: int = 500,
    *,
    model_args: tuple = (),
    model_kwargs: Optional[dict] = None,
    num_chains: int = 1,
    seed: Optional[int] = None,
    progress: bool = False,
    **nuts_kwargs,
) -> NeuTraRun:
    r"""Run NUTS on ``model`` in the latent space of a trained ``guide`` (NeuTra HMC,
    Hoffman et al., 2019) and return samples of the model's latent sites.

    The recipe: train a flow guide with SVI (e.g. :class:`~pyro_flows.infer.AutoRealNVP`),
    then call this function. The guide is frozen during sampling (its parameters stop
    requiring grad and it is put in eval mode) and restored afterwards.

    :param model: the Pyro model (static structure; observed sites stay observed).
    :param guide: a trained :class:`~pyro.infer.autoguide.AutoContinuous` guide, such as
        :class:`~pyro_flows.infer.AutoRealNVP`, Pyro's ``AutoIAFNormal`` or
        ``AutoMultivariateNormal``; Pyro's ``NeuTraReparam`` needs its ``get_transform``.
        A flow guide with ``noncentered`` set (``"auto"``, its default, included), or with
        a latent support that depends on other latents, warps in its own coordinates and
        maps them back by running the model
        (:class:`~pyro_flows.infer.noncentered.NonCenteredNeuTraReparam`, which also
        counts the flow's log-determinant once where Pyro's would count it once per
        element of the first latent site's plate).
    :param int num_samples: draws kept per chain.
    :param int warmup_steps: adaptation steps per chain (step size and mass matrix).
    :param tuple model_args: positional arguments of ``model`` (and of ``guide``).
    :param dict model_kwargs: keyword arguments of ``model``.
    :param int num_chains: chains (Pyro runs more than one in worker processes).
    :param int seed: seeds Pyro's RNGs before sampling, when given.
    :param bool progress: show Pyro's progress bar.
    :param nuts_kwargs: passed to :class:`~pyro.infer.NUTS` (``max_tree_depth``,
        ``target_accept_prob``, ``jit_compile``, ...).
    :returns: a :class:`NeuTraRun`.

    >>> import pyro, pyro.distributions as dist
    >>> from pyro_flows.infer import AutoRealNVP
    >>> pyro.clear_param_store()  # guides keep their weights in Pyro's parameter store
    >>> def model():
    ...     pyro.sample("a", dist.Normal(torch.zeros(2), 1.0).to_event(1))
    >>> guide = AutoRealNVP(model, num_layers=2, hidden_dims=(8,))
    >>> _ = guide()  # here untrained: NeuTra with an identity flow is plain NUTS
    >>> run = neutra_mcmc(model, guide, num_samples=5, warmup_steps=5, seed=0, max_tree_depth=3)
    >>> run.samples["a"].shape, run.latent.shape
    (torch.Size([5, 2]), torch.Size([1, 5, 2]))
    """
    if not isinstance(guide, AutoContinuous):
        raise TypeError(
            "neutra_mcmc needs an AutoContinuous guide (one latent vector and a "
            f"get_transform(), e.g. AutoRealNVP or AutoIAFNormal), got {type(guide).__name__}"
        )
    for name, value in (
        ("num_samples", num_samples),
        ("warmup_steps", warmup_steps),
        ("num_chains", num_chains),
    ):
        if not isinstance(value, int) or value < (0 if name == "warmup_steps" else 1):
            raise ValueError(f"neutra_mcmc: {name} must be a positive int, got {value!r}")
    model_kwargs = dict(model_kwargs or {})
    if getattr(guide, "prototype_trace", None) is None:
        warnings.warn(
            "neutra_mcmc: the guide has never been run, so it is untrained; NeuTra with an "
            "untrained guide is NUTS preconditioned by its initial scale",
            stacklevel=2,
        )
        with torch.no_grad():
            guide(*model_args, **model_kwargs)
    if seed is not None:
        import pyro

        pyro.set_rng_seed(seed)
    with _frozen(guide):
        # Pyro's NeuTraReparam maps its draws back with the supports at the guide's initial
        # point (a support that depends on other latents needs the model run as well), and
        # counts the flow's log|det J| once per element when the first latent site is in a
        # plate: ours runs the model where needed and counts it once
        reparam = NonCenteredNeuTraReparam(guide, model_args, model_kwargs)
        kernel = NUTS(reparam.reparam(model), **nuts_kwargs)
        mcmc = MCMC(
            kernel,
            num_samples=num_samples,
            warmup_steps=warmup_steps,
            num_chains=num_chains,
            disable_progbar=not progress,
        )
        start = time.perf_counter()
        mcmc.run(*model_args, **model_kwargs)
        seconds = time.perf_counter() - start
        (latent,) = mcmc.get_samples(group_by_chain=True).values()
        samples = _to_model_space(reparam, latent.reshape(-1, latent.shape[-1]))
    run = NeuTraRun(
        samples=samples,
        latent=latent.detach(),
        mcmc=mcmc,
        reparam=reparam,
        seconds=seconds,
    )
    _warn_if_divergent(run.divergences, num_samples * num_chains)
    return run


#: the share of divergent draws above which :func:`neutra_mcmc` warns
_DIVERGENT_SHARE = 0.05


def _warn_if_divergent(divergences: int, draws: int) -> None:
    """Warn when more than ``_DIVERGENT_SHARE`` of the kept draws diverged: the chain
    is then likely stuck where the guide is poor (a run of eight schools with a weak guide
    had 91 of 500 and an ESS of 2), and its draws are not worth keeping."""
    if draws and divergences > _DIVERGENT_SHARE * draws:
        warnings.warn(
            f"neutra_mcmc: {divergences} of {draws} draws diverged; the chain is likely "
            "stuck where the guide fits the posterior poorly (its tails, typically). "
            "Retrain the guide (more steps, another seed) before using these draws.",
            stacklevel=3,
        )
