"""HALOC's evidence-harness specs (issue 18) and the ordered cell runner ``benchmarks/bench_haloc_harness.py``:
the repository's specs load and say what docs/haloc.md says they run (the ablation entry differs from haloc in
``mu`` alone; the l1l2 spec searches the channel and low-rank gates, no controls), and the runner runs the cells it is given
in the given order into the harness's folder, with the table over every finished cell."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from hwloop.search.harness import Harness
from hwloop.search.harness_spec import load_harness_spec

torch.set_num_threads(1)
REPO = Path(__file__).resolve().parents[1]
MAIN = REPO / "search" / "bench-methods-haloc-cifar10-resnet20.toml"
L1L2 = REPO / "search" / "bench-methods-haloc-l1l2-cifar10-resnet20.toml"


def _runner() -> Any:
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        import bench_haloc_harness
    finally:
        sys.path.remove(str(REPO / "benchmarks"))
    return bench_haloc_harness


def test_main_spec_entries_and_the_ablation(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)
    spec = load_harness_spec(MAIN)
    spec.check_files()
    by = {m.label: m for m in spec.methods}
    assert list(by) == ["haloc", "haloc-no-fm", "uniform-rank"]
    h, ab, u = by["haloc"].options, by["haloc-no-fm"].options, by["uniform-rank"].options
    assert h["mu"] == 1.0 and ab["mu"] == 0.0
    assert {k: v for k, v in ab.items() if k != "mu"} == {k: v for k, v in h.items() if k != "mu"}
    assert u["ranks"] == "uniform"
    # uniform-rank trains on as many images as haloc's search + fine-tune
    assert u["finetune_epochs"] * u["max_steps"] == (h["search_epochs"] + h["finetune_epochs"]) * h["max_steps"]
    assert spec.targets == (0.6, 0.7) and spec.seeds == (0, 1, 2) and spec.devices == ("asic-tpu32",)
    assert spec.controls.against == ("haloc",) and set(spec.controls.run) == {"uniform", "magnitude", "flops"}
    assert spec.space.channels and not spec.space.lowrank


def test_l1l2_spec_matches_the_main_spec(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)
    main, spec = load_harness_spec(MAIN), load_harness_spec(L1L2)
    spec.check_files()
    assert [m.name for m in spec.methods] == ["l1l2"] and spec.controls.run == ()
    assert spec.space.lowrank is True and spec.space.channels is True
    # same task, targets, seeds, cost source and training images as haloc's entry
    assert spec.task == main.task and spec.targets == main.targets and spec.seeds == main.seeds
    assert spec.cost == main.cost
    h = {m.label: m for m in main.methods}["haloc"].options
    assert spec.schedule.max_steps == h["max_steps"]
    assert spec.schedule.search_epochs + spec.schedule.finetune_epochs == h["search_epochs"] + h["finetune_epochs"]
    cells = Harness(spec, "unused").cells()
    assert {c.kind for c in cells} == {"method"} and len(cells) == 2 * 3


def test_runner_lists_cells_in_pattern_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(REPO)
    rc = _runner().main([str(MAIN), "--out", str(tmp_path / "o"), "--list", "uniform-rank__*__t0.7__s0",
                         "haloc__*__s0", "haloc__*__t0.7__s0", "magnitude__*__t0.6__s1"])
    assert rc == 0
    keys = capsys.readouterr().out.split()
    assert keys == ["uniform-rank__asic-tpu32__t0.7__s0", "haloc__asic-tpu32__t0.6__s0", "haloc__asic-tpu32__t0.7__s0",
                    "magnitude__asic-tpu32__t0.6__s1"]   # in the given order, each once
    assert not (tmp_path / "o").exists()                 # listing writes nothing


SMOKE = """search_epochs = 1
finetune_epochs = 1
max_steps = 2
recalibrate_batches = 1
step = 4
max_candidates = 2
sampling = "gumbel"
arch_paths = 2
cost_source = "surrogate"
"""
TINY = f"""name = "runner-test"
devices = ["asic-tpu32"]
targets = [0.9]
seeds = [0, 1]

[task]
task = "digits"
model = "small_cnn"
pretrain_epochs = 1
holdout = 100
test_limit = 100

[schedule]
search_epochs = 1
finetune_epochs = 1
lr = 0.02

[cost]
objective = "surrogate"

[[methods]]
name = "haloc"
{SMOKE}
[[methods]]
name = "haloc"
label = "uniform-rank"
ranks = "uniform"
{SMOKE}
[controls]
run = []
"""


def test_runner_runs_the_selected_cells_in_order(tmp_path: Path) -> None:
    (tmp_path / "spec.toml").write_text(TINY)
    out = tmp_path / "out"
    rc = _runner().main([str(tmp_path / "spec.toml"), "--out", str(out), "uniform-rank__*__s1", "haloc__*__s0"])
    assert rc == 0
    done = sorted(p.name for p in (out / "cells").glob("*.json"))
    assert done == ["haloc__asic-tpu32__t0.9__s0.json", "uniform-rank__asic-tpu32__t0.9__s1.json"]
    log = (out / "harness.log").read_text()
    assert log.index("done uniform-rank__asic-tpu32__t0.9__s1") < log.index("done haloc__asic-tpu32__t0.9__s0")
    md = (out / "results.md").read_text()
    assert "2 of 4 cells finished" in md and "| uniform-rank |" in md and "| haloc |" in md
    # the folder is the harness's own: a rerun skips both cells
    h = Harness(load_harness_spec(tmp_path / "spec.toml"), out, progress=False)
    assert h.run(only=lambda c: c.seed == 0 and c.entry == "haloc")["ran"] == 0
    md = (out / "results.md").read_text()   # a filtered run still writes the table of every finished cell
    assert "2 of 4 cells finished" in md and "| uniform-rank |" in md and "| haloc |" in md
    assert json.loads((out / "cells" / done[0]).read_text())["entry"] == "haloc"
