"""OBC's CPU cost calibrated per feature-map resolution (issue 17): ``calibrate_by = "resolution"`` fits one scale
per resolution from the uniform probes plus one deep-cut probe per resolution (hwloop/methods/obc/overhead.py,
``calibrate_segments``), for a device that splits the model's time between stages otherwise than its cost table
(uniform probes cannot see that; docs/obc.md). Tested on given numbers (the wall clock of a shared machine is not
reproducible) and through the method on asic-tpu32 (whose whole model is its op sum)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from hwloop.errors import SearchError
from hwloop.methods import make_method
from hwloop.methods.obc.joint import JointCost, Term, solve_joint
from hwloop.methods.obc.overhead import (
    budget_fraction,
    calibrate_overhead,
    calibrate_segments,
    fit_overhead,
    fit_segments,
    home_segments,
    segment_probes,
    term_segments,
)

F = np.linspace(1.0, 0.2, 9)


def _two_stage() -> JointCost:
    """A ResNet-like cost: stage A (32x32: hub 0, inner 1) feeding stage B (8x8: hub 2, inner 3), a linear layer
    with no resolution of its own, and a constant; convs cost input x output fraction."""
    o = np.outer(F, F)
    return JointCost([
        Term("a.conv1", (0, 1), o, "32x32"), Term("a.conv2", (1, 0), o, "32x32"), Term("a.bn", (0,), 0.2 * F, "32x32"),
        Term("b.conv0", (0, 2), 0.8 * o, "8x8"), Term("b.conv1", (2, 3), o, "8x8"), Term("b.conv2", (3, 2), o, "8x8"),
        Term("fc", (2,), 0.05 * F), Term("const", (), np.asarray(0.1))], [9] * 4)


def _device(cost: JointCost, scale: dict[str, float], fixed: float):  # type: ignore[no-untyped-def]
    """The 'true' whole-model ratio: each resolution's op sum times its scale, plus a fixed part."""
    seg = term_segments(cost, [0, 1, 2, 3])

    def true(ch: list[int]) -> float:
        return fixed + sum(scale[s] * t.at(ch) if s is not None else t.at(ch) for t, s in zip(cost.terms, seg))

    full = true([0] * 4)
    return lambda ch: (true(ch) / full, {"probe": 1.0})


# stage A cheap to cut (as ResNet-20's first stage in the CPU DP's answers), stage B dearer
ERRORS = [[0.0, *np.cumsum(np.linspace(0.03, 0.3, 8)).tolist()], [0.0, *np.cumsum(np.linspace(0.015, 0.15, 8)).tolist()],
          [0.0, *np.cumsum(np.linspace(0.1, 1.0, 8)).tolist()], [0.0, *np.cumsum(np.linspace(0.05, 0.5, 8)).tolist()]]


def test_segments_homes_and_deep_probes() -> None:
    cost = _two_stage()
    assert home_segments(cost, [0, 1, 2, 3]) == {0: "32x32", 1: "32x32", 2: "8x8", 3: "8x8"}
    assert term_segments(cost, [0, 1, 2, 3]) == ["32x32", "32x32", "32x32", "8x8", "8x8", "8x8", "8x8", None]
    assert segment_probes(cost, [0, 1, 2, 3]) == [("32x32", [8, 8, 0, 0]), ("8x8", [0, 0, 8, 8])]
    plain = JointCost([Term(t.name, t.deps, t.cost) for t in cost.terms], cost.n_levels)   # nothing labelled
    assert set(home_segments(plain, [0, 1, 2, 3]).values()) == {"all"}
    assert segment_probes(plain, [0, 1, 2, 3]) == [("all", [8, 8, 8, 8])]


def test_resolution_calibration_lands_where_one_fixed_share_misses() -> None:
    """The device runs the 8x8 stage at 2.2x and the 32x32 stage at 0.6x of the table, plus a fixed part. One
    fixed share fitted on uniform probes leaves the DP's answer above the target (it cuts the stage it wrongly
    believes expensive); the per-resolution fit recovers the device exactly on these numbers and every answer
    lands within its target."""
    cost = _two_stage()
    device = _device(cost, {"32x32": 0.6, "8x8": 2.2}, 0.5)
    alpha, _ = calibrate_overhead(cost, [0, 1, 2, 3], 4, device)
    said: list[str] = []
    cal, info = calibrate_segments(cost, [0, 1, 2, 3], 4, device, said.append)
    assert len(info["probes"]) == 6 and [p["probe_kind"] for p in info["probes"][-2:]] == ["deep 32x32", "deep 8x8"]
    assert info["max_abs_residual"] < 1e-9
    assert info["scales"]["8x8"] / info["scales"]["32x32"] == pytest.approx(2.2 / 0.6, rel=1e-9)
    assert cal.full() == pytest.approx(cost.full(), rel=1e-12)
    assert "per-resolution scales" in said[-1] and len(said) == 7
    rng = np.random.default_rng(0)
    for _ in range(20):
        ch = [int(v) for v in rng.integers(0, 9, 4)]
        assert cal.total(ch) / cal.full() == pytest.approx(device(ch)[0], rel=1e-9)
    for target in (0.5, 0.6, 0.7, 0.8):
        one = solve_joint(ERRORS, cost, cost.full() * budget_fraction(alpha, target), 4000)
        seg = solve_joint(ERRORS, cal, cal.full() * target, 4000)
        assert one is not None and seg is not None
        assert device(one[0])[0] > target * 1.02          # one fixed share: above the target by more than 2%
        assert device(seg[0])[0] <= target * (1 + 1e-9)   # per resolution: within it


def test_one_resolution_is_the_fixed_share_fit() -> None:
    """Nothing labelled (one segment): the calibrated cost is alpha + (1 - alpha) x op-sum ratio with fit_overhead's
    alpha on the same probes."""
    lab = _two_stage()
    cost = JointCost([Term(t.name, t.deps, t.cost) for t in lab.terms], lab.n_levels)
    device = _device(cost, {"all": 0.7}, 0.4)
    cal, info = calibrate_segments(cost, [0, 1, 2, 3], 3, device)
    s = [p["op_sum_ratio"] for p in info["probes"]]
    r = [p["measured_ratio"] for p in info["probes"]]
    a = fit_overhead(s, r)
    for ch in ([3, 5, 1, 7], [8, 8, 8, 8], [0, 2, 0, 6]):
        assert cal.total(ch) / cal.full() == pytest.approx(a + (1 - a) * cost.total(ch) / cost.full(), rel=1e-9)
    assert info["alpha"] > a      # its fixed part also holds the constant term, which the op-sum ratio s counts


@pytest.mark.parametrize("z, y, needle", [
    ([[0.1, 0.2], [0.2, 0.4]], [0.1, 0.2], "do not separate the 2 segments (rank 1)"),
    ([[-0.1, -0.2], [-0.3, -0.1]], [0.05, 0.1], "the probes measured no speed-up"),
    ([[0.1]], [float("nan")], "need finite changes"),
])
def test_fit_segments_errors_are_one_line(z: list[list[float]], y: list[float], needle: str) -> None:
    with pytest.raises(SearchError) as e:
        fit_segments(z, y)
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_fit_segments_is_non_negative() -> None:
    """A segment whose probes measured slower than their op sum says (noise) gets scale 0, not a negative one that
    would make the DP buy latency by widening it."""
    b = fit_segments([[-0.3, 0.0], [0.0, -0.3], [-0.2, -0.2]], [-0.3, 0.02, -0.18])
    assert b[1] == 0.0 and b[0] > 0.5


def test_bad_calibrate_by_is_one_line() -> None:
    keys = {"dp": "joint", "cost_source": "table"}
    with pytest.raises(SearchError) as e:
        make_method("obc", {**keys, "calibrate": 2, "calibrate_by": "stage"})
    assert "calibrate_by='stage' is unknown; allowed: whole, resolution" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(SearchError, match=r"calibrate_by='resolution' needs calibrate >= 1"):
        make_method("obc", {**keys, "calibrate_by": "resolution"})


@pytest.fixture(scope="module")
def digits(digits_pretrained):  # type: ignore[no-untyped-def]
    return digits_pretrained  # tests/conftest.py


def _obc_on_asic(digits, keys: dict, batches: int):  # type: ignore[no-untyped-def]
    """The obc method on asic-tpu32 with ``keys`` at target 0.6 from ``batches`` calibration batches: its candidate."""
    from hwloop.methods.base import MethodContext
    from hwloop.search.accounting import ComputeLedger
    from hwloop.search.latency import SurrogateLatency

    task, model, space = digits
    train = list(itertools.islice(iter(task.train), batches))
    ctx = MethodContext(model=model, ref=task.ref, space=space, train=train, eval_fn=None,
                        latency=SurrogateLatency(space), target=0.6, device="asic-tpu32", ledger=ComputeLedger())
    return make_method("obc", keys).run(ctx).candidates[0]


def test_method_on_asic_finds_every_scale_one(digits) -> None:
    """Through the method on asic-tpu32, whose whole model is the sum of its ops: the per-resolution fit finds
    every scale 1 and no fixed share, and the DP's first answer costs what the device measures, within the target
    with no correction."""
    keys = {"calib": 128, "error_images": 64, "channel_levels": [0.75, 0.5, 0.25], "kinds": ["channels"],
            "cost_source": "table", "check": "device", "buckets": 2000, "dp": "joint", "bn_data": "calib",
            "corrections": 0, "calibrate": 2, "calibrate_by": "resolution"}
    c = _obc_on_asic(digits, keys, batches=4)
    ov = c.extra["overhead"]
    assert ov["by"] == "resolution" and len(ov["scales"]) >= 2
    assert len(ov["probes"]) == 2 + len(ov["scales"])
    assert all(v == pytest.approx(1.0, abs=1e-6) for v in ov["scales"].values()), ov["scales"]
    assert ov["alpha"] == pytest.approx(0.0, abs=1e-6) and ov["max_abs_residual"] < 1e-6
    first = c.extra["dp_steps"][0]
    assert first["dp_ratio"] == pytest.approx(first["whole_ratio"], rel=1e-6)
    assert first["whole_ratio"] <= 0.6 + 1e-9 and c.extra["dp_chosen"] == 0 and not c.repairs
    assert "one scale per resolution" in c.extra["costs"]


def test_method_calibrate_by_dp_on_asic(digits) -> None:  # type: ignore[no-untyped-def]
    """Through the method on asic-tpu32 (whole model = its op sum): the probes are the DP's answers at the uniform
    probes' op-sum budgets, each measures what it costs, so the map is the identity and the first answer costs what
    the device measures, within the target, with no correction."""
    keys = {"calib": 64, "error_images": 32, "channel_levels": [0.5, 0.25], "kinds": ["channels"],
            "cost_source": "table", "check": "device", "buckets": 1000, "dp": "joint", "bn_data": "calib",
            "corrections": 0, "calibrate": 2, "calibrate_by": "dp"}
    c = _obc_on_asic(digits, keys, batches=2)
    ov = c.extra["overhead"]
    assert ov["by"] == "dp" and 1 <= len(ov["probes"]) <= 2
    assert all(p["probe_kind"] == "dp" and p["op_sum_ratio"] <= p["budget_ratio"] + 1e-9 for p in ov["probes"])
    assert ov["max_abs_residual"] < 1e-6 and ov["alpha"] == pytest.approx(0.0, abs=1e-6)
    assert ov["map"]["measured_ratio"] == pytest.approx(ov["map"]["op_sum_ratio"], abs=1e-6)
    first = c.extra["dp_steps"][0]
    assert first["dp_ratio"] == pytest.approx(first["whole_ratio"], rel=1e-6)
    assert first["whole_ratio"] <= 0.6 + 1e-9 and c.extra["dp_chosen"] == 0 and not c.repairs
    assert "the DP's own answers" in c.extra["costs"]


def test_cli_bad_calibrate_by_is_one_line(tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    from hwloop.cli import main

    ck = tmp_path / "w.safetensors"
    ck.write_bytes(b"not read: the options are checked first")
    base = ["search", "obc", str(ck), "--dp", "joint", "--calibrate", "2", "--out", str(tmp_path / "o")]
    assert main([*base, "--calibrate-by", "stage"]) == 2
    err = capsys.readouterr().err.strip()
    assert "calibrate_by='stage' is unknown; allowed: whole, resolution" in err and "\n" not in err
    assert main(["search", "obc", str(ck), "--dp", "joint", "--calibrate-by", "resolution",
                 "--out", str(tmp_path / "o")]) == 2
    assert "calibrate_by='resolution' needs calibrate >= 1" in capsys.readouterr().err
