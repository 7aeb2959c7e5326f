"""ExactOBS/OBQ (hwloop) vs the public reference (IST-DASLab/OBC ``trueobs.py``, patched for CPU) on the same ResNet-20
layer and Hessian (1,024 CIFAR-10 training images), the same grid; loss = the real output error tr(dW H dWᵀ)/2,
time = CPU seconds of this process.

The reference is not part of hwloop; make a patched copy outside the project first::

    mkdir -p /tmp/obcref && cd <IST-DASLab/OBC checkout>
    git show HEAD:trueobs.py > /tmp/obcref/trueobs.py && git show HEAD:quant.py > /tmp/obcref/quant.py
    sed -i 's/torch.cuda.synchronize()/pass/' /tmp/obcref/trueobs.py

then::

    OMP_NUM_THREADS=1 nice -n 12 .venv/bin/python benchmarks/bench_obc_reference.py /tmp/obcref \
        ../shared/checkpoints/resnet20_cifar10_e35.safetensors search/results/obc/reference_compare.json
"""
import copy
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, sys.argv[1])
sys.path.insert(0, str(ROOT))
import torch
torch.set_num_threads(1)
from safetensors.torch import load_file
import trueobs
from hwloop.models import ModelRef
from hwloop.data import make_loaders
from hwloop.methods.obc.exactobs import collect_hessians, mse_scales, obq_quantize, unstructured_database, qmax_of
ck = sys.argv[2]
m = ModelRef("resnet20").build(); m.load_state_dict(load_file(ck)); m.eval()
train, _ = make_loaders("cifar10", 128, root=str(ROOT.parent / "shared/data/cifar10"), augment=False, seed=0)
xs = []
for x, _ in train:
    xs.append(x)
    if sum(len(b) for b in xs) >= 1024: break
layers = ["layers.4.conv1"]
H = collect_hessians(m, layers, xs)
def err(W, Wh, Hm):
    d = (W.reshape(W.shape[0], -1) - Wh.reshape(W.shape[0], -1)).double()
    return float(torch.einsum("ri,ij,rj->", d, Hm, d) / 2)
rows = []
for n in layers:
    layer = m.get_submodule(n)
    W = layer.weight.detach().clone()
    for bits in (4, 3, 2):
        s = mse_scales(W.reshape(W.shape[0], -1).double(), bits)
        t = time.process_time(); Wq, _ = obq_quantize(W, H[n], bits, scale=s, dtype=torch.float32); t_ours = time.process_time() - t
        lay = copy.deepcopy(layer)
        ob = trueobs.TrueOBS(lay); ob.H = H[n].clone()
        q = qmax_of(bits)
        class Q:  # the same symmetric grid: values scale*(k - q), k in [0, 2q]
            scale = s[:, None].float(); zero = torch.full_like(s[:, None].float(), q); maxq = torch.tensor(2 * q)
            def find_params(self, *a, **k): pass
        ob.quantizer = Q()
        t = time.process_time(); ob.quantize(); t_ref = time.process_time() - t
        rows.append({"layer": n, "kind": f"obq w{bits}", "ours_loss": err(W, Wq, H[n]), "ref_loss": err(W, lay.weight.data, H[n]),
                     "ours_cpu_s": t_ours, "ref_cpu_s": t_ref})
        print(rows[-1], flush=True)
    for sp in (0.5, 0.8):
        t = time.process_time(); db = unstructured_database(W, H[n], [sp], dtype=torch.float32); t_ours = time.process_time() - t
        lay = copy.deepcopy(layer); ob = trueobs.TrueOBS(lay); ob.H = H[n].clone()
        t = time.process_time(); ob.prepare_unstr(); Ws = ob.prune_unstr([sp]); t_ref = time.process_time() - t
        rows.append({"layer": n, "kind": f"unstructured {sp}", "ours_loss": err(W, db.weights[sp], H[n]),
                     "ref_loss": err(W, Ws[0].reshape(W.shape), H[n]), "ours_cpu_s": t_ours, "ref_cpu_s": t_ref})
        print(rows[-1], flush=True)
json.dump(rows, open(sys.argv[3], "w"), indent=1)
