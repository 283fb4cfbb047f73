"""Summary statistics that return None (JSON null) for an empty sample instead of NaN."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np


def _arr(values: Iterable[float]) -> np.ndarray:
    a = np.asarray(list(values) if not hasattr(values, "__array__") else values, dtype=float)
    return a[~np.isnan(a)]


def pct(values: Iterable[float], q: float) -> float | None:
    """The ``q``-th percentile, linear interpolation between order statistics."""
    a = _arr(values)
    return float(np.percentile(a, q)) if a.size else None


def mean(values: Iterable[float]) -> float | None:
    a = _arr(values)
    return float(a.mean()) if a.size else None


def vmax(values: Iterable[float]) -> float | None:
    a = _arr(values)
    return float(a.max()) if a.size else None


def ratio(num: float, den: float) -> float | None:
    """``num / den``, or None when the denominator is zero or missing."""
    if not den or den != den:
        return None
    return float(num) / float(den)
