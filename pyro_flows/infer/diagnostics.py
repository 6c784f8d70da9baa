"""Diagnostics of approximate posteriors: ArviZ ``InferenceData``, PSIS k-hat, and
moment comparisons against a reference (exact moments or a long NUTS run).

PSIS is not reimplemented here: :func:`psis_khat` hands importance log-weights to
ArviZ's :func:`arviz.psislw`. ArviZ is imported lazily, so ``import pyro_flows`` stays fast.
"""

from __future__ import annotations

import math
from typing import Dict, List, Mapping, Optional, Sequence, Union

import numpy as np
import pyro
import torch
from pyro.infer import Predictive
from pyro.infer.importance import vectorized_importance_weights

__all__ = [
    "guide_samples",
    "guide_to_inference_data",
    "mcmc_to_inference_data",
    "importance_log_weights",
    "psis_khat",
    "compare_moments",
    "moments_table",
]

Samples = Mapping[str, Union[torch.Tensor, np.ndarray]]


def _site_shapes(model, guide, args, kwargs) -> Dict[str, torch.Size]:
    """The shape of every sample site of one draw of the guide and of the model run on it
    (no vectorization, so no singleton plate dimensions), latent sites first."""
    guide_trace = pyro.poutine.trace(guide).get_trace(*args, **kwargs)
    model_trace = pyro.poutine.trace(pyro.poutine.replay(model, trace=guide_trace)).get_trace(*args, **kwargs)
    shapes = {}
    for trace in (guide_trace, model_trace):
        for name, site in trace.nodes.items():
            if site["type"] == "sample" and not site["infer"].get("is_auxiliary"):
                shapes.setdefault(name, site["value"].shape)
    return shapes


def _latent_sites(model, guide, args, kwargs) -> list:
    trace = pyro.poutine.trace(guide).get_trace(*args, **kwargs)
    return [
        name
        for name, site in trace.nodes.items()
        if site["type"] == "sample" and not site["is_observed"] and not site["infer"].get("is_auxiliary")
    ]


@torch.no_grad()
def guide_samples(
    model,
    guide,
    num_samples: int,
    *args,
    sites: Optional[Sequence[str]] = None,
    parallel: bool = True,
    **kwargs,
) -> Dict[str, torch.Tensor]:
    """Draw ``num_samples`` joint samples of the latent sites of ``guide`` (all of them,
    or ``sites``) with :class:`pyro.infer.Predictive`; each of shape
    ``(num_samples, *site_shape)``, the site's own shape (the singleton plate dimensions
    of a vectorised draw removed, a genuine dimension of size 1 kept). ``parallel=True``
    draws them in one vectorised pass (the model must broadcast over a leading batch
    dimension); ``False`` loops."""
    if sites is None:
        sites = _latent_sites(model, guide, args, kwargs)
    with torch.random.fork_rng():  # the same draws as without this look at the shapes
        shapes = _site_shapes(model, guide, args, kwargs)
    predictive = Predictive(
        model, guide=guide, num_samples=num_samples, return_sites=list(sites), parallel=parallel
    )
    out = {}
    for name, value in predictive(*args, **kwargs).items():
        shape = shapes.get(name)
        if shape is not None and value.numel() == num_samples * shape.numel():
            value = value.reshape(num_samples, *shape)
        out[name] = value.detach()
    return out


def _to_numpy(value) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().double().numpy()
    return np.asarray(value, dtype=float)


def guide_to_inference_data(
    model,
    guide,
    num_samples: int,
    *args,
    sites: Optional[Sequence[str]] = None,
    parallel: bool = True,
    **kwargs,
):
    """Samples of a trained guide as an :class:`arviz.InferenceData` (one chain).

    >>> import pyro, pyro.distributions as dist
    >>> from pyro.infer.autoguide import AutoNormal
    >>> def model():
    ...     pyro.sample("mu", dist.Normal(0.0, 1.0))
    >>> guide = AutoNormal(model)
    >>> idata = guide_to_inference_data(model, guide, 100)
    >>> idata.posterior["mu"].shape
    (1, 100)
    """
    import arviz as az

    samples = guide_samples(model, guide, num_samples, *args, sites=sites, parallel=parallel, **kwargs)
    posterior = {k: _to_numpy(v)[None] for k, v in samples.items()}
    return az.from_dict(posterior=posterior)


def _divergences_by_chain(mcmc) -> List[List[int]]:
    """The post-warmup indices of the divergent transitions of each chain of a finished
    :class:`pyro.infer.MCMC` run (empty lists for a kernel that records none).

    Read from the sampler's per-chain records: :meth:`pyro.infer.MCMC.diagnostics` also
    computes the split R-hat, which fails on runs shorter than 4 draws."""
    records = getattr(mcmc, "_diagnostics", None)
    if not isinstance(records, list) or not all(isinstance(r, Mapping) for r in records):
        return [list(v) for v in mcmc.diagnostics().get("divergences", {}).values()]
    return [list(r.get("divergences", ())) for r in records]


def mcmc_to_inference_data(mcmc, sites: Optional[Sequence[str]] = None):
    """Samples of a finished :class:`pyro.infer.MCMC` run, grouped by chain, as an
    :class:`arviz.InferenceData` (with the sampler's divergences when recorded)."""
    import arviz as az

    samples = mcmc.get_samples(group_by_chain=True)
    if sites is not None:
        samples = {k: samples[k] for k in sites}
    # MCMC runs the model unvectorised: its samples have the sites' own shapes
    posterior = {k: _to_numpy(v) for k, v in samples.items()}
    num_chains, num_draws = next(iter(posterior.values())).shape[:2]
    diverging = np.zeros((num_chains, num_draws), dtype=bool)
    for chain, where in enumerate(_divergences_by_chain(mcmc)):
        diverging[chain, where] = True
    return az.from_dict(posterior=posterior, sample_stats={"diverging": diverging})


@torch.no_grad()
def importance_log_weights(
    model, guide, *args, num_particles: int = 1000, max_plate_nesting: int = 1, **kwargs
) -> torch.Tensor:
    r"""Log importance weights :math:`\log p(x, z_s) - \log q(z_s)`, :math:`z_s \sim q`,
    shape ``(num_particles,)``, drawn in one vectorised pass. Their mean is an ELBO
    estimate and their log-mean-exp an importance-weighted bound on :math:`\log p(x)`."""
    try:
        log_weights, _, _ = vectorized_importance_weights(
            model,
            guide,
            *args,
            num_samples=num_particles,
            max_plate_nesting=max_plate_nesting,
            normalized=False,
            **kwargs,
        )
    except (RuntimeError, ValueError) as e:
        # the usual cause: the particles' dimension collides with a plate's
        raise type(e)(
            f"{e}\n(drawing {num_particles} particles in one pass with max_plate_nesting="
            f"{max_plate_nesting}: if the model nests more plates than that, pass the number "
            "of nested plates as max_plate_nesting)"
        ) from e
    return log_weights.detach()


#: the fewest log-weights whose right tail ArviZ fits (it takes the largest
#: ``ceil(min(n / 5, 3 sqrt(n)))``, and needs at least 5 of them)
_PSIS_MIN_DRAWS = 21


def _psis_tail_length(n: int) -> int:
    """The number of largest log-weights ArviZ's ``psislw`` (``reff=1``) fits the
    generalized Pareto distribution to."""
    return int(math.ceil(min(n / 5.0, 3 * math.sqrt(n))))


def psis_khat(
    model, guide, *args, num_particles: int = 1000, max_plate_nesting: int = 1, log_weights=None, **kwargs
) -> float:
    r"""The Pareto-smoothed importance-sampling shape :math:`\hat k` of ``guide`` as a
    proposal for the posterior of ``model`` (Yao et al., 2018), from ArviZ's
    :func:`arviz.psislw`. :math:`\hat k < 0.5`: the guide is close to the posterior;
    :math:`0.5 \le \hat k < 0.7`: usable for importance sampling; :math:`\hat k \ge 0.7`:
    the guide misses mass the posterior has (typically the tails).

    Pass precomputed ``log_weights`` (from :func:`importance_log_weights`) to reuse them.

    One value comes from one set of draws, and it moves between sets: for one trained
    guide on eight schools, sets of 4000 weights give :math:`\hat k` over a range of 0.2
    to 0.4 (docs/inference.md, "How much one evaluation's k-hat moves"). Read the median
    of several calls before drawing the 0.5 and 0.7 lines.

    The edge cases: a log-weight of :math:`-\infty` (a draw the model gives no density) is
    a weight of 0, as for ArviZ; NaN or :math:`+\infty` log-weights, all of them
    :math:`-\infty`, or fewer than 21 of them (ArviZ fits the largest fifth, and needs 5)
    raise a ``ValueError`` (ArviZ answers :math:`\infty` or NaN there, whatever the guide).
    When the weights have no right tail to fit, more of them tied at their maximum than
    the tail ArviZ fits (a guide proportional to the posterior on every draw gives equal
    weights), the weights are bounded and :math:`\hat k` is :math:`-\infty` (ArviZ:
    :math:`\infty`).
    """
    import arviz as az

    if log_weights is None:
        log_weights = importance_log_weights(
            model, guide, *args, num_particles=num_particles, max_plate_nesting=max_plate_nesting, **kwargs
        )
    lw = _to_numpy(log_weights).reshape(-1)
    nan, pos_inf = int(np.isnan(lw).sum()), int((lw == np.inf).sum())
    if nan or pos_inf:
        raise ValueError(
            f"psis_khat: {nan + pos_inf} non-finite log-weights ({nan} NaN, {pos_inf} +inf) of "
            f"{lw.size}: the model's or the guide's log-density failed on those draws"
        )
    if lw.size < _PSIS_MIN_DRAWS:
        raise ValueError(
            f"psis_khat needs at least {_PSIS_MIN_DRAWS} log-weights (ArviZ fits the Pareto tail "
            f"to the largest fifth of them, at least 5), got {lw.size}: draw more particles"
        )
    top = lw.max()
    if top == -np.inf:
        raise ValueError(
            f"psis_khat: all {lw.size} log-weights are -inf: the model gives no density to any "
            "draw of the guide"
        )
    if int((lw == top).sum()) > _psis_tail_length(lw.size):
        return -math.inf  # the tail ArviZ would fit is flat: bounded weights
    _, khat = az.psislw(lw)
    return float(khat)


def _moments(value) -> tuple:
    if isinstance(value, Mapping):
        return _to_numpy(value["mean"]).reshape(-1), _to_numpy(value["sd"]).reshape(-1)
    flat = _to_numpy(value)
    flat = flat.reshape(flat.shape[0], -1)
    return flat.mean(0), flat.std(0, ddof=1)


def _reference_dict(reference) -> dict:
    posterior = getattr(reference, "posterior", None)
    if posterior is not None:  # InferenceData: flatten chains
        out = {}
        for name, var in posterior.data_vars.items():
            a = var.values
            out[name] = a.reshape(a.shape[0] * a.shape[1], *a.shape[2:])
        return out
    return dict(reference)


def compare_moments(samples, reference, sites: Optional[Sequence[str]] = None) -> list:
    r"""Compare posterior means and standard deviations coordinate by coordinate.

    :param samples: dict ``site -> samples`` (first dimension the draws) or an
        ``InferenceData``, e.g. from :func:`guide_samples`.
    :param reference: the same kind of object (e.g. a NUTS run), or exact moments as a
        dict ``site -> {"mean": ..., "sd": ...}``.
    :returns: one dict per site and coordinate with ``site``, ``index``, ``mean``,
        ``ref_mean``, ``sd``, ``ref_sd``, ``mean_error`` (absolute) and ``sd_rel_error``
        (``sd / ref_sd - 1``). Where the reference sd is 0 (a constant site, or a
        coordinate a chain never moved) ``sd_rel_error`` is 0 when ``sd`` is 0 too and
        :math:`+\infty` when it is not: no finite relative error describes a spread
        where the reference has none.

    >>> rows = compare_moments({"v": torch.randn(4000) * 3}, {"v": {"mean": 0.0, "sd": 3.0}})
    >>> abs(rows[0]["sd_rel_error"]) < 0.05
    True
    """
    samples = _reference_dict(samples)
    reference = _reference_dict(reference)
    names = list(sites) if sites is not None else [n for n in samples if n in reference]
    rows = []
    for name in names:
        mean, sd = _moments(samples[name])
        ref_mean, ref_sd = _moments(reference[name])
        if mean.shape != ref_mean.shape:
            ref_mean, ref_sd = np.broadcast_to(ref_mean, mean.shape), np.broadcast_to(ref_sd, mean.shape)
        for i in range(mean.size):
            rows.append(
                {
                    "site": name,
                    "index": i,
                    "mean": float(mean[i]),
                    "ref_mean": float(ref_mean[i]),
                    "sd": float(sd[i]),
                    "ref_sd": float(ref_sd[i]),
                    "mean_error": float(abs(mean[i] - ref_mean[i])),
                    "sd_rel_error": _sd_rel_error(float(sd[i]), float(ref_sd[i])),
                }
            )
    return rows


def _sd_rel_error(sd: float, ref_sd: float) -> float:
    r"""``sd / ref_sd - 1``; for a reference sd of 0, 0 when ``sd`` is 0 as well and
    :math:`+\infty` when it is positive (NaN stays NaN)."""
    if ref_sd == 0 and sd >= 0:
        return 0.0 if sd == 0 else math.inf
    return sd / ref_sd - 1


def moments_table(rows: Sequence[Mapping], columns: Optional[Sequence[str]] = None, digits: int = 3) -> str:
    """A markdown table of dict rows (e.g. from :func:`compare_moments`).

    >>> print(moments_table([{"site": "v", "sd": 2.9512}], digits=2))
    | site | sd |
    |---|---|
    | v | 2.95 |
    """
    if not rows:
        return ""
    columns = list(columns) if columns is not None else list(rows[0])
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        cells = []
        for c in columns:
            v = row.get(c, "")
            cells.append(f"{v:.{digits}f}" if isinstance(v, float) else str(v))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
