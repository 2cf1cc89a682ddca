import numpy as np

from MultimodalRegistrationLib import geometry, metrics
from MultimodalRegistrationLib.registration import mi


def test_mi_polish_recovers_a_5mm_error_on_the_original_cet1(fast_case):
    c = fast_case
    off = geometry.rigid_matrix([0.0, 0.0, np.radians(3.0), 4.0, 0.0, 3.0], c.coronal_cet1.center_world())
    start = off @ c.moving_to_fixed
    pts = metrics.overlap_points(c.coronal_cet1, c.axial_t2, c.moving_to_fixed)
    assert metrics.tre(start, c.moving_to_fixed, pts)["mean"] > 4.0
    r = mi.mi_polish(c.coronal_cet1, c.axial_t2, {"off": start})
    assert r["start"] == "off"
    assert metrics.tre(r["moving_to_fixed"], c.moving_to_fixed, pts)["mean"] < 1.0
    # The score ranks the truth above the bad start, and the threshold separates them.
    good = mi.mi_score(c.coronal_cet1, c.axial_t2, c.moving_to_fixed)
    bad = mi.mi_score(c.coronal_cet1, c.axial_t2, start)
    assert good <= mi.POLISH_SUCCESS_MI < bad
