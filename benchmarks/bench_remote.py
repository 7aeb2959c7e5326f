"""Remote sweep vs local sweep: wall time and agreement of the timings (quoted in docs/remote.md).

Starts a real sshd on 127.0.0.1 (tests/sshd.py: generated host/client keys), then measures
the same 200 small layers (a) locally with ``CpuDevice(threads=1)`` and (b) through the agent
over SSH (``RemoteDevice``, the board's backend ``cpu`` with threads=1), each into a fresh
SQLite store with ``run_sweep``, alternating local/remote ``--reps`` times. Reports:

* sweep wall time (median of reps), excluding and including opening the session
  (SSH + agent start-up, which the local run does not have);
* per-layer agreement: |log(remote/local)| against the local-vs-local run-to-run spread.

Usage (as root, OpenSSH server installed)::

    OMP_NUM_THREADS=1 python benchmarks/bench_remote.py --layers 200 --reps 3 --out runs/bench_remote
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))


def layers(n: int) -> list:  # type: ignore[type-arg]
    from hwloop.devices.base import MeasureRequest
    from hwloop.workload import LayerSpec

    out: dict[str, object] = {}
    i = 0
    while len(out) < n:
        c_in = (8, 16, 24, 32)[i % 4]
        c_out = (8, 16, 32, 48, 64)[(i // 4) % 5]
        hw = (8, 16)[(i // 20) % 2]
        k = (1, 3)[(i // 40) % 2]
        if (i // 80) % 3 == 2:
            spec = LayerSpec("linear", (1, 32 * c_in + i // 240), out_channels=8 * c_out)
        else:
            spec = LayerSpec("conv2d", (1, c_in, hw, hw), out_channels=c_out + i // 80, kernel=k, padding=k // 2)
        req = MeasureRequest.for_layer(spec)
        out.setdefault(req.key, req)
        i += 1
    return list(out.values())


def sweep(reqs: list, device: object, timing: object, store_dir: Path) -> tuple[float, dict]:  # type: ignore[type-arg]
    from hwloop.store import MeasurementStore
    from hwloop.sweep import run_sweep

    store = MeasurementStore(store_dir / f"{time.monotonic_ns()}.db")
    got: dict[str, object] = {}
    t0 = time.perf_counter()
    summary = run_sweep(reqs, device, store, timing, progress=False, batch_size=64,
                        on_result=lambda req, res, stored: got.__setitem__(req.key, res))
    wall = time.perf_counter() - t0
    assert summary.measured == len(reqs), summary
    store.close()
    return wall, {k: v.latency_ms for k, v in got.items()}  # type: ignore[attr-defined]


def spread(a: dict, b: dict) -> list[float]:  # type: ignore[type-arg]
    return sorted(abs(math.log(a[k] / b[k])) for k in a)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=200)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--out", default="runs/bench_remote")
    args = ap.parse_args()

    from tqdm import tqdm

    from hwloop.devices.base import TimingConfig
    from hwloop.devices.cpu import CpuDevice
    from hwloop.remote import RemoteDevice
    from sshd import Sshd

    timing = TimingConfig(warmup=5, repeats=20, min_repeat_ms=2.0, max_cv=0.05, max_retries=0)  # local-cpu.toml
    reqs = layers(args.layers)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    local_walls, remote_walls, remote_e2e, opens = [], [], [], []
    local_runs, remote_runs = [], []
    with tempfile.TemporaryDirectory() as tmp, Sshd(Path(tmp) / "sshd") as srv:
        for _ in tqdm(range(args.reps), desc="reps (local + remote)", unit="rep"):
            dev = CpuDevice(threads=1)
            w, lat = sweep(reqs, dev, timing, Path(tmp))
            local_walls.append(w)
            local_runs.append(lat)
            t0 = time.perf_counter()
            rdev = RemoteDevice("loopback-board", timing=timing, connection=srv.connection())
            rdev.fingerprint()  # SSH + agent start-up + handshake
            opened = time.perf_counter() - t0
            w, lat = sweep(reqs, rdev, timing, Path(tmp))
            rdev.close()
            opens.append(opened)
            remote_walls.append(w)
            remote_e2e.append(w + opened)
            remote_runs.append(lat)
    med = statistics.median
    local_s, remote_s, e2e_s, open_s = med(local_walls), med(remote_walls), med(remote_e2e), med(opens)
    noise = [x for i in range(1, len(local_runs)) for x in spread(local_runs[i], local_runs[0])]
    diff = [x for i in range(len(remote_runs)) for x in spread(remote_runs[i], local_runs[i])]
    ratio_med = [med(remote_runs[i][k] / local_runs[i][k] for k in local_runs[i]) for i in range(len(remote_runs))]
    p90 = lambda xs: xs[int(0.9 * (len(xs) - 1))] if xs else float("nan")  # noqa: E731
    res = {
        "layers": len(reqs), "reps": args.reps, "timing": timing.to_dict(),
        "local_sweep_s": round(local_s, 2), "remote_sweep_s": round(remote_s, 2),
        "remote_open_s": round(open_s, 2), "remote_incl_open_s": round(e2e_s, 2),
        "ratio_sweep": round(remote_s / local_s, 3), "ratio_incl_open": round(e2e_s / local_s, 3),
        "median_remote_over_local": [round(r, 3) for r in ratio_med],
        "abs_log_ratio_remote_vs_local": {"median": round(med(sorted(diff)), 4), "p90": round(p90(sorted(diff)), 4)},
        "abs_log_ratio_local_vs_local": {"median": round(med(sorted(noise)), 4) if noise else None,
                                         "p90": round(p90(sorted(noise)), 4) if noise else None},
        "local_walls_s": [round(x, 2) for x in local_walls], "remote_walls_s": [round(x, 2) for x in remote_walls],
    }
    print(json.dumps(res, indent=2))
    (out / "bench_remote.json").write_text(json.dumps(res, indent=2))

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4))
    ks = list(local_runs[0])
    a1.loglog([local_runs[0][k] for k in ks], [remote_runs[0][k] for k in ks], ".", alpha=0.6, label="remote vs local")
    if len(local_runs) > 1:
        a1.loglog([local_runs[0][k] for k in ks], [local_runs[1][k] for k in ks], "x", alpha=0.4,
                  label="local rep 2 vs rep 1")
    lo = min(local_runs[0].values())
    hi = max(local_runs[0].values())
    a1.plot([lo, hi], [lo, hi], "k--", lw=0.8)
    a1.set_xlabel("local latency (ms)")
    a1.set_ylabel("other run (ms)")
    a1.legend()
    a1.set_title("per-layer median latency")
    a2.bar(["local", "remote sweep", "remote + open"], [local_s, remote_s, e2e_s], color=["C0", "C1", "C2"])
    a2.set_ylabel("wall time (s), median of reps")
    a2.set_title(f"{len(reqs)} layers")
    fig.tight_layout()
    fig.savefig(out / "bench_remote.png", dpi=120)
    print(f"wrote {out / 'bench_remote.json'} and {out / 'bench_remote.png'}")


if __name__ == "__main__":
    main()
