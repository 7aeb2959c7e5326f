"""The evidence harness (``hwloop bench methods``): digits + small CNN against asic-tpu32, real methods and controls.

One harness run (l1l2 and every control, one target, one seed) is shared by the module; the tests check that the
controls land on the method's measured latency and get its training, that a rerun skips finished cells and
reruns only a missing one, that a changed spec is refused, and that bad specs are one line and exit 2.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from hwloop.errors import SearchError
from hwloop.search.controls import bisect_measured, channel_scores, magnitude_config, uniform_config
from hwloop.search.harness import run_harness
from hwloop.search.harness_spec import HarnessSpec

REPO = Path(__file__).resolve().parents[1]
PRED = str(REPO / "measurements" / "asic-tpu32" / "predictor.json")


def spec_dict(**over: Any) -> dict[str, Any]:
    d: dict[str, Any] = {
        "name": "harness-test", "devices": ["asic-tpu32"], "targets": [0.5], "seeds": [0],
        "task": {"task": "digits", "model": "small_cnn", "pretrain_epochs": 3, "holdout": 200},
        "schedule": {"search_epochs": 1, "finetune_epochs": 1, "lr": 0.02},
        "cost": {"objective": "learned", "predictors": {"asic-tpu32": PRED}},
        "methods": [{"name": "l1l2"}],
        "controls": {"trial_fraction": 0.1, "patience": 2, "max_trials": 6, "tolerance": 0.03},
    }
    d.update(over)
    return d


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any], dict[str, dict[str, Any]]]:
    out = tmp_path_factory.mktemp("harness")
    summary = run_harness(HarnessSpec.from_dict(spec_dict()), out, progress=False)
    rows = {json.loads(p.read_text())["entry"]: json.loads(p.read_text()) for p in (out / "cells").glob("*.json")}
    return out, summary, rows


def test_every_cell_runs_and_the_table_is_written(run: Any) -> None:
    out, summary, rows = run
    assert summary["failed"] == [] and summary["done"] == summary["cells"] == 7
    assert set(rows) == {"l1l2", "uniform", "magnitude", "flops", "random", "tpe", "tpe-plateau"}
    for r in rows.values():
        assert r["device"] == "asic-tpu32" and r["target"] == 0.5 and r["seed"] == 0
        assert r["measured_ratio"] is not None and 0 < r["measured_ratio"] < 1, r["entry"]
        assert 0 <= r["test_accuracy"] <= 100 and 0 <= r["val_accuracy"] <= 100
        assert r["phases"]["measure"]["device_measurements"] >= 2
    md = (out / "results.md").read_text()
    assert "| l1l2 | asic-tpu32 | 0.5 | 0 |" in md and "7 of 7 cells finished" in md
    assert " ± " not in md.split("|---|")[-1]     # one seed: values without a spread
    assert (out / "pareto.png").stat().st_size > 10_000
    csv = (out / "results.csv").read_text().splitlines()
    assert len(csv) == 1 + 7 and csv[0].startswith("entry,kind,device,target,n,seeds,measured_ratio_mean")
    shared = json.loads((out / "shared.json").read_text())
    assert shared["pretrain"]["epochs"] == 3 and shared["cost_sources"]["asic-tpu32/learned"]["build_s"] > 0
    assert shared["splits"] == {"train": 1237, "val": 200, "test": 360}


def test_controls_land_on_the_methods_measured_latency(run: Any) -> None:
    _, _, rows = run
    goal = rows["l1l2"]["measured_ratio"]
    for name in ("uniform", "magnitude"):
        r = rows[name]
        assert r["goal_ratio"] == pytest.approx(goal)
        assert abs(r["measured_ratio"] / goal - 1) <= 0.03, (name, r["measured_ratio"], goal, r["bisect"])
        assert r["status"] == "matched"
        # every bisection step was a measurement on the device (knob, measured ratio), not a prediction
        assert all(0 < x < 1 and 0 < ratio for x, ratio in r["bisect"])


def test_controls_get_the_methods_training(run: Any) -> None:
    _, _, rows = run
    images = rows["l1l2"]["train_images"]
    assert images == 2 * 1237        # 1 search + 1 fine-tune epoch over the 1237 non-held-out training images
    for name in ("uniform", "magnitude", "flops"):
        assert rows[name]["train_images"] == images, name
    for name in ("random", "tpe"):   # trials + final fine-tune within the method's images
        r = rows[name]
        assert r["train_images"] <= images and r["search_images"] + round(images * 0.5) == r["train_images"]
        assert r["status"] == "met" and r["predicted_ratio"] <= 0.5 + 1e-9
        assert all(t["ratio"] <= 0.5 + 1e-9 for t in r["trials"])
    p = rows["tpe-plateau"]
    assert p["stopped"].startswith("no improvement in 2") or p["stopped"].startswith("max_trials")
    assert p["train_images"] == p["search_images"] + images
    assert rows["flops"]["cost_source"] == "surrogate/flops" and rows["l1l2"]["cost_source"] == "predictor/learned"
    # the FLOPs variant is judged against the method's measured latency like the other controls; its own
    # budget verdict (in FLOPs) is kept apart
    f = rows["flops"]
    off = f["measured_ratio"] / rows["l1l2"]["measured_ratio"] - 1
    assert f["status"] == ("matched" if abs(off) <= 0.03 else "off-target"), (f["status"], off)
    assert f["budget_status"] in ("met", "met-by-repair", "missed") and "the method's" in f["status_reason"]


def test_rerun_skips_finished_cells_and_reruns_a_missing_one(run: Any) -> None:
    out, _, _ = run
    cells = out / "cells"
    before = {p.name: p.stat().st_mtime_ns for p in cells.glob("*.json")}
    again = run_harness(HarnessSpec.from_dict(spec_dict()), out, progress=False)
    assert again["ran"] == 0 and again["done"] == 7
    assert {p.name: p.stat().st_mtime_ns for p in cells.glob("*.json")} == before
    gone = cells / "uniform__asic-tpu32__t0.5__s0.json"
    gone.unlink()
    third = run_harness(HarnessSpec.from_dict(spec_dict()), out, progress=False)
    assert third["ran"] == 1 and third["done"] == 7 and gone.is_file()
    assert {p.name: p.stat().st_mtime_ns for p in cells.glob("*.json") if p != gone} == \
        {k: v for k, v in before.items() if k != gone.name}
    log = (out / "harness.log").read_text()
    assert "7 cells, 7 already done, 0 to run" in log and "7 cells, 6 already done, 1 to run" in log
    # a changed schedule means other results: refused, nothing written
    with pytest.raises(SearchError, match="holds results of another harness spec"):
        run_harness(HarnessSpec.from_dict(spec_dict(schedule={"search_epochs": 2, "finetune_epochs": 1})), out,
                    progress=False)
    assert {p.name for p in cells.glob("*.json")} == set(before)


def test_bisect_and_control_configs() -> None:
    from hwloop.models import ModelRef
    from hwloop.search.space import SearchSpace

    x, r, seen = bisect_measured(lambda m: m ** 1.5, goal=0.4, tol=0.01, steps=20)
    assert abs(r / 0.4 - 1) <= 0.01 and len(seen) < 20
    # a staircase that cannot hit the goal: the fastest point not slower than it
    x, r, _ = bisect_measured(lambda m: 0.25 if m < 0.6 else 1.0, goal=0.5, tol=0.01)
    assert r == 0.25 and x < 0.6
    torch.manual_seed(0)
    space = SearchSpace.from_ref(ModelRef("small_cnn"))
    assert set(uniform_config(space, 0.001).values()) == {min(d.low for d in space.dimensions())}
    scores = channel_scores(space)
    cfg = magnitude_config(space, 0.5, scores)
    plan = space.plan_from_config(cfg)
    total = sum(t.numel() for t in scores.values())
    kept = sum(plan.widths.get(k, t.numel()) for k, t in scores.items())
    assert abs(kept - total / 2) <= len(scores)     # about half of all channels, split by global score
    # the kept channels of each group are its globally highest scores: the threshold is global
    floor = min(float(torch.sort(t, descending=True).values[plan.widths.get(k, t.numel()) - 1])
                for k, t in scores.items())
    dropped = max(float(torch.sort(t, descending=True).values[plan.widths[k]]) for k, t in scores.items()
                  if k in plan.widths and plan.widths[k] > space.min_keep(t.numel()))
    assert dropped <= floor


def _val(v: Any) -> str:
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{json.dumps(k)} = {_val(x)}" for k, x in v.items()) + " }"
    if isinstance(v, list):
        return "[" + ", ".join(_val(x) for x in v) + "]"
    return json.dumps(v)   # strings, numbers, booleans spell the same in TOML


def to_toml(d: dict[str, Any]) -> str:
    """The spec dicts above as TOML (top-level keys, tables, arrays of tables)."""
    top = [f"{k} = {_val(v)}" for k, v in d.items() if not isinstance(v, dict) and k != "methods"]
    for k, v in d.items():
        if isinstance(v, dict):
            top += [f"[{k}]", *(f"{kk} = {_val(x)}" for kk, x in v.items())]
    for m in d.get("methods", []):
        top += ["[[methods]]", *(f"{kk} = {_val(x)}" for kk, x in m.items())]
    return "\n".join(top) + "\n"


BAD = [
    ({"targets": [1.5]}, "targets=[1.5] must be fractions"),
    ({"seeds": []}, "seeds=[] must be a non-empty list"),
    ({"methods": [{"name": "nope"}]}, "nope"),
    ({"methods": [{"name": "l1l2", "lamda": 1}]}, "unknown key(s) ['lamda']"),
    ({"controls": {"run": ["uniform", "bogus"]}}, "unknown control(s) ['bogus']"),
    ({"controls": {"against": ["obc"]}}, "against=['obc'] names ['obc'], not a method label"),
    ({"task": {"task": "digits", "holdout": 0, "pretrain_epochs": 1}}, "holdout=0 must be an integer >= 1"),
    ({"task": {"task": "digits", "holdout": 10}}, "needs checkpoint"),
    ({"cost": {"objective": "flops"}}, "objective='flops' is unknown"),
    ({"extra": 1}, "unknown key(s) ['extra']"),
    ({"devices": ["no-such-device"]}, "no-such-device"),
    ({"task": {"task": "digits", "holdout": 10, "checkpoint": "missing.safetensors"}}, "does not exist"),
    ({"cost": {"objective": "learned"}}, "needs predictors for ['asic-tpu32']"),
]


@pytest.mark.parametrize("over,msg", BAD, ids=[m[:24] for _, m in BAD])
def test_bad_spec_is_one_line(over: dict[str, Any], msg: str) -> None:
    with pytest.raises(SearchError) as e:
        HarnessSpec.from_dict(spec_dict(**over), "bad.toml").check_files()
    assert msg in str(e.value) and "\n" not in str(e.value) and str(e.value).startswith("bad.toml: ")


@pytest.mark.parametrize("over,msg", [BAD[0], BAD[3], BAD[11]], ids=["targets", "method-key", "missing-file"])
def test_bad_spec_on_the_cli_exits_2(tmp_path: Path, over: dict[str, Any], msg: str) -> None:
    p = tmp_path / "bad.toml"
    p.write_text(to_toml(spec_dict(**over)), encoding="utf-8")
    r = subprocess.run([sys.executable, "-m", "hwloop", "bench", "methods", str(p), "--out", str(tmp_path / "o"),
                        "--no-progress"], check=False, capture_output=True, text=True, cwd=REPO, timeout=120)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and msg in lines[0], r.stderr
    assert "Traceback" not in r.stderr and not (tmp_path / "o").exists()


def test_recalibrate_bn_changes_statistics_not_weights() -> None:
    """The no-retrain option: batch-norm running statistics re-estimated from training batches, weights untouched."""
    from torch.utils.data import DataLoader, TensorDataset

    from hwloop.models import ModelRef
    from hwloop.search.controls import recalibrate_bn

    torch.manual_seed(0)
    net = ModelRef("small_cnn").build().eval()
    weights = {k: v.clone() for k, v in net.state_dict().items() if "running" not in k and "num_batches" not in k}
    x = torch.randn(96, 1, 8, 8) * 3 + 1
    loader = DataLoader(TensorDataset(x, torch.zeros(96, dtype=torch.long)), batch_size=32)
    bn = next(m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d))
    before = bn.running_mean.clone()
    assert recalibrate_bn(net, loader, batches=2) == 64
    assert not torch.allclose(bn.running_mean, before) and not net.training and bn.momentum == 0.1
    # the first BN sees conv(x): its new running mean is the mean of that over the 64 images
    conv = net.features[0]
    with torch.no_grad():
        expect = conv(x[:64]).mean(dim=(0, 2, 3))
    assert torch.allclose(bn.running_mean, expect, atol=1e-5)
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in weights.items())
