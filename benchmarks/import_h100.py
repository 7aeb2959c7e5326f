"""Import the real H100 data (``../shared/data/h100``) into hwloop's store form under ``measurements/h100``.

Writes into ``--out`` (default ``measurements/h100``):

* ``measurements.parquet`` — a :class:`~hwloop.store.MeasurementStore` export of every row
  (:func:`hwloop.gpu_data.read_h100`: fingerprint ``h100``, layers eager, nets eager and ``cuda_graph``);
* ``workloads.jsonl.gz`` — the traced workload of every net (each architecture+widths traced once at
  batch 1 float32 with ``extract_workload``, then re-batched and re-typed), so fitting needs no tracing;
* ``import.json`` — counts, the fingerprint and the check that every in-net layer of ``net_layers.csv``
  is the layer hwloop's own model builds at that module (same ``LayerSpec`` key).

Usage::

    python benchmarks/import_h100.py [--src ../shared/data/h100] [--out measurements/h100]
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import sys
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

from hwloop.errors import HwloopError

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--src", default=str(ROOT.parent / "shared" / "data" / "h100"))
    ap.add_argument("--out", default=str(ROOT / "measurements" / "h100"))
    args = ap.parse_args(argv)
    try:
        return run(Path(args.src), Path(args.out))
    except HwloopError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def run(src: Path, out: Path) -> int:
    from tqdm import tqdm

    from hwloop.gpu_data import read_h100, rebatch_workload
    from hwloop.store import MeasurementStore
    from hwloop.workload import WorkloadWarning, extract_workload

    triples = read_h100(src)
    out.mkdir(parents=True, exist_ok=True)
    counts: dict[str, int] = {}
    repeats: dict[str, int] = {}
    with MeasurementStore("sqlite://") as st:
        for fp, req, res in tqdm(triples, desc="store", unit="row"):
            src_file = str(res.extra["source"])
            counts[src_file] = counts.get(src_file, 0) + 1
            if not st.add(fp, req, res):  # the same layer (and timing) again: the store keeps the first
                repeats[src_file] = repeats.get(src_file, 0) + 1
        stored = st.count()
        n = st.export(out / "measurements.parquet")
    # trace each distinct net once (batch 1, float32), then re-batch / re-type
    refs = [req.model for _, req, _ in triples if req.model is not None]
    base: dict[str, object] = {}
    lines = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", WorkloadWarning)
        for ref in tqdm(refs, desc="trace nets", unit="net"):
            b1 = type(ref)(ref.name, ref.kwargs, ref.input_shape, 1, "float32")
            if b1.key not in base:
                base[b1.key] = extract_workload(b1.build(), b1.example_input(), name=b1.label)
            wl = rebatch_workload(base[b1.key], ref.batch, ref.dtype)
            lines.append(json.dumps({"model_key": ref.key, "workload": wl.to_dict()}))
    with gzip.open(out / "workloads.jsonl.gz", "wt", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    check = check_in_net_layers(triples, base)
    fp = triples[0][0]
    try:
        shown = os.path.relpath(src.resolve(), ROOT)
    except ValueError:
        shown = str(src)
    summary = {"source": shown, "rows_read": len(triples), "rows_stored": stored, "rows_exported": n,
               "per_file": counts, "rows_repeating_a_stored_layer": repeats, "distinct_nets_traced": len(base),
               "fingerprint": fp.to_dict(),
               "in_net_layer_check": check}
    (out / "import.json").write_text(json.dumps(summary, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    print(json.dumps({k: v for k, v in summary.items() if k != "fingerprint"}, indent=1))
    return 0 if check["mismatch"] == 0 else 1


def check_in_net_layers(triples: list, base: dict) -> dict[str, int]:
    """Every ``net_layers.csv`` row is the conv hwloop's model of that net builds at that module."""
    from hwloop.gpu_data import model_ref

    nets = {(int(r.extra["net"]), "eager"): req.model for _, req, r in triples
            if r.extra["source"] == "h100/nets.csv"}
    ok = bad = 0
    for _, req, r in triples:
        if r.extra["source"] != "h100/net_layers.csv":
            continue
        ref = nets[(int(r.extra["net"]), "eager")]
        b1 = model_ref(str(r.extra["arch"]), ref.kwargs.get("widths") or ref.kwargs.get("mids"), 1, "float32")
        wl = base[b1.key]
        spec = req.layer
        mine = {s.name: s for s in wl.layers}.get(str(r.extra["module"]))
        same = mine is not None and mine.replace(in_shape=(spec.batch, *mine.in_shape[1:]), dtype=spec.dtype).key == spec.key
        if same:
            ok += 1
        else:
            bad += 1
    return {"match": ok, "mismatch": bad}


if __name__ == "__main__":
    raise SystemExit(main())
