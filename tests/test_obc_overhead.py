"""OBC's whole-model cost for a CPU (issue 17): the dense model's fixed share fitted from whole-model probes before
the DP (hwloop/methods/obc/overhead.py, ``calibrate``), and the per-op costs from a predictor's whole-model
aggregation (``joint_source = "predictor"``). Tested on given numbers: the CPU's wall clock is not reproducible
on a shared machine (the method's wall-clock figures are measured on a quiet one, docs/obc.md)."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest

from hwloop.errors import SearchError
from hwloop.methods import make_method
from hwloop.methods.obc.joint import JointCost, Term, op_costs, solve_joint
from hwloop.methods.obc.overhead import budget_fraction, calibrate_overhead, fit_overhead, overhead_ratio, probe_choices


@pytest.mark.parametrize("alpha", [0.0, 0.25, 0.6, -0.2])
def test_fit_recovers_the_fixed_share(alpha: float) -> None:
    s = [0.9, 0.7, 0.45, 0.2]
    r = [alpha + (1 - alpha) * x for x in s]
    assert fit_overhead(s, r) == pytest.approx(alpha, abs=1e-12)
    a = 0.35
    noisy = [a + (1 - a) * x + e for x, e in zip(s, [0.01, -0.01, 0.012, -0.008])]
    assert fit_overhead(s, noisy) == pytest.approx(a, abs=0.02)
    assert overhead_ratio(a, budget_fraction(a, 0.55)) == pytest.approx(0.55)


@pytest.mark.parametrize("s, r, needle", [
    ([], [], "0 op-sum ratios and 0 measured ratios"),
    ([0.5], [0.5, 0.4], "1 op-sum ratios and 2 measured ratios"),
    ([1.0, 1.0], [0.9, 0.8], "every probe has the dense model's op sum"),
    ([0.5, 0.3], [1.1, 1.2], "the probes measured no speed-up"),
    ([0.5], [float("nan")], "must be finite and > 0"),
])
def test_fit_errors_are_one_line(s: list[float], r: list[float], needle: str) -> None:
    with pytest.raises(SearchError) as e:
        fit_overhead(s, r)
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_probes_are_uniform_ladder_points_of_the_groups() -> None:
    probes = probe_choices([10, 10, 4, 2], [0, 1, 2], 4)
    assert len(probes) == 4
    assert all(p[3] == 0 for p in probes)                      # not a group: full
    assert all(p[0] == p[1] for p in probes)                   # same ladder: same level
    assert [p[0] for p in probes] == sorted({p[0] for p in probes})   # deeper each probe, all distinct
    assert all(1 <= p[u] <= n - 1 for p in probes for u, n in ((0, 10), (2, 4)))
    with pytest.raises(SearchError, match="calibrate=0 must be an int >= 1"):
        probe_choices([3], [0], 0)


def _cost() -> JointCost:
    """Two groups feeding convs (cost = input x output fraction) and a fixed op."""
    f = np.linspace(1.0, 0.2, 9)
    return JointCost([Term("c1", (0,), 0.5 * f), Term("c2", (0, 1), np.outer(f, f)), Term("c3", (1,), f),
                      Term("pool", (), np.array(0.05))], [9, 9])


def test_calibrated_dp_lands_on_a_device_with_a_fixed_share() -> None:
    """A device whose whole model is 40% fixed + 60% the op sum: the plain op-sum DP's answer misses the target by
    far; with the fixed share fitted from 3 probes (exactly, on these numbers) the DP's own answer lands within it
    and its calibrated cost is the device's ratio."""
    cost = _cost()
    errors = [[0.0, *np.cumsum(np.linspace(0.1, 1.0, 8)).tolist()], [0.0, *np.cumsum(np.linspace(0.2, 2.0, 8)).tolist()]]

    def device(ch: list[int]) -> tuple[float, dict[str, float]]:
        return 0.4 + 0.6 * cost.total(ch) / cost.full(), {"probe": 1.0}

    said: list[str] = []
    alpha, info = calibrate_overhead(cost, [0, 1], 3, device, said.append)
    assert alpha == pytest.approx(0.4, abs=1e-12) and info["max_abs_residual"] < 1e-12
    assert len(info["probes"]) == 3 and all(p["probe"] == 1.0 for p in info["probes"])
    assert len(said) == 4 and "fixed share of the dense model 0.4000" in said[-1]
    for target in (0.55, 0.7, 0.85):
        plain = solve_joint(errors, cost, cost.full() * target, 4000)
        calib = solve_joint(errors, cost, cost.full() * budget_fraction(alpha, target), 4000)
        assert plain is not None and calib is not None
        assert device(plain[0])[0] > target * 1.02                 # the plain op sum misses
        r = device(calib[0])[0]
        assert r <= target + 1e-9
        assert overhead_ratio(alpha, cost.total(calib[0]) / cost.full()) == pytest.approx(r)
    assert solve_joint(errors, cost, cost.full() * budget_fraction(alpha, 0.39), 4000) is None   # under the fixed part


def _units(space) -> list[SimpleNamespace]:  # type: ignore[no-untyped-def]
    full = {s.out_key: s.spec.out_channels for s in space.slots if s.out_key}
    units = [SimpleNamespace(kind="group", name=k, levels=[c, max(1, c // 2), max(1, c // 4)]) for k, c in full.items()]
    layer = next(iter(space.bit_layers))
    return [*units, SimpleNamespace(kind="layer", name=layer, levels=[("float",), ("bits", 4)])]


def test_predictor_terms_sum_to_its_whole_model_aggregation() -> None:
    """``joint_source = "predictor"`` on local-cpu: the op terms (each op's aggregated cost, plus the aggregation's
    constant) sum, for any choice, to the predictor's whole-model aggregation of that model's ops (computed here
    through the shared cost table's own aggregation path), which is not the plain sum of the ops' predictions."""
    from hwloop.models import ModelRef
    from hwloop.search.costtable import build_cost_table
    from hwloop.search.space import SearchSpace, SpaceOptions

    ref = ModelRef("small_cnn")
    space = SearchSpace.from_ref(ref, SpaceOptions(bits=True, a_bits=8), model=ref.build())
    units = _units(space)
    cost, tab = op_costs(space, units, "local-cpu", source="predictor")
    assert tab.source == "predictor" and tab.calibration == "aggregator"
    assert any(t.deps == () and t.name == "aggregation constant" for t in cost.terms)
    gi = {u.name: i for i, u in enumerate(units) if u.kind == "group"}
    slots = [*space.slots, *space.passive_slots()]
    rng = np.random.default_rng(0)
    plain_gap = 0.0
    for _ in range(6):
        ch = [int(rng.integers(0, len(u.levels))) for u in units]
        specs = {f"op{i}": {"x": [s.spec_at(units[gi[s.in_key]].levels[ch[gi[s.in_key]]] if s.in_key in gi else None,
                                            units[gi[s.out_key]].levels[ch[gi[s.out_key]]] if s.out_key in gi else None)]}
                 for i, s in enumerate(slots)}
        ref_tab = build_cost_table(specs, device="local-cpu", source="predictor", progress=False)
        want = ref_tab.model_cost({k: "x" for k in specs})
        assert cost.total(ch) == pytest.approx(want, rel=1e-9)
        plain_gap = max(plain_gap, abs(ref_tab.raw_sum({k: "x" for k in specs}) - want) / want)
    assert plain_gap > 0.01 and math.isfinite(plain_gap)


@pytest.mark.parametrize("table, needle", [
    ({"calibrate": 3}, "calibrate=3 needs dp='joint'"),
    ({"joint_source": "predictor"}, "joint_source='predictor' needs dp='joint'"),
    ({"joint_source": "guess", "dp": "joint", "cost_source": "table"},
     "joint_source='guess' is unknown; allowed: measure, predictor"),
    ({"calibrate": -1}, "calibrate=-1 must be an int >= 0"),
    ({"margin": 0.5}, "margin=0.5 must be a number in [0, 0.5)"),
    ({"margin": True}, "margin=True must be float"),
])
def test_bad_config_is_one_line(table: dict, needle: str) -> None:
    with pytest.raises(SearchError) as e:
        make_method("obc", table)
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_joint_predictor_names_a_predictor_file_and_needs_the_predictor_source() -> None:
    ok = make_method("obc", {"dp": "joint", "cost_source": "table", "joint_source": "predictor",
                             "joint_predictor": "measurements/local-cpu/predictor-wall.json"})
    assert ok.config.joint_predictor == "measurements/local-cpu/predictor-wall.json"
    with pytest.raises(SearchError, match=r"joint_predictor='p.json' needs joint_source='predictor'"):
        make_method("obc", {"dp": "joint", "cost_source": "table", "joint_predictor": "p.json"})
    with pytest.raises(SearchError, match=r"joint_predictor='p.txt' must be a predictor file path \(\.json\)"):
        make_method("obc", {"dp": "joint", "cost_source": "table", "joint_source": "predictor",
                            "joint_predictor": "p.txt"})
    with pytest.raises(SearchError, match=r"joint_predictor=3 must be str or none"):
        make_method("obc", {"dp": "joint", "cost_source": "table", "joint_source": "predictor", "joint_predictor": 3})
