"""Compression: gates, :class:`CompressionPlan` and extraction to a real, smaller model.

Example:
    >>> from hwloop.compress import CompressionPlan, from_plan
    >>> net = from_plan(CompressionPlan(base={"name": "small_cnn"}, widths={"features.3": 8}).to_dict())
    >>> net.features[3].out_channels
    8
"""

from hwloop.compress.actions import Action, ChannelPrune, LowRank, Quantize, Sparsify
from hwloop.compress.actquant import ActivationQuantizer, quantized_activations
from hwloop.compress.extract import (
    ChannelGroup,
    ModelGraph,
    analyze,
    apply_bits_,
    compress_,
    from_plan,
    load_compressed,
    prune_groups_,
    save_compressed,
)
from hwloop.compress.gates import BitGate, ChannelGate, Gate, RankGate, effective_size, fake_quant
from hwloop.compress.lowrank import factorize, merge, tucker2
from hwloop.compress.plan import CompressionPlan

__all__ = [
    "Action",
    "ActivationQuantizer",
    "BitGate",
    "ChannelGate",
    "ChannelGroup",
    "ChannelPrune",
    "CompressionPlan",
    "Gate",
    "LowRank",
    "ModelGraph",
    "Quantize",
    "RankGate",
    "Sparsify",
    "analyze",
    "apply_bits_",
    "compress_",
    "effective_size",
    "factorize",
    "fake_quant",
    "from_plan",
    "load_compressed",
    "merge",
    "prune_groups_",
    "quantized_activations",
    "save_compressed",
    "tucker2",
]
