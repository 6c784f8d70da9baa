r"""Inverse-CDF sampling (inverse transform sampling).

If :math:`F` is a continuous, strictly increasing CDF and :math:`U \sim \mathrm{Uniform}(0,1)`,
then :math:`X = F^{-1}(U)` has CDF :math:`F`, because
:math:`\mathbb P(F^{-1}(U) \le t) = \mathbb P(U \le F(t)) = F(t)`. A fitted 1-D CDF flow
*is* a learned :math:`F`, so this is how it samples; the same function also samples any
increasing CDF given as a Python function.
"""

from __future__ import annotations

import math
import warnings
from typing import Callable, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from .transforms.elementwise import BaseCDF, ChangeOfBase, MixtureCDF, clamp_open_unit
from .transforms.monotone_inverse import invert_monotone

__all__ = ["inverse_cdf_sample"]


def _find_mixture(model) -> Optional[MixtureCDF]:
    """The :class:`MixtureCDF` whose CDF is the model's: the layer itself, that of a
    :func:`~pyro_flows.cdf_flow`, or that of a :class:`~pyro_flows.Flow` whose other parts
    only carry its base to the unit interval (a :class:`BaseCDF`). ``None`` for a
    model without one; a ``ValueError`` for a model whose other layers change the CDF
    (inverting the mixture alone would ignore them)."""
    from .builders.cdf import CDFFlow  # builders import this module's package
    from .flow import Flow

    if isinstance(model, MixtureCDF):
        return model
    if isinstance(model, CDFFlow):
        return model.parts[-1]
    if not isinstance(model, nn.Module):
        return None
    found = [m for m in model.modules() if isinstance(m, MixtureCDF)]
    if not found:
        return None
    if len(found) > 1:
        raise ValueError(
            f"{type(model).__name__} holds {len(found)} MixtureCDF layers; pass the one to sample"
        )
    name = type(model).__name__
    if isinstance(model, Flow):
        # the model's CDF is the mixture's when what comes before it carries the base to
        # Uniform(0, 1): nothing (a uniform base), or bridges ending in the CDF of the
        # distribution they carry (a BaseCDF), as cdf_flow and Flow's bridges build them
        *carriers, last = _layers(model)
        if isinstance(last, MixtureCDF):
            if not carriers and _is_standard_uniform(model.base()):
                return last
            if carriers and all(isinstance(p, (BaseCDF, ChangeOfBase)) for p in carriers):
                if _carries_to_uniform(model.base, carriers):
                    return last
                raise ValueError(
                    f"inverse_cdf_sample inverts the CDF of a MixtureCDF, but the {model.base.cls.__name__} "
                    f"base of this {name} does not carry through its {', '.join(type(p).__name__ for p in carriers)} "
                    "to Uniform(0, 1) (a CDF applied to draws of another law), which changes the model's CDF; "
                    "sample it with its own sample() instead"
                )
    others = [
        type(m).__name__ for m in _layers(model) if not isinstance(m, (MixtureCDF, BaseCDF, ChangeOfBase))
    ]
    raise ValueError(
        f"inverse_cdf_sample inverts the CDF of a MixtureCDF, but {name} also has "
        f"{', '.join(others) or 'a base other than Uniform(0, 1)'}, which change the model's CDF; "
        "sample it with its own sample() instead"
    )


def _carries_to_uniform(base, carriers) -> bool:
    """Whether draws of ``base`` (a :class:`~pyro_flows.bases.BaseDistribution`) leave
    ``carriers`` as Uniform(0, 1): each :class:`ChangeOfBase` must receive its source law
    (it then passes on its target law) and the last :class:`BaseCDF` the law of its own
    CDF; a CDF applied to draws of another law is not uniform."""
    law = base
    for part in carriers:
        source = part.source.base if isinstance(part, ChangeOfBase) else part.base
        if not _same_law(law, source):
            return False
        law = part.target.base if isinstance(part, ChangeOfBase) else None
    return law is None  # after a BaseCDF


def _same_law(a, b) -> bool:
    """Whether two :class:`~pyro_flows.bases.BaseDistribution` modules hold the same
    distribution (class, keywords and parameters, compared after broadcasting)."""
    if a is None or b is None or a.cls is not b.cls or a.names != b.names or a.kwargs != b.kwargs:
        return False
    for n in a.names:
        x, y = getattr(a, n), getattr(b, n)
        try:
            if not bool((x.to(y) == y).all()):
                return False
        except RuntimeError:  # shapes that do not broadcast
            return False
    return True


def _layers(model) -> list:
    from .flow import Flow

    if isinstance(model, Flow):
        return [
            leaf
            for part in model._transforms()
            for leaf in (part.parts if hasattr(part, "parts") else [part])
        ]
    return [m for m in model.modules() if m is not model]


def _is_standard_uniform(base) -> bool:
    while isinstance(base, torch.distributions.Independent):
        base = base.base_dist
    return (
        isinstance(base, torch.distributions.Uniform)
        and bool((base.low == 0).all())
        and bool((base.high == 1).all())
    )


def inverse_cdf_sample(
    flow_or_cdf: Union[nn.Module, Callable[[torch.Tensor], torch.Tensor]],
    n: int,
    generator: Optional[torch.Generator] = None,
    bracket: Optional[Tuple[float, float]] = None,
    dtype: Optional[torch.dtype] = None,
    event_shape: Sequence[int] = (),
) -> torch.Tensor:
    r"""Draw ``n`` samples :math:`X = F^{-1}(U)`, :math:`U \sim \mathrm{Uniform}(0, 1)`.

    :param flow_or_cdf: a fitted 1-D flow (a :func:`~pyro_flows.cdf_flow`, a
        :class:`~pyro_flows.transforms.MixtureCDF`, or a :class:`~pyro_flows.Flow` of
        either whose base reaches the mixture as Uniform(0, 1)), whose :math:`F` is inverted
        by safeguarded Newton (a flow with other layers, which change its CDF, is refused:
        use its ``sample``); or a Python function ``t -> F(t)``, increasing and
        elementwise, inverted by bisection inside ``bracket``.
    :param int n: number of samples.
    :param generator: optional :class:`torch.Generator` for the uniforms (on CPU).
    :param bracket: ``(lo, hi)`` with :math:`F(lo) < u < F(hi)` for the targets drawn;
        required for a Python function (samples whose targets lie outside are clipped to
        it, with a warning).
    :param dtype: dtype of a Python function's samples (default: the default dtype).
    :param event_shape: event shape of a Python function's samples (default scalar).
    :returns: samples of shape ``(n, *event_shape)``, without gradients.

    >>> import pyro_flows
    >>> x = inverse_cdf_sample(pyro_flows.cdf_flow(3), 1000, torch.Generator().manual_seed(0))
    >>> x.shape
    torch.Size([1000])
    >>> # an exponential law from its CDF alone
    >>> x = inverse_cdf_sample(lambda t: 1 - torch.exp(-t), 20000, bracket=(0.0, 50.0),
    ...                        dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    >>> abs(x.mean().item() - 1.0) < 0.03
    True
    """
    mixture = _find_mixture(flow_or_cdf)
    if mixture is not None:
        ref = mixture.loc
        shape = (n, *mixture.event_shape)
        u = torch.rand(shape, generator=generator, dtype=ref.dtype).to(ref.device)
        with torch.no_grad():
            return mixture(u)
    if isinstance(flow_or_cdf, nn.Module) or not callable(flow_or_cdf):
        raise ValueError(
            f"expected a flow containing a MixtureCDF or a CDF function, got {type(flow_or_cdf).__name__}"
        )
    if bracket is None:
        raise ValueError("a CDF given as a function needs bracket=(lo, hi) with F(lo) < u < F(hi)")
    dtype = dtype or torch.get_default_dtype()
    u = clamp_open_unit(torch.rand((n, *event_shape), generator=generator, dtype=dtype))
    cdf = flow_or_cdf

    def log_parts(t):
        f = cdf(t).clamp(0, 1)
        # the slope is unknown: a NaN Newton step makes the solver bisect
        return torch.log(f), torch.log1p(-f), torch.full_like(t, math.nan)

    lo, hi = (torch.full_like(u, float(b)) for b in bracket)
    _warn_outside_bracket(cdf, u, lo, hi)
    return invert_monotone(log_parts, u, lo, hi)


def _warn_outside_bracket(cdf, u: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> None:
    """Warn when targets lie outside :math:`[F(lo), F(hi)]`: their quantiles are beyond
    the bracket, and the samples would be the bracket's ends (a law without its tails).
    Targets at the ends of the open unit interval (a uniform draw of exactly 0) are left
    out: their quantile is infinite, and the bracket's end is the best there is."""
    with torch.no_grad():
        f_lo, f_hi = cdf(lo), cdf(hi)
    info = torch.finfo(u.dtype)
    interior = (u > info.tiny) & (u < 1 - info.eps / 2)
    below, above = interior & (u < f_lo), interior & (u > f_hi)
    count_below, count_above = int(below.sum()), int(above.sum())
    if count_below or count_above:
        low, high = float(lo.flatten()[0]), float(hi.flatten()[0])
        warnings.warn(
            f"inverse_cdf_sample: {count_below} of {u.numel()} uniform targets lie below "
            f"F({low:g}) = {float(f_lo.max()):.3g} and {count_above} above F({high:g}) = "
            f"{float(f_hi.min()):.3g}, so their samples were clipped to bracket=({low:g}, {high:g}) "
            "and the tails are missing; widen the bracket",
            stacklevel=3,
        )
