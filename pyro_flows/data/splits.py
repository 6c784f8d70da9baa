"""Train/validation/test splits and the map from data units to the space a flow models."""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Optional, Tuple

import torch

__all__ = ["Splits", "split_fractions", "split_for_run"]

#: :meth:`Splits.check_spread` counts the distinct values of a coordinate over at most this
#: many training points, and warns about few of them only from this many points on
FEW_VALUES_SAMPLE = 10_000
FEW_VALUES_MIN_POINTS = 100


@dataclass
class Splits:
    r"""A data set split three ways, in data units, with the preprocessing the flow sees.

    The flow models :math:`y = (\tilde x - \text{shift}) / \text{scale}`, where
    :math:`\tilde x = x` for continuous data and :math:`\tilde x = x + u`,
    :math:`u \sim U[0, 1)^D`, for discrete data with ``levels`` values (uniform
    dequantization). The change of variables gives the NLL in data units,

    .. math::

        -\log p(\tilde x) = -\log p_\theta(y) + \textstyle\sum_i \log \text{scale}_i,

    which :meth:`nll_offset` returns; for discrete data ``scale = levels`` and the
    bits per dimension are :math:`-\log p(\tilde x) / (D \ln 2)`.

    >>> s = Splits("demo", torch.zeros(8, 2), torch.zeros(2, 2), torch.zeros(2, 2))
    >>> s.event_shape, s.nll_offset()
    (torch.Size([2]), 0.0)
    """

    name: str
    train: torch.Tensor
    val: torch.Tensor
    test: torch.Tensor
    #: number of discrete values (0..levels-1) for discrete data, else None
    levels: Optional[int] = None
    shift: Optional[torch.Tensor] = None
    scale: Optional[torch.Tensor] = None
    #: where the split came from ("fixed" by the data set, or "random, seed N")
    split_rule: str = "fixed"

    def __post_init__(self):
        for split in ("train", "val", "test"):
            x = getattr(self, split)
            if x.shape[0] == 0:
                raise ValueError(f"{self.name}: the {split} split is empty; use more data or other fractions")
            if x.shape[1:] != self.train.shape[1:]:
                raise ValueError(
                    f"{self.name}: {split} points have shape {tuple(x.shape[1:])}, train points "
                    f"{tuple(self.train.shape[1:])}"
                )
        if self.levels is not None and self.scale is None:
            self.scale = torch.tensor(float(self.levels))

    @property
    def event_shape(self) -> torch.Size:
        return self.train.shape[1:]

    @property
    def dim(self) -> int:
        return int(math.prod(self.event_shape))

    @property
    def _standardizes(self) -> bool:
        return self.levels is None and (self.shift is not None or self.scale is not None)

    def input_dtype(self, dtype: torch.dtype) -> torch.dtype:
        """The dtype to hold data in for :meth:`prepare` to give ``dtype``: float64 for
        standardized data (see :meth:`prepare`), else ``dtype``."""
        return torch.float64 if self._standardizes else dtype

    def prepare(
        self,
        x: torch.Tensor,
        generator: Optional[torch.Generator] = None,
        dtype: Optional[torch.dtype] = None,
    ) -> torch.Tensor:
        """Data units -> the space the flow models (dequantized and standardized), as
        ``dtype`` (default: ``x``'s).

        Standardization runs in float64 and only its result is rounded to ``dtype``: in
        float32 a column whose mean is large against its spread (a mean of 1.6e7 and an sd
        of 3) would keep a few distinct values.

        >>> s = Splits("d", torch.zeros(4, 1), torch.zeros(1, 1), torch.zeros(1, 1),
        ...            shift=torch.tensor([1.6e7], dtype=torch.float64), scale=torch.tensor([3.0], dtype=torch.float64))
        >>> s.prepare(torch.tensor([[1.6e7 + 0.3]], dtype=torch.float64), dtype=torch.float32)
        tensor([[0.1000]])
        """
        dtype = x.dtype if dtype is None else dtype
        if self._standardizes:
            wide = x.double()
            if self.shift is not None:
                wide = wide - self.shift.to(wide)
            if self.scale is not None:
                wide = wide / self.scale.to(wide)
            return wide.to(dtype)
        x = x.to(dtype)
        if self.levels is not None:
            x = x + torch.rand(x.shape, generator=generator, dtype=x.dtype, device=x.device)
        if self.scale is not None:
            x = x / self.scale.to(x)
        return x

    def to_data_units(self, y: torch.Tensor) -> torch.Tensor:
        """The inverse of :meth:`prepare` (without the dequantization noise); in float64
        for standardized data, for the reason :meth:`prepare` gives."""
        if self._standardizes:
            y = y.double()
        if self.scale is not None:
            y = y * self.scale.to(y)
        if self.shift is not None:
            y = y + self.shift.to(y)
        return y

    def nll_offset(self) -> float:
        r""":math:`\sum_i \log \text{scale}_i` over one event (nats)."""
        if self.scale is None:
            return 0.0
        return float(torch.log(self.scale.double()).expand(self.event_shape).sum())

    def describe(self) -> str:
        """One line for logs: the name, the size of each split, the event shape, the
        number of levels for discrete data and the split rule."""
        kind = f", discrete with {self.levels} levels" if self.levels else ""
        return (
            f"{self.name}: train {len(self.train)}, validation {len(self.val)}, test {len(self.test)} "
            f"points of shape {tuple(self.event_shape)}{kind}; split {self.split_rule}"
        )

    def check_spread(self) -> None:
        """Raise a ``ValueError`` naming the coordinates of continuous data on which every
        training point has the same value.

        A flow's density on such a coordinate can grow without bound (the best model is
        a point mass), so its NLL falls forever instead of converging. Coordinates that
        take few distinct values (at most half as many as the points, counted over up to
        ``FEW_VALUES_SAMPLE`` = 10,000 of them) get a ``UserWarning`` for the same reason.
        Discrete data are exempt: dequantization spreads each value over a unit interval.

        >>> x = torch.tensor([[0.0, 3.0], [1.0, 3.0], [2.0, 3.0]])
        >>> Splits("demo", x, x[:1], x[:1]).check_spread()
        Traceback (most recent call last):
        ...
        ValueError: demo: column 1 (0-based) holds the same value (3) in all 3 training points; ...
        """
        if self.levels is not None:
            return
        flat = self.train.reshape(len(self.train), -1)
        constant = (flat == flat[:1]).all(dim=0)
        if not bool(constant.any()):
            self._warn_few_values(flat)
            return
        advice = (
            "a flow's density there grows without bound and its NLL falls forever; remove the constant "
            "coordinates (or, for integer data, pass --levels K to dequantize them)"
        )
        if bool(constant.all()):
            raise ValueError(
                f"{self.name}: all {len(self.train)} training points are identical; a flow's density at a "
                "single point grows without bound and its NLL falls forever; use data that vary"
            )
        where = constant.nonzero().flatten().tolist()
        label, shown = self._coordinates(where)
        value = float(flat[0, where[0]])
        raise ValueError(
            f"{self.name}: {label} {shown} (0-based) "
            + ("holds" if len(where) == 1 else "hold")
            + f" the same value ({value:g}"
            + (" in the first" if len(where) > 1 else "")
            + f") in all {len(self.train)} training points; {advice}"
        )

    def _warn_few_values(self, flat: torch.Tensor) -> None:
        """Warn about coordinates that take few distinct values (integers, counts, coarse
        rounding): each value repeats, so a flow can put spikes of unbounded density on
        them, and its NLL, on held-out points of the same values too, keeps falling."""
        sample = flat
        if len(flat) > FEW_VALUES_SAMPLE:  # a random subset: fixed splits may be in time order
            pick = torch.randperm(len(flat), generator=torch.Generator().manual_seed(0))[:FEW_VALUES_SAMPLE]
            sample = flat[pick.to(flat.device)]
        n = len(sample)
        if n < FEW_VALUES_MIN_POINTS:  # ties among a few points say little
            return
        values = sample.sort(dim=0).values
        distinct = 1 + (values[1:] != values[:-1]).sum(dim=0)
        few = (distinct <= n // 2).nonzero().flatten().tolist()
        if not few:
            return
        label, shown = self._coordinates(few)
        counts = ", ".join(str(int(distinct[k])) for k in few[:10]) + (" ..." if len(few) > 10 else "")
        warnings.warn(
            f"{self.name}: {label} {shown} (0-based) "
            + ("takes" if len(few) == 1 else "take")
            + f" only {counts} distinct values in {n} training points: a continuous flow can put spikes "
            "of unbounded density on repeated values, so its NLL may keep falling (on held-out points of "
            "the same values too) and is not a density's; for integer data 0..K-1 pass --levels K, "
            "otherwise add uniform noise as wide as the spacing of the values",
            UserWarning,
            stacklevel=3,  # the caller of check_spread
        )

    def _coordinates(self, where: list) -> Tuple[str, str]:
        """``("column", "2")``, ``("positions", "(0, 1, 0), (0, 2, 0)")``: the flat
        coordinates ``where`` of one event, named for messages (the first 10 shown)."""
        if len(self.event_shape) > 1:
            unravel = torch.unravel_index
            names = [str(tuple(int(i) for i in unravel(torch.tensor(k), self.event_shape))) for k in where]
            label = "position" if len(where) == 1 else "positions"
        else:
            names = [str(k) for k in where]
            label = "column" if len(where) == 1 else "columns"
        return label, ", ".join(names[:10]) + (f" and {len(names) - 10} more" if len(names) > 10 else "")

    def sizes(self) -> dict:
        return {"train": len(self.train), "val": len(self.val), "test": len(self.test)}


def split_fractions(
    x: torch.Tensor, val_fraction: float, test_fraction: float, seed: int, name: str
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Shuffle ``x`` with ``seed`` and cut it into train, validation and test parts.

    >>> tr, va, te = split_fractions(torch.arange(10.0).unsqueeze(-1), 0.2, 0.1, 0, "demo")
    >>> len(tr), len(va), len(te)
    (7, 2, 1)
    """
    n = len(x)
    n_val, n_test = round(n * val_fraction), round(n * test_fraction)
    if n - n_val - n_test < 1 or n_val < 1 or n_test < 1:
        raise ValueError(
            f"{name}: {n} points are too few to split with validation fraction {val_fraction} and test "
            f"fraction {test_fraction} (each split needs at least one point)"
        )
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    x = x[perm]
    return x[: n - n_val - n_test], x[n - n_val - n_test : n - n_test], x[n - n_test :]


def split_for_run(x: torch.Tensor, config, name: str) -> Tuple[Tuple[torch.Tensor, ...], str]:
    """:func:`split_fractions` with a run configuration's fractions and seed, and the
    split rule :meth:`Splits.describe` reports for it.

    >>> from types import SimpleNamespace
    >>> config = SimpleNamespace(val_fraction=0.2, test_fraction=0.1, seed=0)
    >>> parts, rule = split_for_run(torch.zeros(10, 2), config, "demo")
    >>> [len(p) for p in parts], rule
    ([7, 2, 1], 'random (val 0.2, test 0.1, seed 0)')
    """
    parts = split_fractions(x, config.val_fraction, config.test_fraction, config.seed + 1, name)
    return parts, f"random (val {config.val_fraction}, test {config.test_fraction}, seed {config.seed})"
