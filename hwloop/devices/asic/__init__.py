"""``asic`` backend: a simulated accelerator driven by TVM (GitHub issue 5).

* :mod:`~hwloop.devices.asic.spec` — :class:`AcceleratorSpec`, the ``[spec]`` table of
  ``devices/asic-*.toml``;
* :mod:`~hwloop.devices.asic.opgraph` — :class:`AccelOp` / :class:`OpGraph`, the plain op graph;
* :mod:`~hwloop.devices.asic.costmodel` — :func:`cost_layer`, :func:`cost_graph` (analytical, vectorised;
  inference semantics: BN folded, ReLU/residual add in the array's epilogue, activations on chip);
* :mod:`~hwloop.devices.asic.frontend` — TVM Relax import + ``FuseOpsByPattern`` partitioning
  (imports TVM lazily);
* :mod:`~hwloop.devices.asic.device` — :class:`AsicDevice`, the Device-protocol backend.

Example:
    >>> from hwloop.workload import LayerSpec
    >>> from hwloop.devices.asic import AcceleratorSpec, cost_layer
    >>> c = cost_layer(LayerSpec("conv2d", (1, 64, 16, 16), out_channels=64, kernel=3, padding=1),
    ...                AcceleratorSpec(rows=32, cols=32))
    >>> c.bound, 0 < c.utilisation <= 1
    ('compute', True)
"""

from hwloop.devices.asic.costmodel import (
    COST_MODEL_VERSION,
    EPILOGUE_PARAM_BYTES,
    EPILOGUE_STAGE_CYCLES,
    GraphCost,
    OpCost,
    cost_graph,
    cost_layer,
    cost_layers,
)
from hwloop.devices.asic.device import AsicDevice, NoiseModel
from hwloop.devices.asic.opgraph import AccelOp, OpGraph, ops_from_layer, touched_input_elems
from hwloop.devices.asic.spec import DATAFLOWS, AcceleratorSpec

__all__ = [
    "COST_MODEL_VERSION",
    "DATAFLOWS",
    "EPILOGUE_PARAM_BYTES",
    "EPILOGUE_STAGE_CYCLES",
    "AccelOp",
    "AcceleratorSpec",
    "AsicDevice",
    "GraphCost",
    "NoiseModel",
    "OpCost",
    "OpGraph",
    "cost_graph",
    "cost_layer",
    "cost_layers",
    "ops_from_layer",
    "touched_input_elems",
]
