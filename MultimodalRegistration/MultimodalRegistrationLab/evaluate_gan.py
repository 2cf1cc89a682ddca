"""``mmreg evaluate-gan``: the paper's GAN evaluation (Table 1, Fig. 5, Fig. 6) plus PSNR, SSIM,
head NCC and a CSF check.

On held-out co-registered ceT1/T2 volumes (never used in training; default the BraTS/TCIA case
``TCGA-DU-7294``), every slice of the chosen plane (default coronal, the plane the tool converts)
with brain in it is converted in both directions, slice by slice, with exactly the normalisation
the checkpoint's sidecar records (``translate.volume_scale``; the true volumes are normalised the
same way). Per slice, on the 0..255 scale:

* MSE (the paper's Table 1: mean, st. dev., min, quartiles, max), PSNR (peak 255), SSIM (Gaussian
  window sigma 1.5, K1 = 0.01, K2 = 0.03, Wang et al. 2004), NCC with the true T2 inside the head;
* the same against the *unconverted* input (the floor a translator must beat).

Per case, the **CSF check**: the brain (voxels > 0 of both skull-stripped volumes, or the HD-BET
mask of a with-skull case; tumour labels left out) is split into three classes by 1D k-means on the
*true ceT1* (CSF < GM < WM on T1); CSF voxels must also be brighter than the brain median on the
true T2 (fluid, not dark partial volume). The check passes when the mean synthetic T2 of CSF is
above the mean synthetic T2 of GM and of WM. The true T2's class means are reported beside it.

Case names: a BraTS case (``TCGA-DU-7294``: ``brats/<case>_sri24``), ``stroke`` (``stroke/T1``,
``T2``: a non-contrast T1, brain-extracted), ``native:TCGA-FG-6692:withskull`` (the with-skull
axial 5.5 mm t1c converted as the product does, whole volume along its slice axis; the T2 of the
same session resampled onto the t1c grid by the scanner coordinates), ``render:SEED[:stripped]``.

Writes to ``--out``: ``report.json``, ``table1.md``, ``fig5_grid.png`` (input / output / difference,
as the paper's Fig. 5) and ``fig6_histograms.png`` (original vs generated intensity histograms).
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

from MultimodalRegistrationLib.errors import InputError
from MultimodalRegistrationLib.progress import ProgressFn, add_progress_argument, progress_from_args, report
from MultimodalRegistrationLib.translate import GanTranslator, Translator, load_translator, normalise01, volume_scale

STAT_ROWS = ("mean", "std", "min", "q1", "median", "q3", "max")


def mse255(a01: np.ndarray, b01: np.ndarray) -> float:
    return float(np.mean(((np.asarray(a01, np.float64) - b01) * 255.0) ** 2))


def psnr255(a01: np.ndarray, b01: np.ndarray) -> float:
    m = mse255(a01, b01)
    return float("inf") if m == 0 else float(10.0 * np.log10(255.0 ** 2 / m))


def ssim255(a01: np.ndarray, b01: np.ndarray, sigma: float = 1.5) -> float:
    """Mean SSIM of two 2D images (0..1 inputs, computed on the 0..255 scale)."""
    x = np.asarray(a01, np.float64) * 255.0
    y = np.asarray(b01, np.float64) * 255.0
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    f = lambda im: ndi.gaussian_filter(im, sigma, truncate=3.5)  # noqa: E731
    mx, my = f(x), f(y)
    sxx = f(x * x) - mx * mx
    syy = f(y * y) - my * my
    sxy = f(x * y) - mx * my
    s = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx * mx + my * my + c1) * (sxx + syy + c2))
    return float(s.mean())


def head_ncc(a01: np.ndarray, b01: np.ndarray, thr: float = 0.05) -> float:
    """Pearson correlation of two slices over the head (pixels where either is above ``thr``): what
    the NCC registration sees; nan for an (almost) empty slice."""
    m = (np.asarray(a01) > thr) | (np.asarray(b01) > thr)
    if m.sum() < 16:
        return float("nan")
    x = np.asarray(a01, np.float64)[m]
    y = np.asarray(b01, np.float64)[m]
    x, y = x - x.mean(), y - y.mean()
    d = np.sqrt((x * x).sum() * (y * y).sum())
    return float((x * y).sum() / d) if d > 0 else float("nan")


def stats(values) -> dict:
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)] if np.isfinite(v).any() else v
    q1, med, q3 = np.percentile(v, [25, 50, 75])
    return {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if v.size > 1 else 0.0, "min": float(v.min()),
            "q1": float(q1), "median": float(med), "q3": float(q3), "max": float(v.max()), "n": int(v.size)}


_PLANE_WORLD_AXIS = {"sagittal": 0, "coronal": 1, "axial": 2}


def plane_slices(cet1: np.ndarray, t2: np.ndarray, affine: np.ndarray, plane: str = "coronal",
                 min_fraction: float = 0.1, norm: dict | None = None, extra=()):
    """Both volumes normalised (per volume, as ``translate`` does with the normalisation record
    ``norm``; None = the old percentile one) and cut into slices of ``plane`` (``"slice-axis"``: the
    axis with the largest spacing, as the converter does).

    Keeps slices whose foreground (normalised ceT1 > 0.05) has at least ``min_fraction`` of the
    largest slice's foreground. Returns (A (N,h,w), B (N,h,w), slice indices, axis), plus the
    ``extra`` volumes (label maps) cut the same way when given.
    """
    sp = np.linalg.norm(affine[:3, :3], axis=0)
    if plane == "slice-axis":
        ax = int(np.argmax(sp))
    else:
        d = affine[:3, :3] / sp
        ax = int(np.argmax(np.abs(d[_PLANE_WORLD_AXIS[plane], :])))
    a = normalise01(cet1, *volume_scale(cet1, sp, norm, "A"))
    b = normalise01(t2, *volume_scale(t2, sp, norm, "B"))
    fg = (a > 0.05).sum(axis=tuple(i for i in range(3) if i != ax))
    idx = np.flatnonzero(fg >= min_fraction * fg.max())
    cut = lambda v: np.ascontiguousarray(np.moveaxis(np.take(v, idx, axis=ax), ax, 0))  # noqa: E731
    if extra:
        return cut(a), cut(b), idx, ax, [cut(e) for e in extra]
    return cut(a), cut(b), idx, ax


def kmeans_1d(values: np.ndarray, k: int = 3, iters: int = 50) -> np.ndarray:
    """Deterministic 1D k-means (centres initialised at the 10/50/90th percentiles); sorted centres."""
    v = np.asarray(values, np.float64)
    c = np.percentile(v, np.linspace(10, 90, k))
    for _ in range(iters):
        lab = np.argmin(np.abs(v[:, None] - c[None]), axis=1)
        new = np.array([v[lab == j].mean() if (lab == j).any() else c[j] for j in range(k)])
        if np.allclose(new, c):
            break
        c = new
    return np.sort(c)


def tissue_classes(cet1: np.ndarray, t2: np.ndarray, brain: np.ndarray) -> dict:
    """CSF / GM / WM masks inside ``brain`` from the true ceT1 (1D k-means, 3 classes); CSF must also
    be brighter than the brain median on the true T2 (see the module docstring)."""
    a = np.asarray(cet1, np.float64)
    c = kmeans_1d(a[brain])
    lab = np.argmin(np.abs(a[..., None] - c), axis=-1)
    t2_med = float(np.median(np.asarray(t2)[brain]))
    return {"csf": brain & (lab == 0) & (np.asarray(t2) > t2_med), "gm": brain & (lab == 1),
            "wm": brain & (lab == 2), "ceT1_centres": [float(x) for x in c]}


def csf_check(synth_t2: np.ndarray, true_t2: np.ndarray, classes: dict) -> dict:
    """Mean synthetic (and true) T2 of CSF, GM and WM; passes when CSF is above both GM and WM."""
    res = {}
    for name in ("csf", "gm", "wm"):
        m = classes[name]
        res[f"voxels_{name}"] = int(m.sum())
        res[f"synthetic_T2_{name}"] = float(synth_t2[m].mean()) if m.any() else float("nan")
        res[f"true_T2_{name}"] = float(true_t2[m].mean()) if m.any() else float("nan")
    res["csf_above_gm_and_wm"] = bool(res["synthetic_T2_csf"] > max(res["synthetic_T2_gm"], res["synthetic_T2_wm"]))
    res["true_T2_csf_above_gm_and_wm"] = bool(res["true_T2_csf"] > max(res["true_T2_gm"], res["true_T2_wm"]))
    res["csf_minus_brightest_other"] = float(res["synthetic_T2_csf"]
                                             - max(res["synthetic_T2_gm"], res["synthetic_T2_wm"]))
    return res


def load_case(case: str, root: Path, base_cache: dict):
    """-> (ceT1, T2, affine, brain mask or None, excluded (tumour) mask or None, plane override or None)."""
    import nibabel as nib

    from .synth import load_brats_pair

    if case.startswith("render:"):
        # a fresh MNI152 render (synth recipe) from its own seed: never in the training set;
        # "render:SEED:stripped" is the same render reduced to the brain (skull-stripped)
        from .synth import mni_tissues, render_mni_pair, skull_strip

        parts = case.split(":")
        if len(parts) not in (2, 3) or not parts[1].isdigit() or (len(parts) == 3 and parts[2] != "stripped"):
            raise InputError(f"render case must be 'render:SEED' or 'render:SEED:stripped', got {case!r}")
        if "base" not in base_cache:
            base_cache["base"] = mni_tissues()
        base = base_cache["base"]
        a, b, aff, _ = render_mni_pair(np.random.default_rng([int(parts[1]), 7919]), base)
        if len(parts) == 3:
            a, b = skull_strip(a, b, base)
        return a, b, aff, np.asarray(base[0]["icv"], bool), None, None
    if case == "stroke":
        d = root / "stroke"
        try:
            ia, ib = nib.load(str(d / "T1.nii.gz")), nib.load(str(d / "T2.nii.gz"))
        except FileNotFoundError as exc:
            raise InputError(f"held-out case stroke not found under {root} ({exc.filename})") from None
        a, b = np.asarray(ia.dataobj, np.float32), np.asarray(ib.dataobj, np.float32)
        return a, b, np.asarray(ia.affine, np.float64), (a > 0) & (b > 0), None, None
    if case.startswith("native:"):
        parts = case.split(":")
        if len(parts) != 3 or parts[2] != "withskull" or parts[1] != "TCGA-FG-6692":
            raise InputError(f"native case must be 'native:TCGA-FG-6692:withskull', got {case!r}")
        d = root / "brats" / f"{parts[1]}_native"
        try:
            ia = nib.load(str(d / "t1c_ax5.5mm_withskull.nii.gz"))
            ib = nib.load(str(d / "t2_ax5.5mm_withskull.nii.gz"))
            ih = nib.load(str(d / "t1c_ax5.5mm_hdbet.nii.gz"))
        except FileNotFoundError as exc:
            raise InputError(f"case {case} not found under {root} ({exc.filename})") from None
        a = np.asarray(ia.dataobj, np.float32)
        aff = np.asarray(ia.affine, np.float64)
        m = np.linalg.inv(ib.affine) @ aff
        coords = np.indices(a.shape, dtype=np.float64).reshape(3, -1)
        coords = m[:3, :3] @ coords + m[:3, 3:4]
        b = ndi.map_coordinates(np.asarray(ib.dataobj, np.float32), coords, order=1, mode="constant",
                                cval=0.0).reshape(a.shape).astype(np.float32)
        brain = np.asarray(ih.dataobj, np.float32) > 0
        return a, b, aff, brain & (b > 0), None, "slice-axis"
    try:
        a, b, aff = load_brats_pair(case, root)
    except FileNotFoundError as exc:
        raise InputError(f"held-out case {case} not found under {root} ({exc.filename})") from None
    seg = None
    d = root / "brats" / f"{case}_sri24"
    segs = sorted(d.glob("seg*.nii.gz")) if d.exists() else []
    if segs:
        seg = np.asarray(nib.load(str(segs[0])).dataobj) > 0
    return a, b, aff, (a > 0) & (b > 0), seg, None


def evaluate_slices(translator: GanTranslator, A: np.ndarray, B: np.ndarray, batch_size: int = 8,
                    progress: ProgressFn | None = None) -> dict:
    """Converts A->B and B->A, returns per-slice metrics and the converted slices."""
    fakeB = translator.translate_slices(A, "ceT1-to-T2", batch_size)
    report(progress, "evaluate", 1, 2)
    fakeA = translator.translate_slices(B, "T2-to-ceT1", batch_size)
    report(progress, "evaluate", 2, 2)
    # each compared pair (image, reference), and each metric over the pairs it is reported for, in the
    # order of the per-slice columns
    pairs = {"T2_generated": (fakeB, B), "ceT1_generated": (fakeA, A),
             "T2_vs_unconverted_ceT1": (A, B), "ceT1_vs_unconverted_T2": (B, A)}
    columns = [("mse", mse255, ("T2_generated", "ceT1_generated", "T2_vs_unconverted_ceT1", "ceT1_vs_unconverted_T2")),
               ("psnr", psnr255, ("T2_generated", "ceT1_generated")),
               ("ssim", ssim255, ("T2_generated", "ceT1_generated", "T2_vs_unconverted_ceT1", "ceT1_vs_unconverted_T2")),
               ("ncc", head_ncc, ("T2_generated", "T2_vs_unconverted_ceT1"))]
    per = {f"{metric}_{pair}": [fn(pairs[pair][0][i], pairs[pair][1][i]) for i in range(len(A))]
           for metric, fn, names in columns for pair in names}
    return {"per_slice": per, "fakeA": fakeA, "fakeB": fakeB}


def table1_markdown(summary: dict) -> str:
    cols = [("MSE of generated ceT1", "mse_ceT1_generated"), ("MSE of generated T2", "mse_T2_generated"),
            ("MSE unconverted T2 vs ceT1", "mse_ceT1_vs_unconverted_T2")]
    lines = ["| | " + " | ".join(c for c, _ in cols) + " |", "|---|" + "---|" * len(cols)]
    names = {"mean": "Mean", "std": "St. Dev.", "min": "Min", "q1": "Lower quartile", "median": "Median",
             "q3": "Upper quartile", "max": "Max"}
    for r in STAT_ROWS:
        lines.append(f"| {names[r]} | " + " | ".join(f"{summary[k][r]:.2f}" for _, k in cols) + " |")
    lines.append("")
    lines.append("| | generated ceT1 | generated T2 | unconverted (ceT1 vs T2) |")
    lines.append("|---|---|---|---|")
    lines.append(f"| PSNR dB (mean) | {summary['psnr_ceT1_generated']['mean']:.2f} | "
                 f"{summary['psnr_T2_generated']['mean']:.2f} | - |")
    lines.append(f"| SSIM (mean) | {summary['ssim_ceT1_generated']['mean']:.4f} | "
                 f"{summary['ssim_T2_generated']['mean']:.4f} | {summary['ssim_T2_vs_unconverted_ceT1']['mean']:.4f} |")
    if "ncc_T2_generated" in summary:
        lines.append(f"| NCC with the true T2 in the head (mean) | - | {summary['ncc_T2_generated']['mean']:.3f} | "
                     f"{summary['ncc_T2_vs_unconverted_ceT1']['mean']:.3f} |")
    return "\n".join(lines) + "\n"


def _figures(out: Path, A, B, fakeA, fakeB, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = min(4, len(A))
    idx = np.linspace(len(A) * 0.25, len(A) * 0.75, n).astype(int)
    fig, axes = plt.subplots(n, 6, figsize=(14, 2.4 * n), constrained_layout=True)
    axes = np.atleast_2d(axes)
    cols = ["ceT1", "generated ceT1 (from T2)", "ceT1 - generated", "T2", "generated T2 (from ceT1)", "T2 - generated"]
    for r, i in enumerate(idx):
        imgs = [A[i], fakeA[i], A[i] - fakeA[i], B[i], fakeB[i], B[i] - fakeB[i]]
        for c, im in enumerate(imgs):
            ax = axes[r, c]
            if c in (2, 5):
                h = ax.imshow(np.rot90(im), cmap="bwr", vmin=-0.5, vmax=0.5)
            else:
                ax.imshow(np.rot90(im), cmap="gray", vmin=0, vmax=1)
            ax.axis("off")
            if r == 0:
                ax.set_title(cols[c], fontsize=8)
    fig.colorbar(h, ax=axes.ravel().tolist(), shrink=0.6, label="I(P) - I(P') (0..1 scale)")
    fig.suptitle(title, fontsize=9)
    fig.savefig(out / "fig5_grid.png", dpi=80)
    plt.close(fig)

    fig, axes = plt.subplots(2, 2, figsize=(8, 6))
    bins = np.linspace(0.02, 1, 50)
    for r, (orig, gen, name) in enumerate([(A, fakeA, "ceT1"), (B, fakeB, "T2")]):
        axes[r, 0].hist(orig[orig > 0.02].ravel() * 255, bins=bins * 255, color="0.3")
        axes[r, 0].set_title(f"original {name}", fontsize=9)
        axes[r, 1].hist(gen[gen > 0.02].ravel() * 255, bins=bins * 255, color="tab:blue")
        axes[r, 1].set_title(f"generated {name}", fontsize=9)
    fig.suptitle("intensity histograms (0-255, background < 5 excluded)", fontsize=9)
    fig.tight_layout()
    fig.savefig(out / "fig6_histograms.png", dpi=80)
    plt.close(fig)


def evaluate(translator: Translator, cases=("TCGA-DU-7294",), out_dir: os.PathLike | None = None,
             plane: str = "coronal", data_root: os.PathLike | None = None, batch_size: int = 8,
             progress: ProgressFn | None = None) -> dict:
    from .simulate import default_data_root

    if not isinstance(translator, GanTranslator):
        raise InputError("evaluate-gan needs a GAN checkpoint (the 'none' translator converts nothing)")
    root = Path(data_root) if data_root else default_data_root()
    norm = translator.meta.get("normalisation")
    t0 = time.time()
    As, Bs, fAs, fBs, per_all = [], [], [], [], {}
    per_case = {}
    base_cache: dict = {}
    for case in cases:
        a, b, aff, brain, excl, plane_override = load_case(case, root, base_cache)
        extra = [brain.astype(np.uint8)] if brain is not None else []
        if excl is not None:
            extra.append(excl.astype(np.uint8))
        A, B, _, _, cut = plane_slices(a, b, aff, plane_override or plane, norm=norm, extra=tuple(extra) or (np.ones(a.shape, np.uint8),))
        res = evaluate_slices(translator, A, B, batch_size, progress)
        for k, v in res["per_slice"].items():
            per_all.setdefault(k, []).extend(v)
        case_sum = {k: stats(v) for k, v in res["per_slice"].items()}
        entry = {"slices": int(len(A)), "plane": plane_override or plane,
                 "summary": {k: {"mean": v["mean"], "median": v["median"], "std": v["std"]} for k, v in case_sum.items()}}
        if brain is not None:
            bm = cut[0] > 0
            if excl is not None:
                bm &= ~(cut[1] > 0)
            if bm.sum() > 100:
                cls = tissue_classes(A, B, bm)
                entry["csf_check"] = csf_check(res["fakeB"], B, cls)
                entry["csf_check"]["ceT1_class_centres"] = cls["ceT1_centres"]
        per_case[case] = entry
        As.append(A); Bs.append(B); fAs.append(res["fakeA"]); fBs.append(res["fakeB"])
    summary = {k: stats(v) for k, v in per_all.items()}
    result = {"translator": translator.name, "info": translator.info, "cases": list(cases), "plane": plane,
              "slices": int(sum(len(x) for x in As)), "seconds": round(time.time() - t0, 1),
              "summary": summary, "per_case": per_case, "per_slice": per_all}
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "report.json").write_text(json.dumps(result, indent=2) + "\n")
        (out / "table1.md").write_text(
            f"Case(s): {', '.join(cases)}; {result['slices']} slices ({plane} unless a case says otherwise); "
            f"translator {translator.name}\n\n" + table1_markdown(summary) + "\n" + per_case_markdown(per_case))
        _figures(out, As[0], Bs[0], fAs[0], fBs[0], f"{cases[0]} ({per_case[cases[0]]['plane']}), {translator.name}")
    return result


def per_case_markdown(per_case: dict) -> str:
    lines = ["| case | slices | PSNR T2 dB | SSIM T2 | head NCC synth T2 | head NCC unconverted | "
             "PSNR ceT1 dB | CSF / GM / WM synthetic T2 | CSF check | CSF check on the true T2 |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for case, e in per_case.items():
        s = e["summary"]
        c = e.get("csf_check")
        cs = (f"{c['synthetic_T2_csf']:.3f} / {c['synthetic_T2_gm']:.3f} / {c['synthetic_T2_wm']:.3f}" if c else "-")
        ok = ("pass" if c["csf_above_gm_and_wm"] else "FAIL") if c else "-"
        ok_t = ("pass" if c["true_T2_csf_above_gm_and_wm"] else "FAIL") if c else "-"
        lines.append(f"| {case} | {e['slices']} | {s['psnr_T2_generated']['mean']:.2f} | "
                     f"{s['ssim_T2_generated']['mean']:.4f} | {s['ncc_T2_generated']['mean']:.3f} | "
                     f"{s['ncc_T2_vs_unconverted_ceT1']['mean']:.3f} | {s['psnr_ceT1_generated']['mean']:.2f} | "
                     f"{cs} | {ok} | {ok_t} |")
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- CLI

def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", default="default", help="'default' (bundled) or a .safetensors path")
    parser.add_argument("--cases", nargs="+", default=["TCGA-DU-7294"],
                        help="held-out BraTS cases under <data-root>/brats (never used in training), 'stroke' "
                             "(<data-root>/stroke T1/T2), 'native:TCGA-FG-6692:withskull' (with-skull axial "
                             "t1c/T2 of one session), or 'render:SEED' for a fresh MNI152 render (synth recipe) "
                             "with its own seed, 'render:SEED:stripped' for the same render skull-stripped")
    parser.add_argument("--data-root", default=None, help="folder with brats/ (default ../shared/data)")
    parser.add_argument("--plane", default="coronal", choices=tuple(_PLANE_WORLD_AXIS))
    parser.add_argument("--out", required=True, help="report folder")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--batch-size", type=int, default=8)
    add_progress_argument(parser)


def run_cli(args) -> int:
    tr = load_translator(args.checkpoint, args.device)
    res = evaluate(tr, args.cases, args.out, args.plane, args.data_root, args.batch_size,
                   progress=progress_from_args(args))
    print(f"{res['slices']} held-out {res['plane']} slices of {', '.join(res['cases'])} with {res['translator']}:")
    print(table1_markdown(res["summary"]), end="")
    print(per_case_markdown(res["per_case"]), end="")
    print(f"report written to {args.out}")
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m MultimodalRegistrationLab.evaluate_gan")
    add_arguments(p)
    return run_cli(p.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
