import sys, time, torch, warnings
warnings.simplefilter("ignore")
torch.set_num_threads(1)
from hwloop.models import ModelRef
from hwloop.search.space import SearchSpace, SpaceOptions
from hwloop.search.controls import uniform_config
from hwloop.search.report import compare_compressed
ref = ModelRef("resnet20"); model = ref.build().eval()
space = SearchSpace.from_ref(ref, SpaceOptions(), model=model)
for x in [float(v) for v in sys.argv[2].split(",")]:
    net, plan = space.compress(uniform_config(space, x))
    for _ in range(2):
        t = time.perf_counter()
        m = compare_compressed(sys.argv[1], net, plan, model, example=ref.example_input())
        print(x, round(m["ratio"], 3), [round(v, 3) for v in m["ratio_ci"]], m["unstable"], round(m["latency_ms"], 3), round(m["original_ms"], 3), m["load"], round(time.perf_counter() - t, 1), flush=True)
