"""Reads back a case folder written by gen.py (``simulate.save_case``): the volumes and the ground truth.

Only these development scripts read saved cases, so the reader lives here, not in the lab package.
"""
import json
from pathlib import Path

import numpy as np

from MultimodalRegistrationLib.volume import load_volume
from MultimodalRegistrationLab.simulate import CASE_FILES, SimCase


def load_case(folder) -> SimCase:
    folder = Path(folder)
    vols = {attr: (load_volume(folder / name, labels="labels" in attr) if (folder / name).exists() else None)
            for attr, name in CASE_FILES.items()}
    truth = json.loads((folder / "ground_truth.json").read_text())
    return SimCase(moving_to_fixed=np.asarray(truth["moving_to_fixed_ras"]), meta=truth.get("meta", {}), **vols)
