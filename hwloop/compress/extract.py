"""Coupled channel groups, ``compress_(model, plan)`` and saving/loading compressed models.

Channel coupling (residual adds, concatenation, depthwise convs) is read from
Torch-Pruning's ``DependencyGraph``: each group of tied output channels becomes a
:class:`ChannelGroup` with a stable key (the name of its first conv/linear, or
``rank:<layer>`` for the channels between the two factors of a low-rank layer).
Channels are removed for real by Torch-Pruning; ``compress_`` replays a plan's typed actions
through the handlers of :mod:`hwloop.compress.handlers` (low rank, channel prune, quantize,
sparsify); ``save_compressed`` stores quantized weights as packed integers.

Example:
    >>> from hwloop.compress import CompressionPlan, compress_
    >>> from hwloop.models import ModelRef
    >>> plan = CompressionPlan(base={"name": "small_cnn"}, widths={"features.0": 4}, w_bits={"features.3": 4})
    >>> net = compress_(ModelRef("small_cnn").build(), plan)
    >>> net.features[0].out_channels, net.features[3].in_channels
    (4, 4)
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from hwloop.compress.gates import fake_quant
from hwloop.compress.keys import is_rank_group, rank_group
from hwloop.compress.plan import CompressionPlan
from hwloop.errors import CompressionError

__all__ = [
    "ChannelGroup",
    "ModelGraph",
    "analyze",
    "apply_bits_",
    "compress_",
    "from_plan",
    "get_module",
    "group_key",
    "load_compressed",
    "output_layers",
    "prune_groups_",
    "save_compressed",
    "set_module",
]

_WEIGHTED = (nn.Conv2d, nn.Linear)


@dataclass(frozen=True)
class ChannelGroup:
    """Output channels tied together across layers.

    Attributes:
        key: stable name (first conv/linear of the group; ``rank:<layer>`` for rank channels).
        channels: current number of channels.
        kind: ``channel`` or ``rank``.
        out_layers: conv/linear/batch-norm layers whose output channels are these channels.
        sites: layers whose output a gate multiplies (a batch-norm after a conv, else the conv itself).
        in_layers: conv/linear layers that consume these channels as input channels.
    """

    key: str
    channels: int
    kind: str
    out_layers: tuple[str, ...]
    sites: tuple[str, ...]
    in_layers: tuple[str, ...]


@dataclass
class ModelGraph:
    """The groups of a model plus the Torch-Pruning graph used to prune them."""

    model: nn.Module
    groups: tuple[ChannelGroup, ...]
    dg: Any
    roots: dict[str, nn.Module]

    def group(self, key: str) -> ChannelGroup:
        for g in self.groups:
            if g.key == key:
                return g
        raise CompressionError(f"channel group {key!r} is unknown; known: {', '.join(g.key for g in self.groups)}")


def get_module(model: nn.Module, name: str) -> nn.Module:
    """The submodule called ``name`` (a CompressionError naming it if absent)."""
    try:
        return model.get_submodule(name)
    except AttributeError as e:
        raise CompressionError(f"model has no layer {name!r}") from e


def set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    """Replace the submodule called ``name``."""
    parent_name, _, child = name.rpartition(".")
    parent = get_module(model, parent_name) if parent_name else model
    setattr(parent, child, module)


def group_key(name: str, lowrank: Iterable[str], tucker2: Iterable[str] = ()) -> str:
    """Key of a group whose first conv/linear is ``name`` (factor names map back to their layer): the last
    factor's output is the layer's own group; the channels between svd factors are ``rank:<layer>``, those
    after a Tucker-2 layer's first and core convs ``rank:<layer>:in`` and ``rank:<layer>:out``."""
    lr, tk = set(lowrank), set(tucker2)
    parent, _, last = name.rpartition(".")
    if parent in lr and last == "1":
        return parent
    if parent in lr and last == "0":
        return rank_group(parent)
    if parent in tk:
        return {"0": f"{rank_group(parent)}:in", "1": f"{rank_group(parent)}:out", "2": parent}.get(last, name)
    return name


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """The whole model in eval mode inside the block (a forward then moves no batch norm's running statistics);
    on exit every submodule gets its own training flag back (a model with some parts frozen in eval stays so)."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for m, flag in modes:
            m.training = flag


def output_layers(model: nn.Module, example: torch.Tensor) -> list[str]:
    """Layers whose output channels are the model's output: the last conv/linear run whose
    output width equals the model output's width (the classifier)."""
    order: list[tuple[str, int]] = []
    handles = []
    for n, m in model.named_modules():
        if isinstance(m, _WEIGHTED):
            handles.append(m.register_forward_hook(
                lambda mod, i, o, n=n: order.append((n, int(o.shape[1])))))
    try:   # eval: a forward in training mode would move the batch norms' running statistics
        with eval_mode(model), torch.no_grad():
            out = model(example)
    finally:
        for h in handles:
            h.remove()
    if not isinstance(out, torch.Tensor) or out.dim() < 2:
        return []
    width = int(out.shape[1])
    for n, w in reversed(order):
        if w == width:
            return [n]
    return []


def analyze(model: nn.Module, example: torch.Tensor, *, lowrank: Iterable[str] = (),
            ignored: Iterable[str] | None = None, tucker2: Iterable[str] = ()) -> ModelGraph:
    """Trace ``model`` with Torch-Pruning and list its prunable channel groups.

    Args:
        model: the model (already factorised for the layers in ``lowrank``).
        example: an example input.
        lowrank: names of svd-factorised layers (their factors are ``<name>.0`` and ``<name>.1``).
        tucker2: names of Tucker-2 layers (``<name>.0``, ``<name>.1``, ``<name>.2``).
        ignored: layers whose output channels must not change (default: the classifier).

    Returns:
        A :class:`ModelGraph`; groups are in model order.
    """
    import torch_pruning as tp

    lr, tk = tuple(lowrank), tuple(tucker2)
    names = {m: n for n, m in model.named_modules()}
    ignored_names = output_layers(model, example) if ignored is None else list(ignored)
    ignored_mods = [get_module(model, n) for n in ignored_names]
    try:
        with eval_mode(model), torch.enable_grad():
            dg = tp.DependencyGraph().build_dependency(model, example_inputs=example, verbose=False)
    except Exception as e:  # tracing failures come from many places
        raise CompressionError(f"cannot trace the model's channel dependencies: {type(e).__name__}: {e}") from e
    order = {n: i for i, n in enumerate(names.values())}
    groups: list[ChannelGroup] = []
    roots: dict[str, nn.Module] = {}
    for g in dg.get_all_groups(ignored_layers=ignored_mods, root_module_types=_WEIGHTED):
        outs: list[str] = []
        ins: list[str] = []
        out_mods: list[nn.Module] = []
        for item in g:
            mod = item.dep.target.module
            if mod not in names:
                continue
            if dg.is_out_channel_pruning_fn(item.dep.handler):
                if list(item.idxs) != list(item.root_idxs):
                    raise CompressionError(f"layer {names[mod]!r} maps channels through concat/split; "
                                           "only identity-coupled groups are supported")
                if names[mod] not in outs:
                    outs.append(names[mod])
                    out_mods.append(mod)
            elif isinstance(mod, _WEIGHTED) and names[mod] not in ins:
                ins.append(names[mod])
        weighted = sorted((n for n, m in zip(outs, out_mods) if isinstance(m, _WEIGHTED)), key=order.__getitem__)
        if not weighted:
            continue
        bn_in_group = {m for m in out_mods if isinstance(m, nn.modules.batchnorm._BatchNorm)}
        sites: list[str] = []
        for n, m in zip(outs, out_mods):
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                sites.append(n)
            elif isinstance(m, _WEIGHTED):
                node = dg.module2node[m]
                consumers = [o.module for o in node.outputs]
                if not (consumers and all(c in bn_in_group for c in consumers)):
                    sites.append(n)
        key = group_key(weighted[0], lr, tk)
        root = g[0].dep.target.module
        channels = int(dg.get_out_channels(root))
        groups.append(ChannelGroup(key=key, channels=channels, kind="rank" if is_rank_group(key) else "channel",
                                   out_layers=tuple(sorted(outs, key=order.__getitem__)),
                                   sites=tuple(sorted(sites, key=order.__getitem__)),
                                   in_layers=tuple(sorted(ins, key=order.__getitem__))))
        roots[key] = root
    groups.sort(key=lambda gr: order[gr.out_layers[0]])
    return ModelGraph(model=model, groups=tuple(groups), dg=dg, roots=roots)


def prune_groups_(graph: ModelGraph, keep: Mapping[str, int | torch.Tensor]) -> None:
    """Remove channels for real: ``keep[key]`` is a boolean mask or a width.

    A width keeps the channels of largest group L2 magnitude (Torch-Pruning's
    ``GroupMagnitudeImportance``).
    """
    import torch_pruning as tp

    imp = tp.importance.GroupMagnitudeImportance(p=2)
    for key, k in keep.items():
        grp = graph.group(key)
        root = graph.roots[key]
        pruner = graph.dg.get_pruner_of_module(root)
        if isinstance(k, torch.Tensor):
            mask = k.to(torch.bool).reshape(-1)
            if mask.numel() != grp.channels:
                raise CompressionError(f"keep mask for {key!r} has {mask.numel()} entries; group has {grp.channels}")
        else:
            width = int(k)
            if not 1 <= width <= grp.channels:
                raise CompressionError(f"width {width} for group {key!r} must be in [1, {grp.channels}]")
            if width == grp.channels:
                continue
            full = graph.dg.get_pruning_group(root, pruner.prune_out_channels, list(range(grp.channels)))
            with torch.no_grad():
                scores = imp(full)
            order = torch.argsort(scores, descending=True, stable=True)
            mask = torch.zeros(grp.channels, dtype=torch.bool)
            mask[order[:width]] = True
        if not bool(mask.any()):
            raise CompressionError(f"group {key!r} would keep no channels; at least one must stay")
        drop = torch.nonzero(~mask).flatten().tolist()
        if drop:
            graph.dg.get_pruning_group(root, pruner.prune_out_channels, drop).prune(record_history=False)


def apply_bits_(model: nn.Module, w_bits: Mapping[str, int]) -> None:
    """Round each listed layer's weight to its bit-width (per-output-channel symmetric)."""
    with torch.no_grad():
        for name, bits in w_bits.items():
            mod = get_module(model, name)
            w = getattr(mod, "weight", None)
            if not isinstance(w, torch.Tensor):
                raise CompressionError(f"layer {name!r} has no weight to quantize")
            if bits < 32:
                w.copy_(fake_quant(w, bits))


def compress_(model: nn.Module, plan: CompressionPlan, example: torch.Tensor | None = None, *,
              handlers: Mapping[str, Any] | None = None) -> nn.Module:
    """Replay ``plan`` on ``model``: each action, in order, by the handler registered for its kind
    (:mod:`hwloop.compress.handlers`).

    Args:
        model: an instance of the plan's base architecture (modified in place and returned).
        plan: the :class:`CompressionPlan`.
        example: an example input (default: the base ModelRef's).
        handlers: kind → handler, adding or overriding hwloop's own (Python only).

    Returns:
        The compressed model (a plain ``nn.Module``).
    """
    from hwloop.compress.handlers import replay_

    x = plan.model_ref.example_input() if example is None else example
    return replay_(model, plan.actions, x, handlers)


def from_plan(plan: Mapping[str, Any] | CompressionPlan, weights: str | None = None) -> nn.Module:
    """ModelRef factory: ``ModelRef("hwloop.compress:from_plan", {"plan": plan.to_dict()})``.

    Builds the base model, replays the plan and, if ``weights`` names a safetensors file,
    loads it (packed low-bit weights are dequantized), so any device (including remote agents)
    can rebuild a compressed model from JSON.
    """
    p = plan if isinstance(plan, CompressionPlan) else CompressionPlan.from_dict(plan)
    ref = p.model_ref
    model = compress_(ref.build(), p, ref.example_input())
    if weights is not None:
        from hwloop.compress.quantstore import read_weights

        state = read_weights(weights, model)
        missing, unexpected = model.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise CompressionError(f"weights {weights!r} do not fit the plan: missing {missing[:3]}, "
                                   f"unexpected {unexpected[:3]}")
    return model.eval()


def save_compressed(model: nn.Module, plan: CompressionPlan, directory: str | Path, *, pack: bool = True) -> Path:
    """Write ``plan.json`` and ``weights.safetensors`` into ``directory``; returns it.

    With ``pack`` (default) the weight of every ``Quantize`` layer of at most 16 bits whose values lie exactly on
    its grid (as after ``compress_`` or quantization-aware fine-tuning) is stored as integers (sign bits at 1 bit,
    2 bits at 2, int4 packed two per byte up to 4 bits, int8 up to 8, int16 up to 16) plus one float32 scale per
    output channel, and the weight of every ``Sparsify`` layer as a bitmask plus its kept values (or codes) when
    that is smaller (:func:`hwloop.compress.quantstore.encode_weight`); loading gives back the same float tensor
    (bit for bit, but for the sign of a zero stored as an integer code). Other tensors are stored as they are.
    """
    from hwloop.compress.quantstore import write_weights

    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    (d / "plan.json").write_text(plan.to_json() + "\n", encoding="utf-8")
    write_weights(model, plan, d / "weights.safetensors", pack=pack,
                  metadata={"plan": json.dumps(plan.to_dict())})
    return d


def load_compressed(directory: str | Path) -> tuple[nn.Module, CompressionPlan]:
    """Rebuild a model saved by :func:`save_compressed` from its base architecture."""
    d = Path(directory)
    if not (d / "plan.json").is_file():
        raise CompressionError(f"{d} has no plan.json")
    plan = CompressionPlan.from_json((d / "plan.json").read_text(encoding="utf-8"))
    return from_plan(plan.to_dict(), str(d / "weights.safetensors")), plan
