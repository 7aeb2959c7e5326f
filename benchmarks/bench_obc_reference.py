"""ExactOBS/OBQ (hwloop) vs the public reference (IST-DASLab/OBC ``trueobs.py``, patched for CPU) on the same ResNet-20
layers and Hessians (1,024 CIFAR-10 training images), the same grid; loss = the real output error tr(dW H dWᵀ)/2,
time = CPU seconds of this process (one thread; CPU time, so a shared machine slows both alike).

The reference is not part of hwloop; make a patched copy outside the project first::

    mkdir -p /tmp/obcref && cd <IST-DASLab/OBC checkout>
    git show HEAD:trueobs.py > /tmp/obcref/trueobs.py && git show HEAD:quant.py > /tmp/obcref/quant.py
    sed -i 's/torch.cuda.synchronize()/pass/' /tmp/obcref/trueobs.py

then (one layer, the first recorded run)::

    OMP_NUM_THREADS=1 nice -n 12 .venv/bin/python benchmarks/bench_obc_reference.py /tmp/obcref \
        ../shared/checkpoints/resnet20_cifar10_e35.safetensors search/results/obc/reference_compare.json

or every conv between the first conv and the classifier (``--layers all``), with 2:4 too (``--kinds``)::

    OMP_NUM_THREADS=1 nice -n 12 .venv/bin/python benchmarks/bench_obc_reference.py /tmp/obcref \
        search/checkpoints/resnet20_cifar10_converged.safetensors search/results/obc/reference_all/compare.json \
        --layers all --kinds obq,unstructured,2:4

The output has one row per layer and kind and a ``totals`` row per kind (summed losses and CPU seconds); it is
rewritten after every row, and ``--resume`` keeps the layers it already has complete (an interrupted run continues).
"""
import argparse
import copy
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("refdir", help="folder holding the patched trueobs.py and quant.py")
    ap.add_argument("checkpoint")
    ap.add_argument("out", help="JSON file written (and rewritten after every layer)")
    ap.add_argument("--layers", default="layers.4.conv1", help="comma-separated conv names, or 'all' (every conv "
                    "between the first conv and the classifier)")
    ap.add_argument("--kinds", default="obq,unstructured", help="obq (w4, w3, w2), unstructured (50%%, 80%%), 2:4")
    ap.add_argument("--resume", action="store_true", help="keep the rows already in OUT (same checkpoint) and run "
                    "only the layers missing there")
    args = ap.parse_args()
    sys.path.insert(0, args.refdir)

    import torch

    torch.set_num_threads(1)
    import trueobs
    from safetensors.torch import load_file

    from hwloop.data import make_loaders
    from hwloop.methods.obc.exactobs import (
        collect_hessians,
        mse_scales,
        nm_prune,
        obq_quantize,
        qmax_of,
        unstructured_database,
    )
    from hwloop.models import ModelRef

    m = ModelRef("resnet20").build()
    m.load_state_dict(load_file(args.checkpoint))
    m.eval()
    train, _ = make_loaders("cifar10", 128, root=str(ROOT.parent / "shared/data/cifar10"), augment=False, seed=0)
    xs = []
    for x, _ in train:
        xs.append(x)
        if sum(len(b) for b in xs) >= 1024:
            break
    convs = [n for n, mod in m.named_modules() if isinstance(mod, torch.nn.Conv2d)]
    layers = convs[1:] if args.layers == "all" else args.layers.split(",")
    kinds = args.kinds.split(",")
    t0 = time.process_time()
    H = collect_hessians(m, layers, xs)
    hess_s = time.process_time() - t0

    def err(W: torch.Tensor, Wh: torch.Tensor, Hm: torch.Tensor) -> float:
        d = (W.reshape(W.shape[0], -1) - Wh.reshape(W.shape[0], -1)).double()
        return float(torch.einsum("ri,ij,rj->", d, Hm, d) / 2)

    rows: list[dict] = []
    done: set[str] = set()
    if args.resume and Path(args.out).is_file():
        prev = json.loads(Path(args.out).read_text())
        if prev.get("checkpoint") != args.checkpoint:
            print(f"--resume: {args.out} is for checkpoint {prev.get('checkpoint')!r}, not {args.checkpoint!r}",
                  file=sys.stderr)
            return 2
        per: dict[str, set[str]] = {}
        for r in prev["rows"]:
            per.setdefault(r["layer"], set()).add(r["kind"])
        want = {f"obq w{b}" for b in (4, 3, 2)} if "obq" in kinds else set()
        want |= {"unstructured 0.5", "unstructured 0.8"} if "unstructured" in kinds else set()
        done = {n for n, ks in per.items() if want <= ks and ("2:4" not in kinds or "2:4" in ks
                                                              or m.get_submodule(n).weight.shape[1] % 4)}
        rows = [r for r in prev["rows"] if r["layer"] in done]
        print(f"--resume: {len(done)} layers kept from {args.out}: {sorted(done)}", flush=True)

    def add(row: dict) -> None:
        rows.append(row)
        print(row, flush=True)
        totals = {}
        for r in rows:
            t = totals.setdefault(r["kind"], {"kind": r["kind"], "layers": 0, "ours_loss": 0.0, "ref_loss": 0.0,
                                              "ours_cpu_s": 0.0, "ref_cpu_s": 0.0})
            t["layers"] += 1
            for k in ("ours_loss", "ref_loss", "ours_cpu_s", "ref_cpu_s"):
                t[k] += r[k]
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({"checkpoint": args.checkpoint, "layers": layers, "calib_images": 1024,
                                              "hessian_cpu_s": hess_s, "rows": rows,
                                              "totals": list(totals.values())}, indent=1))

    for n in layers:
        if n in done:
            continue
        layer = m.get_submodule(n)
        W = layer.weight.detach().clone()
        shape = f"{W.shape[0]}x{W[0].numel()}"
        if "obq" in kinds:
            for bits in (4, 3, 2):
                s = mse_scales(W.reshape(W.shape[0], -1).double(), bits)
                t = time.process_time()
                Wq, _ = obq_quantize(W, H[n], bits, scale=s, dtype=torch.float32)
                t_ours = time.process_time() - t
                lay = copy.deepcopy(layer)
                ob = trueobs.TrueOBS(lay)
                ob.H = H[n].clone()
                q = qmax_of(bits)

                class Q:  # the same symmetric grid: values scale*(k - q), k in [0, 2q]
                    scale = s[:, None].float()
                    zero = torch.full_like(s[:, None].float(), q)
                    maxq = torch.tensor(2 * q)

                    def find_params(self, *a: object, **k: object) -> None:
                        pass

                ob.quantizer = Q()
                t = time.process_time()
                ob.quantize()
                t_ref = time.process_time() - t
                add({"layer": n, "shape": shape, "kind": f"obq w{bits}", "ours_loss": err(W, Wq, H[n]),
                     "ref_loss": err(W, lay.weight.data, H[n]), "ours_cpu_s": t_ours, "ref_cpu_s": t_ref})
        if "unstructured" in kinds:
            for sp in (0.5, 0.8):
                t = time.process_time()
                db = unstructured_database(W, H[n], [sp], dtype=torch.float32)
                t_ours = time.process_time() - t
                lay = copy.deepcopy(layer)
                ob = trueobs.TrueOBS(lay)
                ob.H = H[n].clone()
                t = time.process_time()
                ob.prepare_unstr()
                Ws = ob.prune_unstr([sp])
                t_ref = time.process_time() - t
                add({"layer": n, "shape": shape, "kind": f"unstructured {sp}", "ours_loss": err(W, db.weights[sp], H[n]),
                     "ref_loss": err(W, Ws[0].reshape(W.shape), H[n]), "ours_cpu_s": t_ours, "ref_cpu_s": t_ref})
        if "2:4" in kinds and W.shape[1] % 4 == 0:
            t = time.process_time()
            Wn, _ = nm_prune(W, H[n], 2, 4, dtype=torch.float32)
            t_ours = time.process_time() - t
            lay = copy.deepcopy(layer)
            ob = trueobs.TrueOBS(lay)
            ob.H = H[n].clone()
            t = time.process_time()
            ob.nmprune(2, 4)
            t_ref = time.process_time() - t
            add({"layer": n, "shape": shape, "kind": "2:4", "ours_loss": err(W, Wn, H[n]),
                 "ref_loss": err(W, lay.weight.data, H[n]), "ours_cpu_s": t_ours, "ref_cpu_s": t_ref})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
