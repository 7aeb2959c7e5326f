"""Record the ASIC data set: random layers (and a few whole models) on both simulated accelerators.

Layers: ``--layers`` random specs (seed 0; conv 3×3/1×1, depthwise, low-rank conv/linear,
linear, batch norm, activations, pooling, adds — ``hwloop.predict.sampling.random_layer_specs``)
whose conv/linear get ``(w_bits, a_bits)`` drawn from {8, 4, 2} × {8, 4}, each costed on
``asic-tpu32`` and ``asic-eyeriss`` with the seeded noise model switched on (so the data
behaves like a real device: 5 noisy samples per layer; the exact cost model value is kept in
``extra.latency_exact_ms``). Whole models: ``--models`` random-width resnet20/mobilenetv2/
small_cnn per family, lowered through the TVM front end and costed per layer (``model_layers``).

Rows go through :class:`hwloop.store.MeasurementStore` (in-memory SQLite) and are exported
to ``--out/measurements.parquet`` (import with ``hwloop data import``).

Usage::

    python benchmarks/record_asic_dataset.py [--out measurements/asic] [--layers 3000] [--models 3]
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

import numpy as np
import torch
from tqdm import tqdm

from hwloop.devices.asic import AsicDevice
from hwloop.devices.base import MeasureRequest, TimingConfig
from hwloop.devices.profiles import load_profile
from hwloop.predict.sampling import random_layer_specs, random_model_refs, unique_specs

DEVICES = ("asic-tpu32", "asic-eyeriss")
BITS = ((8, 8), (4, 8), (2, 8), (8, 4), (4, 4), (2, 4))
NOISE = {"jitter_sigma": 0.02, "contention_prob": 0.1, "contention_frac": 0.5}
TIMING = TimingConfig(warmup=0, repeats=5, mode="asic", max_cv=0.2, max_retries=0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="measurements/asic")
    ap.add_argument("--layers", type=int, default=3000, help="random layer specs (each costed on both devices)")
    ap.add_argument("--models", type=int, default=3, help="random-width models per family (needs TVM; 0 to skip)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    from hwloop.store import MeasurementStore

    t0 = time.time()
    rng = np.random.default_rng(args.seed)
    specs = unique_specs(random_layer_specs(args.layers, rng, bits=BITS))
    models = random_model_refs(args.models, rng, families=("resnet20", "mobilenetv2", "small_cnn")) \
        if args.models > 0 else []
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with MeasurementStore("sqlite://") as st:
        for name in DEVICES:
            prof = load_profile(name)
            dev = AsicDevice(name, timing=TIMING, spec=prof.spec, noise=NOISE, seed=args.seed,
                             default_bits=prof.options.get("default_bits"))
            fp = dev.fingerprint()
            reqs = [MeasureRequest.for_layer(s) for s in specs]
            with tqdm(total=len(reqs), desc=f"{name} layers", unit="layer") as bar:
                for i in range(0, len(reqs), 100):
                    chunk = reqs[i:i + 100]
                    for req, res in zip(chunk, dev.measure(chunk, TIMING)):
                        st.add(fp, req, res)
                    bar.update(len(chunk))
            for ref in tqdm(models, desc=f"{name} models", unit="model"):
                req = MeasureRequest.for_model(ref, per_layer=True)
                st.add(fp, req, dev.measure([req], TIMING)[0])
        n = st.export(out / "measurements.parquet")
        counts = st.counts()
    print(f"wrote {n} rows to {out / 'measurements.parquet'} "
          f"({(out / 'measurements.parquet').stat().st_size / 1e6:.2f} MB) in {time.time() - t0:.0f} s")
    for c in counts:
        print(c)


if __name__ == "__main__":
    main()
