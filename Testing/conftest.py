"""Shared fixtures: the real data folder (../shared/data) and small simulated cases."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("MMREG_DATA", ROOT.parent / "shared" / "data"))

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")


def _need_data():
    if not (DATA / "brats").exists():
        pytest.skip(f"real data folder {DATA} not found (a fresh clone has no ../shared/data)")


@pytest.fixture(scope="session")
def data_root() -> Path:
    _need_data()
    return DATA


@pytest.fixture(scope="session")
def brats_source():
    _need_data()
    from MultimodalRegistrationLib import simulate
    return simulate.load_brats_source("BraTSorch-case", DATA)


@pytest.fixture(scope="session")
def fast_case(brats_source):
    """A small simulated case (1 mm in-plane) with labels and known ground truth."""
    from MultimodalRegistrationLib import simulate
    return simulate.simulate_case(brats_source, seed=3, params="fast")


@pytest.fixture
def rng():
    return np.random.default_rng(0)
