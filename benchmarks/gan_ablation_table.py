"""Issue 12 lever ablation: the docs/GAN.md table, read from the committed result folders.

usage: python3 benchmarks/gan_ablation_table.py   (prints markdown; run from the repository root)
Each row: benchmarks/results/gan_ablation_<name>/report.json (TCGA-DU-7294, stroke) and
.../withskull_fg6692/report.json (native:TCGA-FG-6692:withskull). "margin" = mean synthetic T2 of CSF minus
the brighter of GM and WM (csf_minus_brightest_other): > 0 passes the CSF check.
"""
import json
import sys
from pathlib import Path

ROWS = [
    ("init_tissuepeak", "init: previous bundle, tissue-peak input (0 it.)"),
    ("tp_only", "(1) tissue-peak only"),
    ("tp_only_seed1", "(1') tissue-peak only, seed 1"),
    ("tp_jitter", "(2) tissue-peak + contrast jitter"),
    ("tp_unpaired", "(4) tissue-peak + unpaired tcia_vs"),
    ("run4_iter1000", "(3) all three (run4, it. 1000)"),
    ("all3_seed1", "(3') all three, seed 1"),
]


def cells(case):
    s, c = case["summary"], case["csf_check"]
    return [f"{s['ncc_T2_generated']['mean']:.3f}", f"{s['psnr_T2_generated']['mean']:.2f}",
            f"{s['ssim_T2_generated']['mean']:.3f}",
            f"{c['synthetic_T2_csf']:.3f} / {c['synthetic_T2_gm']:.3f} / {c['synthetic_T2_wm']:.3f}",
            ("pass" if c["csf_above_gm_and_wm"] else "FAIL") + f" ({c['csf_minus_brightest_other']:+.3f})"]


def main(root="benchmarks/results"):
    hdr = ["training data (1000 it. from the previous bundle)"]
    for p in ("TCGA-DU-7294", "stroke"):
        hdr += [f"{p}: head NCC", "PSNR dB", "SSIM", "CSF / GM / WM", "CSF check (margin)"]
    hdr += ["FG-6692 with skull (training patient): head NCC", "PSNR dB", "CSF check (margin)"]
    print("| " + " | ".join(hdr) + " |")
    print("|" + "---|" * len(hdr))
    for name, label in ROWS:
        d = Path(root) / f"gan_ablation_{name}"
        if not (d / "report.json").exists():
            print(f"(no {d}/report.json: row '{label}' left out)", file=sys.stderr)
            continue
        r = json.loads((d / "report.json").read_text())["per_case"]
        w = json.loads((d / "withskull_fg6692" / "report.json").read_text())["per_case"]["native:TCGA-FG-6692:withskull"]
        wc = cells(w)
        print("| " + " | ".join([label] + cells(r["TCGA-DU-7294"]) + cells(r["stroke"]) + [wc[0], wc[1], wc[4]]) + " |")


if __name__ == "__main__":
    main(*sys.argv[1:])
