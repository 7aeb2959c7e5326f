"""SBS's search on digits small_cnn, asic-tpu32's cost table: the hard configuration's cost ratio at every step.

What docs/sbs.md quotes for the threshold start / momentum / penalty study (issue 19); no repair, no fine-tune::

    OMP_NUM_THREADS=1 python benchmarks/sbs_digits_trace.py '{"thr_init": null, "gate_momentum": 0.9}' 0.5

Arguments: SBS keys as JSON (on top of 3 search epochs, grid_points 3), the target, the training images (512:
8 batches of 64, so 24 steps). Prints the per-step ratio, the target in force, λ, the hard configuration, the
gated model's accuracy on 256 validation images and the search end (the exact table cost of the configuration).
"""

from __future__ import annotations

import json
import sys
import time
import warnings


def main(argv: list[str]) -> int:
    import torch

    from hwloop.methods import make_method
    from hwloop.methods.base import MethodContext
    from hwloop.methods.sbs.method import state_of
    from hwloop.search.latency import SurrogateLatency
    from hwloop.search.space import SearchSpace, SpaceOptions
    from hwloop.search.train import make_task, train_epochs

    warnings.simplefilter("ignore")
    torch.set_num_threads(1)
    extra = json.loads(argv[0]) if argv else {}
    target = float(argv[1]) if len(argv) > 1 else 0.5
    task = make_task("digits", "small_cnn", train_limit=int(argv[2]) if len(argv) > 2 else 512, val_limit=256,
                     seed=0)
    torch.manual_seed(0)
    model = task.ref.build()
    train_epochs(model, task.train, 2, 0.05)
    model.eval()
    space = SearchSpace.from_ref(task.ref, SpaceOptions(bits=True, a_bits=8), model=model)
    ctx = MethodContext(model=model, ref=task.ref, space=space, train=task.train, eval_fn=task.eval_fn,
                        latency=SurrogateLatency(space), target=target, device="asic-tpu32", seed=0, progress=False)
    m = make_method("sbs", {"search_epochs": 3, "finetune_epochs": 0, "grid_points": 3, "recalibrate_batches": 1,
                            **extra})
    p = m.prepare(ctx)  # type: ignore[attr-defined]
    t = time.time()
    hist, _ = m._search(p["sbs"], p["cost"], p["c0"], ctx, m.config)  # type: ignore[attr-defined]
    sbs = p["sbs"]
    sbs.eval()
    with torch.no_grad():
        sbs(next(iter(task.train))[0])
    end = p["cost"].exact(state_of(sbs, sbs.hard_config())) / p["c0"]
    tr = [s for h in hist for s in h["steps"]]
    print("keys", json.dumps(m.config.to_dict()))
    print("steps", len(tr), "time %.1f" % (time.time() - t))
    print(" ".join(f"{r:.2f}" for _, r, _, _ in tr))
    print("target_t", " ".join(f"{t:.2f}" for _, _, t, _ in tr[::5]))
    print("lam", " ".join(f"{lam:.2f}" for *_, lam in tr[::5]))
    hc = sbs.hard_config()
    print("masks", {k: int(v.sum()) for k, v in hc["masks"].items()}, "w", hc["w"], "a", hc["a"])
    print("thresholds", {n: [round(v, 3) for v in p.detach().flatten().tolist()] for n, p in sbs.named_thresholds()})
    print("step_scale", [h.get("step_scale") for h in hist])
    print("acc", round(task.eval_fn(sbs), 2))
    print("SEARCH END", round(end, 4), "target", target)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
