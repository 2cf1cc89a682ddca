"""QC figures of one case: alignment at a glance, rendered fast (numpy + Pillow, no matplotlib).

``write_case_report`` writes into the case folder (``pipeline.run_case`` calls its two halves,
``write_case_figures`` while the output volumes are being written, then ``write_case_html``):

* ``report.png``: one row per axial slice through the coronal slab (the slices are spread over
  the slab), columns

  1. *before*: contours of the axial T2 (green) over the ceT1 resampled with the headers only
     (identity transform), i.e. what the scanner coordinates alone give;
  2. *after*: the same T2 contours over the registered ceT1;
  3. *reverse*: contours of the registered ceT1 (magenta) over the T2;
  4. a checkerboard of T2 and registered ceT1;
  5. a colour overlay (ceT1 magenta, T2 green: aligned structures look grey) with the outlines of
     the transferred coronal labels (yellow) and, when given, the axial labels (cyan);

  plus the per-subset metric curve (paper Fig. 7) when the method produced one;
* ``qc_before.png`` / ``qc_after.png``: columns 1 and 2 as two pixel-aligned strips, for the
  before/after flicker and slider of ``report.html``;
* ``report.html``: the review page of :mod:`report_html` for this one case.

matplotlib took 1.3-2.1 s (warm; 3.5 s first call) for the old four-column figure; composing the
panels as arrays and encoding with Pillow takes 0.26 s for all three PNGs on the same loaded
2-core machine (``benchmarks/results/qc_figure``).
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

import numpy as np

from .contract import OUTPUT_FILES
from .volume import Volume, atomic_write

REPORT_PNG = OUTPUT_FILES["report_png"]
BEFORE_PNG = OUTPUT_FILES["qc_before_png"]
AFTER_PNG = OUTPUT_FILES["qc_after_png"]
REPORT_HTML = OUTPUT_FILES["report_html"]
#: Every file written by :func:`write_case_report` (for output-contract checks).
QC_FILES = (REPORT_PNG, BEFORE_PNG, AFTER_PNG, REPORT_HTML)

PANEL_PX = 200          # longest side of one slice panel, in pixels
N_SLICES = 4
GREEN = np.array([40, 230, 40], np.uint8)
MAGENTA = np.array([255, 60, 255], np.uint8)
YELLOW = np.array([255, 230, 0], np.uint8)
CYAN = np.array([0, 220, 255], np.uint8)
BG = (24, 24, 24)
FG = (235, 235, 235)


# ----------------------------------------------------------------------------- slices and display geometry

def _pick_slices(mask: np.ndarray, n: int) -> list[int]:
    """``n`` axial slice indices spread over the slices where ``mask`` has voxels (all slices if none)."""
    filled = np.flatnonzero(mask.reshape(-1, mask.shape[-1]).sum(0) > 0)
    if len(filled) == 0:
        filled = np.arange(mask.shape[-1])
    if len(filled) > n + 2:  # keep off the slab's first and last slice (partly covered)
        filled = filled[1:-1]
    return sorted({int(filled[int(round(x))]) for x in np.linspace(0, len(filled) - 1, min(n, len(filled)))})


class _View:
    """How an axial (i, j) slice is shown: radiological (patient right on the left), anterior up,
    cropped to the T2's foreground, resized to square display pixels of at most PANEL_PX."""

    def __init__(self, axial: Volume, ks: list[int], t2n: dict, panel_px: int = PANEL_PX):
        d = axial.direction
        ax_x = int(np.argmax(np.abs(d[0, :2])))         # voxel axis closest to R-L
        ax_y = 1 - ax_x
        self.transpose = ax_x == 1                      # want array[row=y, col=x]
        self.flip_x = d[0, ax_x] > 0                    # +R must go left on screen
        self.flip_y = d[1, ax_y] > 0                    # +A must go up
        shape2 = axial.shape[:2]
        fg = np.zeros(shape2, bool)
        for k in ks:
            fg |= t2n[k] > 0.05
        if not fg.any():
            fg[:] = True
        ii, jj = np.nonzero(fg)
        m = 4
        self.crop = (slice(max(0, ii.min() - m), ii.max() + m + 1), slice(max(0, jj.min() - m), jj.max() + m + 1))
        sp = axial.spacing
        ni = min(self.crop[0].stop, shape2[0]) - self.crop[0].start
        nj = min(self.crop[1].stop, shape2[1]) - self.crop[1].start
        w_mm, h_mm = (ni * sp[0], nj * sp[1]) if not self.transpose else (nj * sp[1], ni * sp[0])
        ppm = panel_px / max(w_mm, h_mm, 1e-6)
        self.size = (max(8, int(round(w_mm * ppm))), max(8, int(round(h_mm * ppm))))  # (width, height)

    def orient(self, sl: np.ndarray) -> np.ndarray:
        a = sl[self.crop]
        a = a.T if not self.transpose else a          # rows = y axis, cols = x axis
        if self.flip_x:
            a = a[:, ::-1]
        if self.flip_y:
            a = a[::-1, :]                            # row 0 = most anterior
        return np.ascontiguousarray(a)

    def gray(self, sl: np.ndarray) -> np.ndarray:
        """A [0, 1] float slice at display size (bilinear)."""
        from PIL import Image
        im = Image.fromarray(self.orient(sl).astype(np.float32)).resize(self.size, Image.BILINEAR)
        return np.clip(np.asarray(im), 0, 1)

    def labels(self, sl: np.ndarray) -> np.ndarray:
        """An integer label slice at display size (nearest)."""
        from PIL import Image
        a = self.orient(sl).astype(np.int32)
        im = Image.fromarray(a).resize(self.size, Image.NEAREST)
        return np.asarray(im)


def _lohi(a: np.ndarray, mask: Optional[np.ndarray] = None, max_samples: int = 200_000) -> tuple[float, float]:
    """1st and 99.5th percentile of ``a`` (where ``mask`` > 0 when given), on a regular subsample."""
    flat = np.asarray(a).ravel(order="K")      # no copy for the Fortran-ordered arrays nibabel gives
    step = max(1, flat.size // max_samples)
    vals = flat[::step]
    if mask is not None:
        m = np.asarray(mask).ravel(order="K")[::step] > 0
        if m.any():
            vals = vals[m]
    lo, hi = np.percentile(vals, [1, 99.5]) if vals.size else (0.0, 1.0)
    return float(lo), float(hi)


def _norm_like(a: np.ndarray, lohi: tuple[float, float]) -> np.ndarray:
    lo, hi = lohi
    return np.clip((np.asarray(a, np.float32) - lo) / max(hi - lo, 1e-6), 0, 1)


# ----------------------------------------------------------------------------- drawing

def _contours(img: np.ndarray, valid: Optional[np.ndarray] = None, levels=(0.5, 0.8)) -> np.ndarray:
    """1-pixel iso-intensity contours of a smoothed [0, 1] image at percentiles of its foreground."""
    from scipy import ndimage

    sm = ndimage.gaussian_filter(img, 1.0)
    fg = sm > 0.08
    if valid is not None:
        fg &= valid
    out = np.zeros(img.shape, bool)
    if fg.sum() < 16:
        return out
    for q in levels:
        lev = float(np.quantile(sm[fg], q))
        m = sm > lev
        out |= m & ~ndimage.binary_erosion(m)
    if valid is not None:
        out &= ndimage.binary_erosion(valid, iterations=2)   # no contour along the slab's cut edge
    return out


def _label_outline(lab: np.ndarray) -> np.ndarray:
    """Pixels on the boundary of any label (between two labels or a label and background)."""
    edge = np.zeros(lab.shape, bool)
    dy = lab[:-1] != lab[1:]
    dx = lab[:, :-1] != lab[:, 1:]
    edge[:-1] |= dy
    edge[1:] |= dy
    edge[:, :-1] |= dx
    edge[:, 1:] |= dx
    return edge & (lab > 0)


def _rgb(gray: np.ndarray) -> np.ndarray:
    g = (np.clip(gray, 0, 1) * 255).astype(np.uint8)
    return np.repeat(g[:, :, None], 3, axis=2)


def _paint(rgb: np.ndarray, mask: np.ndarray, color: np.ndarray) -> np.ndarray:
    rgb[mask] = color
    return rgb


def _checker(a: np.ndarray, b: np.ndarray, tiles: int = 8) -> np.ndarray:
    h, w = a.shape
    tile = max(6, max(h, w) // tiles)
    yy, xx = np.indices(a.shape)
    return np.where(((yy // tile) + (xx // tile)) % 2 == 0, a, b)


def _font(size: int = 12):
    from PIL import ImageFont
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


def _grid(panels: list[list[np.ndarray]], col_titles: list[str], row_titles: list[str], title: str,
          pad: int = 4, left: int = 58, top: int = 40) -> "Image.Image":
    """Rows x columns of equally sized RGB panels on a dark canvas with titles."""
    from PIL import Image, ImageDraw

    h, w = panels[0][0].shape[:2]
    nr, nc = len(panels), len(panels[0])
    W = left + nc * (w + pad) + pad
    H = top + nr * (h + pad) + pad
    canvas = np.empty((H, W, 3), np.uint8)
    canvas[:] = BG
    for r, row in enumerate(panels):
        for c, p in enumerate(row):
            y, x = top + r * (h + pad), left + c * (w + pad)
            canvas[y:y + h, x:x + w] = p
    im = Image.fromarray(canvas)
    dr = ImageDraw.Draw(im)
    f, fs = _font(13), _font(11)
    dr.text((left, 4), title, fill=FG, font=f)
    for c, t in enumerate(col_titles):
        dr.text((left + c * (w + pad) + 2, top - 15), t, fill=FG, font=fs)
    for r, t in enumerate(row_titles):
        dr.text((4, top + r * (h + pad) + h // 2 - 12), t, fill=FG, font=fs)
    dr.text((left - 12, top + 2), "R", fill=(255, 200, 80), font=fs)
    return im


def _curve(values, best: Optional[int], width: int, ylabel: str, height: int = 150) -> "Image.Image":
    """A small line plot of the per-subset metric (missing values are gaps) with the best subset marked."""
    from PIL import Image, ImageDraw

    vals = np.array([np.nan if v is None else float(v) for v in values], dtype=np.float64)
    im = Image.new("RGB", (width, height), BG)
    dr = ImageDraw.Draw(im)
    fs = _font(11)
    x0, x1, y0, y1 = 70, width - 12, 18, height - 26
    dr.rectangle([x0, y0, x1, y1], outline=(120, 120, 120))
    ok = np.isfinite(vals)
    dr.text((x0, 2), f"{ylabel} over subsets (paper Fig. 7)", fill=FG, font=fs)
    if ok.sum() >= 1:
        lo, hi = float(vals[ok].min()), float(vals[ok].max())
        span = hi - lo if hi > lo else 1.0
        n = len(vals)

        def xy(i, v):
            return (x0 + (x1 - x0) * (i / max(n - 1, 1)), y1 - (y1 - y0) * ((v - lo) / span))
        seg = []
        for i, v in enumerate(vals):
            if np.isfinite(v):
                seg.append(xy(i, v))
            elif seg:
                dr.line(seg, fill=(120, 190, 255), width=1) if len(seg) > 1 else None
                seg = []
        if len(seg) > 1:
            dr.line(seg, fill=(120, 190, 255), width=1)
        dr.text((4, y0 - 2), f"{hi:.4g}", fill=FG, font=fs)
        dr.text((4, y1 - 10), f"{lo:.4g}", fill=FG, font=fs)
        if best is not None and 0 <= best < n:
            bx = xy(best, 0)[0]
            for yy in range(y0, y1, 6):
                dr.line([(bx, yy), (bx, min(yy + 3, y1))], fill=(255, 80, 80))
            dr.text((min(bx + 4, x1 - 90), y0 + 2), f"best subset {best}", fill=(255, 120, 120), font=fs)
        dr.text((x0, y1 + 4), "0", fill=FG, font=fs)
        dr.text((x1 - 30, y1 + 4), f"{n - 1}", fill=FG, font=fs)
        dr.text(((x0 + x1) // 2 - 30, y1 + 4), "subset index", fill=FG, font=fs)
    return im


def _save_png(im, path: Path) -> Path:
    # compress_level 2: ~2.5x faster than Pillow's default 6 for ~12 % larger files.
    return atomic_write(path, lambda tmp: im.save(tmp, format="PNG", compress_level=2), suffix=".png")


# ----------------------------------------------------------------------------- the figures

def _resample_slices(moving: Volume, axial: Volume, ks: list[int], moving_to_fixed: np.ndarray) -> dict:
    """The moving volume resampled onto axial slices ``ks`` only (one 2D grid each: cheap)."""
    from . import geometry

    out = {}
    for k in ks:
        shift = np.eye(4)
        shift[2, 3] = k
        sub = Volume(np.zeros(axial.shape[:2] + (1,), np.float32), axial.affine @ shift)
        out[k] = geometry.moving_onto_fixed(moving, sub, moving_to_fixed).array[:, :, 0]
    return out


def qc_figures(out_dir, *, axial: Volume, coronal: Volume, cet1_on_axial: Volume, moving_to_fixed: np.ndarray,
               labels_on_axial: Optional[Volume] = None, axial_labels: Optional[Volume] = None, title: str = "",
               synth_on_axial: Optional[Volume] = None, subset_metrics=None, subset_index: Optional[int] = None,
               metric_name: str = "metric", n_slices: int = N_SLICES) -> dict:
    """Writes report.png, qc_before.png and qc_after.png into ``out_dir``; returns {name: path}."""
    out_dir = Path(out_dir)
    covered = cet1_on_axial.array > 0
    ks = _pick_slices(covered, n_slices)
    t2_arr = np.asarray(axial.array, np.float32)
    t2_lohi = _lohi(t2_arr, t2_arr)
    t2n = {k: _norm_like(t2_arr[:, :, k], t2_lohi) for k in ks}
    ce_arr = np.asarray(cet1_on_axial.array, np.float32)
    ce_lohi = _lohi(ce_arr, ce_arr)
    synth_arr = None if synth_on_axial is None else np.asarray(synth_on_axial.array, np.float32)
    synth_lohi = None if synth_arr is None else _lohi(synth_arr, covered)

    def ce_norm(a):
        return _norm_like(a, ce_lohi)

    before = _resample_slices(coronal, axial, ks, np.eye(4))
    view = _View(axial, ks, t2n)
    rows, before_strip, after_strip, row_titles = [], [], [], []
    for k in ks:
        t2 = view.gray(t2n[k])
        ce_a = view.gray(ce_norm(ce_arr[:, :, k]))
        ce_b = view.gray(ce_norm(before[k]))
        cov_a = view.gray(covered[:, :, k].astype(np.float32)) > 0.5
        t2_edges = _contours(t2)
        ce_edges = _contours(ce_a, cov_a)
        p_before = _paint(_rgb(ce_b), t2_edges, GREEN)
        p_after = _paint(_rgb(ce_a), t2_edges, GREEN)
        p_rev = _paint(_rgb(t2), ce_edges, MAGENTA)
        p_check = _rgb(np.where(cov_a, _checker(t2, ce_a), t2))
        mov = ce_a if synth_arr is None else view.gray(_norm_like(synth_arr[:, :, k], synth_lohi))
        over = np.stack([np.where(cov_a, mov, 0.6 * t2), t2, np.where(cov_a, mov, 0.6 * t2)], -1)
        p_over = (np.clip(over, 0, 1) * 255).astype(np.uint8)
        if axial_labels is not None:
            _paint(p_over, _label_outline(view.labels(axial_labels.array[:, :, k])), CYAN)
        if labels_on_axial is not None:
            _paint(p_over, _label_outline(view.labels(labels_on_axial.array[:, :, k])), YELLOW)
        rows.append([p_before, p_after, p_rev, p_check, p_over])
        before_strip.append(p_before)
        after_strip.append(p_after)
        centre = axial.affine @ [(axial.shape[0] - 1) / 2, (axial.shape[1] - 1) / 2, k, 1]
        row_titles.append(f"slice {k}\nS {float(centre[2]):.0f} mm")
    legend = [("coronal labels carried to axial: yellow", labels_on_axial), ("axial labels: cyan", axial_labels)]
    legend = "; ".join(t for t, v in legend if v is not None)
    ov_name = "synth T2" if synth_on_axial is not None else "ceT1"
    if legend:
        title = f"{title}    [{legend}]" if title else legend
    cols = ["BEFORE (headers): T2 edges", "AFTER: T2 edges on ceT1", "AFTER: ceT1 edges on T2",
            "AFTER: checkerboard T2/ceT1", f"AFTER: {ov_name} magenta, T2 green"]
    cols = _fit_titles(cols, view.size[0])
    grid = _grid(rows, cols, row_titles, title)
    if subset_metrics:
        from PIL import Image
        curve = _curve(subset_metrics, subset_index, grid.width, metric_name)
        both = Image.new("RGB", (grid.width, grid.height + curve.height), BG)
        both.paste(grid, (0, 0))
        both.paste(curve, (0, grid.height))
        grid = both
    paths = {"report_png": _save_png(grid, out_dir / REPORT_PNG)}
    for name, strip, t in (("before_png", before_strip, "before registration (headers only)"),
                           ("after_png", after_strip, "after registration")):
        img = _grid([strip], [f"slice {k}" for k in ks], [""], f"{t}: axial T2 edges (green) on ceT1",
                    left=8, top=36)
        paths[name] = _save_png(img, out_dir / (BEFORE_PNG if name == "before_png" else AFTER_PNG))
    return paths


def _fit_titles(titles: list[str], width_px: int) -> list[str]:
    limit = max(8, width_px // 6)
    return [t if len(t) <= limit else t[:limit - 1] + "…" for t in titles]


def write_case_report(out_dir, *, axial: Volume, coronal: Volume, cet1_on_axial: Volume, result, transform: dict,
                      labels_on_axial: Optional[Volume] = None, axial_labels: Optional[Volume] = None,
                      synth_on_axial: Optional[Volume] = None, report: Optional[dict] = None,
                      case_id: Optional[str] = None) -> dict:
    """The QC outputs of one case (figures + report.html); never raises: :func:`write_case_figures` then
    :func:`write_case_html`.

    Returns what to add to ``report.json``: ``qc_figure_seconds``, ``qc_html_seconds`` and, if something
    failed, ``report_png_error`` / ``report_html_error`` (a figure must never fail a registration).
    """
    info = write_case_figures(out_dir, axial=axial, coronal=coronal, cet1_on_axial=cet1_on_axial, result=result,
                              transform=transform, labels_on_axial=labels_on_axial, axial_labels=axial_labels,
                              synth_on_axial=synth_on_axial, case_id=case_id)
    info.update(write_case_html(out_dir, transform, report, case_id))
    return info


def write_case_figures(out_dir, *, axial: Volume, coronal: Volume, cet1_on_axial: Volume, result, transform: dict,
                       labels_on_axial: Optional[Volume] = None, axial_labels: Optional[Volume] = None,
                       synth_on_axial: Optional[Volume] = None, case_id: Optional[str] = None) -> dict:
    """report.png and the before/after figures of one case; never raises. They need only the images and
    ``transform`` (the content of transform.json), so ``pipeline.run_case`` renders them while its output
    volumes are being written. Returns ``qc_figure_seconds`` and, on a failure, ``report_png_error``."""
    out_dir = Path(out_dir)
    info: dict = {}
    t0 = time.perf_counter()
    try:
        method = getattr(result, "method", transform.get("method", "?"))
        metric = transform.get("metric")
        flag = transform.get("success")
        conf = transform.get("confidence")
        bits = [f"{case_id}:" if case_id else "", str(method),
                f"metric {metric:.4g}" if isinstance(metric, (int, float)) else "",
                {True: "success", False: "FLAGGED UNSUCCESSFUL", None: "success unknown"}.get(flag, f"success {flag}"),
                f"confidence {conf:.2f}" if isinstance(conf, (int, float)) else ""]
        subset = getattr(result, "subset_metrics", None)
        qc_figures(out_dir, axial=axial, coronal=coronal, cet1_on_axial=cet1_on_axial,
                   moving_to_fixed=np.asarray(transform["moving_to_fixed_ras"], np.float64),
                   labels_on_axial=labels_on_axial, axial_labels=axial_labels, synth_on_axial=synth_on_axial,
                   title="  ".join(b for b in bits if b), subset_metrics=subset,
                   subset_index=getattr(result, "subset_index", None),
                   metric_name="mean MSE" if str(method) == "paper" else "metric")
    except Exception as exc:
        info["report_png_error"] = f"{type(exc).__name__}: {exc}"
    info["qc_figure_seconds"] = round(time.perf_counter() - t0, 3)
    return info


def write_case_html(out_dir, transform: dict, report: Optional[dict] = None, case_id: Optional[str] = None) -> dict:
    """report.html of one case (from transform.json's and report.json's content); never raises. Returns
    ``qc_html_seconds`` and, on a failure, ``report_html_error``."""
    out_dir = Path(out_dir)
    info: dict = {}
    t1 = time.perf_counter()
    try:
        from . import report_html
        row = report_html.case_row_from_dicts(case_id or out_dir.name, transform, report or {}, out_dir, out_dir)
        report_html.write_report(out_dir / REPORT_HTML, [row], title=f"mmreg register: {case_id or out_dir.name}")
    except Exception as exc:
        info["report_html_error"] = f"{type(exc).__name__}: {exc}"
    info["qc_html_seconds"] = round(time.perf_counter() - t1, 3)
    return info
