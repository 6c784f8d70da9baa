"""Argument checks shared by the transforms' constructors and the builders: a size that
would build an empty or degenerate flow is refused, naming the constructor, the argument
and the value. (Here rather than in ``builders``, which imports the transforms.)"""

from __future__ import annotations

import math
import numbers
from typing import Optional, Sequence, Tuple


def _is_int(value) -> bool:
    """An integral number (``int``, ``numpy.int64``, ...) that is not a bool, which would
    pass as 0 or 1."""
    return not isinstance(value, bool) and isinstance(value, numbers.Integral)


def check_count(value, name: str, builder: str, minimum: int = 1) -> int:
    """``value`` as an int ``>= minimum`` (an integral type such as ``numpy.int64`` is
    taken; bools and floats are refused).

    >>> check_count(0, "num_layers", "real_nvp")
    Traceback (most recent call last):
    ...
    ValueError: real_nvp: num_layers must be an integer >= 1, got 0
    """
    if not _is_int(value) or value < minimum:
        raise ValueError(f"{builder}: {name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def check_hidden_dims(hidden_dims: Sequence[int], builder: str) -> Tuple[int, ...]:
    """``hidden_dims`` as a non-empty tuple of positive ints.

    >>> check_hidden_dims((0,), "nice")
    Traceback (most recent call last):
    ...
    ValueError: nice: hidden_dims must be one or more positive integers (sizes of the hidden layers), got (0,)
    """
    try:
        dims = tuple(hidden_dims)
    except TypeError:
        dims = None
    if not dims or any(not _is_int(h) or h < 1 for h in dims):
        raise ValueError(
            f"{builder}: hidden_dims must be one or more positive integers (sizes of the hidden layers), "
            f"got {hidden_dims!r}"
        )
    return tuple(int(h) for h in dims)


def check_event_shape(event_shape, owner: str) -> Sequence[int]:
    """``event_shape`` if it is a sequence of positive ints (``()`` for scalars), else a
    ``ValueError`` naming ``owner``, the argument and the value."""
    try:
        sizes = tuple(event_shape)
    except TypeError:
        sizes = None
    if sizes is None or any(isinstance(n, bool) or not isinstance(n, int) or n < 1 for n in sizes):
        raise ValueError(
            f"{owner}: event_shape must be a tuple of positive integers, () for scalar events, (D,) "
            f"for vectors, (C, H, W) for images; got {event_shape!r}"
        )
    return sizes


def check_flag(value, name: str, owner: str) -> bool:
    """``value`` if it is a bool, else a ``TypeError`` naming ``owner``, the argument and
    the value: a string such as ``"no"`` is truthy and would switch the option on.

    >>> check_flag("no", "memory_saving", "MultiScale")
    Traceback (most recent call last):
    ...
    TypeError: MultiScale: memory_saving must be True or False, got 'no'
    """
    if not isinstance(value, bool):
        raise TypeError(f"{owner}: {name} must be True or False, got {value!r}")
    return value


def check_bound(value, name: str, owner: str) -> Optional[float]:
    """A bound of a coupling or guide: ``None`` or a positive number, returned as ``None``
    for ``None`` or infinity (no bound), else a ``ValueError`` naming ``owner``, the
    argument and the value.

    >>> check_bound(-1.0, "shift_bound", "real_nvp")
    Traceback (most recent call last):
    ...
    ValueError: real_nvp: shift_bound must be positive or None, got -1.0
    """
    if value is not None and (
        isinstance(value, bool) or not isinstance(value, numbers.Real) or not value > 0
    ):
        raise ValueError(f"{owner}: {name} must be positive or None, got {value!r}")
    if value == math.inf:
        # b tanh(s / b) tends to s as b grows, but its sigmoid form gives inf - inf = NaN
        return None
    return value


def check_positive_finite(value, name: str, owner: str) -> float:
    """``value`` as a float if it is a real number in :math:`(0, \\infty)`, else a
    ``ValueError`` naming ``owner``, the argument and the value (a bool or a string is
    no bound).

    >>> check_positive_finite(float("inf"), "tail_bound", "spline_flow")
    Traceback (most recent call last):
    ...
    ValueError: spline_flow: tail_bound must be positive and finite, got inf
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 < value < math.inf:
        raise ValueError(f"{owner}: {name} must be positive and finite, got {value!r}")
    return float(value)
