"""Figures: the fused overlay (paper Fig. 8) and the per-subset metric curve (paper Fig. 7)."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .volume import Volume, atomic_write


def _norm(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a, dtype=np.float32)
    lo, hi = np.percentile(a, [1, 99.5]) if a.size else (0, 1)
    return np.clip((a - lo) / max(hi - lo, 1e-6), 0, 1)


def _pick_slices(mask: np.ndarray, n: int) -> list[int]:
    filled = np.flatnonzero(mask.reshape(-1, mask.shape[-1]).sum(0) > 0)
    if len(filled) == 0:
        filled = np.arange(mask.shape[-1])
    return [int(filled[int(round(x))]) for x in np.linspace(0, len(filled) - 1, min(n, len(filled)))]


def case_figure(axial: Volume, cet1_on_axial: Volume, synth_on_axial: Volume, result, path: str | os.PathLike,
                labels_on_axial: Volume | None = None, n_slices: int = 4) -> Path:
    """Writes a PNG: rows of axial slices (T2 | registered ceT1 | checkerboard | overlay) and the
    per-subset metric curve when the method produced one."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t2 = _norm(axial.array)
    ce = _norm(cet1_on_axial.array)
    covered = cet1_on_axial.array > 0
    ks = _pick_slices(covered, n_slices)
    has_curve = bool(getattr(result, "subset_metrics", None))
    ncols = 4
    nrows = len(ks) + (1 if has_curve else 0)
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.0 * ncols, 3.0 * nrows), squeeze=False)
    aspect = axial.spacing[1] / axial.spacing[0]
    for r, k in enumerate(ks):
        a, b = t2[:, :, k].T, ce[:, :, k].T
        tile = max(8, a.shape[0] // 8)
        yy, xx = np.indices(a.shape)
        checker = np.where(((yy // tile) + (xx // tile)) % 2 == 0, a, b)
        rgb = np.stack([np.maximum(0.7 * a, b), 0.7 * a, 0.7 * a], -1)
        panels = [(a, "axial T2"), (b, "registered ceT1"), (checker, "checkerboard"), (rgb, "overlay (ceT1 red)")]
        for c, (img, title) in enumerate(panels):
            ax = axes[r, c]
            ax.imshow(img, cmap=None if img.ndim == 3 else "gray", origin="lower", aspect=aspect)
            if labels_on_axial is not None and c == 3:
                lab = labels_on_axial.array[:, :, k].T
                if np.any(lab):
                    ax.contour(lab > 0, levels=[0.5], colors="yellow", linewidths=0.8)
            ax.set_title(f"{title} (slice {k})", fontsize=8)
            ax.axis("off")
    if has_curve:
        ax = plt.subplot2grid((nrows, ncols), (nrows - 1, 0), colspan=ncols, fig=fig)
        for c in range(ncols):
            axes[nrows - 1, c].remove()
        vals = np.asarray(result.subset_metrics, dtype=np.float64)
        ax.plot(np.arange(len(vals)), vals, lw=1)
        if result.subset_index is not None:
            ax.axvline(result.subset_index, color="r", ls="--", lw=1, label=f"best subset {result.subset_index}")
            ax.legend(fontsize=8)
        ax.set_xlabel("subset index")
        ax.set_ylabel("mean MSE" if result.method == "paper" else "metric")
        ax.set_title("metric over subsets (paper Fig. 7)", fontsize=9)
    ok = "success" if result.success else "FLAGGED UNSUCCESSFUL"
    fig.suptitle(f"{result.method}: metric {result.metric:.4g}, {ok}, {result.seconds:.1f}s", fontsize=10)
    fig.tight_layout()
    path = Path(path)
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=80, format="png"), suffix=".png")
    plt.close(fig)
    return path
