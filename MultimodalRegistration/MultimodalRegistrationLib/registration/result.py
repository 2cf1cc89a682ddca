"""What every registration method returns."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np


@dataclass
class RegistrationResult:
    moving_to_fixed: np.ndarray      # 4x4, coronal (moving) RAS world -> axial (fixed) RAS world
    method: str                      # "search-cr" | "search-ncc" | "paper" | "mi" (benchmark wrappers: "elastix", "ants")
    metric: float                    # final metric (paper: mean MSE of the best subset; search-ncc: NCC; ...)
    success: bool | None             # calibrated rule (docs/REGISTRATION.md); None = not known
    subset_index: int | None = None
    subset_metrics: list[float] | None = None   # per-subset metric curve (paper Fig. 7), None if n/a
    seconds: float = 0.0
    details: dict = field(default_factory=dict)  # JSON-serialisable extras

    def to_json(self) -> dict:
        d = asdict(self)
        d["moving_to_fixed"] = np.asarray(self.moving_to_fixed, dtype=float).tolist()
        return d
