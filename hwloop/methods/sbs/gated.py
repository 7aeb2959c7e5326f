""":class:`SbsModel`: a model with SBS's super-bit weights, activation bit gates and filter-wise 0-bit gates attached.

Every conv/linear layer is one of

* ``search``: its weight is the super-bit weight over ``w_levels`` (:func:`~hwloop.methods.sbs.quant.super_bit_weight`)
  with one learned threshold per offset (the offset is kept when its RMS, relative to the RMS it had at the start,
  exceeds the threshold; nested), its input activations the same over ``a_levels`` (no 0-bit);
* ``fixed``: weight and input at fixed bits (the first / last layer policy ``w8a8``);
* ``float``: left in float (policy ``float``).

Every prunable channel group (:attr:`SearchSpace.graph`, coupled across residual adds) has a filter-wise 0-bit gate
per channel: kept when the channel's relative filter norm (mean over the group's layers of ``‖w_c‖ / max_c ‖w_c‖``)
exceeds the group's learned threshold; the largest :meth:`SbsModel.floor` always stay (``min_keep`` of the group's
channels, and at least the space's own minimum), so no group, e.g. a residual stream, collapses to a channel or two. A 0 gate zeroes the filters of the
group's layers and their outputs after batch-norm (its sites), so the channel is gone as extraction removes it.

Gates are hard in the forward pass, straight-through in the backward pass; :meth:`SbsModel.cost_state` hands the
cost the kept-channel sums and the one-hot bit indicators; :meth:`SbsModel.freeze` fixes a configuration (the
thresholds then no longer matter), :meth:`SbsModel.release` gives back the plain network.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrize

from hwloop.compress.extract import get_module
from hwloop.errors import CompressionError
from hwloop.methods.sbs.actq import A_RANGES, A_SIGNED, quantize_act
from hwloop.methods.sbs.cost import CostState, SbsLayer
from hwloop.methods.sbs.quant import (
    W_GRIDS,
    normalise,
    plan_grid_weight,
    residual_codes,
    super_bit_weight,
    threshold_gate,
)

__all__ = ["SbsModel"]

POLICIES = ("search", "fixed", "float")


def _key(name: str) -> str:
    return name.replace(".", "__")


def _cum(gates: torch.Tensor) -> torch.Tensor:
    """``[1, g₂, g₂g₃, …]``: the nested indicators (a higher offset only under the lower ones)."""
    out = [torch.ones((), dtype=gates.dtype)]
    for g in gates:
        out.append(out[-1] * g)
    return torch.stack(out)


def _onehot(cum: torch.Tensor) -> torch.Tensor:
    """One-hot over the levels from the nested indicators (exact 0/1 for hard gates)."""
    return cum - torch.cat([cum[1:], torch.zeros(1, dtype=cum.dtype)])


class _Weight(nn.Module):
    """Parametrization: raw weight → the owner's gated quantized weight of ``layer`` (owner not a submodule)."""

    def __init__(self, owner: SbsModel, layer: str) -> None:
        super().__init__()
        object.__setattr__(self, "_owner", owner)
        self.layer = layer

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        owner: Any = self.__dict__["_owner"]
        return owner._weight(self.layer, w)


class SbsModel(nn.Module):
    """See the module docstring.

    Args:
        model: the starting weights (copied).
        space: the :class:`~hwloop.search.space.SearchSpace` (groups, sites, min_keep).
        layers: the conv/linear layers (:func:`~hwloop.methods.sbs.cost.sbs_layers`).
        policy: layer → ``search`` | ``fixed`` | ``float``; fixed: layer → ``(w, a)``.
        prune: attach filter-wise 0-bit gates to the channel groups.
        clip: the weight clip (fraction of each channel's largest magnitude).
        min_keep: the per-group channel floor of the filter gates, a fraction in (0, 1] of each coupled group's
            channels (rounded up; never below the space's ``min_keep``).
        a_score_momentum: the weight of a training batch's activation score in a moving average that the
            activation gates read (1: each batch's own score; smaller: less batch noise, a gate does not switch
            off because one batch's residual came out small).
        a_signed: ``symmetric`` (every activation on signed codes, as the plain quantizer) or ``auto`` (unsigned
            codes ``0 … 2^b − 1`` for an input never seen negative, e.g. after a ReLU: :mod:`~hwloop.methods.sbs.actq`).
    """

    def __init__(self, model: nn.Module, space: Any, layers: Sequence[SbsLayer], policy: Mapping[str, str],
                 fixed: Mapping[str, tuple[int, int]], w_levels: Sequence[int], a_levels: Sequence[int], *,
                 prune: bool = True, clip: float = 1.0, act_momentum: float = 0.1, min_keep: float = 0.25,
                 a_score_momentum: float = 1.0, a_signed: str = "symmetric", w_grid: str = "superbit",
                 w_range: str = "max") -> None:
        super().__init__()
        self.net = copy.deepcopy(model)
        self.space = space
        self.layers = list(layers)
        self.policy = dict(policy)
        bad = {k: v for k, v in self.policy.items() if v not in POLICIES}
        if bad:
            raise CompressionError(f"layer policy {bad} is unknown; allowed: {', '.join(POLICIES)}")
        self.fixed = dict(fixed)
        self.w_levels, self.a_levels = tuple(w_levels), tuple(a_levels)
        self.clip, self.act_momentum = clip, act_momentum
        if isinstance(min_keep, bool) or not isinstance(min_keep, (int, float)) or not 0.0 < min_keep <= 1.0:
            raise CompressionError(f"min_keep={min_keep!r} must be a fraction of each group's channels in (0, 1]")
        self.min_keep = float(min_keep)
        if isinstance(a_score_momentum, bool) or not isinstance(a_score_momentum, (int, float)) \
                or not 0.0 < a_score_momentum <= 1.0:
            raise CompressionError(f"a_score_momentum={a_score_momentum!r} must be in (0, 1] (1: per batch)")
        self.a_score_momentum = float(a_score_momentum)
        if a_signed not in A_SIGNED:
            raise CompressionError(f"a_signed={a_signed!r} is unknown; allowed: {', '.join(A_SIGNED)}")
        self.a_signed = a_signed
        if w_grid not in W_GRIDS:
            raise CompressionError(f"w_grid={w_grid!r} is unknown; allowed: {', '.join(W_GRIDS)}")
        if w_range not in A_RANGES:
            raise CompressionError(f"w_range={w_range!r} is unknown; allowed: {', '.join(A_RANGES)}")
        self.w_grid, self.w_range = w_grid, w_range
        self.w_thr = nn.ParameterDict()
        self.a_thr = nn.ParameterDict()
        self.f_thr = nn.ParameterDict()
        searched = [n.name for n in self.layers if self.policy.get(n.name) == "search"]
        for n in searched:
            self.w_thr[_key(n)] = nn.Parameter(torch.zeros(len(self.w_levels) - 1))
            self.a_thr[_key(n)] = nn.Parameter(torch.zeros(len(self.a_levels) - 1))
            w = self._raw(n).detach()
            z, _ = normalise(w, clip)
            codes = residual_codes(z, self.w_levels)
            top = float(2 ** self.w_levels[-1] - 1)
            rms = [((2.0 * codes[j] * (top / (2 ** b - 1)) / top) ** 2).mean().sqrt().float().clamp_min(1e-8)
                   for j, b in enumerate(self.w_levels) if j > 0]
            self.register_buffer(f"wscale_{_key(n)}", torch.stack(rms) if rms else torch.ones(0))
            self.register_buffer(f"ascale_{_key(n)}", torch.full((len(self.a_levels) - 1,), -1.0))
            self.register_buffer(f"ascore_{_key(n)}", torch.full((len(self.a_levels) - 1,), -1.0))
        quantized = [n.name for n in self.layers if self.policy.get(n.name) in ("search", "fixed")]
        for n in quantized:
            self.register_buffer(f"amax_{_key(n)}", torch.tensor(-1.0))
            self.register_buffer(f"amin_{_key(n)}", torch.tensor(0.0))
        self.groups = [g for g in space.graph.groups if prune and g.kind == "channel"]
        for g in self.groups:
            self.f_thr[_key(g.key)] = nn.Parameter(torch.zeros(()))
        self.frozen: dict[str, Any] | None = None
        self._fg: dict[str, torch.Tensor] = {}
        self._gates: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self._handles: list[Any] = []
        self._out_group = {n.name: n.out_key for n in self.layers}
        for n in quantized + [n.name for n in self.layers if self.policy.get(n.name) == "float"
                              and any(n.name in g.out_layers for g in self.groups)]:
            parametrize.register_parametrization(get_module(self.net, n), "weight", _Weight(self, n))
        for n in quantized:
            self._handles.append(get_module(self.net, n).register_forward_pre_hook(
                lambda m, args, n=n: (self._act(n, args[0]), *args[1:])))
        for g in self.groups:
            for site in g.sites:
                self._handles.append(get_module(self.net, site).register_forward_hook(
                    lambda m, i, o, k=g.key: o * self._fg[k].reshape([1, -1] + [1] * (o.dim() - 2)).to(o.dtype)))

    # ------------------------------------------------------------------ parameters
    def threshold_parameters(self) -> list[nn.Parameter]:
        return [*self.w_thr.values(), *self.a_thr.values(), *self.f_thr.values()]

    def weight_parameters(self) -> list[nn.Parameter]:
        return list(self.net.parameters())

    def project_(self) -> None:
        with torch.no_grad():
            for p in self.threshold_parameters():
                p.clamp_(min=0.0)

    @torch.no_grad()
    def init_thresholds_(self, margin: float, x: torch.Tensor | None = None) -> dict[str, float]:
        """Start every threshold ``margin`` below the score it gates, so the first steps of cost pressure already
        change the configuration (thresholds at 0 leave a gap of about 1 to cross at ``gate_lr`` per step: with a
        short schedule the search never leaves the full model). Filter gates: ``margin`` below the lowest score
        the floor does not force; weight / activation bit gates: ``1 − margin`` (scores are relative to the start,
        so 1 there; activations read that start from one forward pass of ``x``). Returns the thresholds set."""
        if x is not None and len(self.a_thr):
            was = self.training
            self.train()
            self(x)
            self.train(was)
        out: dict[str, float] = {}
        for g in self.groups:
            s = torch.sort(self.filter_scores(g.key).detach(), descending=True).values
            free = s[self.floor(g.channels):]
            v = max(0.0, float(free.min()) - margin) if free.numel() else 0.0
            self.f_thr[_key(g.key)].fill_(v)
            out[f"filter:{g.key}"] = v
        for d in (self.w_thr, self.a_thr):
            for k, p in d.items():
                p.fill_(max(0.0, 1.0 - margin))
                out[k] = max(0.0, 1.0 - margin)
        return out

    # ------------------------------------------------------------------ gates
    def floor(self, channels: int) -> int:
        """The fewest channels a group of ``channels`` keeps: ``ceil(min_keep·channels)``, at least the space's."""
        return min(channels, max(self.space.min_keep(channels), math.ceil(self.min_keep * channels - 1e-9)))

    def _raw(self, layer: str) -> torch.Tensor:
        mod: Any = get_module(self.net, layer)
        if parametrize.is_parametrized(mod, "weight"):
            return mod.parametrizations.weight.original
        w: torch.Tensor = mod.weight
        return w

    def filter_scores(self, key: str) -> torch.Tensor:
        g = next(x for x in self.groups if x.key == key)
        scores = []
        for n in g.out_layers:
            mod = get_module(self.net, n)
            if not isinstance(mod, (nn.Conv2d, nn.Linear)):
                continue
            w = self._raw(n)
            v = w.reshape(w.shape[0], -1).norm(dim=1)
            scores.append(v / v.detach().max().clamp_min(1e-12))
        return torch.stack(scores).mean(0)

    def _filter_gates(self) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        for g in self.groups:
            s = self.filter_scores(g.key)
            gate = threshold_gate(s, self.f_thr[_key(g.key)])
            if self.frozen is not None:
                keep = self.frozen["masks"][g.key].to(gate.dtype)
                gate = keep + (gate - gate.detach())
            else:
                forced = torch.zeros_like(s)
                forced[torch.argsort(s.detach(), descending=True)[:self.floor(g.channels)]] = 1.0
                gate = gate + ((1.0 - gate) * forced).detach()
            out[g.key] = gate
        return out

    def _bit_gates(self, layer: str, w: torch.Tensor) -> torch.Tensor:
        """The nested weight indicators ``[1, G₂, …]`` of a searched layer."""
        z, _ = normalise(w.detach(), self.clip)
        codes = residual_codes(z, self.w_levels)
        top = float(2 ** self.w_levels[-1] - 1)
        rms = torch.stack([((2.0 * codes[j] * (top / (2 ** b - 1)) / top) ** 2).mean().sqrt().float()
                           for j, b in enumerate(self.w_levels) if j > 0])
        g = threshold_gate(rms / getattr(self, f"wscale_{_key(layer)}"), self.w_thr[_key(layer)])
        if self.frozen is not None:
            on = torch.tensor([1.0 if self.frozen["w"][layer] >= b else 0.0 for b in self.w_levels[1:]])
            g = on + (g - g.detach())
        return _cum(g)

    def _weight(self, layer: str, w: torch.Tensor) -> torch.Tensor:
        pol = self.policy.get(layer, "float")
        if pol == "search":
            cum = self._bit_gates(layer, w)
            self._gates.setdefault(layer, (cum, torch.ones(1)))
            self._gates[layer] = (cum, self._gates[layer][1])
            if self.w_grid == "plan":   # every level on the grid extraction exports (2 bits: ternary)
                out = plan_grid_weight(w, self.w_levels, cum[1:], self.w_range)
            else:
                out, _ = super_bit_weight(w, self.w_levels, cum[1:], self.clip)
        elif pol == "fixed":
            out, _ = super_bit_weight(w, (self.fixed[layer][0],), torch.ones(0), self.clip)
        else:
            out = w
        key = self._out_group.get(layer)
        if key in self._fg and w.shape[0] == self._fg[key].numel():
            out = out * self._fg[key].reshape([-1] + [1] * (w.dim() - 1)).to(out.dtype)
        return out

    def _act(self, layer: str, x: torch.Tensor) -> torch.Tensor:
        amax = getattr(self, f"amax_{_key(layer)}")
        amin = getattr(self, f"amin_{_key(layer)}")
        if self.training:
            with torch.no_grad():
                cur = x.detach().abs().amax()
                amax.copy_(cur if amax < 0 else (1 - self.act_momentum) * amax + self.act_momentum * cur)
                amin.copy_(torch.minimum(amin, x.detach().min()))
        if amax < 0:
            return x
        signed = self.a_signed == "symmetric" or bool(amin < 0)
        if self.policy[layer] == "fixed":
            return quantize_act(x, amax, self.fixed[layer][1], signed)
        qs = [quantize_act(x, amax, b, signed) for b in self.a_levels]
        res = [qs[j] - qs[j - 1] for j in range(1, len(qs))]
        rms = torch.stack([(r.detach() ** 2).mean().sqrt() / amax.clamp_min(1e-12) for r in res]).float()
        scale = getattr(self, f"ascale_{_key(layer)}")
        if bool((scale < 0).any()):
            with torch.no_grad():
                scale.copy_(rms.clamp_min(1e-8))
        score = rms / scale
        if self.a_score_momentum < 1.0:
            avg = getattr(self, f"ascore_{_key(layer)}")
            if self.training:
                with torch.no_grad():
                    m = self.a_score_momentum
                    avg.copy_(score if bool((avg < 0).any()) else (1 - m) * avg + m * score)
            if not bool((avg < 0).any()):
                score = avg.clone()
        g = threshold_gate(score, self.a_thr[_key(layer)])
        if self.frozen is not None:
            on = torch.tensor([1.0 if self.frozen["a"][layer] >= b else 0.0 for b in self.a_levels[1:]])
            g = on + (g - g.detach())
        cum = _cum(g)
        w_cum = self._gates.get(layer, (torch.ones(1), None))[0]
        self._gates[layer] = (w_cum, cum)
        out = qs[0]
        for j, r in enumerate(res):
            out = out + cum[j + 1].to(x.dtype) * r
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._fg = self._filter_gates()
        self._gates = {}
        return self.net(x)

    # ------------------------------------------------------------------ reading the configuration
    def cost_state(self) -> CostState:
        """The cost's view of the last forward pass (call after ``forward``)."""
        w_oh: dict[str, torch.Tensor | None] = {}
        a_oh: dict[str, torch.Tensor | None] = {}
        fixed: dict[str, tuple[int | None, int | None]] = {}
        for n in self.layers:
            pol = self.policy.get(n.name, "float")
            if pol == "search":
                wc, ac = self._gates[n.name]
                w_oh[n.name], a_oh[n.name] = _onehot(wc), _onehot(ac)
            else:
                w_oh[n.name] = a_oh[n.name] = None
                fixed[n.name] = self.fixed[n.name] if pol == "fixed" else (None, None)
        channels = {k: v.sum() for k, v in self._fg.items()}
        return CostState(channels, w_oh, a_oh, fixed)

    def hard_config(self) -> dict[str, Any]:
        """``{"masks": group → bool tensor, "w": layer → bits, "a": layer → bits}`` of the last forward pass
        (fixed layers at their bits, float layers absent)."""
        masks = {k: v.detach() > 0.5 for k, v in self._fg.items()}
        w: dict[str, int] = {}
        a: dict[str, int] = {}
        for n in self.layers:
            pol = self.policy.get(n.name, "float")
            if pol == "search":
                wc, ac = self._gates[n.name]
                w[n.name] = self.w_levels[int((wc.detach() > 0.5).sum()) - 1]
                a[n.name] = self.a_levels[int((ac.detach() > 0.5).sum()) - 1]
            elif pol == "fixed":
                w[n.name], a[n.name] = self.fixed[n.name]
        return {"masks": masks, "w": w, "a": a}

    def freeze(self, config: Mapping[str, Any]) -> None:
        """Fix the configuration (``hard_config`` format; searched layers need ``w`` and ``a`` entries)."""
        masks = {k: torch.as_tensor(v, dtype=torch.bool) for k, v in config["masks"].items()}
        missing = [g.key for g in self.groups if g.key not in masks]
        if missing:
            raise CompressionError(f"freeze: no mask for channel group(s) {missing[:3]}")
        self.frozen = {"masks": masks, "w": dict(config["w"]), "a": dict(config["a"])}

    def thaw(self) -> None:
        self.frozen = None

    def amax(self) -> dict[str, float]:
        return {n.name: float(getattr(self, f"amax_{_key(n.name)}")) for n in self.layers
                if hasattr(self, f"amax_{_key(n.name)}") and float(getattr(self, f"amax_{_key(n.name)}")) >= 0}

    def signed(self) -> dict[str, bool]:
        """Per quantized layer: whether its input is quantized on signed codes (``a_signed``, the inputs seen)."""
        return {n: self.a_signed == "symmetric" or bool(getattr(self, f"amin_{_key(n)}") < 0)
                for n in self.amax()}

    def release(self) -> nn.Module:
        """Remove every hook and parametrization (raw weights stay) and return the plain network."""
        for h in self._handles:
            h.remove()
        self._handles.clear()
        for name, mod in list(self.net.named_modules()):
            if parametrize.is_parametrized(mod, "weight"):
                parametrize.remove_parametrizations(mod, "weight", leave_parametrized=False)
        return self.net

    def named_thresholds(self) -> Iterator[tuple[str, torch.Tensor]]:
        for kind, d in (("w", self.w_thr), ("a", self.a_thr), ("filter", self.f_thr)):
            for k, p in d.items():
                yield f"{kind}:{k.replace('__', '.')}", p
