"""Checks and summaries of a finished run's outputs, and the self-test's metrics (Slicer-free;
numpy imported lazily).

``transform.json`` itself is read and validated by :mod:`MultimodalRegistrationLib.contract`. TRE and Dice
are the core's (:mod:`MultimodalRegistrationLib.metrics`, imported inside the functions: the panel loads
before the core's dependencies are installed, and the self-test that calls them runs after).
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Iterable, Mapping, Optional

from MultimodalRegistrationLib.contract import OUTPUT_FILES


def expected_outputs(with_coronal_labels: bool, with_axial_labels: bool) -> list[str]:
    """File names the module needs after a successful run."""
    names = [OUTPUT_FILES["transform_json"], OUTPUT_FILES["synth_t2"]]
    if with_coronal_labels:
        names.append(OUTPUT_FILES["coronal_labels_on_axial"])
    if with_axial_labels:
        names.append(OUTPUT_FILES["axial_labels_on_coronal"])
    return names


def missing_outputs(out_dir: str | os.PathLike, with_coronal_labels: bool,
                    with_axial_labels: bool) -> list[str]:
    d = Path(out_dir)
    return [n for n in expected_outputs(with_coronal_labels, with_axial_labels)
            if not (d / n).is_file()]


def subset_curve(result: Mapping) -> tuple[list[int], list[float]]:
    """(subset index, metric) pairs from ``transform.json``'s optional ``subset_metrics``."""
    values = result.get("subset_metrics") or []
    xs, ys = [], []
    for i, v in enumerate(values):
        try:
            f = float(v)
        except (TypeError, ValueError):
            continue
        if math.isfinite(f):
            xs.append(i)
            ys.append(f)
    return xs, ys


#: What ``metric`` of transform.json measures, by the ``method`` the core reports: the default
#: method's NCC between synthetic T2 and T2 (higher is better), or SimpleITK's negative Mattes mutual
#: information when the MI polish replaced that result (``ours+mi-polish``) and for the MI baseline
#: (lower is better); the paper's search minimises the MSE between synthetic T2 and T2.
METRIC_NAMES = {
    "search-cr": "correlation ratio",
    "search-cr+mi-polish": "negative Mattes MI",
    "search-ncc": "NCC",
    "search-ncc+mi-polish": "negative Mattes MI",
    "ours": "NCC",
    "ours+mi-polish": "negative Mattes MI",
    "paper": "MSE",
    "mi": "negative Mattes MI",
}


def metric_name(result: Mapping) -> str:
    """``metric_name`` from transform.json if the core gives one, else by method."""
    return str(result.get("metric_name") or METRIC_NAMES.get(str(result.get("method")), "metric"))


def format_metrics(result: Mapping) -> str:
    """One line for the panel: final metric (named), the core's success-threshold test, run time,
    method, chosen subset."""
    parts = []
    metric = result.get("metric")
    if isinstance(metric, (int, float)) and math.isfinite(metric):
        parts.append(f"final {metric_name(result)} {metric:.4g}")
    # ``success`` is the core's threshold test on the final metric, not an optimiser convergence flag
    if result.get("success") is None:
        parts.append("success unknown (no calibrated check for this result)")
    elif (result.get("confidence_detail") or {}).get("rule") == "forward/backward agreement":
        c = result["confidence_detail"]
        after = (c.get("nmi_polish") or {}).get("directions_after_polish_mm")
        if result.get("success") and after is not None:
            verdict = f"(passes: {after:.1f} mm after polishing each on NMI)"
        elif result.get("success"):
            verdict = "(passes)"
        elif c.get("second_metric_confirmed") is False and c.get("consistency_mm", float("inf")) <= c.get(
                "threshold_mm", float("nan")):
            verdict = "(flagged: the second metric prefers another estimate)"
        elif (c.get("nmi_polish") or {}).get("moved_mm", 0.0) > c.get("threshold_mm", float("inf")):
            verdict = f"(flagged: the NMI polish moved the result by {c['nmi_polish']['moved_mm']:.1f} mm)"
        else:
            verdict = "(flagged)"
        parts.append(f"forward/backward agree to {c.get('consistency_mm', float('nan')):.1f} mm {verdict}")
    else:
        parts.append("metric within the success threshold" if result.get("success")
                     else "metric outside the success threshold (flagged)")
    seconds = result.get("seconds")
    if isinstance(seconds, (int, float)) and math.isfinite(seconds):
        parts.append(f"{seconds:.1f} s")
    if result.get("method"):
        parts.append(f"method {result['method']}")
    if result.get("subset_index") is not None:
        parts.append(f"subset {result['subset_index']}")
    if result.get("translator"):
        parts.append(f"translator {result['translator']}")
    return " | ".join(parts)


def completion_status(result: Mapping, seconds: float) -> str:
    """Status line after a run: time, a warning when the core flagged the result, its notes."""
    text = f"Done in {seconds:.0f} s."
    if result.get("success") is None:
        text += " The core could not check this result: review the fused view before using it."
    elif not result.get("success"):
        text += " The core flagged this result as unsuccessful: check the report before using it."
    for key in ("translator_note", "note"):
        if result.get(key):
            text += f" {result[key]}"
    return text


# ---------------------------------------------------------------------------------------------
# Metrics for the self-test (numpy and the core's metrics imported lazily)
# ---------------------------------------------------------------------------------------------

def box_corners_ras(ijk_to_ras, shape_ijk) -> list:
    """The 8 corner voxel centres and the centre of a volume, in RAS mm."""
    import numpy as np

    m = np.asarray(ijk_to_ras, dtype=float)
    ni, nj, nk = (int(s) for s in shape_ijk[:3])
    pts = [(i, j, k) for i in (0, ni - 1) for j in (0, nj - 1) for k in (0, nk - 1)]
    pts.append(((ni - 1) / 2.0, (nj - 1) / 2.0, (nk - 1) / 2.0))
    ijk = np.c_[np.asarray(pts, dtype=float), np.ones(len(pts))]
    return (ijk @ m.T)[:, :3].tolist()


def tre_mm(estimated, truth, points_ras) -> dict:
    """Target registration error between two moving->fixed RAS matrices at the given points: mean, max
    and per point, in mm (computed by the core's :func:`MultimodalRegistrationLib.metrics.point_errors`)."""
    from MultimodalRegistrationLib.metrics import point_errors

    d = point_errors(estimated, truth, points_ras)
    return {"mean": float(d.mean()), "max": float(d.max()), "per_point": d.tolist()}


def dice_per_label(a, b, labels: Optional[Iterable[int]] = None) -> dict:
    """Dice coefficient per non-zero label of two label arrays on the same grid (the core's
    :func:`MultimodalRegistrationLib.metrics.dice`). Labels absent from both arrays are left out; a label
    present in only one scores 0; arrays of different shapes raise ValueError."""
    from MultimodalRegistrationLib.metrics import dice

    return {lab: score for lab, score in dice(a, b, labels=labels).items() if not math.isnan(score)}
