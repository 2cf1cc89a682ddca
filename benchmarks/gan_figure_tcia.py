"""Figure for docs/GAN.md (issue 12): a real with-skull clinical ceT1 (tcia_vs VS-SEG-001, 1.5 T
MPRAGE with skull, scalp and neck; TCIA Vestibular-Schwannoma-SEG, CC BY 4.0, Shapey et al., Sci
Data 2021) converted to T2 by one or more checkpoints, input beside output, three axial slices
(the stack's slice axis, as the product converts it). No T2 exists for this patient: it is a
visual check only (CSF should be bright, fat/scalp should not dominate).

    OMP_NUM_THREADS=1 PYTHONPATH=MultimodalRegistration python3 benchmarks/gan_figure_tcia.py \
        --checkpoints default /path/new.safetensors --labels "bundled (old)" "new" \
        --out docs/images/gan_tcia_vs_conversion.png
"""
import argparse

import numpy as np
import torch

from MultimodalRegistrationLab.simulate import default_data_root
from MultimodalRegistrationLib.translate import load_translator, normalise01
from MultimodalRegistrationLib.volume import load_volume


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--checkpoints", nargs="+", default=["default"])
    p.add_argument("--labels", nargs="+", default=None)
    p.add_argument("--out", required=True)
    a = p.parse_args()
    torch.set_num_threads(1)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    vol = load_volume(default_data_root() / "tcia_vs" / "VS-SEG-001_t1c_mprage.nii.gz")
    labels = a.labels or a.checkpoints
    outs = []
    for ck in a.checkpoints:
        tr = load_translator(ck, "cpu")
        y = tr.convert(vol, "ceT1-to-T2")
        outs.append(normalise01(y.array, 0.0, float(np.percentile(y.array[y.array > 0], 99.5))))
    x01 = normalise01(vol.array, 0.0, float(np.percentile(vol.array[vol.array > 0], 99.5)))
    zs = [int(vol.shape[2] * f) for f in (0.45, 0.62, 0.78)]
    cols = ["ceT1 input (with skull)"] + [f"synthetic T2: {l}" for l in labels]
    fig, axes = plt.subplots(len(zs), len(cols), figsize=(3.2 * len(cols), 3.2 * len(zs)))
    for r, z in enumerate(zs):
        for c, img in enumerate([x01] + outs):
            ax = axes[r, c]
            ax.imshow(np.rot90(img[:, :, z]), cmap="gray", vmin=0, vmax=1)
            ax.axis("off")
            if r == 0:
                ax.set_title(cols[c], fontsize=9)
    fig.suptitle("tcia_vs VS-SEG-001 ceT1 MPRAGE (TCIA Vestibular-Schwannoma-SEG, CC BY 4.0; "
                 "Shapey et al., Sci Data 2021); display: 0 to 99.5th percentile", fontsize=8)
    fig.tight_layout()
    fig.savefig(a.out, dpi=72)
    print("wrote", a.out)


if __name__ == "__main__":
    main()
