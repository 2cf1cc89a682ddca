"""The quantities MultimodalRegistrationTest (the Slicer self-test) checks, computed outside Slicer on
an ``mmreg demo`` output folder of the bundled sample case, the same way the self-test computes them:
TRE of transform.json's moving_to_fixed_ras against sample_ground_truth.json at the 8 corners and the
centre of the coronal stack, and Dice per label of each transferred label map against the other stack's
own labels (same grid, voxel by voxel).

    python benchmarks/results/slicer_selftest_sample/measure.py /tmp/slicer14_demo > result.json
"""
import json
import sys
from pathlib import Path

import nibabel as nib
import numpy as np

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT / "MultimodalRegistration"))
from MultimodalRegistrationLib.contract import (  # noqa: E402
    OUTPUT_FILES, SAMPLE_FILES, SAMPLE_GROUND_TRUTH, SAMPLE_GROUND_TRUTH_KEY, read_transform_json)
from MultimodalRegistrationSlicerLib.results import box_corners_ras, dice_per_label, tre_mm  # noqa: E402

out = Path(sys.argv[1])
sample = ROOT / "MultimodalRegistration" / "Resources" / "SampleData"
estimated = read_transform_json(out / OUTPUT_FILES["transform_json"])
truth = json.loads((sample / SAMPLE_GROUND_TRUTH).read_text())[SAMPLE_GROUND_TRUTH_KEY]
coronal = nib.load(str(sample / SAMPLE_FILES["coronal"]))
tre = tre_mm(estimated["moving_to_fixed_ras"], truth, box_corners_ras(coronal.affine, coronal.shape))
dice = {}
for output, reference in (("coronal_labels_on_axial", "axial_labels"), ("axial_labels_on_coronal", "coronal_labels")):
    a = np.asarray(nib.load(str(out / OUTPUT_FILES[output])).dataobj)
    b = np.asarray(nib.load(str(sample / SAMPLE_FILES[reference])).dataobj)
    dice[output] = {str(k): round(v, 4) for k, v in dice_per_label(np.rint(a), np.rint(b)).items()}
print(json.dumps({"tre_mm": {"mean": round(tre["mean"], 4), "max": round(tre["max"], 4)}, "dice_per_label": dice,
                  "method": estimated["method"], "success": estimated["success"]}, indent=2))

if len(sys.argv) > 2 and sys.argv[2] == "--ground-truth":
    # The same Dice with the labels carried by the ground-truth transform itself (core's label
    # transfer, default per-label linear + argmax, and nearest neighbour): the best a run can score.
    from MultimodalRegistrationLib import labels as labels_mod
    from MultimodalRegistrationLib.volume import load_volume

    cor_img = load_volume(sample / SAMPLE_FILES["coronal"])
    ax_img = load_volume(sample / SAMPLE_FILES["axial"])
    cl = load_volume(sample / SAMPLE_FILES["coronal_labels"], labels=True)
    al = load_volume(sample / SAMPLE_FILES["axial_labels"], labels=True)
    gt = {}
    for mode in ("linear", "nearest"):
        on_ax = labels_mod.moving_labels_onto_fixed(cl, ax_img, np.asarray(truth), mode)
        on_cor = labels_mod.fixed_labels_onto_moving(al, cor_img, np.asarray(truth), mode)
        gt[mode] = {"coronal_labels_on_axial": {str(k): round(v, 4) for k, v in dice_per_label(
                        np.asarray(getattr(on_ax, "array", on_ax)), al.array).items()},
                    "axial_labels_on_coronal": {str(k): round(v, 4) for k, v in dice_per_label(
                        np.asarray(getattr(on_cor, "array", on_cor)), cl.array).items()}}
    print(json.dumps({"ground_truth_transform_dice_per_label": gt}, indent=2))
