"""Trilinear sampling of a torch volume at voxel positions, and the soft inside-the-stack weights."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def sample_voxels(vol, vox, size):
    """Trilinear samples (border padding) of ``vol`` (1, C, I, J, K) at moving-voxel positions ``vox``
    (..., 3); ``size`` = the volume's (I, J, K) as a tensor. Returns (C, ...)."""
    grid = (2.0 * vox / (size - 1.0) - 1.0)[..., [2, 1, 0]].reshape(1, -1, 1, 1, 3)   # grid_sample's x = last axis
    out = F.grid_sample(vol, grid, mode="bilinear", padding_mode="border", align_corners=True)
    return out.reshape(vol.shape[1], *vox.shape[:-1])


def overlap_weights(vox, size):
    """Soft inside-the-stack weights of the slice-profile samples ``vox`` (P, S, 3), for the points with
    a weight above zero (the others add nothing to any sum): (rows (R,), their indices; w (R,), the share
    of each point's samples inside; wi (R, S), the weights that average a point's inside samples)."""
    inside = torch.clamp(torch.minimum(vox + 0.5, size - 0.5 - vox), 0.0, 1.0).prod(dim=-1)
    w = inside.mean(dim=1)
    rows = torch.nonzero(w > 0).reshape(-1)
    inside = inside[rows]
    return rows, w[rows], inside / torch.clamp(inside.sum(dim=1, keepdim=True), min=1e-6)
