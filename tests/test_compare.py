"""``hwloop compare`` / ``hwloop search optuna|worker``: spec validation, one-line CLI errors, small real runs."""

from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path

import pytest
from conftest import require_tvm

from hwloop.cli import main
from hwloop.errors import ConfigError
from hwloop.search.compare import CompareSpec, run_compare
from hwloop.search.pareto import hypervolume_2d

REPO = Path(__file__).resolve().parents[1]

SEARCH = {"model": {"name": "small_cnn"}, "data": {"task": "digits", "train_limit": 256, "val_limit": 128},
          "device": {"name": "asic-tpu32"}, "predictor": {"objective": "surrogate"},
          "space": {"channels": True, "bits": True},
          "schedule": {"pretrain_epochs": 1, "search_epochs": 1, "finetune_epochs": 1}}

SPEC_TOML = """
name = "tiny"
[model]
name = "small_cnn"
[data]
task = "digits"
train_limit = 192
val_limit = 96
[predictor]
objective = "surrogate"
[space]
channels = {channels}
bits = false
[schedule]
pretrain_epochs = 0
finetune_epochs = 1
"""


def _cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def _one_line_error(code: int, out: str, err: str, *needles: str) -> None:
    assert code == 2, err
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), repr(err)
    assert "Traceback" not in err
    for n in needles:
        assert n in lines[0], lines[0]


def test_compare_spec_validation(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="sampler 'cmaes' is unknown"):
        CompareSpec.from_dict({"name": "c", "search": SEARCH, "optuna": {"samplers": ["tpe", "cmaes"]}})
    with pytest.raises(ConfigError, match="targets"):
        CompareSpec.from_dict({"name": "c", "search": SEARCH, "differentiable": {"targets": [1.5]}})
    with pytest.raises(ConfigError, match="needs a non-empty"):
        CompareSpec.from_dict({"name": "c", "search": SEARCH, "differentiable": {"targets": []}})
    with pytest.raises(ConfigError, match="unknown key"):
        CompareSpec.from_dict({"name": "c", "search": SEARCH, "optuna": {"trials": 3}})
    with pytest.raises(ConfigError, match="compute unit 'flops'"):
        CompareSpec.from_dict({"name": "c", "search": SEARCH, "report": {"unit": "flops"}})
    spec = CompareSpec.from_dict({"name": "c", "search": SEARCH, "differentiable": {"targets": [0.3, 0.6]}})
    assert spec.budget == 0.6 and spec.search_spec().data.train_limit == 256
    for shipped in ("compare-digits.toml", "compare-cifar10-resnet20.toml"):
        from hwloop.search.compare import load_compare_spec

        s = load_compare_spec(REPO / "search" / shipped)
        assert s.samplers and s.targets


def test_cli_bad_storage_unknown_sampler_empty_space(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = tmp_path / "s.toml"
    spec.write_text(SPEC_TOML.replace("{channels}", "true"))
    empty = tmp_path / "empty.toml"
    empty.write_text(SPEC_TOML.replace("{channels}", "false"))
    _one_line_error(*_cli(capsys, "search", "worker", "--study", "x", "--storage", "mysql://u@h/db"),
                    "mysql://u@h/db", "sqlite:///FILE")
    _one_line_error(*_cli(capsys, "search", "optuna", str(spec), "--storage", "ftp://x"), "ftp://x")
    _one_line_error(*_cli(capsys, "search", "optuna", str(spec), "--sampler", "cmaes"),
                    "sampler 'cmaes' is unknown", "tpe, nsga2, random")
    _one_line_error(*_cli(capsys, "search", "optuna", str(empty), "--storage", f"sqlite:///{tmp_path}/e.db"),
                    "search space is empty")
    _one_line_error(*_cli(capsys, "search", "worker", "--study", "nope", "--storage", f"sqlite:///{tmp_path}/n.db"),
                    "study 'nope' does not exist")
    cmp = tmp_path / "c.toml"
    cmp.write_text('name = "c"\nsearch = "s.toml"\n[optuna]\nsamplers = ["grid"]\n')
    _one_line_error(*_cli(capsys, "compare", str(cmp)), "sampler 'grid' is unknown")
    _one_line_error(*_cli(capsys, "compare", str(tmp_path / "missing.toml")), "does not exist")


@pytest.mark.timeout(400)
def test_cli_optuna_two_workers_then_resume_extends(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTHONPATH", str(REPO))  # the extra worker is `python -m hwloop search worker`
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    spec = tmp_path / "s.toml"
    spec.write_text(SPEC_TOML.replace("{channels}", "true").replace("pretrain_epochs = 0", "pretrain_epochs = 1"))
    url = f"journal:{tmp_path}/studies.journal"
    code, _, err = _cli(capsys, "search", "optuna", str(spec), "--sampler", "random", "--n-trials", "4",
                        "--workers", "2", "--storage", url, "--target", "0.8", "--no-progress",
                        "--out", str(tmp_path / "run"))
    assert code == 0, err
    from hwloop.search.optuna_search import load_study, study_status, trial_rows

    study, settings = load_study("tiny-random", url)
    st = study_status(study)
    assert st.n_finished == 4 and st.counts.get("WAITING", 0) == 0
    assert settings.objective["name"] == "compression"
    ckpt = Path(settings.objective["params"]["checkpoint"])
    assert ckpt.is_file() and ckpt.parent == tmp_path / "run"  # pre-trained once, shared
    rows = trial_rows(study)
    done = [r for r in rows if r["state"] == "COMPLETE"]
    for r in done:
        assert r["user_attrs"]["latency_ratio"] <= 0.8 and 0 <= r["values"][0] <= 100
        assert r["user_attrs"]["compute"]["records"]
    # resume with a larger count: a plain worker finishes the 2 new slots
    code, _, err = _cli(capsys, "search", "optuna", str(spec), "--sampler", "random", "--n-trials", "6",
                        "--storage", url, "--target", "0.8", "--no-run", "--out", str(tmp_path / "run"))
    assert code == 0, err
    code, out, err = _cli(capsys, "search", "worker", "--study", "tiny-random", "--storage", url, "--no-progress")
    assert code == 0, err
    assert sorted(int(x) for x in out.split()) == [4, 5]
    assert study_status(study).n_finished == 6


@require_tvm
@pytest.mark.timeout(500)
def test_run_compare_small_end_to_end(tmp_path: Path) -> None:
    os.environ["OMP_NUM_THREADS"] = "1"
    import torch

    torch.set_num_threads(1)
    spec = CompareSpec.from_dict({"name": "tiny", "search": SEARCH, "differentiable": {"targets": [0.4, 0.7]},
                                  "optuna": {"samplers": ["tpe", "random"], "n_trials": 3, "n_startup_trials": 2},
                                  "report": {"reference_accuracy": 10.0, "reference_latency": 0.9, "repeats": 1}})
    summary = run_compare(spec, tmp_path / "out", progress=False)
    out = tmp_path / "out"
    for f in ("candidates.csv", "summary.md", "summary.json", "ledger.json", "fronts.png", "hv_vs_compute.png",
              "pretrained.safetensors", "optuna.db"):
        assert (out / f).is_file() and (out / f).stat().st_size > 0, f
    with open(out / "candidates.csv", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert [r["method"] for r in rows].count("differentiable") == 2
    assert [r["method"] for r in rows].count("tpe") == 3 and [r["method"] for r in rows].count("random") == 3
    for m in ("differentiable", "tpe", "random"):
        pts = [(float(r["accuracy"]), float(r["latency_ratio"])) for r in rows if r["method"] == m
               and not math.isnan(float(r["accuracy"]))]
        hv = hypervolume_2d(pts, (10.0, 0.9))
        assert summary["methods"][m]["hypervolume"] == pytest.approx(hv, rel=1e-3)  # the CSV is rounded
        measured = [r for r in rows if r["method"] == m and r["measured_ms"] != "nan"]
        assert all(float(r["device_measurements"]) > 0 for r in measured)
    diff = [r for r in rows if r["method"] == "differentiable"]
    assert all(int(r["train_images"]) == 2 * 256 for r in diff)  # 1 search + 1 fine-tune epoch of 256 images
    led = json.loads((out / "ledger.json").read_text())["records"]   # the search's own per-phase records
    for i in (0, 1):
        phases = {r["phase"]: r for r in led if r["trial"] == i}
        assert {"search", "extract", "finetune", "eval", "measure"} <= set(phases)
        assert phases["search"]["train_images"] == 256 and phases["measure"]["device_measurements"] > 0
    ratio = summary["compute_ratio_baseline_over_differentiable"]
    d, t = summary["methods"]["differentiable"], summary["methods"]["tpe"]
    if ratio is not None:
        assert ratio == pytest.approx(t["compute_to_baseline_hv"] / d["compute_to_baseline_hv"])
    else:
        assert d["compute_to_baseline_hv"] is None or t["hypervolume"] == 0
    doc = json.loads((out / "summary.json").read_text())
    assert doc["baseline"] == "tpe" and doc["original_ms"] > 0
    # a second run reuses the finished studies (resume) and gives the same Optuna candidates
    again = run_compare(spec, tmp_path / "out", progress=False)
    assert again["methods"]["tpe"]["hypervolume"] == pytest.approx(t["hypervolume"])


@require_tvm
@pytest.mark.timeout(300)
def test_optuna_vs_differentiable_notebook_executes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import time

    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(REPO / "notebooks" / "optuna_vs_differentiable.ipynb", as_version=4)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    t0 = time.perf_counter()
    NotebookClient(nb, timeout=240, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    elapsed = time.perf_counter() - t0
    errors = [o for c in nb.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors, errors
    text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    assert "compute ratio TPE / differentiable" in text and "measured" in text
    images = [o for c in nb.cells for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
    assert len(images) == 2
    print(f"notebook executed in {elapsed:.1f} s")
