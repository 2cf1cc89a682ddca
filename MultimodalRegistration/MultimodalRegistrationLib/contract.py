"""The contract between the core (``mmreg register``), the Slicer module and the tests.

One place for the names several parts of the project must agree on; standard library only, so the
Slicer module can import it before the core's dependencies (numpy, torch, ...) are installed.

* :data:`OUTPUT_FILES`: the files ``mmreg register --out DIR`` writes (role -> file name);
  :data:`FUSED_CHANNELS`: the channels of ``fused.nii.gz``;
* the keys of ``transform.json`` and :func:`check_transform` / :func:`read_transform_json`, which
  validate it;
* :data:`PROGRESS_STAGES`: the stages of ``--progress json`` lines
  (``{"stage": "register", "done": 3, "total": 18}``), in run order;
* the bundled sample case: :data:`SAMPLE_DATA_FOLDER`, :data:`SAMPLE_VOLUME_FILES`,
  :data:`SAMPLE_GROUND_TRUTH` (:data:`SAMPLE_FILES` is all of them).

Changing a value here changes the on-disk contract: the Slicer module, saved scenes' users and scripts
read these names.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

#: Output files of ``mmreg register --out DIR`` (role -> file name). ``transform.json`` is written last:
#: its presence means every other output is complete.
OUTPUT_FILES = {
    "transform_json": "transform.json",
    "transform_tfm": "transform.tfm",
    "synth_t2": "coronal_synthT2.nii.gz",
    "cet1_on_axial": "coronal_ceT1_on_axial.nii.gz",
    "fused": "fused.nii.gz",
    "coronal_labels_on_axial": "coronal_labels_on_axial.nii.gz",
    "axial_labels_on_coronal": "axial_labels_on_coronal.nii.gz",
    "label_colors": "labels_colors.txt",
    "report_json": "report.json",
    "report_png": "report.png",
    # the review figures and page (not written with --no-figure)
    "qc_before_png": "qc_before.png",
    "qc_after_png": "qc_after.png",
    "report_html": "report.html",
}

#: Channels (5th dimension) of ``fused.nii.gz``, in order.
FUSED_CHANNELS = ("axial_T2", "registered_ceT1", "registered_synthT2")

# ------------------------------------------------------------------------------------------- transform.json

#: The coronal (moving) RAS world -> axial (fixed) RAS world map, a 4x4 list of rows (Slicer's
#: "transform to parent" of the result's linear transform node).
TRANSFORM_MATRIX_KEY = "moving_to_fixed_ras"
#: Keys every ``transform.json`` has.
TRANSFORM_REQUIRED_KEYS = (TRANSFORM_MATRIX_KEY, "method", "metric", "seconds", "success")
#: Keys the core may add: the chosen subset and the metric per subset (null where not evaluated), the
#: ``confidence`` (a number in [0, 1], 0.5 = the calibrated threshold, or null) and ``confidence_detail``
#: (the rule and its measured inputs), the translator used and a note about it, the metric's name.
TRANSFORM_OPTIONAL_KEYS = ("subset_index", "subset_metrics", "confidence", "confidence_detail", "translator",
                           "translator_note", "success_note",
                           "metric_name", "note")


class OutputError(RuntimeError):
    """An output of the core is missing or does not follow the contract."""


def check_matrix4x4(matrix, what: str = "matrix") -> list:
    """A finite homogeneous 4x4 matrix (last row 0 0 0 1) as nested lists of float (OutputError otherwise)."""
    try:
        rows = [[float(v) for v in row] for row in matrix]
    except (TypeError, ValueError) as exc:
        raise OutputError(f"{what}: {TRANSFORM_MATRIX_KEY} must be a 4x4 list of numbers") from exc
    if len(rows) != 4 or any(len(r) != 4 for r in rows):
        raise OutputError(f"{what}: {TRANSFORM_MATRIX_KEY} must be 4x4")
    if not all(math.isfinite(v) for r in rows for v in r):
        raise OutputError(f"{what}: {TRANSFORM_MATRIX_KEY} has non-finite values")
    if any(abs(a - b) > 1e-6 for a, b in zip(rows[3], (0.0, 0.0, 0.0, 1.0))):
        raise OutputError(f"{what}: last row of {TRANSFORM_MATRIX_KEY} must be 0 0 0 1")
    return rows


def check_transform(data, what: str = OUTPUT_FILES["transform_json"]) -> dict:
    """Validate the content of a ``transform.json``: a JSON object with :data:`TRANSFORM_REQUIRED_KEYS`
    and a valid matrix. Returns the dict with the matrix as a 4x4 list of floats."""
    if not isinstance(data, dict):
        raise OutputError(f"{what} must hold a JSON object")
    missing = [k for k in TRANSFORM_REQUIRED_KEYS if k not in data]
    if missing:
        raise OutputError(f"{what} lacks {', '.join(missing)}")
    data[TRANSFORM_MATRIX_KEY] = check_matrix4x4(data[TRANSFORM_MATRIX_KEY], what)
    return data


def read_transform_json(path: str | os.PathLike) -> dict:
    """Read and check ``transform.json`` (:func:`check_transform`)."""
    p = Path(path)
    if not p.is_file():
        raise OutputError(f"missing {p.name} in {p.parent}")
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise OutputError(f"{p.name} is not valid JSON: {exc}") from exc
    return check_transform(data, p.name)


# ------------------------------------------------------------------------------------------- progress

#: Stages of ``mmreg register``'s progress lines, in the order a run reports them.
PROGRESS_STAGES = ("load", "translate", "subsets", "register", "polish", "resample", "labels", "write")

# ------------------------------------------------------------------------------------------- sample case

#: The bundled sample case, relative to the module folder (``MultimodalRegistration/``).
SAMPLE_DATA_FOLDER = ("Resources", "SampleData")
#: Its volumes (role -> file name).
SAMPLE_VOLUME_FILES = {
    "coronal": "sample_coronal_ceT1.nii.gz",
    "axial": "sample_axial_T2.nii.gz",
    "coronal_labels": "sample_coronal_labels.nii.gz",
    "axial_labels": "sample_axial_labels.nii.gz",
}
#: Its ground truth: a JSON object whose :data:`SAMPLE_GROUND_TRUTH_KEY` is the true moving->fixed matrix.
SAMPLE_GROUND_TRUTH = "sample_ground_truth.json"
SAMPLE_GROUND_TRUTH_KEY = TRANSFORM_MATRIX_KEY
#: Every file of the sample case (the volumes and ``truth``).
SAMPLE_FILES = {**SAMPLE_VOLUME_FILES, "truth": SAMPLE_GROUND_TRUTH}
