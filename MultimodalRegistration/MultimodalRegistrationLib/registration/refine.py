"""Continuous 6-DOF refinement: the sampled fixed points of a pyramid level, the NCC and
correlation-ratio models with their analytic Jacobians, the one Levenberg-Marquardt loop, and L-BFGS.

Points of the axial (fixed) stack, with its slice profile (several samples across each slice's
thickness), are mapped into the coronal (moving) stack and sampled trilinearly (torch ``grid_sample``).
"""
from __future__ import annotations

import copy
import math

import numpy as np
import torch

from .. import geometry
from ..geometry import about, rotvec_matrix
from ..volume import Volume, slice_axis
from .pyramid import block_mean, inplane_factors, shrink_inplane, smooth_for
from .sampling import overlap_weights, sample_voxels


def fixed_points(fixed: Volume, fix_arr: np.ndarray, fix_mask: np.ndarray, level_mm: float, profile: int,
                 max_points: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The fixed half of a :class:`Level`: at most ``max_points`` points of the fixed stack block-averaged
    in-plane to ``level_mm`` (drawn with ``seed``) inside ``fix_mask``, each with ``profile`` samples across
    its slice: (points (P, S, 3) world, values (P,), the points' mean position (3,))."""
    factors = inplane_factors(fixed, level_mm)
    if fix_mask.all():
        # every voxel counts (search-cr, the polish): the mask's block means are all exactly 1
        # (the same C-ordered copy as the masked branch's, so the block means are the same to the last bit)
        fixed_level = block_mean(Volume(np.ascontiguousarray(fix_arr, dtype=np.float32), fixed.affine), factors)
        vals = fixed_level.array.reshape(-1)
        sel = np.arange(vals.size)
        if vals.size > max_points:      # the same draw as below, without listing every voxel's indices
            sel = np.sort(np.random.default_rng(seed).choice(vals.size, max_points, replace=False))
        ijk = np.stack(np.unravel_index(sel, fixed_level.shape), axis=1)
        vals = vals[sel]
    else:
        masked = Volume(np.where(fix_mask, fix_arr, 0).astype(np.float32), fixed.affine)
        fixed_level = block_mean(masked, factors)
        mask_level = block_mean(Volume(fix_mask.astype(np.float32), fixed.affine), factors)
        keep = mask_level.array > 0.5
        ijk = np.argwhere(keep)
        vals = fixed_level.array[keep] / np.maximum(mask_level.array[keep], 1e-6)
        if len(ijk) > max_points:
            rng = np.random.default_rng(seed)
            sel = np.sort(rng.choice(len(ijk), max_points, replace=False))
            ijk, vals = ijk[sel], vals[sel]
    world = fixed_level.voxel_to_world(ijk.astype(np.float64))
    kf = slice_axis(fixed)
    thick = float(fixed.spacing[kf])
    normal = fixed.direction[:, kf]
    offs = np.linspace(-thick / 2, thick / 2, profile + 2)[1:-1] if profile > 1 else np.zeros(1)
    return world[:, None, :] + offs[None, :, None] * normal[None, None, :], vals, world.mean(0)


def moving_volume(moving: Volume, mov_arr: np.ndarray, level_mm: float) -> tuple[np.ndarray, np.ndarray]:
    """The moving half of a :class:`Level`: the moving stack block-averaged in-plane to about a third of
    the level's spacing and smoothed, with its spatial gradient (voxel units), as 4 channels (one forward
    grid_sample gives both the samples and their derivatives: see SampleWithGrad): (array (4, I, J, K),
    its voxel -> world affine)."""
    shrunk = shrink_inplane(Volume(mov_arr, moving.affine), level_mm / 3.0)
    smooth = smooth_for(shrunk, level_mm)
    value_and_grad = np.stack([smooth] + [np.gradient(smooth, axis=a).astype(np.float32) for a in range(3)])
    return np.ascontiguousarray(value_and_grad), shrunk.affine


class Level:
    """Fixed sample points (with slice profile) and the smoothed moving volume at one pyramid level
    (:func:`fixed_points` and :func:`moving_volume`; :meth:`from_parts` when they were computed apart)."""

    def __init__(self, moving: Volume, mov_arr: np.ndarray, fixed: Volume, fix_arr: np.ndarray,
                 fix_mask: np.ndarray, level_mm: float, profile: int, max_points: int, seed: int, dev):
        self._assemble(fixed_points(fixed, fix_arr, fix_mask, level_mm, profile, max_points, seed),
                       moving_volume(moving, mov_arr, level_mm), dev)

    @classmethod
    def from_parts(cls, fixed_part, moving_part, dev) -> "Level":
        """The level of a :func:`fixed_points` and a :func:`moving_volume` result."""
        lvl = cls.__new__(cls)
        lvl._assemble(fixed_part, moving_part, dev)
        return lvl

    def _assemble(self, fixed_part, moving_part, dev) -> None:
        pts, vals, origin = fixed_part
        value_and_grad, moving_affine = moving_part
        self.mov = torch.from_numpy(value_and_grad)[None].to(dev)
        self.inv_aff_np = np.linalg.inv(moving_affine)
        self.inv_aff = torch.from_numpy(self.inv_aff_np).to(dev)
        self.origin_np = origin
        self.shape = torch.tensor(value_and_grad.shape[1:], dtype=torch.float32, device=dev)
        self.origin = torch.from_numpy(self.origin_np).to(dev)      # points are stored relative to it (float32)
        self.pts = torch.from_numpy((pts - self.origin_np).astype(np.float32)).to(dev)   # (P, S, 3)
        self.vals = torch.from_numpy(vals.astype(np.float32)).to(dev)
        self.n = len(vals)

    def in_memory_order(self, moving_to_fixed: np.ndarray) -> "Level":
        """This level with its points reordered to visit their moving-stack samples (under
        ``moving_to_fixed``) in the moving volume's memory order (the order of their nearest moving
        voxels): consecutive samples then touch neighbouring memory, and sampling a volume larger than
        the CPU caches takes about half the time. The same points and values; sums over them change only
        by floating-point rounding (another summation order)."""
        world_to_voxel = self.inv_aff_np @ np.linalg.inv(np.asarray(moving_to_fixed, dtype=np.float64))
        centre = self.pts.mean(dim=1).cpu().numpy().astype(np.float64) + self.origin_np
        vox = centre @ world_to_voxel[:3, :3].T + world_to_voxel[:3, 3]
        size = np.asarray(self.mov.shape[2:], dtype=np.int64)
        idx = np.clip(np.rint(vox), 0, size - 1).astype(np.int64)
        order = torch.from_numpy(np.argsort((idx[:, 0] * size[1] + idx[:, 1]) * size[2] + idx[:, 2],
                                            kind="stable")).to(self.pts.device)
        out = copy.copy(self)
        out.pts, out.vals = self.pts[order], self.vals[order]
        return out


class SampleWithGrad(torch.autograd.Function):
    """Trilinear samples of channel 0 of a (1, 4, I, J, K) volume at voxel positions (P, S, 3); the
    gradient with respect to the positions comes from channels 1-3 (the volume's precomputed spatial
    gradient, sampled in the same forward pass) instead of grid_sample's slow backward, and is smooth
    across voxel boundaries."""

    @staticmethod
    def forward(ctx, vox, vol4, size):
        out = sample_voxels(vol4, vox, size)                    # (4, P, S)
        ctx.save_for_backward(out[1:])
        return out[0]

    @staticmethod
    def backward(ctx, g):
        (grad,) = ctx.saved_tensors
        return (g[..., None] * grad.permute(1, 2, 0)), None, None


def sample_moved(x, lvl: Level, start_inv_t, c_t):
    """The moving samples (slice-profile averaged, differentiable in ``x``) for params x = (rotation
    vector in degrees, translation in mm) applied after the start about c, at the fixed points with a
    sample inside the moving stack (the others have zero weight): (mv (R,), w (R,) overlap weights,
    overlap fraction, rows (R,): their indices in the level's points); mv is None when the overlap is
    under 5% of the fixed points."""
    rv = x[:3] * (math.pi / 180.0)
    th = torch.sqrt((rv * rv).sum() + 1e-18)
    axis = rv / th
    zero = torch.zeros((), dtype=x.dtype, device=x.device)
    cross = torch.stack([torch.stack([zero, -axis[2], axis[1]]), torch.stack([axis[2], zero, -axis[0]]),
                         torch.stack([-axis[1], axis[0], zero])])
    eye = torch.eye(3, dtype=x.dtype, device=x.device)
    rotation = eye + torch.sin(th) * cross + (1 - torch.cos(th)) * (cross @ cross)
    # fixed world -> moving world: start^-1 ( R^T (p - c - t) + c ), p = origin + pts; composed in float64
    # as one affine map of the (float32) relative points
    world_to_voxel = lvl.inv_aff @ start_inv_t
    linear = world_to_voxel[:3, :3] @ rotation.T                  # p -> A R^T p
    off = linear @ (lvl.origin - c_t - x[3:]) + world_to_voxel[:3, :3] @ c_t + world_to_voxel[:3, 3]
    vox = lvl.pts @ linear.T.float() + off.float()               # (P, S, 3) moving voxel indices
    size = lvl.shape
    with torch.no_grad():   # overlap weights: constants of each evaluation (no gradient through the FOV edge)
        rows, w, wi = overlap_weights(vox.detach(), size)
    v = SampleWithGrad.apply(vox[rows], lvl.mov, size)           # (R, S)
    mv = (v * wi).sum(dim=1)
    frac = float(w.sum()) / lvl.n
    return (None if frac < 0.05 else mv), w, frac, rows


def _ncc_loss(x, lvl: Level, start_inv_t, c_t):
    """-NCC for params x = (rotation vector in degrees, translation in mm) applied after the start about c."""
    mv, w, frac, rows = sample_moved(x, lvl, start_inv_t, c_t)
    if mv is None:
        return torch.ones((), dtype=x.dtype) * 1.0 + 0 * x.sum(), 0.0
    sw = w.sum()
    fixed_vals = lvl.vals[rows]
    ma = (w * fixed_vals).sum() / sw
    mb = (w * mv).sum() / sw
    da, db = fixed_vals - ma, mv - mb
    cov = (w * da * db).sum() / sw
    va = (w * da * da).sum() / sw
    vb = (w * db * db).sum() / sw
    ncc = cov / torch.sqrt(va * vb + 1e-12)
    return -ncc.double(), frac


class _OutOfEvaluations(Exception):
    """refine_lbfgs's evaluation budget is spent."""


def refine_lbfgs(start: np.ndarray, lvl: Level, c_world: np.ndarray, iters: int, loss_fn=None,
                 ftol: float = 1e-6, gtol: float = 1e-5, info: dict | None = None,
                 max_evaluations: int = 0) -> tuple[np.ndarray, float, float]:
    """L-BFGS (scipy's L-BFGS-B; torch autograd for the gradient) on the 6 rigid parameters; ``loss_fn``
    (x, lvl, start_inv_t, c_t) -> (loss, overlap fraction), default -NCC; returns (M, -loss, fraction).
    Each point is evaluated once (the optimiser's repeated requests and the final value come from the
    evaluation already made). ``info``: a dict that receives ``start_value`` (-loss at the start).
    ``max_evaluations``: stop once this many points have been evaluated and keep the best of them (0: the
    optimiser's own limits only, which its line search may overrun)."""
    from scipy.optimize import minimize

    loss_fn = loss_fn or _ncc_loss

    dev = lvl.pts.device
    start_inv_t = torch.from_numpy(np.linalg.inv(start)).to(dev)
    c_t = torch.from_numpy(np.asarray(c_world, dtype=np.float64)).to(dev)
    seen: dict = {}          # x (bytes) -> (loss, gradient, overlap fraction)

    def evaluate(xn):
        key = np.asarray(xn, dtype=np.float64).tobytes()
        if key not in seen:
            x = torch.tensor(xn, dtype=torch.float64, device=dev, requires_grad=True)
            loss, frac = loss_fn(x, lvl, start_inv_t, c_t)
            loss.backward()
            g = x.grad.detach().cpu().numpy().astype(np.float64)
            if not np.all(np.isfinite(g)):
                g = np.zeros(6)
            seen[key] = (float(loss.detach()), g, frac)
        return seen[key]

    def fun(xn):
        if max_evaluations and len(seen) >= max_evaluations and \
                np.asarray(xn, dtype=np.float64).tobytes() not in seen:
            raise _OutOfEvaluations
        loss, g, _ = evaluate(xn)
        return loss, g.copy()

    x0 = np.zeros(6)
    x0[:3] = 1e-4
    try:
        res = minimize(fun, x0, jac=True, method="L-BFGS-B",
                       options={"maxiter": int(iters), "maxfun": int(iters) * 2, "ftol": ftol, "gtol": gtol})
        xv = res.x
    except _OutOfEvaluations:
        xv = np.frombuffer(min(seen, key=lambda k: seen[k][0]), dtype=np.float64).copy()   # the best point seen
    except (RuntimeError, ValueError):
        xv = x0
    if info is not None:
        info["start_value"] = -evaluate(x0)[0]
    loss, _, frac = evaluate(xv)
    if not np.all(np.isfinite(xv)):
        return start, -float(loss), frac
    return about(rotvec_matrix(np.radians(xv[:3])), c_world, xv[3:]) @ start, -float(loss), frac


def ncc_and_jacobian(moving_to_fixed: np.ndarray, lvl: Level, c: np.ndarray, jac: bool = True):
    """NCC over the overlap for the moving->fixed map and, with ``jac``, the Jacobian of the
    slice-profile-averaged moving samples with respect to the update ``about(R(w), c, t) @ M`` at
    w = t = 0 (w: rotation vector in radians, t: translation in mm).

    Only the fixed points with a sample inside the moving stack enter (the others have zero weight: a
    coronal slab overlaps some 25-45% of the axial points): ``rows`` are their indices in the level's
    points. Returns (ncc, overlap fraction, mv (R,), w (R,), J (R, 6) or None, rows (R,)); ncc is nan when
    the overlap is under 5% of the fixed points."""
    world_to_voxel = lvl.inv_aff_np @ np.linalg.inv(moving_to_fixed)       # fixed world -> moving voxel
    linear = world_to_voxel[:3, :3]
    off = linear @ lvl.origin_np + world_to_voxel[:3, 3]
    dev = lvl.pts.device
    vox = lvl.pts @ torch.from_numpy(linear.T.astype(np.float32)).to(dev) + \
        torch.from_numpy(off.astype(np.float32)).to(dev)
    rows, w, wi = overlap_weights(vox, lvl.shape)
    out = sample_voxels(lvl.mov, vox[rows], lvl.shape)              # (4, R, S)
    mv = (out[0] * wi).sum(dim=1)
    sw = float(w.sum())
    frac = sw / lvl.n
    if sw < 0.05 * lvl.n:
        return float("nan"), frac, mv, w, None, rows
    fixed_vals = lvl.vals[rows]
    da = fixed_vals - (w * fixed_vals).sum() / sw
    db = mv - (w * mv).sum() / sw
    ncc = float((w * da * db).sum() / torch.sqrt((w * da * da).sum() * (w * db * db).sum() + 1e-12))
    jacobian = None
    if jac:
        # d vox / d w_k = K (r x e_k) with r = p - c, d vox / d t = -K; g = sampled image gradient:
        # g . K (r x e_k) = ((K^T g) x r)_k
        grad_world = torch.einsum("cps,cd->psd", out[1:], torch.from_numpy(linear.astype(np.float32)).to(dev))
        arm = lvl.pts[rows] + torch.from_numpy((lvl.origin_np - c).astype(np.float32)).to(dev)
        jac_rot = (torch.linalg.cross(grad_world, arm, dim=-1) * wi[..., None]).sum(dim=1)
        jac_shift = -(grad_world * wi[..., None]).sum(dim=1)
        jacobian = torch.cat([jac_rot, jac_shift], dim=1)
    return ncc, frac, mv, w, jacobian, rows


def levenberg_marquardt(start: np.ndarray, c_world: np.ndarray, iters: int, evaluate, system, step, *,
                        min_gain: float = 1e-6, tries: int = 5):
    """The Levenberg-Marquardt loop both refinements share. ``evaluate(M, c)`` returns the state at the
    moving->fixed map ``M`` (rotations about ``c``): (metric, overlap fraction, ...), metric nan when the
    overlap is too small; ``system(state)`` the normal equations (A, b, k) whose rows k: are the 6 motion
    parameters (they get the damping); ``step(theta)`` the motion update (rotation vector in radians,
    translation in mm) or None. Steps are capped at ~6 degrees / 5 mm and kept only if the metric does not
    drop (else the damping grows tenfold, for at most ``tries`` tries of a step). The loop stops after
    ``iters`` steps, when no try is kept, or when a kept step raises the metric by less than ``min_gain``
    (or moves less than 0.005 degrees and 0.005 mm). Returns (M, metric, overlap fraction)."""
    current = np.asarray(start, dtype=np.float64)
    mc = geometry.apply(np.linalg.inv(current), np.asarray(c_world, dtype=np.float64)[None])[0]  # moving-space centre
    centre = np.asarray(c_world, dtype=np.float64)
    state = evaluate(current, centre)
    if not np.isfinite(state[0]):
        return current, state[0], state[1]
    lam = 1e-3
    for _ in range(int(iters)):
        normal, rhs, k = system(state)
        diag = torch.diagonal(normal)[k:].clone()
        accepted = None
        for _try in range(int(tries)):
            damped = normal.clone()
            damped[k:, k:] += torch.diag(lam * diag + 1e-12)
            try:
                theta = torch.linalg.solve(damped, rhs)
            except RuntimeError:
                lam *= 10.0
                continue
            dx = step(theta)
            if dx is None:
                break
            dx[:3] = np.clip(dx[:3], -0.1, 0.1)            # at most ~6 degrees per step
            dx[3:] = np.clip(dx[3:], -5.0, 5.0)            # and 5 mm
            candidate = about(rotvec_matrix(dx[:3]), centre, dx[3:]) @ current
            cn = geometry.apply(candidate, mc[None])[0]
            res = evaluate(candidate, cn)
            if np.isfinite(res[0]) and res[0] >= state[0]:
                accepted = (candidate, cn, res, dx)
                lam = max(lam / 3.0, 1e-7)
                break
            lam *= 10.0
        if accepted is None:
            break
        candidate, centre, res, dx = accepted
        gain = res[0] - state[0]
        current, state = candidate, res
        if gain < min_gain or (np.degrees(np.linalg.norm(dx[:3])) < 0.005 and np.linalg.norm(dx[3:]) < 0.005):
            break
    return current, state[0], state[1]


def refine_lm(start: np.ndarray, lvl: Level, c_world: np.ndarray, iters: int, **stop) -> tuple[np.ndarray, float, float]:
    """Levenberg-Marquardt on the 6 rigid parameters. Maximising NCC is fitting a ~ alpha * m(x) + beta
    by weighted least squares over (alpha, beta, x); with m linearised, the fit is linear in
    (alpha, beta, alpha * dx) (variable projection), so each step solves one 8x8 system. The Jacobian
    is analytic (sampled image gradient times the derivative of the sample positions): one sampling
    pass per step. Rotations are about the moving stack's centre (``c_world`` under ``start``). ``stop``:
    :func:`levenberg_marquardt`'s ``min_gain`` and ``tries``."""
    fixed_vals = lvl.vals.double()

    def system(state):
        _, _, mv, w, jacobian, rows = state
        wd = w.double()
        design = torch.cat([mv.double()[:, None], torch.ones_like(wd)[:, None], jacobian.double()], dim=1)
        return design.T @ (design * wd[:, None]), design.T @ (wd * fixed_vals[rows]), 2

    def step(theta):
        alpha = float(theta[0])
        if not np.isfinite(alpha) or abs(alpha) < 1e-9:
            return None
        return (theta[2:] / alpha).cpu().numpy()

    return levenberg_marquardt(start, c_world, iters, lambda M, c: ncc_and_jacobian(M, lvl, c), system, step,
                               **stop)


def hat_basis(m, knots):
    """Piecewise-linear 'hat' basis of the intensities ``m`` (P,) on ``knots`` (K,): (Phi (P, K), the
    interval index (P,), the inside-the-knot-range mask (P,)). Intensities beyond the knots are clamped."""
    n_knots = knots.numel()
    t = torch.clamp(m, knots[0], knots[-1])
    idx = torch.clamp(torch.searchsorted(knots, t.contiguous()) - 1, 0, n_knots - 2)
    lo, hi = knots[idx], knots[idx + 1]
    fr = (t - lo) / (hi - lo)
    basis = torch.zeros((m.shape[0], n_knots), dtype=m.dtype, device=m.device)
    basis.scatter_(1, idx[:, None], (1 - fr)[:, None])
    basis.scatter_add_(1, (idx + 1)[:, None], fr[:, None])
    inside = (m > knots[0]) & (m < knots[-1])
    return basis, idx, inside


def cr_fit(mv, target, w, knots):
    """Weighted least-squares fit target ~ f(mv), f piecewise linear on ``knots``: (correlation ratio
    1 - SS_res / SS_tot, coefficients c (K,), Phi, interval index, inside mask)."""
    basis, idx, inside = hat_basis(mv, knots)
    gram = basis.T @ (basis * w[:, None])
    gram = gram + torch.eye(gram.shape[0], dtype=gram.dtype, device=gram.device) * (
        1e-6 * float(torch.trace(gram)) / gram.shape[0] + 1e-9)
    coef = torch.linalg.solve(gram, basis.T @ (w * target))
    residual = target - basis @ coef
    sw = w.sum()
    mean = (w * target).sum() / sw
    tot = (w * (target - mean) ** 2).sum()
    cr = float(1.0 - (w * residual * residual).sum() / torch.clamp(tot, min=1e-12))
    return cr, coef, basis, idx, inside


def cr_and_jacobian(moving_to_fixed: np.ndarray, lvl: Level, c: np.ndarray, knots, jac: bool = True):
    """Correlation ratio of the fixed samples given the moving ones for the map (and the pieces an
    LM step needs), over the rows of :func:`ncc_and_jacobian`: (cr, overlap fraction, w, J (R, 6) or None,
    Phi, slope of f at the samples, the fixed values (R,))."""
    ncc, frac, mv, w, jacobian, rows = ncc_and_jacobian(moving_to_fixed, lvl, c, jac=jac)
    if not np.isfinite(ncc):
        return float("nan"), frac, w, None, None, None, None
    fixed_vals = lvl.vals[rows].double()
    wd = w.double()
    cr, coef, basis, idx, inside = cr_fit(mv.double(), fixed_vals, wd, knots)
    slope = (coef[idx + 1] - coef[idx]) / (knots[idx + 1] - knots[idx])
    slope = torch.where(inside, slope, torch.zeros_like(slope))
    return cr, frac, wd, (None if jacobian is None else jacobian.double()), basis, slope, fixed_vals


def refine_lm_cr(start: np.ndarray, lvl: Level, c_world: np.ndarray, iters: int, knots,
                 **stop) -> tuple[np.ndarray, float, float]:
    """Levenberg-Marquardt on the 6 rigid parameters maximising the correlation ratio: the fixed samples
    are fitted by a piecewise-linear function f of the moving samples, a ~ f(m(x)) (any contrast
    relation, not only a linear one). With m linearised and f' taken at the current fit, the model
    a ~ Phi(m) c + f'(m) J dx is linear in (c, dx): one (K+6)-square solve per step, as in
    :func:`refine_lm` (which is the special case f(m) = alpha m + beta). ``stop``: as there."""
    n_knots = knots.numel()

    def system(state):
        _, _, w, jacobian, basis, slope, fixed_vals = state
        design = torch.cat([basis, slope[:, None] * jacobian], dim=1)
        normal = design.T @ (design * w[:, None])
        normal[:n_knots, :n_knots] += torch.eye(n_knots, dtype=normal.dtype) * (
            1e-6 * float(torch.trace(normal[:n_knots, :n_knots])) / n_knots + 1e-9)
        return normal, design.T @ (w * fixed_vals), n_knots

    def step(theta):
        dx = theta[n_knots:].cpu().numpy()
        return dx if np.all(np.isfinite(dx)) else None

    return levenberg_marquardt(start, c_world, iters, lambda M, c: cr_and_jacobian(M, lvl, c, knots),
                               system, step, **stop)


def level_ncc(moving_to_fixed: np.ndarray, lvl: Level) -> float:
    """The level's NCC for the moving->fixed map (nan when the overlap is tiny); used by
    benchmarks/calibrate_ours_threshold.py."""
    return ncc_and_jacobian(moving_to_fixed, lvl, np.zeros(3), jac=False)[0]
