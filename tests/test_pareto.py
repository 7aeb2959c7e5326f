"""Pareto extraction and 2-D hypervolume against hand-computed cases (and Optuna's own calculator)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hwloop.errors import ConfigError
from hwloop.search.pareto import HvPoint, compute_to_reach, hypervolume_2d, hypervolume_curve, pareto_front


def test_pareto_front_basic_order_and_dominance() -> None:
    pts = [(0.70, 3.0), (0.90, 2.0), (0.80, 1.0), (0.60, 2.5), (0.95, 4.0)]
    # (0.70, 3.0) and (0.60, 2.5) are dominated by (0.90, 2.0)
    assert pareto_front(pts) == [2, 1, 4]


def test_pareto_front_ties_on_one_objective() -> None:
    # same latency, different accuracy: only the more accurate one survives
    assert pareto_front([(0.5, 2.0), (0.6, 2.0)]) == [1]
    # same accuracy, different latency: only the faster one survives
    assert pareto_front([(0.6, 3.0), (0.6, 2.0)]) == [1]
    # tie on accuracy with a point of lower latency in another group
    assert pareto_front([(0.6, 1.0), (0.6, 2.0), (0.7, 2.0)]) == [0, 2]


def test_pareto_front_duplicates() -> None:
    pts = [(0.9, 2.0), (0.8, 1.0), (0.9, 2.0), (0.9, 2.0)]
    assert pareto_front(pts) == [1, 0]
    assert pareto_front(pts, keep_duplicates=True) == [1, 0, 2, 3]
    assert pareto_front([(0.5, 1.0)] * 3) == [0]


def test_pareto_front_other_directions_and_empty() -> None:
    assert pareto_front([]) == []
    # both minimised
    assert pareto_front([(1.0, 1.0), (2.0, 0.5), (2.0, 2.0)], maximize=(False, False)) == [1, 0]


def test_hypervolume_single_point_is_a_rectangle() -> None:
    assert hypervolume_2d([(0.8, 1.0)], reference=(0.1, 3.0)) == pytest.approx(0.7 * 2.0)


def test_hypervolume_staircase_hand_computed() -> None:
    # ref (0, 4): [1,2) covered up to acc 0.8; [2,3) up to 0.9; [3,4) up to 0.95
    pts = [(0.8, 1.0), (0.9, 2.0), (0.95, 3.0)]
    assert hypervolume_2d(pts, reference=(0.0, 4.0)) == pytest.approx(0.8 + 0.9 + 0.95)


def test_hypervolume_ignores_dominated_duplicate_and_outside_points() -> None:
    base = [(0.8, 1.0), (0.9, 2.0)]
    extra = [(0.7, 1.5), (0.8, 1.0), (0.9, 2.0), (0.99, 5.0), (-0.1, 0.5), (0.0, 0.5)]
    ref = (0.0, 4.0)
    assert hypervolume_2d(base + extra, reference=ref) == pytest.approx(hypervolume_2d(base, reference=ref))
    assert hypervolume_2d(base, reference=ref) == pytest.approx(0.8 * 1 + 0.9 * 2)
    assert hypervolume_2d([], reference=ref) == 0.0
    # a point exactly on the reference contributes nothing
    assert hypervolume_2d([(0.0, 1.0), (0.5, 4.0)], reference=ref) == 0.0


def test_bad_points_raise_config_error() -> None:
    with pytest.raises(ConfigError, match="NaN"):
        hypervolume_2d([(math.nan, 1.0)], reference=(0.0, 2.0))
    with pytest.raises(ConfigError, match="two values"):
        pareto_front([(1.0, 2.0, 3.0)])
    with pytest.raises(ConfigError, match="pair up"):
        hypervolume_curve([(0.5, 1.0)], [1.0, 2.0], (0.0, 2.0))


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.floats(0, 1, allow_nan=False), st.floats(0.1, 10, allow_nan=False)),
                min_size=1, max_size=25))
def test_hypervolume_matches_optuna_and_front_is_non_dominated(pts: list[tuple[float, float]]) -> None:
    from optuna._hypervolume import compute_hypervolume

    ref = (0.0, 11.0)
    ours = hypervolume_2d(pts, reference=ref)
    loss = np.array([(-a, b) for a, b in pts])
    theirs = compute_hypervolume(loss, np.array([0.0, 11.0]))
    assert ours == pytest.approx(theirs, rel=1e-9, abs=1e-12)
    front = pareto_front(pts)
    # every point is either on the front or dominated by (or equal to) a front point
    for p in pts:
        assert any(pts[i][0] >= p[0] and pts[i][1] <= p[1] for i in front)
    # no front point dominates another
    for i in front:
        for j in front:
            if i != j:
                a, b = pts[i], pts[j]
                assert not (a[0] >= b[0] and a[1] <= b[1] and a != b)
    # the front alone has the same hypervolume
    assert hypervolume_2d([pts[i] for i in front], reference=ref) == pytest.approx(ours)


def test_hypervolume_curve_and_compute_to_reach() -> None:
    pts = [(0.5, 2.0), (math.nan, math.nan), (0.8, 1.0), (0.4, 3.0)]
    curve = hypervolume_curve(pts, [10, 5, 10, 10], reference=(0.0, 4.0))
    assert [h.compute for h in curve] == [10, 15, 25, 35]
    assert [h.n_points for h in curve] == [1, 1, 2, 3]
    assert curve[0].hypervolume == pytest.approx(0.5 * 2)
    assert curve[1].hypervolume == pytest.approx(1.0)
    assert curve[2].hypervolume == pytest.approx(0.8 * 3)
    assert curve[3].hypervolume == pytest.approx(curve[2].hypervolume)
    assert compute_to_reach(curve, 1.0) == 10
    assert compute_to_reach(curve, 2.0) == 25
    assert compute_to_reach(curve, 2.5) is None
    with pytest.raises(ConfigError):
        HvPoint(-1.0, 0.0, 0)
