"""Does the probe fix a predictor used on another machine? (issue 15, item 8)

Measures, on this machine, whole models with the device the predictor's fingerprint describes (for the
shipped CPU predictor: one thread, thread CPU clock), predicts them with the predictor as loaded and after
the probe (``run_probe``, scale), and prints the errors; repeats the probe to show its spread and its time.
No checkpoint is involved (latency does not depend on weights).

    OMP_NUM_THREADS=1 nice -n 12 python benchmarks/bench_probe.py [--predictor measurements/local-cpu/predictor.json]
"""

from __future__ import annotations

import argparse
import os
import time
import warnings

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--predictor", default="measurements/local-cpu/predictor.json")
    ap.add_argument("--models", default="resnet20,small_cnn,mobilenetv2,vgg16")
    ap.add_argument("--probes", type=int, default=3, help="probe runs (spread and time)")
    args = ap.parse_args()

    import hwloop
    from hwloop.devices.base import MeasureRequest, TimingConfig
    from hwloop.devices.signature import machine_differences
    from hwloop.models import ModelRef
    from hwloop.predict.probe import probe_device, run_probe

    p = hwloop.load_predictor(args.predictor)
    dev = probe_device(p.fingerprint)
    here = dev.fingerprint()
    print(f"predictor {args.predictor}: fitted on {p.fingerprint.identity.get('cpu')!r} "
          f"({p.fingerprint.key}); this machine {here.identity.get('cpu')!r} ({here.key}), "
          f"{here.info.get('cpu_mhz', '?')} MHz, signature {here.info.get('speed_signature')}")
    print(f"  fingerprint differences: {machine_differences(p.fingerprint, here) or 'none'}")
    print(f"  load average {os.getloadavg()[0]:.1f} at the start")
    ratios, secs = [], []
    for _ in range(args.probes):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            t0 = time.perf_counter()
            r = run_probe(p, dev)
            secs.append(time.perf_counter() - t0)
        ratios.append(r.ratio)
    print(f"  probe ({r.reference} reference): ratio {', '.join(f'{x:.3f}' for x in ratios)}; "
          f"{np.median(secs):.2f} s per probe (median of {len(secs)}); per layer {min(r.per_layer):.2f}-"
          f"{max(r.per_layer):.2f}x")
    scale = float(np.median(ratios))
    timing = TimingConfig(warmup=5, repeats=15, min_repeat_ms=2.0, max_cv=0.05, max_retries=2, timeout_s=600.0)
    rows = []
    for name in args.models.split(","):
        ref = ModelRef(name)
        res = dev.measure([MeasureRequest.for_model(ref)], timing)[0]
        if res.error:
            print(f"  {name}: measurement failed: {res.error}")
            continue
        p.speed_scale_ = 1.0
        raw = p.predict_model(ref.build(), ref.example_input())
        rows.append((name, res.latency_ms, raw, raw * scale))
    print(f"  {'model':<12} {'measured ms':>11} {'predicted':>10} {'error':>7} {'probe-scaled':>12} {'error':>7}")
    for name, meas, raw, sc in rows:
        print(f"  {name:<12} {meas:11.3f} {raw:10.3f} {100 * (raw / meas - 1):+6.1f}% {sc:12.3f} "
              f"{100 * (sc / meas - 1):+6.1f}%")
    within = lambda k: sum(abs(r[k] / r[1] - 1) <= 0.10 for r in rows)
    print(f"  within ±10%: as loaded {within(2)}/{len(rows)}, probe-scaled {within(3)}/{len(rows)}; "
          f"load average {os.getloadavg()[0]:.1f} at the end")
    dev.close()


if __name__ == "__main__":
    main()
