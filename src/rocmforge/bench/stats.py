"""Summaries of timing samples: mean, spread and percentiles (numpy's, linear interpolation)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

DEFAULT_PERCENTILES = (50.0, 90.0, 99.0)


@dataclass(frozen=True)
class Summary:
    """Statistics of one metric's samples; every value is None when there were no samples."""

    count: int
    mean: float | None
    std: float | None
    min: float | None
    max: float | None
    percentiles: dict[str, float | None]  # "p50" -> value

    def percentile(self, q: float) -> float | None:
        return self.percentiles[percentile_key(q)]

    def to_dict(self) -> dict[str, float | int | None]:
        return {"count": self.count, "mean": self.mean, "std": self.std, "min": self.min, "max": self.max} | dict(
            self.percentiles
        )


def percentile_key(q: float) -> str:
    """ "p50", "p99", "p99.9": the name a percentile goes by in tables and JSON."""
    return f"p{q:g}"


def summarize(values: Sequence[float], percentiles: Sequence[float] = DEFAULT_PERCENTILES) -> Summary:
    """Mean, population std, min, max and the given percentiles (0-100) of ``values``.

    An empty sample gives None everywhere rather than NaN: NaN is not valid JSON, and "no samples" (say, TPOT
    when every request produced one token) is a fact to report, not a number.
    """
    for q in percentiles:
        if not 0 <= q <= 100:
            raise ValueError(f"percentiles must lie in [0, 100], got {q}")
    keys = [percentile_key(q) for q in percentiles]
    if len(values) == 0:
        return Summary(0, None, None, None, None, dict.fromkeys(keys))
    array = np.asarray(values, dtype=np.float64)
    points = np.percentile(array, list(percentiles)) if percentiles else np.empty(0)
    return Summary(
        count=int(array.size),
        mean=float(array.mean()),
        std=float(array.std()),
        min=float(array.min()),
        max=float(array.max()),
        percentiles={key: float(value) for key, value in zip(keys, points, strict=True)},
    )
