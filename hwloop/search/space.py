"""The shared compression search space: what can be searched on a model, and config → real model.

A :class:`SearchSpace` is built once from a model and an example input. It lists

* one width dimension per coupled channel group (groups come from Torch-Pruning's
  dependency graph, so residual-coupled layers share one decision),
* one rank dimension per layer that may be factorised (``W ≈ U·diag(σ)·Vᵀ``; ratio 1.0 means
  "keep it dense"),
* one bit-width dimension per quantizable layer,

and the :class:`LayerSlot` table the latency models evaluate (each conv/linear/batch-norm
with the group that sets its input and output channels). A black-box sampler (Optuna,
random search) uses :meth:`SearchSpace.dimensions`, :meth:`SearchSpace.sample` and
:meth:`SearchSpace.compress`; the differentiable search uses the same groups through
:class:`~hwloop.compress.gated.GatedModel`.

Example:
    >>> import numpy as np
    >>> from hwloop.models import ModelRef
    >>> from hwloop.search.space import SearchSpace, SpaceOptions
    >>> space = SearchSpace.from_ref(ModelRef("small_cnn"), SpaceOptions(bits=True))
    >>> [d.name for d in space.dimensions()][:2]
    ['width:features.0', 'width:features.3']
    >>> model, plan = space.compress(space.sample(np.random.default_rng(0)))
    >>> sum(p.numel() for p in model.parameters()) < sum(p.numel() for p in space.model.parameters())
    True
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from hwloop.compress.extract import ModelGraph, analyze, compress_, get_module, output_layers, set_module
from hwloop.compress.gates import BIT_LEVELS
from hwloop.compress.keys import SizeKey, rank_group, rank_layer
from hwloop.compress.lowrank import factorize, full_rank, is_factorizable
from hwloop.compress.plan import CompressionPlan
from hwloop.errors import SearchError
from hwloop.models import ModelRef
from hwloop.workload import LayerSpec

__all__ = ["Dimension", "LayerSlot", "SearchSpace", "SpaceOptions"]


@dataclass(frozen=True)
class SpaceOptions:
    """What is searchable.

    Attributes:
        channels: search the width of every coupled channel group.
        lowrank: ``False``, ``True`` (every dense k×k conv with k > 1 and every hidden linear,
            except the first layer and the classifier) or a tuple of layer names.
        bits: search weight bit-widths among ``bit_levels``.
        bit_levels: increasing bit-widths of the nested residual quantizers.
        bits_skip_first_last: keep the first layer and the classifier unquantized.
        a_bits: activation bit-width recorded for quantized layers (None: float activations).
        min_keep_ratio: each group keeps at least this fraction of its channels (and >= 1).
        ignored: layers whose output channels never change (None: the classifier).
        tile: extraction may round widths up to a multiple of this when that costs no latency.
    """

    channels: bool = True
    lowrank: bool | tuple[str, ...] = False
    bits: bool = False
    bit_levels: tuple[int, ...] = BIT_LEVELS
    bits_skip_first_last: bool = True
    a_bits: int | None = None
    min_keep_ratio: float = 0.05
    ignored: tuple[str, ...] | None = None
    tile: int = 1

    def __post_init__(self) -> None:
        if not isinstance(self.lowrank, bool):
            object.__setattr__(self, "lowrank", tuple(str(x) for x in self.lowrank))
        lv = tuple(int(b) for b in self.bit_levels)
        if not lv or list(lv) != sorted(set(lv)) or lv[0] < 1 or lv[-1] > 16:
            raise SearchError(f"bit_levels {self.bit_levels!r} must be strictly increasing ints in [1, 16]")
        object.__setattr__(self, "bit_levels", lv)
        if not 0.0 < self.min_keep_ratio <= 1.0:
            raise SearchError(f"min_keep_ratio={self.min_keep_ratio} must be in (0, 1]")
        if self.a_bits is not None and not (isinstance(self.a_bits, int) and 1 <= self.a_bits <= 32):
            raise SearchError(f"a_bits={self.a_bits!r} must be an int in [1, 32] or None")
        if not isinstance(self.tile, int) or self.tile < 1:
            raise SearchError(f"tile={self.tile!r} must be a positive int")
        if self.ignored is not None:
            object.__setattr__(self, "ignored", tuple(str(x) for x in self.ignored))


@dataclass(frozen=True)
class Dimension:
    """One searchable decision.

    Attributes:
        name: ``width:<group>``, ``rank:<layer>`` or ``bits:<layer>``.
        kind: ``ratio`` (a float in [low, high]) or ``choice`` (one of ``choices``).
        low / high: bounds of a ratio.
        choices: allowed values of a choice.
        size: the full size (channels, full rank, top bits).
    """

    name: str
    kind: str
    low: float = 0.0
    high: float = 1.0
    choices: tuple[int, ...] = ()
    size: int = 0


@dataclass(frozen=True)
class LayerSlot:
    """A layer as the latency models see it.

    Attributes:
        name: module name in the (factorised) search model.
        spec: the layer at full size.
        in_key / out_key: group keys setting its input / output channels (None when fixed).
        bits_key: layer name of its bit gate, or None.
        depthwise: a depthwise conv (input = output = groups channels).
        factor_of: for the two factors of a low-rank layer, that layer's name.
        dense: for a factorised layer's first factor, the slot of the original dense layer.
    """

    name: str
    spec: LayerSpec
    in_key: str | None = None
    out_key: str | None = None
    bits_key: str | None = None
    depthwise: bool = False
    factor_of: str | None = None
    dense: LayerSlot | None = field(default=None, compare=False)

    def spec_at(self, c_in: int | None, c_out: int | None, w_bits: int | None = None,
                a_bits: int | None = None) -> LayerSpec:
        """The layer with ``c_in`` input and ``c_out`` output channels (None: unchanged) and bits."""
        s = self.spec
        cin = s.in_channels if c_in is None else int(c_in)
        cout = s.out_channels if c_out is None else int(c_out)
        bits = {"w_bits": w_bits, "a_bits": a_bits if w_bits is not None else None}
        if s.op == "conv2d":
            if self.depthwise:
                c = cout if c_out is not None else cin
                return s.replace(in_shape=(s.in_shape[0], c, *s.in_shape[2:]), out_channels=c, groups=c, **bits)
            return s.replace(in_shape=(s.in_shape[0], cin, *s.in_shape[2:]), out_channels=cout, **bits)
        if s.op == "linear":
            return s.replace(in_shape=(*s.in_shape[:-1], cin), out_channels=cout, **bits)
        c = cout if c_out is not None else cin
        shape = (s.in_shape[0], c, *s.in_shape[2:])
        out = (s.out_shape[0], c, *s.out_shape[2:]) if len(s.out_shape) >= 2 else ()
        return s.replace(in_shape=shape, out_shape=out, in_channels=c, out_channels=c)


def _eligible_lowrank(model: nn.Module, first: str | None, ignored: Sequence[str]) -> list[str]:
    out = []
    for n, m in model.named_modules():
        if n == first or n in ignored or not is_factorizable(m):
            continue
        if isinstance(m, nn.Conv2d) and m.kernel_size[0] * m.kernel_size[1] > 1 or isinstance(m, nn.Linear):
            out.append(n)
    return out


class SearchSpace:
    """The searchable decisions of one model (see the module docstring).

    Args:
        model: the base model (not modified; copies are made).
        example: an example input (batch size 1 is typical; it sets the latency specs' batch).
        options: :class:`SpaceOptions`.
        ref: the model's :class:`ModelRef`, if it has one (plans then rebuild it from JSON).
    """

    def __init__(self, model: nn.Module, example: torch.Tensor, options: SpaceOptions | None = None,
                 ref: ModelRef | None = None) -> None:
        self.model = model
        self.example = example
        self.options = options or SpaceOptions()
        self.ref = ref
        base = copy.deepcopy(model).eval()
        weighted = [n for n, m in base.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
        if not weighted:
            raise SearchError("the model has no Conv2d or Linear layer to compress")
        ignored = list(self.options.ignored) if self.options.ignored is not None else output_layers(base, example)
        self.ignored: tuple[str, ...] = tuple(ignored)
        first = weighted[0]
        if self.options.lowrank is True:
            lr = _eligible_lowrank(base, first, ignored)
        elif self.options.lowrank is False:
            lr = []
        else:
            lr = list(self.options.lowrank)
            for n in lr:
                if not is_factorizable(get_module(base, n)):
                    raise SearchError(f"layer {n!r} cannot be factorised; only dense Conv2d/Linear layers")
        self.lowrank: tuple[str, ...] = tuple(lr)
        self.full_ranks = {n: full_rank(get_module(base, n)) for n in lr}
        self.dense_specs = self._specs(base, example) if lr else {}
        for n in lr:
            seq, _ = factorize(get_module(base, n))
            set_module(base, n, seq)
        self.template = base
        self.graph: ModelGraph = analyze(base, example, lowrank=lr, ignored=ignored)
        if self.options.bits:
            wl = [n for n, m in base.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
            skip = {wl[0], *ignored} if self.options.bits_skip_first_last else set()
            self.bit_layers: tuple[str, ...] = tuple(n for n in wl if n not in skip)
        else:
            self.bit_layers = ()
        self.slots: tuple[LayerSlot, ...] = self._make_slots(base, example)
        self._passive: tuple[LayerSlot, ...] | None = None

    @classmethod
    def from_ref(cls, ref: ModelRef, options: SpaceOptions | None = None, model: nn.Module | None = None
                 ) -> SearchSpace:
        """The space of a :class:`ModelRef` (``model`` overrides the freshly built weights)."""
        return cls(model if model is not None else ref.build(), ref.example_input(), options, ref=ref)

    # ------------------------------------------------------------------ structure
    @staticmethod
    def _specs(model: nn.Module, example: torch.Tensor) -> dict[str, LayerSpec]:
        """Conv/linear/batch-norm specs by module name (``extract_workload``'s forward-hook path)."""
        import warnings

        from hwloop.workload import WorkloadWarning, extract_workload

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", WorkloadWarning)
            wl = extract_workload(model, example, method="hooks")
        return {s.name: s for s in wl.layers if s.op in ("conv2d", "linear", "batchnorm")}

    def _make_slots(self, model: nn.Module, example: torch.Tensor) -> tuple[LayerSlot, ...]:
        specs = self._specs(model, example)
        out_of: dict[str, str] = {}
        in_of: dict[str, str] = {}
        for g in self.graph.groups:
            for n in g.out_layers:
                out_of[n] = g.key
            for n in g.in_layers:
                in_of[n] = g.key
        bits = set(self.bit_layers)
        slots = []
        quantized = False   # whether the last conv/linear runs at the space's a_bits (then so does its BN)
        for name, spec in specs.items():
            mod = get_module(model, name)
            dw = isinstance(mod, nn.Conv2d) and mod.groups > 1 and mod.groups == mod.in_channels == mod.out_channels
            parent, _, last = name.rpartition(".")
            factor_of = parent if parent in self.full_ranks and last in ("0", "1") else None
            dense = None
            if factor_of is not None and last == "0":
                dense = LayerSlot(factor_of, self.dense_specs[factor_of], in_key=in_of.get(name),
                                  out_key=out_of.get(f"{factor_of}.1"),
                                  bits_key=f"{factor_of}.1" if f"{factor_of}.1" in bits else None)
            if spec.op == "batchnorm":
                key = out_of.get(name)
                if quantized and self.options.a_bits:
                    spec = spec.replace(a_bits=self.options.a_bits, out_shape=spec.out_shape)
                slots.append(LayerSlot(name, spec, in_key=key, out_key=key))
                continue
            quantized = name in bits
            slots.append(LayerSlot(name, spec, in_key=out_of.get(name) if dw else in_of.get(name),
                                   out_key=out_of.get(name), bits_key=name if name in bits else None,
                                   depthwise=dw, factor_of=factor_of, dense=dense))
        return tuple(slots)

    def passive_slots(self) -> tuple[LayerSlot, ...]:
        """The other ops the device runs (activations, pooling, adds), each tied to the channel group of
        the conv/linear/batch-norm executed just before it when its channel count matches that group
        (else fixed). Traced once, on first use (``extract_layers``: ``torch.export``, hooks fallback);
        ``other`` ops (reshapes) are left out, as in :func:`~hwloop.search.report.measure_compressed`.
        """
        if self._passive is None:
            import warnings

            from hwloop.workload import WorkloadWarning, extract_layers

            with warnings.catch_warnings():
                warnings.simplefilter("ignore", WorkloadWarning)
                specs = extract_layers(copy.deepcopy(self.template).eval(), self.example)
            by_name = {s.name: s for s in self.slots}
            channels = {g.key: g.channels for g in self.graph.groups}
            cur: str | None = None
            quantized = False   # ops after a quantized conv/linear see its a_bits activations (report.py agrees)
            bits = set(self.bit_layers)
            out: list[LayerSlot] = []
            for spec in specs:
                if spec.op in ("conv2d", "linear", "batchnorm"):
                    slot = by_name.get(spec.name)
                    cur = slot.out_key if slot is not None else None
                    if spec.op != "batchnorm":
                        quantized = spec.name in bits
                    continue
                if spec.op == "other":
                    continue
                if quantized and self.options.a_bits:
                    spec = spec.replace(a_bits=self.options.a_bits, out_shape=spec.out_shape)
                key = cur if cur is not None and len(spec.in_shape) >= 2 and \
                    spec.in_shape[1] == channels.get(cur) else None
                out.append(LayerSlot(f"{spec.name}#{len(out)}", spec, in_key=key, out_key=key))
            self._passive = tuple(out)
        return self._passive

    # ------------------------------------------------------------------ dimensions
    def min_keep(self, channels: int) -> int:
        return max(1, math.ceil(self.options.min_keep_ratio * channels))

    def dimensions(self) -> list[Dimension]:
        """Every searchable decision, in model order."""
        dims: list[Dimension] = []
        for g in self.graph.groups:
            if g.kind == "rank":
                layer = rank_layer(g.key)
                dims.append(Dimension(rank_group(layer), "ratio", self.min_keep(g.channels) / g.channels, 1.0,
                                      size=g.channels))
            elif self.options.channels:
                dims.append(Dimension(f"width:{g.key}", "ratio", self.min_keep(g.channels) / g.channels, 1.0,
                                      size=g.channels))
        for n in self.bit_layers:
            lv = self.options.bit_levels
            dims.append(Dimension(str(SizeKey.bits(n)), "choice", choices=lv, size=lv[-1]))
        return dims

    def default_config(self) -> dict[str, float | int]:
        """The uncompressed point (every ratio 1.0, top bit-width)."""
        return {d.name: (d.high if d.kind == "ratio" else d.choices[-1]) for d in self.dimensions()}

    def sample(self, rng: Any) -> dict[str, float | int]:
        """A uniformly random config (``rng``: ``numpy.random.Generator``)."""
        cfg: dict[str, float | int] = {}
        for d in self.dimensions():
            if d.kind == "ratio":
                cfg[d.name] = float(rng.uniform(d.low, d.high))
            else:
                cfg[d.name] = int(d.choices[int(rng.integers(len(d.choices)))])
        return cfg

    def plan_from_config(self, config: Mapping[str, float | int], meta: Mapping[str, Any] | None = None
                         ) -> CompressionPlan:
        """A :class:`CompressionPlan` for ``config`` (missing names keep the default)."""
        dims = {d.name: d for d in self.dimensions()}
        unknown = set(config) - set(dims)
        if unknown:
            raise SearchError(f"config names unknown dimension(s) {sorted(unknown)[:5]}; see SearchSpace.dimensions()")
        full = {**self.default_config(), **dict(config)}
        widths: dict[str, int] = {}
        lowrank: dict[str, int] = {}
        w_bits: dict[str, int] = {}
        for name, v in full.items():
            d = dims[name]
            kind, _, target = name.partition(":")
            if d.kind == "ratio":
                if not d.low - 1e-9 <= float(v) <= d.high + 1e-9:
                    raise SearchError(f"{name}={v} is outside [{d.low:.3f}, {d.high}]")
                n = min(d.size, max(self.min_keep(d.size), round(float(v) * d.size)))
                if kind == "rank":
                    if n < d.size:
                        lowrank[target] = n
                elif n < d.size:
                    widths[target] = n
            else:
                if int(v) not in d.choices:
                    raise SearchError(f"{name}={v} is not allowed; choices: {d.choices}")
                w_bits[target] = int(v)
        w_bits = self._dense_bits(w_bits, lowrank)
        return CompressionPlan(base=self.ref.to_dict() if self.ref else None, lowrank=lowrank, widths=widths,
                               w_bits=w_bits, a_bits=self.options.a_bits if w_bits else None, meta=meta or {})

    def _dense_bits(self, w_bits: Mapping[str, int], lowrank: Mapping[str, int]) -> dict[str, int]:
        """Bits of factor layers map to their dense layer when it stays dense (the larger of the two)."""
        out: dict[str, int] = {}
        for n, b in w_bits.items():
            parent, _, last = n.rpartition(".")
            if parent in self.full_ranks and last in ("0", "1") and parent not in lowrank:
                out[parent] = max(out.get(parent, 0), b)
            else:
                out[n] = b
        return out

    def compress(self, config: Mapping[str, float | int], model: nn.Module | None = None
                 ) -> tuple[nn.Module, CompressionPlan]:
        """Physically compress a copy of ``model`` (default: the space's base model) per ``config``.

        Channels are chosen by Torch-Pruning's group magnitude importance; factorised layers
        keep their top singular directions; weights are rounded to their bits.
        """
        plan = self.plan_from_config(config)
        net = copy.deepcopy(self.model if model is None else model).eval()
        return compress_(net, plan, self.example), plan

    def sizes_of_plan(self, plan: CompressionPlan) -> tuple[dict[str, float], frozenset[str]]:
        """Hard sizes (``ch:<group>``, ``bits:<layer>``) and the set of dense (unfactorised) layers of a plan."""
        sizes: dict[str, float] = {}
        for g in self.graph.groups:
            if g.kind == "rank":
                sizes[SizeKey.channels(g.key)] = float(plan.lowrank.get(rank_layer(g.key), g.channels))
            else:
                sizes[SizeKey.channels(g.key)] = float(plan.widths.get(g.key, g.channels))
        dense = frozenset(n for n in self.lowrank if n not in plan.lowrank)
        for n in self.bit_layers:
            parent = n.rpartition(".")[0]
            if parent in dense:
                b = plan.w_bits.get(parent)
            else:
                b = plan.w_bits.get(n)
            sizes[SizeKey.bits(n)] = float(b if b is not None else self.options.bit_levels[-1])
        return sizes, dense

    def full_sizes(self) -> dict[str, float]:
        """Sizes of the uncompressed model."""
        sizes: dict[str, float] = {SizeKey.channels(g.key): float(g.channels) for g in self.graph.groups}
        sizes.update({SizeKey.bits(n): float(self.options.bit_levels[-1]) for n in self.bit_layers})
        return sizes
