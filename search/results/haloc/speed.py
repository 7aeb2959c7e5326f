import torch, time, warnings
warnings.simplefilter("ignore")
torch.set_num_threads(1)
from hwloop.models import ModelRef
from hwloop.methods.haloc.mixed import wrap_model, eligible_layers, rank_level, DENSE, max_equal_rank, mixed_layers
from hwloop.methods.haloc.costs import rank_ladder
from hwloop.compress.extract import get_module
ref=ModelRef('resnet20', {}, input_shape=(3,32,32)); m=ref.build()
names=eligible_layers(m, ["fc"])
x=torch.randn(128,3,32,32); y=torch.randint(0,10,(128,))
def t(model, n=3):
    model.train(); 
    for i in range(n+1):
        if i==1: t0=time.time()
        loss=torch.nn.functional.cross_entropy(model(x),y); loss.backward()
    return (time.time()-t0)/n
print("dense", t(m))
lv={n:[DENSE]+[rank_level(r) for r in rank_ladder(max_equal_rank(get_module(m,n)), 1, 6)] for n in names}
w=wrap_model(m, lv)

for mm in mixed_layers(w).values(): mm.collect_fm=True

for mm in mixed_layers(w).values(): mm.mode="gumbel"
print("gumbel+fm", t(w))
