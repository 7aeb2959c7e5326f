"""gate_init_spread 0 (the old all-ones start) vs 0.1 on digits + small_cnn (surrogate MACs), targets 0.3/0.5, 3 seeds.

Run: ``OMP_NUM_THREADS=1 python benchmarks/gate_init_spread.py [out.json]`` (a few minutes on one thread);
docs/methods.md quotes its output.
"""
import json, sys, torch
torch.set_num_threads(1)
from hwloop.search.differentiable import SearchConfig, differentiable_search
from hwloop.search.latency import SurrogateLatency
from hwloop.search.space import SearchSpace, SpaceOptions
from hwloop.search.train import make_task, train_epochs
rows = []
for seed in (0, 1, 2):
    for spread in (0.0, 0.1):
        task = make_task("digits", "small_cnn", seed=seed)
        torch.manual_seed(seed); model = task.ref.build(); train_epochs(model, task.train, 3, 0.05); model.eval()
        acc0 = task.eval_fn(model)
        space = SearchSpace.from_ref(task.ref, SpaceOptions(), model=model)
        lat = SurrogateLatency(space)
        for tgt in (0.3, 0.5):
            r = differentiable_search(space, lat, task.train, task.eval_fn, SearchConfig(search_epochs=3, finetune_epochs=2, target=tgt, seed=seed, gate_init_spread=spread))
            g1 = r.history[0]["ratio_end"]
            row = dict(seed=seed, spread=spread, target=tgt, acc0=acc0, acc=r.accuracy, hard_search=r.hard_search / r.original, predicted=r.predicted / r.original, ratio_after_epoch1=g1, widths=r.plan.widths)
            rows.append(row); print(json.dumps(row), flush=True)
json.dump(rows, open(sys.argv[1] if len(sys.argv) > 1 else "gate_init_spread.json", "w"), indent=1)
