"""Hardware-aware compression search.

* :mod:`hwloop.search.space` — the shared search space (coupled channel groups, ranks, bit-widths)
  and ``config → CompressionPlan → compressed model`` for any sampler;
* :mod:`hwloop.search.latency` — differentiable latency: the ℓ1/ℓ2 surrogate and the learned
  predictor on per-layer grids;
* :mod:`hwloop.search.differentiable` — the search loop (latency in the loss, dual ascent on λ);
* :mod:`hwloop.search.spec` / :mod:`hwloop.search.pipeline` — ``search/*.toml`` specs and runs;
* :mod:`hwloop.search.report` — measurement on the device, metrics and plots.

Example:
    >>> from hwloop.search import SearchSpace, SpaceOptions
    >>> from hwloop.models import ModelRef
    >>> len(SearchSpace.from_ref(ModelRef("resnet20")).dimensions())
    12
"""

from hwloop.search.differentiable import SearchConfig, SearchResult, differentiable_search
from hwloop.search.latency import LatencyModel, PredictorLatency, SurrogateLatency, select_latency_model
from hwloop.search.space import Dimension, LayerSlot, SearchSpace, SpaceOptions

__all__ = ["Dimension", "LatencyModel", "LayerSlot", "PredictorLatency", "SearchConfig", "SearchResult",
           "SearchSpace", "SpaceOptions", "SurrogateLatency", "differentiable_search", "select_latency_model"]
