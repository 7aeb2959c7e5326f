"""A model with gates attached: the differentiable stand-in the search trains.

:class:`GatedModel` copies a model, factorises the space's low-rank layers
(``W = U·diag(σ)·Vᵀ`` with ``σ`` as the initial :class:`~hwloop.compress.gates.RankGate`),
multiplies each coupled group's gate into the outputs of its *sites* (the batch-norm after
a conv, else the conv itself) with forward hooks, and replaces quantizable weights by
their gated nested residual quantization (``torch.nn.utils.parametrize``). With all
gates at their initial values the gated model computes the same function as the base.

:func:`extract` reads the sizes off the gates and returns a plain, physically smaller
``nn.Module`` and its :class:`~hwloop.compress.plan.CompressionPlan`.

Example:
    >>> import torch
    >>> from hwloop.models import ModelRef
    >>> from hwloop.search.space import SearchSpace, SpaceOptions
    >>> from hwloop.compress.gated import GatedModel, extract
    >>> space = SearchSpace.from_ref(ModelRef("small_cnn"), SpaceOptions(bits=True))
    >>> gm = GatedModel(space)
    >>> x = space.example
    >>> bool(torch.allclose(gm(x), space.model(x), atol=0.05))
    True
    >>> net, plan = extract(gm)
    >>> plan.widths, plan.w_bits
    ({}, {'features.3': 8, 'features.7': 8})
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Protocol, cast

import torch
from torch import nn
from torch.nn.utils import parametrize

from hwloop.compress.extract import analyze, apply_bits_, get_module, prune_groups_, set_module
from hwloop.compress.gates import BitGate, ChannelGate, Gate, RankGate
from hwloop.compress.keys import SizeKey, is_rank_group, rank_group, rank_layer
from hwloop.compress.lowrank import factorize, merge
from hwloop.compress.plan import CompressionPlan
from hwloop.errors import CompressionError

__all__ = ["FixedQuant", "GateSpace", "GatedModel", "GatedWeight", "extract", "quantized_weights", "rewind"]


class _GateOptions(Protocol):
    @property
    def channels(self) -> bool: ...
    @property
    def bit_levels(self) -> Sequence[int]: ...
    @property
    def a_bits(self) -> int | None: ...


class _Groups(Protocol):
    @property
    def groups(self) -> Sequence[Any]: ...   # hwloop.compress.extract.ChannelGroup


class GateSpace(Protocol):
    """What :class:`GatedModel` and :func:`extract` read from a search space (so compression primitives import
    nothing from ``hwloop.search``; :class:`hwloop.search.space.SearchSpace` is the implementation)."""

    # read-only members (properties), so an implementation may narrow their types (a tuple for a Sequence)
    @property
    def model(self) -> nn.Module: ...
    @property
    def example(self) -> torch.Tensor: ...
    @property
    def ref(self) -> Any: ...                 # a hwloop.models.ModelRef, or None
    @property
    def options(self) -> _GateOptions: ...
    @property
    def graph(self) -> _Groups: ...
    @property
    def lowrank(self) -> Sequence[str]: ...
    @property
    def full_ranks(self) -> Mapping[str, int]: ...
    @property
    def bit_layers(self) -> Sequence[str]: ...
    @property
    def ignored(self) -> Any: ...

    def min_keep(self, channels: int) -> int: ...


class GatedWeight(nn.Module):
    """Parametrization: weight → its gated nested residual quantization."""

    def __init__(self, gate: BitGate) -> None:
        super().__init__()
        self.gate = gate

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return self.gate.quantize(w)


class FixedQuant(nn.Module):
    """Parametrization: weight → its ``bits``-bit fake quantization (for quantization-aware fine-tuning)."""

    def __init__(self, bits: int) -> None:
        super().__init__()
        self.bits = bits

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        from hwloop.compress.gates import fake_quant

        return fake_quant(w, self.bits)


class quantized_weights:
    """Context manager: train ``model`` with its listed weights fake-quantized; on exit the
    quantized values are baked in (the model stays a plain ``nn.Module``).

    Example:
        >>> net = nn.Linear(4, 2)
        >>> with quantized_weights(net, {"": 2}):
        ...     pass
        >>> len(torch.unique(net.weight[0].abs())) <= 2
        True
    """

    def __init__(self, model: nn.Module, w_bits: Mapping[str, int]) -> None:
        self.model = model
        self.w_bits = dict(w_bits)

    def __enter__(self) -> nn.Module:
        for name, bits in self.w_bits.items():
            if bits < 32:
                parametrize.register_parametrization(get_module(self.model, name), "weight", FixedQuant(bits))
        return self.model

    def __exit__(self, *exc: object) -> None:
        for name, bits in self.w_bits.items():
            mod = get_module(self.model, name)
            if bits < 32 and parametrize.is_parametrized(mod, "weight"):
                parametrize.remove_parametrizations(mod, "weight", leave_parametrized=True)


def _broadcast(gate: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    shape = [1] * out.dim()
    shape[1] = -1
    return gate.reshape(shape)


class GatedModel(nn.Module):
    """The space's model with every gate attached (see the module docstring).

    Args:
        space: a :class:`GateSpace`, e.g. a :class:`~hwloop.search.space.SearchSpace`.
        model: the weights to start from (default: the space's model); it is copied.
        init_spread: channel gates start at ``1 − init_spread·(1 − r)`` with ``r`` in [0, 1] each channel's rank by
            the weight norm of the layers that produce it (most important: 1), and the inverse folded into the
            gate's sites, so the gated model still computes the base function. At all-equal gates (``0``, the
            behaviour before this option) the gradient of ``s(a)`` is exactly zero: the latency term would not move
            the channel gates until the task loss had made them unequal. Rank gates start at the singular values.

    Attributes:
        net: the gated (factorised) network.
        channel_gates: group key → :class:`ChannelGate` / :class:`RankGate`.
        bit_gates: layer name → :class:`BitGate`.
    """

    def __init__(self, space: GateSpace, model: nn.Module | None = None, *, init_spread: float = 0.1) -> None:
        super().__init__()
        if not (isinstance(init_spread, (int, float)) and 0.0 <= init_spread < 1.0):
            raise CompressionError(f"init_spread={init_spread!r} must be in [0, 1)")
        self.space = space
        net = copy.deepcopy(space.model if model is None else model)
        sigmas: dict[str, torch.Tensor] = {}
        for name in space.lowrank:
            seq, sigma = factorize(get_module(net, name), split="none")
            set_module(net, name, seq)
            sigmas[name] = sigma
        self.net = net
        self._gate_list = nn.ModuleList()
        self.channel_gates: dict[str, ChannelGate] = {}
        self.bit_gates: dict[str, BitGate] = {}
        self._handles: list[Any] = []
        for g in space.graph.groups:
            if g.kind == "rank":
                gate: ChannelGate = RankGate(g.channels, init=sigmas[rank_layer(g.key)],
                                             min_keep=space.min_keep(g.channels))
            elif space.options.channels:
                init = _spread_init(net, g.out_layers, g.sites, g.channels, float(init_spread))
                gate = ChannelGate(g.channels, init=init, min_keep=space.min_keep(g.channels))
            else:
                continue
            self.channel_gates[g.key] = gate
            self._gate_list.append(gate)
        for name in space.bit_layers:
            bg = BitGate(space.options.bit_levels)
            self.bit_gates[name] = bg
            self._gate_list.append(bg)
        self._attach()

    # ------------------------------------------------------------------ hooks
    def _attach(self) -> None:
        self._attach_hooks()
        for name, bg in self.bit_gates.items():
            parametrize.register_parametrization(get_module(self.net, name), "weight", GatedWeight(bg))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def gates(self) -> Iterator[tuple[str, Gate]]:
        """``(name, gate)`` pairs: ``ch:<group>`` and ``bits:<layer>``."""
        for k, g in self.channel_gates.items():
            yield SizeKey.channels(k), g
        for k, b in self.bit_gates.items():
            yield SizeKey.bits(k), b

    def gate_parameters(self) -> list[nn.Parameter]:
        return list(self._gate_list.parameters())

    def weight_parameters(self) -> list[nn.Parameter]:
        """Network parameters (the ``original`` of parametrized weights included), without gates."""
        gate_ids = {id(p) for p in self.gate_parameters()}
        return [p for p in self.net.parameters() if id(p) not in gate_ids]

    def project_(self) -> None:
        """Project every gate onto its feasible set (call after each optimiser step)."""
        for g in self._gate_list:
            assert isinstance(g, Gate)
            g.project_()

    def sizes(self) -> dict[str, torch.Tensor]:
        """Differentiable effective sizes (``ch:<group>`` for every group, ``bits:<layer>``)."""
        out: dict[str, torch.Tensor] = {}
        for g in self.space.graph.groups:
            gate = self.channel_gates.get(g.key)
            out[SizeKey.channels(g.key)] = gate.size() if gate is not None else torch.tensor(float(g.channels))
        for k, b in self.bit_gates.items():
            out[SizeKey.bits(k)] = b.size()
        return out

    def plain_copy(self) -> nn.Module:
        """A deep copy of the network with hooks and parametrizations removed (original weights)."""
        for h in self._handles:
            h.remove()
        try:
            state: dict[str, torch.Tensor] = {}
            for name in self.bit_gates:
                mod = get_module(self.net, name)
                original = cast(Any, mod).parametrizations.weight.original  # added by torch's parametrize
                state[name] = original.detach().clone()
            net = copy.deepcopy(self.net)
        finally:
            self._handles.clear()
            self._attach_hooks()
        for name, w in state.items():
            mod = get_module(net, name)
            parametrize.remove_parametrizations(mod, "weight", leave_parametrized=False)
            with torch.no_grad():
                weight = mod.weight
                assert isinstance(weight, torch.Tensor)
                weight.copy_(w)
        return net

    def _attach_hooks(self) -> None:
        """Multiply each group's gate into the outputs of its sites."""
        for g in self.space.graph.groups:
            gate = self.channel_gates.get(g.key)
            if gate is None:
                continue
            for site in g.sites:
                self._handles.append(get_module(self.net, site).register_forward_hook(
                    lambda m, i, o, gate=gate: o * _broadcast(gate.values(), o)))


def _spread_init(net: nn.Module, out_layers: tuple[str, ...], sites: tuple[str, ...], channels: int,
                 spread: float) -> torch.Tensor | None:
    """Initial gate values ``1 − spread·(1 − r)`` (``r``: rank by weight norm, in [0, 1]) with ``1/a`` folded into
    ``sites`` (see :class:`GatedModel`); None (all ones) when ``spread`` is 0 or a site cannot take the fold."""
    mods = [get_module(net, s) for s in sites]
    if spread == 0.0 or channels < 2 or not all(
            isinstance(m, (nn.Conv2d, nn.Linear)) or (isinstance(m, nn.modules.batchnorm._BatchNorm) and m.affine)
            for m in mods):
        return None
    score = torch.zeros(channels)
    for name in out_layers:
        w = getattr(get_module(net, name), "weight", None)
        if not isinstance(w, torch.Tensor) or w.shape[0] != channels:
            continue
        v = w.detach().float().reshape(channels, -1).norm(dim=1)
        score += v / v.max().clamp_min(1e-12)
    rank = torch.empty(channels)
    rank[torch.argsort(score, stable=True)] = torch.arange(channels, dtype=torch.float32) / (channels - 1)
    a = 1.0 - spread * (1.0 - rank)
    for m in mods:
        _fold(m, 1.0 / a)
    return a


def _fold(mod: nn.Module, scale: torch.Tensor) -> None:
    """Multiply a site's output channels by ``scale`` inside its parameters."""
    with torch.no_grad():
        if isinstance(mod, nn.modules.batchnorm._BatchNorm):
            if mod.weight is None or mod.bias is None:
                raise CompressionError("a gated batch-norm needs affine=True")
            mod.weight.mul_(scale)
            mod.bias.mul_(scale)
        elif isinstance(mod, (nn.Conv2d, nn.Linear)):
            mod.weight.mul_(scale.reshape(-1, *([1] * (mod.weight.dim() - 1))))
            if mod.bias is not None:
                mod.bias.mul_(scale)
        else:
            raise CompressionError(f"cannot fold a gate into {type(mod).__name__}")


def rewind(gm: GatedModel, model: nn.Module | None = None, *, widths: Mapping[str, int] | None = None,
           rule: str = "effective") -> GatedModel:
    """A gated model on ``model``'s weights (default: the space's) that keeps exactly the channels (and ranks) the
    gates of ``gm`` keep (``widths`` / ``rule`` as in :func:`extract`) and holds ``gm``'s bits; its kept gates are
    1 (rank gates: the starting singular values), so :func:`extract` on it gives the *starting* weights of the
    channels ``gm`` chose, not the weights trained while the gates moved.

    Example:
        >>> from hwloop.models import ModelRef
        >>> from hwloop.search.space import SearchSpace
        >>> space = SearchSpace.from_ref(ModelRef("small_cnn"))
        >>> gm = GatedModel(space)
        >>> key = next(iter(gm.channel_gates))
        >>> with torch.no_grad():
        ...     gm.channel_gates[key].a[:3] = torch.tensor([0.0, 2.0, 0.0])
        >>> g0 = rewind(gm, widths={key: gm.channel_gates[key].max_size - 2})
        >>> torch.equal(g0.channel_gates[key].keep_mask(gm.channel_gates[key].max_size - 2),
        ...             gm.channel_gates[key].keep_mask(gm.channel_gates[key].max_size - 2))
        True
    """
    g0 = GatedModel(gm.space, model, init_spread=0.0)
    with torch.no_grad():
        for k, gate in gm.channel_gates.items():
            mask = gate.keep_mask(widths.get(k) if widths else None, rule=rule)
            g0.channel_gates[k].a.mul_(mask.to(g0.channel_gates[k].a.dtype))
        for n, b in gm.bit_gates.items():
            g0.bit_gates[n].load_state_dict(b.state_dict())
    return g0


def extract(gm: GatedModel, *, widths: Mapping[str, int] | None = None, rule: str = "effective",
            merge_if: Any = None, meta: Mapping[str, Any] | None = None) -> tuple[nn.Module, CompressionPlan]:
    """The physically compressed model read off the gates, and its plan.

    Args:
        gm: the gated model.
        widths: group key → width overriding the gate's own (e.g. rounded up to a tile).
        rule: ``effective`` keeps the ``ceil(s(a))`` largest gates of each group; ``nonzero``
            keeps every gate that is not exactly zero.
        merge_if: optional callable ``(layer, rank) -> bool``: merge that factorised layer back
            into one dense layer (when dense is not slower).
        meta: JSON context stored in the plan.

    Returns:
        ``(model, plan)``: a plain ``nn.Module`` in eval mode and its :class:`CompressionPlan`.
    """
    space = gm.space
    net = gm.plain_copy()
    w_bits = {n: b.hard_size() for n, b in gm.bit_gates.items()}
    zero = [n for n, b in w_bits.items() if b == 0]
    if zero:
        raise CompressionError(f"layers {zero[:3]} reached 0 bits; removing whole layers is not supported, "
                               "keep allow_zero=False")
    apply_bits_(net, w_bits)  # the gates multiply the quantized layers' outputs: quantize, then fold
    masks: dict[str, torch.Tensor] = {}
    for g in space.graph.groups:
        gate = gm.channel_gates.get(g.key)
        if gate is None:
            continue
        mask = gate.keep_mask(widths.get(g.key) if widths else None, rule=rule)
        masks[g.key] = mask
        for site in g.sites:
            _fold(get_module(net, site), gate.values().detach() * mask)
    lowrank: dict[str, int] = {}
    for layer in space.lowrank:
        r = int(masks[rank_group(layer)].sum()) if rank_group(layer) in masks else space.full_ranks[layer]
        if merge_if is not None and merge_if(layer, r):
            seq = get_module(net, layer)
            assert isinstance(seq, nn.Sequential)
            set_module(net, layer, merge(seq))
            masks.pop(rank_group(layer), None)
            b = max(w_bits.pop(f"{layer}.0", 0), w_bits.pop(f"{layer}.1", 0))
            if b:
                w_bits[layer] = b
                apply_bits_(net, {layer: b})
        else:
            lowrank[layer] = r
    graph = analyze(net, space.example, lowrank=lowrank, ignored=space.ignored)
    prune_groups_(graph, {k: m for k, m in masks.items() if not bool(m.all())})
    widths_out = {k: int(m.sum()) for k, m in masks.items() if not is_rank_group(k) and not bool(m.all())}
    plan = CompressionPlan(base=space.ref.to_dict() if space.ref else None, lowrank=lowrank, widths=widths_out,
                           w_bits=w_bits, a_bits=space.options.a_bits if w_bits else None, meta=meta or {})
    return net.eval(), plan
