"""Learning-rate, weight-decay and momentum schedules as small objects.

Each is a pure function of the optimiser step, so a resumed run is fast-forwarded by simply
asking for the value at the saved step: nothing to replay, nothing stored.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class WarmupCosine:
    """Linear warm-up from `start` to `peak` over `warmup` steps, then cosine to `final`."""

    start: float
    peak: float
    final: float
    warmup: int
    total: int

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return self.start + (self.peak - self.start) * step / max(1, self.warmup)
        progress = min(1.0, (step - self.warmup) / max(1, self.total - self.warmup))
        return self.final + 0.5 * (self.peak - self.final) * (1 + math.cos(math.pi * progress))


@dataclass(frozen=True)
class Cosine:
    """Cosine from `start` at step 0 to `final` at `total` (V-JEPA's weight-decay schedule)."""

    start: float
    final: float
    total: int

    def __call__(self, step: int) -> float:
        progress = min(1.0, step / max(1, self.total))
        return self.final + 0.5 * (self.start - self.final) * (1 + math.cos(math.pi * progress))


@dataclass(frozen=True)
class Linear:
    """Linear from `start` to `final` over `total` steps (V-JEPA's EMA momentum schedule)."""

    start: float
    final: float
    total: int

    def __call__(self, step: int) -> float:
        progress = min(1.0, step / max(1, self.total))
        return self.start + (self.final - self.start) * progress
