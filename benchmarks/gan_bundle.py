"""Bundle a checkpoint (issue 12): re-save an export as Resources/Models/nicegan_cet1_t2.safetensors,
its sidecar extended with the selection record and the held-out evaluation it was judged on.

    PYTHONPATH=MultimodalRegistration python3 benchmarks/gan_bundle.py --checkpoint EXPORT.safetensors \
        --selection benchmarks/results/gan_selection/selection.json \
        --heldout benchmarks/results/gan_heldout_run4/report.json --note "..."
"""
import argparse
import json
from pathlib import Path

from MultimodalRegistrationLib import translate as T


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--selection", required=True)
    p.add_argument("--heldout", required=True, nargs="+")
    p.add_argument("--note", required=True)
    a = p.parse_args()
    model, meta = T.load_checkpoint(a.checkpoint)
    training = dict(meta["training"])
    sel = json.loads(Path(a.selection).read_text())
    training["exported_from"] = Path(a.checkpoint).name
    training["selection"] = {"note": a.note, "rule": sel["rule"], "cases": sel["cases"],
                             "candidates": [{"checkpoint": Path(r["checkpoint"]).name, "iterations": r["iterations"],
                                             "normalisation": r.get("normalisation"), "mean_ncc": round(r["mean_ncc"], 4),
                                             "n_csf_pass": r["n_csf_pass"]} for r in sel["rows"]]}
    ev = {}
    for f in a.heldout:
        rep = json.loads(Path(f).read_text())
        for case, e in rep["per_case"].items():
            s = e["summary"]
            ev[case] = {"head_ncc_T2": round(s["ncc_T2_generated"]["mean"], 4),
                        "psnr_T2_dB": round(s["psnr_T2_generated"]["mean"], 2),
                        "ssim_T2": round(s["ssim_T2_generated"]["mean"], 4),
                        "csf_check_pass": e.get("csf_check", {}).get("csf_above_gm_and_wm")}
    training["heldout_evaluation"] = {"files": a.heldout, "cases": ev,
                                      "note": "judged after selection; never used to choose among exports"}
    out = T.default_checkpoint_path()
    T.save_checkpoint(model, out, training, meta["normalisation"])
    print("bundled", out, json.dumps(ev))


if __name__ == "__main__":
    main()
