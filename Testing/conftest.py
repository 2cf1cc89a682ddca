"""Shared fixtures and the one rule for tests that need the real data folder.

The suite is organised like the code: ``unit/`` (one module or package of the core at a time),
``e2e/`` (the command line, the pipeline, batch, the demo, the review page and the golden outputs:
marked ``slow`` automatically) and ``slicer/`` (the Slicer module against strict stand-ins, the
packaging of the extension). A quick run: ``python3 -m pytest -q -m "not slow"``.

The real data (``../shared/data`` beside the checkout, or ``$MMREG_DATA``) is not shipped: a fresh
clone has none. Every test that reads it is marked ``data`` and is skipped, with the missing path as
the reason, when the data is absent:

* ``@pytest.mark.data`` (needs ``brats/``) or ``@pytest.mark.data("real/MNI152_T1_2mm.nii.gz")``
  (needs that path under the data folder);
* a test that uses one of the data fixtures below (``data_root``, ``brats_source``, ``fast_case``,
  directly or through another fixture) gets the marker automatically;
* tests in files this conftest does not own are listed in ``DATA_TESTS`` until they carry the marker.

Opt-in tests of the elastix/ANTs wrappers (slow, ``pip install -e ".[baselines]"``) are marked ``baseline``
and skipped unless ``MMREG_SLOW_BASELINES=1``: ``MMREG_SLOW_BASELINES=1 python3 -m pytest -q -m baseline``.

``.ci/run`` runs the suite a second time with ``MMREG_DATA`` pointing at an empty folder, so a test
that needs the data and is not marked fails there.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("MMREG_DATA", ROOT.parent / "shared" / "data"))

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

#: What a ``data`` marker without arguments needs under the data folder.
DEFAULT_DATA_PATH = "brats"
#: Fixtures that read the real data: a test using any of them is marked ``data``.
DATA_FIXTURES = ("data_root", "brats_source", "fast_case")
#: Node ids (relative to Testing/) of data tests in files whose owners add the marker themselves.
DATA_TESTS = {
    # renders from ../shared/data/real/MNI152_T1_2mm.nii.gz (the head); without it the render is brain-only
    "unit/test_translate.py::test_bundled_gan_beats_unconverted_on_rendered_pair": ("real/MNI152_T1_2mm.nii.gz",),
}


def missing_data(paths=(DEFAULT_DATA_PATH,)):
    """The first of ``paths`` (relative to the data folder) that does not exist, or None."""
    for rel in paths:
        if not (DATA / rel).exists():
            return DATA / rel
    return None


def pytest_collection_modifyitems(config, items):
    for item in items:
        nodeid = item.nodeid.split("Testing/", 1)[-1]
        if nodeid.startswith("e2e/"):
            item.add_marker(pytest.mark.slow)
        if nodeid.split("[", 1)[0] in DATA_TESTS:
            item.add_marker(pytest.mark.data(*DATA_TESTS[nodeid.split("[", 1)[0]]))
        elif item.get_closest_marker("data") is None and any(f in item.fixturenames for f in DATA_FIXTURES):
            item.add_marker(pytest.mark.data)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    if item.get_closest_marker("baseline") is not None and not os.environ.get("MMREG_SLOW_BASELINES"):
        pytest.skip("opt-in baseline wrapper test (elastix/ANTs, slow): "
                    "MMREG_SLOW_BASELINES=1 python3 -m pytest -q -m baseline")
    if item.get_closest_marker("data") is not None:
        paths = [p for mark in item.iter_markers("data") for p in mark.args]
        if not paths or any(f in item.fixturenames for f in ("brats_source", "fast_case")):
            paths.append(DEFAULT_DATA_PATH)
        missing = missing_data(tuple(paths))
        if missing is not None:
            pytest.skip(f"needs the real data: {missing} not found (a fresh clone has no ../shared/data; "
                        "set MMREG_DATA)")


@pytest.fixture(scope="session")
def data_root() -> Path:
    return DATA


@pytest.fixture(scope="session")
def brats_source():
    from MultimodalRegistrationLab import simulate
    return simulate.load_brats_source("BraTSorch-case", DATA)


@pytest.fixture(scope="session")
def fast_case(brats_source):
    """A small simulated case (1 mm in-plane) with labels and known ground truth."""
    from MultimodalRegistrationLab import simulate
    return simulate.simulate_case(brats_source, seed=3, params="fast")


@pytest.fixture
def rng():
    return np.random.default_rng(0)
