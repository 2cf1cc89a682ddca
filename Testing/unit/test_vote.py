"""search-cr's second metric (registration/vote.py): NMI, and the vote that confirms or rejects an
agreement of the two directions."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np

from MultimodalRegistrationLib.geometry import about, rotvec_matrix
from MultimodalRegistrationLib.registration.search_cr import nmi_vote
from MultimodalRegistrationLib.registration.vote import NmiScore


def _off(case, mm=0.0, deg=0.0):
    """The true moving->fixed transform with an extra error of ``mm`` (along x) and ``deg`` (about z)."""
    c = case.axial_t2.center_world()
    return about(rotvec_matrix(np.radians(deg) * np.array([0.0, 0.0, 1.0])), c, (mm, 0.0, 0.0)) @ case.moving_to_fixed


def _run(case, forward, backward_inverse, searched):
    """Stand-ins for a finished search-cr run: its final estimates and one pass's searched estimates."""
    fwd = SimpleNamespace(moving_to_fixed=forward)
    bwd = SimpleNamespace(moving_to_fixed=np.linalg.inv(backward_inverse))
    history = [{"pass": 1, "searched_forward_ras": searched[0].tolist(),
                "searched_backward_inverse_ras": searched[1].tolist()}]
    return fwd, bwd, history


def test_nmi_of_the_real_cet1_and_t2_peaks_at_the_truth(fast_case):
    score = NmiScore(fast_case.coronal_cet1, fast_case.axial_t2)
    at_truth = score(fast_case.moving_to_fixed)
    for mm, deg in ((4.0, 0.0), (-4.0, 0.0), (0.0, 4.0), (12.0, 0.0), (0.0, 15.0)):
        assert score(_off(fast_case, mm, deg)) < at_truth, (mm, deg)
    assert score(fast_case.moving_to_fixed) == at_truth        # deterministic


def test_vote_rejects_an_agreement_that_a_far_estimate_outscores(fast_case):
    """Both directions agree on a pose 12 mm off (as after a restart from the other's wrong result), but
    the pass-1 forward search had found the truth: the agreement is not confirmed, success becomes False,
    and the estimate the second metric prefers is returned."""
    wrong, truth = _off(fast_case, 12.0), fast_case.moving_to_fixed
    fwd, bwd, history = _run(fast_case, wrong, wrong, (truth, wrong))
    result, success, vote = nmi_vote(fast_case.coronal_cet1, fast_case.axial_t2, wrong, True, fwd, bwd, history, 2.0)
    assert success is False and vote["confirmed"] is False and "not confirmed" in vote["note"]
    assert vote["chosen"] == "the pass-1 forward search" and np.allclose(result, truth)
    far = [r for r in vote["candidates"] if r["mm_from_result"] > 2.0]
    assert [r["estimate"] for r in far] == ["the pass-1 forward search"]
    assert far[0]["nmi"] > vote["result_nmi"]


def test_vote_confirms_an_agreement_that_outscores_the_far_estimates(fast_case):
    """The same run with the roles swapped: the result is the truth, the far estimate is the wrong one."""
    wrong, truth = _off(fast_case, 12.0), fast_case.moving_to_fixed
    fwd, bwd, history = _run(fast_case, truth, truth, (wrong, truth))
    result, success, vote = nmi_vote(fast_case.coronal_cet1, fast_case.axial_t2, truth, True, fwd, bwd, history, 2.0)
    assert success is True and vote["confirmed"] is True and vote["chosen"] == "result"
    assert result is truth and vote["result_nmi"] > vote["candidates"][2]["nmi"]


def test_vote_is_not_computed_when_every_estimate_agrees(fast_case):
    near = _off(fast_case, 0.5)
    truth = fast_case.moving_to_fixed
    fwd, bwd, history = _run(fast_case, truth, near, (truth, near))
    result, success, vote = nmi_vote(fast_case.coronal_cet1, fast_case.axial_t2, truth, True, fwd, bwd, history, 2.0)
    assert success is True and vote["confirmed"] is True and vote["result_nmi"] is None
    assert all("nmi" not in r for r in vote["candidates"]) and max(r["mm_from_result"] for r in vote["candidates"]) < 1.0


def test_an_unconfirmed_result_takes_the_estimate_nmi_prefers(fast_case):
    """The directions disagree (success False): the output is whichever estimate scores the highest NMI
    (here the backward one, at the truth), not always the forward one; success stays False."""
    wrong, truth = _off(fast_case, 0.0, 15.0), fast_case.moving_to_fixed
    fwd, bwd, history = _run(fast_case, wrong, truth, (wrong, truth))
    result, success, vote = nmi_vote(fast_case.coronal_cet1, fast_case.axial_t2, wrong, False, fwd, bwd, history, 2.0)
    assert success is False and vote["confirmed"] is None        # nothing agreed: nothing to confirm
    assert vote["chosen"] == "the backward estimate" and np.allclose(result, truth)


def _scored(success, mm, vote=None, polish=None):
    from MultimodalRegistrationLib.pipeline import _confidence, _confidence_score
    from MultimodalRegistrationLib.registration.result import RegistrationResult

    details = {"consistency": {"mm": mm, "threshold_mm": 2.0}}
    if vote is not None:
        details["vote"] = vote
    if polish is not None:
        details["nmi_polish"] = polish
    r = RegistrationResult(np.eye(4), "search-cr", 0.9, success, details=details)
    return _confidence_score(r), _confidence(r)


def test_confidence_score_caps_only_a_rejected_agreement():
    """0.5 is the threshold: an agreement the vote confirmed scores on its disagreement; one it rejected is
    capped at 0.45; a result that passed on the post-polish re-agreement (the directions disagreed, so the
    vote had nothing to confirm: None) scores on the post-polish distance, not the cap."""
    assert _scored(True, 0.4, {"confirmed": True})[0] == 0.9
    score, detail = _scored(False, 0.4, {"confirmed": False, "note": "rejected"})
    assert score == 0.45 and detail["second_metric_confirmed"] is False
    score, detail = _scored(True, 2.01, {"confirmed": None},
                            {"applied": True, "moved_mm": 0.3, "nmi_before": 1.17, "nmi_after": 1.19,
                             "directions_after_polish_mm": 0.06, "chosen": "the backward estimate"})
    assert score == 0.985 and detail["second_metric_confirmed"] is None
    assert _scored(False, 3.0, {"confirmed": None})[0] == 0.25
    assert _scored(True, 0.4, {"confirmed": True}, {"note": "moved 2.5 mm", "moved_mm": 2.5, "nmi_before": 1.0,
                                                    "nmi_after": 1.1})[0] == 0.45


def test_nmi_interpolates_only_the_points_near_the_fixed_stack_with_the_same_values(fast_case):
    """Points a voxel or more outside the fixed stack are 0 without interpolating: the NMI equals the one
    of interpolating every point (constant mode), at poses that put the stack partly and wholly outside."""
    from scipy import ndimage

    from MultimodalRegistrationLib import geometry
    from MultimodalRegistrationLib.registration.vote import _bin, _entropy

    score = NmiScore(fast_case.coronal_cet1, fast_case.axial_t2)

    def every_point(m):
        vox = score.fixed.world_to_voxel(geometry.apply(m, score.points))
        values = ndimage.map_coordinates(score.fixed_arr, vox.T, order=1, mode="constant", cval=0.0)
        joint = np.bincount(score.moving_bins * score.bins + _bin(values, score.fixed_scale, score.bins),
                            minlength=score.bins * score.bins).astype(np.float64)
        h_fixed = _entropy(joint.reshape(score.bins, score.bins).sum(axis=0))
        return float((score.moving_entropy + h_fixed) / _entropy(joint))

    for mm, deg in ((0.0, 0.0), (30.0, 0.0), (-70.0, 10.0), (5.0, 25.0)):
        m = _off(fast_case, mm, deg)
        assert score(m) == every_point(m), (mm, deg)
