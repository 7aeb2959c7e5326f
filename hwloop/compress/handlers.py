"""Handlers: the surgery each plan action kind performs, and :func:`replay_`, which dispatches to them.

A handler is an object with ``action`` (the :class:`~hwloop.compress.actions.Action` class it applies) and
``apply(model, actions, state)``; :func:`replay_` runs a plan's actions in order and hands each run of
consecutive actions of one kind to its handler in one call (channel pruning traces the model once per run).
:data:`~hwloop.compress.actions.HANDLERS` names the built-in handlers; ``handlers=`` adds or overrides kinds
from Python (never from a file).

Example:
    >>> from hwloop.compress.actions import ChannelPrune, Quantize
    >>> from hwloop.compress.handlers import replay_
    >>> from hwloop.models import ModelRef
    >>> ref = ModelRef("small_cnn")
    >>> net = replay_(ref.build(), [ChannelPrune("features.0", 4), Quantize("features.3", 4)], ref.example_input())
    >>> net.features[3].in_channels
    4
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import nn

from hwloop.compress.actions import HANDLERS, Action, ChannelPrune, LowRank, Quantize
from hwloop.compress.extract import analyze, apply_bits_, get_module, prune_groups_, set_module
from hwloop.compress.lowrank import factorize, tucker2
from hwloop.errors import CompressionError

__all__ = ["ChannelPruneHandler", "Handler", "LowRankHandler", "QuantizeHandler", "ReplayState", "load_handler",
           "replay_"]


@dataclass
class ReplayState:
    """What handlers share while a plan is replayed: the example input and the low-rank forms applied so far."""

    example: torch.Tensor
    forms: dict[str, str] = field(default_factory=dict)   # layer → "svd" | "tucker2"

    @property
    def svd(self) -> list[str]:
        return [k for k, f in self.forms.items() if f == "svd"]

    @property
    def tucker2(self) -> list[str]:
        return [k for k, f in self.forms.items() if f == "tucker2"]


class Handler(Protocol):
    """Applies one kind of action: ``apply`` gets a run of consecutive actions of that kind."""

    action: type[Action]

    def apply(self, model: nn.Module, actions: Sequence[Any], state: ReplayState) -> None: ...


class ChannelPruneHandler:
    """Removes channels for real with Torch-Pruning (largest group L2 magnitude kept), one trace per run."""

    action = ChannelPrune

    def apply(self, model: nn.Module, actions: Sequence[ChannelPrune], state: ReplayState) -> None:
        graph = analyze(model, state.example, lowrank=state.svd, tucker2=state.tucker2)
        known = {g.key for g in graph.groups}
        unknown = sorted({a.group for a in actions} - known)
        if unknown:
            raise CompressionError(f"plan channel_prune names unknown group(s) {unknown}; known: {sorted(known)}")
        for a in actions:
            if a.kept > graph.group(a.group).channels:
                raise CompressionError(f"plan channel_prune[{a.group!r}].kept={a.kept} is more than the group's "
                                       f"{graph.group(a.group).channels} channels")
        prune_groups_(graph, {a.group: a.kept for a in actions if a.kept < graph.group(a.group).channels})


class LowRankHandler:
    """Replaces a layer by its truncated-SVD pair or its Tucker-2 triple (a layer that already is the
    factorised ``nn.Sequential`` of that form, as in extraction from a gated model, is left as it is)."""

    action = LowRank

    def apply(self, model: nn.Module, actions: Sequence[LowRank], state: ReplayState) -> None:
        for a in actions:
            mod = get_module(model, a.layer)
            n = 2 if a.form == "svd" else 3
            if isinstance(mod, nn.Sequential):
                if len(mod) != n:
                    raise CompressionError(f"layer {a.layer!r} is already a {len(mod)}-layer Sequential; "
                                           f"low_rank form {a.form!r} needs a dense layer")
            elif a.form == "svd":
                set_module(model, a.layer, factorize(mod, a.ranks[0])[0])
            else:
                set_module(model, a.layer, tucker2(mod, (a.ranks[0], a.ranks[1])))
            state.forms[a.layer] = a.form


class QuantizeHandler:
    """Rounds each listed weight to its bits (symmetric, per output channel); activation bits act at run time
    (:class:`~hwloop.compress.actquant.quantized_activations`)."""

    action = Quantize

    def apply(self, model: nn.Module, actions: Sequence[Quantize], state: ReplayState) -> None:
        apply_bits_(model, {a.layer: a.w_bits for a in actions})


def load_handler(kind: str, handlers: Mapping[str, Handler] | None = None) -> Handler:
    """The handler of ``kind``: from ``handlers`` (Python) or hwloop's own table."""
    if handlers and kind in handlers:
        return handlers[kind]
    if kind not in HANDLERS:
        known = sorted({*HANDLERS, *(handlers or {})})
        raise CompressionError(f"no handler for plan action kind {kind!r}; known: {', '.join(known)}")
    module, _, cls = HANDLERS[kind].partition(":")
    return getattr(importlib.import_module(module), cls)()  # hwloop's own table, never a name from a file


def replay_(model: nn.Module, actions: Sequence[Action], example: torch.Tensor,
            handlers: Mapping[str, Handler] | None = None) -> nn.Module:
    """Apply ``actions`` to ``model`` in order (in place; returned). Consecutive actions of one kind go to
    their handler together."""
    state = ReplayState(example=example)
    i = 0
    while i < len(actions):
        j = i
        while j < len(actions) and actions[j].kind == actions[i].kind:
            j += 1
        handler = load_handler(actions[i].kind, handlers)
        if not isinstance(actions[i], handler.action):
            raise CompressionError(f"handler for {actions[i].kind!r} applies {handler.action.__name__}, "
                                   f"got {type(actions[i]).__name__}")
        handler.apply(model, actions[i:j], state)
        i = j
    return model
