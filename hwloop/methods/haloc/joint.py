"""HALOC with channel pruning in the same search: a layer may be pruned, factorised, or both (issue 18, "joint use").

With ``widths`` set (fractions of each channel group), every coupled channel group of the model (the residual
streams and the channels inside each block; not the classifier's output) gets a :class:`WidthGate`: architecture
logits over its candidate widths, and one 0/1 mask per width over the group's channels, ordered by Torch-Pruning's
group L2 magnitude on the trained model (a replayed ``channel_prune`` rebuilds the same structure; it keeps the same
channels when no factorised layer touches the group, else it ranks them on the factorised model). The mask multiplies the
group's *sites* (the batch norm after each conv producing those channels, :attr:`~hwloop.compress.extract.ChannelGroup.sites`)
through a forward hook, sampled once per forward pass (every site of a group sees the same width); the gate mixes
like :class:`~hwloop.methods.haloc.mixed.MixedLowRank` (softmax, or Gumbel straight-through where the forward value
is one width and the backward pass compares all of them, which costs nothing: a width is only a mask).

The latency side is exact for every hard choice and differentiable in every logit: each op the device runs (every
conv, linear, batch norm, activation, add, pooling of :class:`~hwloop.search.space.SearchSpace`'s slots) has a
cost over ``(its rank level, its input group's width, its output group's width)`` from the shared cost table
(level keys ``(*rank_level, "w", c_in, c_out)``), and

    E[LAT] = Σ_ops Σ_{l,i,o} p_op(l)·q_in(i)·q_out(o)·T_op(l, i, o)

(independent gates, so the expectation is exact for the product distribution of a table whose model cost is the
sum of its ops' costs — measured or MACs tables; a calibrated or aggregating table's E is scaled to agree at the full
choice); ``choice_cost`` of a hard choice is the table's ``model_cost`` of exactly the ops the extracted model runs
(a Tucker-2 rank above a pruned width is kept as chosen, and costed as such, unless ``clip_ranks``).

:func:`extract_joint` takes the argmax branch of every mixed layer, then removes the masked channels for real
(:func:`~hwloop.compress.extract.prune_groups_` with the gate's boolean mask); the plan is the ``low_rank`` actions
followed by one ``channel_prune`` per pruned group (replayed on the base model it rebuilds the same structure).

Example:
    >>> gate = WidthGate("g", 4, [2, 4], torch.tensor([3, 0, 1, 2]))
    >>> gate.fixed = torch.tensor([1.0, 0.0])
    >>> gate.current().tolist()
    [1.0, 0.0, 0.0, 1.0]
    >>> group_widths(64, [0.25, 0.5, 0.75, 1.0]), group_widths(3, [0.1, 0.5])
    ([16, 32, 48, 64], [1, 2, 3])
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from hwloop.compress.actions import Action, ChannelPrune, LowRank
from hwloop.errors import SearchError
from hwloop.methods.haloc.mixed import DENSE, Level, LogitChoice, MixedLowRank, extract

__all__ = ["WIDTH_PREFIX", "JointExpectedLatency", "WidthGate", "attach_gates", "build_joint", "copy_gates",
           "extract_joint",
           "group_widths", "init_width_logits", "strip_gates", "width_gates", "width_level", "width_sizes"]

WIDTH_PREFIX = "width:"


def width_level(c: int) -> Level:
    """The level key of ``c`` kept channels: ``("w", c)``."""
    return ("w", int(c))


def group_widths(channels: int, fractions: Sequence[float]) -> list[int]:
    """A group's candidate widths: ``max(1, round(f·channels))`` for each fraction, and the full width, sorted."""
    return sorted({*(max(1, min(channels, round(float(f) * channels))) for f in fractions), int(channels)})


class WidthGate(LogitChoice):
    """One channel group's candidate widths (see the module docstring).

    Args:
        key: the group's key (:class:`~hwloop.compress.extract.ChannelGroup`).
        channels: the group's channel count.
        widths: candidate widths, ascending, the last one ``channels``.
        order: the channels, most important first (a width ``w`` keeps ``order[:w]``).
    """

    def __init__(self, key: str, channels: int, widths: Sequence[int], order: torch.Tensor) -> None:
        super().__init__()
        widths = [int(w) for w in widths]
        if not widths or widths != sorted(set(widths)) or widths[0] < 1 or widths[-1] != channels:
            raise SearchError(f"group {key!r}: widths {widths} must be increasing, >= 1, and end at {channels}")
        self.key = key
        self.channels = int(channels)
        self.levels: tuple[Level, ...] = tuple(width_level(w) for w in widths)
        masks = torch.zeros(len(widths), channels)
        for k, w in enumerate(widths):
            masks[k, order[:w]] = 1.0
        self.register_buffer("masks", masks)
        self.alpha = nn.Parameter(torch.zeros(len(widths)))
        self.mode = "softmax"
        self.tau = 1.0
        self.fixed: torch.Tensor | None = None
        self.st_all = False
        self.bypass = False
        self._mask: torch.Tensor | None = None
        self.last_index: int | None = None

    def new_pass(self) -> None:
        """Forget the mask of the last forward pass (the next site draws a new one)."""
        self._mask = None

    def current(self) -> torch.Tensor | None:
        """This forward pass's channel mask (drawn at the first site, shared by the others); None when bypassed."""
        if self.bypass:
            return None
        if self._mask is not None:
            return self._mask
        masks: torch.Tensor = self.masks  # type: ignore[assignment]
        if self.fixed is not None:
            m = self.fixed @ masks
            self.last_index = None
        elif self.mode == "gumbel" and self.training:
            _, soft, k = self.gumbel_draw()
            self.last_index = k
            if self.st_all:   # forward: width k; backward: every width (h = 1_k − q̃ + q̃)
                h = F.one_hot(torch.tensor(k), len(self.levels)).to(soft) - soft.detach() + soft
                m = h @ masks
            else:
                m = masks[k] * (1.0 - soft[k].detach() + soft[k])
        else:
            m = self.probs() @ masks
            self.last_index = None
        self._mask = m
        return m

    def keep_mask(self, level: Level) -> torch.Tensor:
        """The boolean channel mask of ``level``."""
        if tuple(level) not in self.levels:
            raise SearchError(f"width {level!r} is not a candidate of group {self.key!r}: {list(self.levels)}")
        masks: torch.Tensor = self.masks  # type: ignore[assignment]
        return masks[self.levels.index(tuple(level))].bool()


class _SiteHook:
    """Forward hook on a group's site: multiply the output by the gate's mask (an object, so a deep copy of the
    model gets a hook bound to its own copy of the gate)."""

    def __init__(self, gate: WidthGate) -> None:
        self.gate = gate

    def __call__(self, module: nn.Module, inputs: Any, out: torch.Tensor) -> torch.Tensor:
        m = self.gate.current()
        if m is None:
            return out
        return out * m.view(1, -1, *([1] * (out.dim() - 2)))


class _PassHook:
    """Forward pre-hook and forward hook on the model: a new forward pass, so every gate draws a new mask; and
    after it, no gate keeps its mask (a tensor of the autograd graph, which a deep copy of the model refuses)."""

    def __init__(self, gates: nn.ModuleList) -> None:
        self.gates = gates

    def __call__(self, module: nn.Module, inputs: Any, out: Any = None) -> None:
        for g in self.gates:
            g.new_pass()  # type: ignore[operator]


class _Gates(nn.Module):
    def __init__(self, gates: Sequence[WidthGate]) -> None:
        super().__init__()
        self.gates = nn.ModuleList(gates)


_ATTR = "haloc_width_gates"


def attach_gates(model: nn.Module, graph: Any, fractions: Sequence[float]) -> dict[str, WidthGate]:
    """Give ``model`` one :class:`WidthGate` per channel group of ``graph`` (its :class:`ModelGraph`, traced on
    the same architecture) with more than one candidate width; hooks on the groups' sites. Returns the gates by
    group key."""
    import torch_pruning as tp

    from hwloop.compress.extract import get_module

    imp = tp.importance.GroupMagnitudeImportance(p=2)
    gates: list[WidthGate] = []
    for g in graph.groups:
        if g.kind != "channel":
            continue
        widths = group_widths(g.channels, fractions)
        if len(widths) < 2:
            continue
        root = graph.roots[g.key]
        pruner = graph.dg.get_pruner_of_module(root)
        full = graph.dg.get_pruning_group(root, pruner.prune_out_channels, list(range(g.channels)))
        with torch.no_grad():
            scores = imp(full)
        order = torch.argsort(scores, descending=True, stable=True)
        gate = WidthGate(g.key, g.channels, widths, order)
        for site in g.sites:
            get_module(model, site).register_forward_hook(_SiteHook(gate))
        gates.append(gate)
    holder = _Gates(gates)
    setattr(model, _ATTR, holder)
    model.register_forward_pre_hook(_PassHook(holder.gates))
    model.register_forward_hook(_PassHook(holder.gates))
    return {g.key: g for g in gates}


def width_gates(model: nn.Module) -> dict[str, WidthGate]:
    """The width gates of a model from :func:`attach_gates` (empty when it has none), by group key."""
    holder = getattr(model, _ATTR, None)
    if holder is None:
        return {}
    return {g.key: g for g in holder.gates}  # type: ignore[union-attr]


def copy_gates(src: nn.Module, dst: nn.Module) -> None:
    """Give ``dst`` (another mixed-layer copy of the same base model) a copy of ``src``'s width gates, without
    hooks: enough for :func:`extract_joint` to prune the chosen channels (e.g. from the original weights)."""
    import copy

    holder = getattr(src, _ATTR, None)
    if holder is not None:
        for g in holder.gates:
            g.new_pass()
        setattr(dst, _ATTR, copy.deepcopy(holder))


def strip_gates(model: nn.Module) -> None:
    """Remove the gates, their site hooks and the model's pass hook (in place)."""
    for m in model.modules():
        for hooks, extra in ((m._forward_hooks, (m._forward_hooks_with_kwargs, m._forward_hooks_always_called)),
                             (m._forward_pre_hooks, (m._forward_pre_hooks_with_kwargs,))):
            for k in [k for k, h in hooks.items() if isinstance(h, (_SiteHook, _PassHook))]:
                del hooks[k]
                for d in extra:
                    d.pop(k, None)
    if hasattr(model, _ATTR):
        delattr(model, _ATTR)


@dataclass(frozen=True)
class _Op:
    """One op of the model in the joint cost: its table name, the mixed layer it is (or None), its gates."""

    name: str
    layer: str | None
    gate_in: str | None
    gate_out: str | None


def _channels(layer: nn.Module, side: str) -> int:
    if isinstance(layer, nn.Conv2d):
        return int(layer.in_channels if side == "in" else layer.out_channels)
    assert isinstance(layer, nn.Linear)
    return int(layer.in_features if side == "in" else layer.out_features)


def _key(level: Level, c_in: int, c_out: int) -> Level:
    return (*level, "w", int(c_in), int(c_out))


class JointExpectedLatency:
    """``E[LAT]`` over rank logits and width logits, and the exact cost of a hard choice (module docstring).

    The *units* are the mixed layers (by module name) and the width gates (``width:<group key>``); a choice maps
    every unit to one of its levels. :attr:`costs` gives each unit's levels an order for the step-down repair
    (a layer's cost at full widths; a gate's width).
    """

    def __init__(self, table: Any, layers: Mapping[str, MixedLowRank], gates: Mapping[str, WidthGate],
                 ops: Sequence[_Op], clip_ranks: bool = False) -> None:
        self.table = table
        self.clip_ranks = clip_ranks
        self.layers = dict(layers)
        self.gates = dict(gates)
        self.ops = list(ops)
        self.units: dict[str, MixedLowRank | WidthGate] = {**self.layers,
                                                            **{WIDTH_PREFIX + k: g for k, g in self.gates.items()}}
        self._t: list[torch.Tensor] = []
        for op in self.ops:
            lvs = self.layers[op.layer].levels if op.layer is not None else (DENSE,)
            wi = self._widths(op.gate_in)
            wo = self._widths(op.gate_out)
            t = torch.tensor([[[float(table.cost(op.name, _key(lv, ci, co))) for co in wo] for ci in wi]
                              for lv in lvs])
            self._t.append(t)
        full = self.full_choice()
        self.original = self.choice_cost(full)
        # E[LAT] sums the table's per-op costs; model_cost may scale them (a calibrated table) or aggregate them (a
        # learned predictor): E is put on model_cost's scale at the full choice (1 for a plain sum, exact there)
        tc = self._table_choice(full)
        raw = sum(float(table.cost(op.name, tc[op.name])) for op in self.ops)
        self._norm = self.original / raw if raw > 0 else 1.0
        self.costs: dict[str, torch.Tensor] = {}
        for n, m in self.layers.items():
            self.costs[n] = torch.tensor([self.choice_cost({**full, n: lv}) for lv in m.levels])
        for k, g in self.gates.items():
            self.costs[WIDTH_PREFIX + k] = torch.tensor([float(lv[1]) for lv in g.levels])
        self.unit = str(getattr(table, "unit", ""))

    def _widths(self, gate: str | None) -> list[int]:
        return [0] if gate is None else [int(lv[1]) for lv in self.gates[gate].levels]

    def full_choice(self) -> dict[str, Level]:
        """Every layer dense, every group at full width."""
        out: dict[str, Level] = {n: DENSE for n in self.layers}
        out.update({WIDTH_PREFIX + k: g.levels[-1] for k, g in self.gates.items()})
        return out

    def _table_choice(self, choice: Mapping[str, Level]) -> dict[str, Level]:
        out = {}
        for op in self.ops:
            lv = tuple(choice[op.layer]) if op.layer is not None else DENSE
            ci = int(choice[WIDTH_PREFIX + op.gate_in][1]) if op.gate_in is not None else 0
            co = int(choice[WIDTH_PREFIX + op.gate_out][1]) if op.gate_out is not None else 0
            out[op.name] = _key(lv, ci, co)
        return out

    def choice_cost(self, choice: Mapping[str, Level]) -> float:
        return float(self.table.model_cost(self._table_choice(choice)))

    def effective_choice(self, choice: Mapping[str, Level]) -> dict[str, Level]:
        """``choice`` with every rank at or above its pruned layer's ``min(c_in, c_out)`` replaced by the dense
        layer (with ``clip_ranks``, and where the layer has a dense candidate); the table costs both alike."""
        out = dict(choice)
        if not self.clip_ranks:
            return out
        for op in self.ops:
            if op.layer is None or out[op.layer] == DENSE or DENSE not in self.layers[op.layer].levels:
                continue
            m = self.layers[op.layer].original
            c_in = int(out[WIDTH_PREFIX + op.gate_in][1]) if op.gate_in is not None else _channels(m, "in")
            c_out = int(out[WIDTH_PREFIX + op.gate_out][1]) if op.gate_out is not None else _channels(m, "out")
            if int(out[op.layer][1]) >= min(c_in, c_out):
                out[op.layer] = DENSE
        return out

    def __call__(self) -> torch.Tensor:
        one = torch.ones(1)
        e = torch.zeros(())
        for op, t in zip(self.ops, self._t):
            p = self.layers[op.layer].probs() if op.layer is not None else one
            qi = self.gates[op.gate_in].probs() if op.gate_in is not None else one
            qo = self.gates[op.gate_out].probs() if op.gate_out is not None else one
            e = e + torch.einsum("a,b,c,abc->", p, qi, qo, t)
        return e * self._norm

    def argmax_choice(self) -> dict[str, Level]:
        return {n: m.levels[m.argmax()] for n, m in self.units.items()}


def build_joint(wrapped: nn.Module, base: nn.Module, example: torch.Tensor, layers: Mapping[str, MixedLowRank],
                fractions: Sequence[float], build: Any, clip_ranks: bool = False
                ) -> tuple[dict[str, WidthGate], JointExpectedLatency]:
    """Attach width gates to ``wrapped`` (the mixed-layer copy of ``base``) and build the joint cost table with
    ``build(levels, passive)``; returns the gates and the joint expected latency. ``clip_ranks``: a rank at or
    above ``min(c_in, c_out)`` of the pruned layer is the dense layer at those widths (costed and extracted as
    dense, when the layer has a dense candidate): a factorisation that reduces no rank is never paid for."""
    from hwloop.methods.haloc.costs import level_specs
    from hwloop.search.space import SearchSpace, SpaceOptions

    if not fractions or any(not (isinstance(f, (int, float)) and 0 < float(f) <= 1) for f in fractions):
        raise SearchError(f"widths={list(fractions)!r} must be fractions in (0, 1]")
    space = SearchSpace(base, example, SpaceOptions(channels=True, min_keep_ratio=1e-9))
    gates = attach_gates(wrapped, space.graph, fractions)
    ops: list[_Op] = []
    levels: dict[str, dict[Level, list[Any]]] = {}
    for slot in (*space.slots, *space.passive_slots()):
        if slot.depthwise:
            raise SearchError(f"[method] haloc widths: depthwise conv {slot.name!r} is not supported")
        weighted = slot.spec.op in ("conv2d", "linear")
        g_in = slot.in_key if weighted and slot.in_key in gates else None
        g_out = slot.out_key if slot.out_key in gates else None
        layer = slot.name if slot.name in layers else None
        op = _Op(slot.name, layer, g_in, g_out)
        # the table always holds the dense layer (the original model's cost, the full choice) besides the candidates
        lvs = (DENSE, *(lv for lv in layers[layer].levels if lv != DENSE)) if layer is not None else (DENSE,)
        wi = [int(lv[1]) for lv in gates[g_in].levels] if g_in is not None else [0]
        wo = [int(lv[1]) for lv in gates[g_out].levels] if g_out is not None else [0]
        table_lv: dict[Level, list[Any]] = {}
        for lv in lvs:
            for ci in wi:
                for co in wo:
                    if weighted:
                        spec = slot.spec_at(ci or None, co or None).replace(name=slot.name)
                    else:
                        spec = slot.spec_at(None, co or None).replace(name=slot.spec.name)
                    dense = lv == DENSE or (clip_ranks and layer is not None and DENSE in layers[layer].levels
                                             and _clipped(lv, spec))
                    table_lv[_key(lv, ci, co)] = [spec] if dense else level_specs(spec, lv)
        levels[slot.name] = table_lv
        ops.append(op)
    if not gates:
        raise SearchError(f"[method] haloc widths={list(fractions)}: no channel group has a width below its full "
                          "width (fractions too close to 1 for these group sizes)")
    missing = sorted(set(layers) - {op.layer for op in ops if op.layer is not None})
    if missing:
        raise SearchError(f"[method] haloc widths: mixed layer(s) {missing} not found among the model's ops")
    table = build(levels, [])
    return gates, JointExpectedLatency(table, layers, gates, ops, clip_ranks=clip_ranks)


def _clipped(level: Level, spec: Any) -> bool:
    """A rank level at or above the (pruned) layer's ``min(c_in, c_out)``."""
    return level != DENSE and int(level[1]) >= min(int(spec.in_channels), int(spec.out_channels))


def extract_joint(model: nn.Module, example: torch.Tensor, choice: Mapping[str, Level]
                  ) -> tuple[nn.Module, list[Action]]:
    """The chosen branch of every mixed layer (:func:`~hwloop.methods.haloc.mixed.extract`), then the chosen width
    of every gated group removed for real; the plan's actions (low rank, then ``channel_prune``)."""
    from hwloop.compress.extract import analyze, prune_groups_

    for g in width_gates(model).values():
        g.new_pass()
    net, actions = extract(model, choice)
    gates = width_gates(net)
    keep: dict[str, torch.Tensor] = {}
    for k, g in gates.items():
        lv = tuple(choice.get(WIDTH_PREFIX + k, g.levels[g.argmax()]))
        mask = g.keep_mask(lv).cpu()
        if not bool(mask.all()):
            keep[k] = mask
    strip_gates(net)
    if keep:
        tucker = [a.layer for a in actions if isinstance(a, LowRank) and a.form == "tucker2"]
        svd = [a.layer for a in actions if isinstance(a, LowRank) and a.form == "svd"]
        was = net.training
        graph = analyze(net, example, lowrank=svd, tucker2=tucker)
        prune_groups_(graph, keep)
        net.train(was)
        actions = [*actions, *(ChannelPrune(k, int(m.sum())) for k, m in keep.items())]
    return net, actions


def width_sizes(gates: Mapping[str, WidthGate], choice: Mapping[str, Level]) -> dict[str, dict[str, float]]:
    """Per group: chosen and original width, and the gate's probability of the chosen width."""
    out = {}
    for k, g in gates.items():
        lv = tuple(choice[WIDTH_PREFIX + k])
        p = g.probs().detach()
        out[f"width:{k}"] = {"chosen": float(lv[1]), "original": float(g.channels),
                             "p": float(p[g.levels.index(lv)])}
    return out


def init_width_logits(gates: Mapping[str, WidthGate], scale: float) -> None:
    """Full width on top: ``α_k = −scale·(C − w_k)/(C − w_min)``."""
    with torch.no_grad():
        for g in gates.values():
            w = torch.tensor([float(lv[1]) for lv in g.levels])
            span = max(1e-12, float(g.channels) - float(w[0]))
            g.alpha.copy_(-scale * (g.channels - w) / span)
