"""An LCS run folder holds the whole family, and `hwloop search pick` selects a member of it for a budget on a
device (measuring the family's table when it has none), writes it as an ordinary compressed model, and refuses bad
input in one line (exit 2)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from hwloop.cli import main

torch.set_num_threads(1)

SPEC = ('name = "lcs-pick"\n[data]\ntask = "digits"\ntrain_limit = 128\nval_limit = 64\n[device]\nmeasure = false\n'
        '[predictor]\nobjective = "surrogate"\n[budget]\ntarget = 0.6\n[method]\nname = "lcs"\nepochs = 1\nmax_steps = 2\ngrid = 3\nlr = 0.05\n')


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("lcs-pick")
    (tmp / "s.toml").write_text(SPEC, encoding="utf-8")
    assert main(["search", "run", str(tmp / "s.toml"), "--no-progress", "--out", str(tmp / "run")]) == 0
    return tmp / "run"


def test_the_run_folder_holds_the_family(run_dir: Path) -> None:
    from hwloop.methods.lcs.family import LcsFamily

    m = json.loads((run_dir / "metrics.json").read_text())["metrics"]
    assert m["method"] == "lcs" and m["artifacts"] == {"family": "family"}
    fam = LcsFamily.load(run_dir / "family")
    assert sorted(fam.accuracy) == [0.0, 0.5, 1.0] and fam.latency == {}


def test_pick_measures_the_table_selects_within_the_budget_and_writes_the_member(run_dir: Path, tmp_path: Path,
                                                                                   capsys: pytest.CaptureFixture[str]
                                                                                   ) -> None:
    from hwloop.compress.extract import load_compressed
    from hwloop.methods.lcs.family import LcsFamily

    assert main(["search", "pick", str(run_dir), "--device", "asic-tpu32", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    ms = [r["latency_ms"] for r in doc["table"]]
    assert doc["measured"] and [r["alpha"] for r in doc["table"]] == [0.0, 0.5, 1.0]
    assert ms[0] < ms[-1] and doc["selection"] is None
    assert LcsFamily.load(run_dir / "family").latency == {}      # --no-save (the default) leaves the file alone
    budget = (ms[0] + ms[-1]) / 2                                   # above the narrowest, below the full member
    out = tmp_path / "member"
    endpoints = (run_dir / "family" / "endpoints.safetensors").read_bytes()
    assert main(["search", "pick", str(run_dir / "family"), "--device", "asic-tpu32", "--budget-ms", str(budget),
                 "--out", str(out), "--json", "--save"]) == 0
    sel = json.loads(capsys.readouterr().out)["selection"]
    assert sel["met"] and sel["latency_ms"] <= budget and sel["alpha"] < 1.0
    fam = LcsFamily.load(run_dir / "family")
    assert set(fam.latency) == {"asic-tpu32"}                       # --save wrote the table back ...
    assert (run_dir / "family" / "endpoints.safetensors").read_bytes() == endpoints   # ... and only the table
    profile = Path(__file__).resolve().parents[1] / "devices" / "asic-tpu32.toml"   # a profile path: its name
    assert main(["search", "pick", str(run_dir), "--device", str(profile), "--json"]) == 0
    assert not json.loads(capsys.readouterr().out)["measured"]      # the saved table, found under the name
    net, plan = load_compressed(out)
    member = fam.at(sel["alpha"])
    assert plan == member.plan
    x = torch.randn(4, *fam.ref.input_shape)
    with torch.no_grad():
        assert torch.equal(net.eval()(x), member.model.eval()(x))
    assert main(["search", "pick", str(run_dir), "--device", "asic-tpu32", "--budget-ms", "1e-9"]) == 0
    assert "NO member meets the budget" in capsys.readouterr().out   # the fastest member, said so
    assert main(["search", "pick", str(run_dir), "--device", "asic-tpu32", "--budget-ms", "1e-9",
                 "--out", str(tmp_path / "over")]) == 1             # ... and not written as if it met it
    assert "nothing written" in capsys.readouterr().err and not (tmp_path / "over").exists()
    plan_before = (run_dir / "plan.json").read_bytes()
    for bad_out in (run_dir, out, run_dir / "plan.json"):           # a model / family folder, a file: refused
        assert main(["search", "pick", str(run_dir), "--device", "asic-tpu32", "--budget-ms", str(budget),
                     "--out", str(bad_out)]) == 2
        err = capsys.readouterr().err.strip()
        assert "--out" in err and "\n" not in err
    assert (run_dir / "plan.json").read_bytes() == plan_before


@pytest.mark.parametrize("args, needle", [
    (["--budget-ms", "-1"], "--budget-ms=-1.0 must be a positive number"),
    (["--budget-ms", "nan"], "must be a positive number"),
    (["--source", "guess"], "--source='guess' is unknown; allowed: table, measure"),
    (["--alphas", "1"], "--alphas=1 must be an int in [2, 101]"),
    (["--out", "x"], "--out needs --budget-ms"),
    (["--device", "no-such-device"], "no-such-device"),
])
def test_bad_input_is_one_line(run_dir: Path, args: list[str], needle: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["search", "pick", str(run_dir), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and "\n" not in err and "Traceback" not in err


def test_a_folder_without_a_family_or_a_tampered_one_is_refused(run_dir: Path, tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    import shutil

    assert main(["search", "pick", str(tmp_path)]) == 2
    assert "holds no LCS family" in capsys.readouterr().err
    desc = json.loads((run_dir / "family" / "family.json").read_text())
    cases = [({"kind": "something-else"}, "is not an hwloop LCS family"),
             ({"latency": {"asic-tpu32": {"0.5": -1.0}}}, "allowed: a finite number > 0 (ms)"),
             ({"latency": {"asic-tpu32": {"0.5": float("nan")}}}, "allowed: a finite number > 0 (ms)"),
             ({"accuracy": {"2.0": 50.0}}, "allowed: alphas in [0, 1]"),
             ({"accuracy": {str(i / 1000): 1.0 for i in range(1000)}}, "allowed: at most 101")]
    for i, (change, needle) in enumerate(cases):
        bad = tmp_path / f"bad{i}"
        bad.mkdir()
        shutil.copy(run_dir / "family" / "endpoints.safetensors", bad)
        (bad / "family.json").write_text(json.dumps({**desc, **change}))
        assert main(["search", "pick", str(bad), "--budget-ms", "1"]) == 2, change
        err = capsys.readouterr().err.strip()
        assert needle in err and "\n" not in err, (change, err)
    stale = tmp_path / "stale"                      # a run folder whose metrics.json lists no family
    shutil.copytree(run_dir, stale)
    m = json.loads((stale / "metrics.json").read_text())
    m["metrics"]["artifacts"] = {}
    (stale / "metrics.json").write_text(json.dumps(m))
    assert main(["search", "pick", str(stale)]) == 2
    assert "lists no family" in capsys.readouterr().err
