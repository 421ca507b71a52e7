"""A batch norm + sign after a product, moved onto the product's own sums.

The reference computes each unit's bit from its sum ``a`` as ``v = a * scale + bias`` in float64,
then ``v >= threshold`` (``v <= threshold`` where the unit is ``negative``). With finite parameters
``v`` is a monotone function of ``a`` (a correctly rounded product and sum never reverse an order), so
the bit is too: it equals ``a >= tau`` for every ``a`` above some ``tau``, or ``a <= tau``. The
``tau`` of each unit is found once, by bisecting over the sums' own values (int32, or float32 in
their order) with the reference's arithmetic, so the comparison of the sums gives every bit the
reference gives, and skips the float64 affine of every value.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

INT_DOMAIN = (np.iinfo(np.int32).min + 1, np.iinfo(np.int32).max - 1)  # sums never reach int32's ends
_FLOAT_SIGN = 0x7FFFFFFF


def _float_key_values(keys: np.ndarray) -> np.ndarray:
    """float32 values of their order keys (int32: -inf < ... < -0 < +0 < ... < +inf, keys ascending)."""
    bits = np.where(keys < 0, keys ^ _FLOAT_SIGN, keys).astype(np.int32)
    return bits.view(np.float32)


def _float_keys(values: list[float]) -> np.ndarray:
    """The order keys of float32 values (the inverse of :func:`_float_key_values`)."""
    bits = np.asarray(values, dtype=np.float32).view(np.int32).astype(np.int64)
    return np.where(bits < 0, bits ^ _FLOAT_SIGN, bits)


def _bits(
    values: np.ndarray,
    scale: np.ndarray,
    bias: np.ndarray | None,
    threshold: np.ndarray,
    negative: np.ndarray,
) -> np.ndarray:
    """The reference's bit of each unit (columns) for sums ``values``: its arithmetic, in its order."""
    v = values.astype(np.float64) * scale
    if bias is not None:
        v = v + bias
    return np.where(negative, v <= threshold, v >= threshold)


def _first_true(pred: Callable[[np.ndarray], np.ndarray], lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Per unit, the least key in [lo, hi] where the non-decreasing ``pred`` holds (hi + 1: nowhere)."""
    lo, hi = lo.copy(), hi + 1
    while (open_ := lo < hi).any():
        mid = (lo + hi) // 2
        holds = pred(np.where(open_, mid, lo)) & open_
        hi = np.where(holds, mid, hi)
        lo = np.where(open_ & ~holds, mid + 1, lo)
    return lo


def sums_thresholds(
    scale: np.ndarray,
    bias: np.ndarray | None,
    threshold: np.ndarray,
    negative: np.ndarray,
    dtype: type,
) -> tuple[np.ndarray, np.ndarray] | None:
    """Per unit ``(tau, up)``, ``tau`` of the sums' dtype (int32 or float32): the reference's bit is
    ``a >= tau`` where ``up``, ``a <= tau`` elsewhere, for every sum ``a`` (NaN sums: no bit, as the
    reference's comparisons of NaN). None where a parameter is not finite, or (float32 sums) a scale
    is zero: there ``v`` need not be monotone (``inf * 0``), and the float64 comparison stays."""
    scale, threshold = np.broadcast_arrays(np.asarray(scale, np.float64), np.asarray(threshold, np.float64))
    negative = np.broadcast_to(np.asarray(negative, bool), scale.shape)
    params = [scale, threshold] + ([] if bias is None else [np.asarray(bias, np.float64)])
    if not all(np.isfinite(p).all() for p in params):
        return None
    floats = np.dtype(dtype) == np.float32
    if floats and (scale == 0).any():
        return None
    as_values = _float_key_values if floats else (lambda keys: keys)
    if floats:
        lo, hi = _float_keys([-np.inf])[0], _float_keys([np.inf])[0]
    else:
        lo, hi = INT_DOMAIN
    lo, hi = np.full(scale.shape, lo, np.int64), np.full(scale.shape, hi, np.int64)

    # a unit's bit rises with its sums where scale >= 0 and the unit compares >=, or both flip
    rising = (scale < 0) == negative

    def settled(keys: np.ndarray) -> np.ndarray:  # on (rising units) or off (falling ones) from here on
        return _bits(as_values(keys), scale, bias, threshold, negative) == rising

    edge = _first_true(settled, lo, hi)
    always = np.where(rising, edge == lo, edge > hi)
    never = np.where(rising, edge > hi, edge == lo)
    tau = np.where(rising, edge, edge - 1)
    up = rising | always | never
    if floats:
        values = as_values(np.clip(tau, lo, hi))
        values = np.where(always, np.float32(-np.inf), np.where(never, np.float32(np.nan), values))
        return np.ascontiguousarray(values, np.float32), up
    info = np.iinfo(np.int32)
    tau = np.where(always, info.min, np.where(never, info.max, tau))
    return np.ascontiguousarray(tau, np.int32), up
