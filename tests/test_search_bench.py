"""benchmarks/bench_search.py and benchmarks/train_checkpoint.py: the options issue 7's evidence runs use.

Tiny schedules on the digits task (seconds); the simulated ASIC is the real device backend here. The benchmark's
parts are tested through the package (:mod:`hwloop.search.evidence`), the script only as a command.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from hwloop.compress import CompressionPlan
from hwloop.errors import ConfigError
from hwloop.models import ModelRef
from hwloop.search.evidence import fronts_space_options, proxy_latency
from hwloop.search.space import SearchSpace

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
TINY = ["--task", "digits", "--model", "small_cnn", "--batch-size", "64", "--lr", "0.05", "--threads", "1",
        "--train-limit", "256", "--val-limit", "120", "--record-models", "5"]  # 5 x 12 layers: >= 50, learned


def _bench(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(REPO / "benchmarks" / "bench_search.py"), *args], cwd=cwd, env=ENV,
                          capture_output=True, text=True, timeout=300, check=False)


def _bench_refused(*args: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> tuple[int, str]:
    """The benchmark's command line in this process (for refusals: no interpreter start-up per case): its exit
    status and stderr."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_search_cli", REPO / "benchmarks" / "bench_search.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    monkeypatch.setattr(sys, "argv", ["bench_search.py", *args])
    threads = torch.get_num_threads()   # the benchmark sets torch's threads: keep this worker's as they were
    try:
        rc = mod.cli()
    except SystemExit as e:   # argparse's ap.exit
        rc = int(e.code or 0)
    finally:
        torch.set_num_threads(threads)
    return rc, capsys.readouterr().err


def test_fronts_space_and_bitops_proxy() -> None:
    space = SearchSpace.from_ref(ModelRef("small_cnn", {}, input_shape=(1, 8, 8)),
                                 fronts_space_options("bits", "asic-tpu32"))
    assert space.options.bits and space.options.a_bits == 8 and space.options.tile == 32
    assert not fronts_space_options("channels", "asic-tpu32").bits
    full = space.full_sizes()
    low = {k: (4.0 if k.startswith("bits:") else v) for k, v in full.items()}
    flops, bitops = proxy_latency(space, "flops"), proxy_latency(space, "bitops")
    assert float(flops(low)) == float(flops(full))          # MACs ignore the weight bits
    assert float(bitops(low)) < float(bitops(full))         # bit-ops count them
    with pytest.raises(ConfigError, match="allowed: flops, bitops"):
        proxy_latency(space, "params")
    with pytest.raises(ConfigError, match="allowed: bits, channels"):
        fronts_space_options("widths", "asic-tpu32")


def test_fronts_rejects_an_unknown_proxy_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    rc, err = _bench_refused("--fronts", *TINY, "--epochs", "0,1,1", "--proxy", "params", "--predictor", "x.json",
                             "--out", str(tmp_path / "o"), capsys=capsys, monkeypatch=monkeypatch)
    assert rc == 2 and "proxy 'params' is unknown; allowed: flops, bitops" in err and "Traceback" not in err


def test_fronts_run_writes_both_methods_measured(tmp_path: Path) -> None:
    out = tmp_path / "fronts"
    r = _bench("--fronts", *TINY, "--epochs", "1,1,1", "--seeds", "0", "--targets", "0.8", "--flops-targets", "0.3",
               "--space", "bits", "--proxy", "bitops", "--eval-extracted", "--out", str(out), cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    with open(out / "fronts.csv", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert [x["method"] for x in rows] == ["original", "predictor", "bitops"]
    pred = rows[1]
    assert float(pred["ratio"]) < 1.0                                   # measured on the device, faster
    assert abs(float(pred["predicted_ratio"]) / float(pred["ratio"]) - 1) < 0.10
    assert 0.0 <= float(pred["accuracy_extracted"]) <= 100.0
    assert (out / "fronts.png").stat().st_size > 1000 and (out / "predictor.json").is_file()
    (out / "fronts.md").unlink()
    r = _bench("--fronts-report", str(out), cwd=tmp_path)                 # the report again, from fronts.json
    assert r.returncode == 0, r.stderr[-2000:]
    md = (out / "fronts.md").read_text(encoding="utf-8")
    assert "| predictor | 0.8 |" in md and "Per seed, the lowest measured latency" in md


def test_bench_from_checkpoint_gives_the_baseline_the_same_budget(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    ref = ModelRef("small_cnn", {}, input_shape=(1, 8, 8))
    torch.manual_seed(0)
    net = ref.build()
    ckpt = tmp_path / "ckpt.safetensors"
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(ckpt))
    out = tmp_path / "bench"
    r = _bench(*TINY, "--epochs", "5,1,1", "--checkpoint", str(ckpt), "--methods", "predictor", "--target", "0.8",
               "--bit-levels", "4,8", "--gate-lr", "0.02", "--target-warmup", "0.5", "--target-curve", "linear",
               "--dual-kp", "1.5", "--out", str(out), cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    rep = json.loads((out / "report.json").read_text(encoding="utf-8"))
    assert rep["baseline"]["epochs"] == 2                              # search + fine-tune, the pretrain ignored
    run = rep["runs"]["predictor"]
    assert run["seconds"]["pretrain"] == 0.0 and set(CompressionPlan.from_dict(run["plan"]).w_bits.values()) <= {4, 8}
    assert run["gate_lr"] == 0.02                                       # --gate-lr reaches the SearchConfig
    assert (run["target_warmup"], run["target_curve"], run["dual_kp"]) == (0.5, "linear", 1.5)   # and the schedule
    assert run["plan"]["meta"]["config"]["target_warmup"] == 0.5 and run["history"][-1]["target_end"] == 0.8
    assert "target warm-up 0.5 (linear), dual_kp 1.5" in (out / "report.md").read_text(encoding="utf-8")
    assert run["measured_ms"] < rep["baseline"]["measured_ms"]
    assert "start: checkpoint" in (out / "report.md").read_text(encoding="utf-8")


def test_bench_rejects_a_missing_checkpoint(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    rc, err = _bench_refused(*TINY, "--epochs", "0,1,1", "--checkpoint", str(tmp_path / "nope.safetensors"),
                             "--out", str(tmp_path / "o"), capsys=capsys, monkeypatch=monkeypatch)
    assert rc == 2 and "--checkpoint" in err and "no such file" in err and "Traceback" not in err
    assert not (tmp_path / "o").exists()                                # refused before any work


def test_bench_rejects_a_non_positive_gate_lr(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    rc, err = _bench_refused(*TINY, "--epochs", "0,1,1", "--methods", "predictor", "--gate-lr", "0", "--out",
                             str(tmp_path / "o"), capsys=capsys, monkeypatch=monkeypatch)
    assert rc == 2 and "--gate-lr: gate_lr=0.0 must be a positive number" in err and "Traceback" not in err


@pytest.mark.parametrize(("flag", "value", "message"), [
    ("--target-warmup", "1.5", "--target-warmup: target_warmup=1.5 must be a fraction of the search steps in [0, 1]"),
    ("--target-curve", "step", "--target-curve: target_curve='step' is unknown; allowed: linear, geometric, cubic"),
    ("--dual-kp", "-1", "--dual-kp: dual_kp=-1.0 must be a finite number >= 0"),
    ("--dual-lr", "0", "--dual-lr: dual_lr=0.0 must be a positive number"),
])
def test_bench_rejects_a_bad_target_schedule(tmp_path: Path, flag: str, value: str, message: str,
                                             capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    rc, err = _bench_refused(*TINY, "--epochs", "0,1,1", flag, value, "--out", str(tmp_path / "o"), capsys=capsys,
                             monkeypatch=monkeypatch)
    assert rc == 2 and message in err and "Traceback" not in err
    assert not (tmp_path / "o").exists()                                # rejected before any work


def test_train_checkpoint_times_steps(tmp_path: Path) -> None:
    r = subprocess.run([sys.executable, str(REPO / "benchmarks" / "train_checkpoint.py"), "--time-steps", "2",
                        "--threads", "1", "--train-limit", "512", "--batch-size", "32"],
                       cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=300, check=False)
    if r.returncode != 0 and "CIFAR-10 tarball not found" in r.stderr:
        pytest.skip("CIFAR-10 tarball not present")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "ms/step at batch 32" in r.stdout and "16 steps" in r.stdout
