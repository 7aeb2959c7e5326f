"""A deployable LCS family: both endpoints + a JSON description; real models at any α; α picked for a budget.

:class:`LcsFamily` wraps a trained line model. :meth:`LcsFamily.at` gives a real member: for ``width`` a
physically smaller ``nn.Module`` whose plan (format 2, one ``ChannelPrune`` per coupled group, prefix counts) hwloop
rebuilds from the base :class:`~hwloop.models.ModelRef` (``from_plan`` builds the shapes, the member's weights are
ω(α) sliced to them); for ``topk`` the dense model with ω(α) masked and a plan of ``Sparsify(unstructured)``
actions whose magnitude rule keeps exactly those weights; for ``bits`` a standalone line model fixed at α (per-tensor
affine fake quantization has no plan-v2 action; ``Quantize`` is symmetric per channel), with ``plan=None``.

:meth:`LcsFamily.measure` fills an α → latency table for a device — live whole-member measurement
(:func:`hwloop.search.report.measure_compressed`) or the shared layer cost table
(:func:`hwloop.search.costtable.build_cost_table`, one level per α); :meth:`LcsFamily.select` then picks, with
no data, the most accurate α (accuracies recorded at training time) whose table latency meets a budget.

Files (:meth:`LcsFamily.save` / :meth:`LcsFamily.load`; never pickle): ``family.json`` (format, base ref, mode,
compression range, flags, accuracy and latency tables) and ``endpoints.safetensors`` (every line parameter: ω₀ as
``<layer>.weight``, ω₁ as ``<layer>.weight1``).

Example:
    >>> from hwloop.models import ModelRef
    >>> fam = LcsFamily.create(ModelRef("small_cnn", {"norm": "in"}), "width")
    >>> m = fam.at(0.0)
    >>> m.model.features[0].out_channels, m.plan.actions[0].kind
    (4, 'channel_prune')
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from hwloop.errors import SearchError
from hwloop.methods.lcs.lines import LineConv2d, LineNorm, LineState, line_layers, n_channels, to_lines
from hwloop.models import ModelRef

__all__ = ["FAMILY_FORMAT", "LcsFamily", "Member", "Selection", "default_grid", "init_from_state"]

FAMILY_FORMAT = 1
#: the most rows a stored per-alpha statistics table may have (a family file is untrusted input)
MAX_TABLE_ROWS = 1000


def default_grid(n: int = 7) -> list[float]:
    """``n`` evenly spaced α in [0, 1]."""
    return [round(i / (n - 1), 6) for i in range(n)] if n > 1 else [1.0]


@dataclass
class Member:
    """One family member: ``model`` at ``alpha`` and its plan (None where no plan-v2 action expresses it)."""

    alpha: float
    model: nn.Module
    plan: Any
    level: dict[str, float]


@dataclass(frozen=True)
class Selection:
    """What :meth:`LcsFamily.select` chose: ``met`` False when no α meets the budget (then the fastest α)."""

    alpha: float
    latency_ms: float
    accuracy: float | None
    met: bool
    budget_ms: float


MAX_TABLE_ALPHAS = 101   # entries of a family.json accuracy or latency table (a file from others is bounded)


def _check_tables(d: Path, accuracy: Mapping[float, float], latency: Mapping[str, Mapping[float, float]]) -> None:
    """A family.json's tables are data from someone else: alphas in [0, 1], accuracies finite, latencies finite and
    > 0, at most :data:`MAX_TABLE_ALPHAS` entries each (one line naming the first bad value otherwise)."""
    tables = [("accuracy", accuracy)] + [(f"latency[{k!r}]", t) for k, t in latency.items()]
    for what, t in tables:
        if len(t) > MAX_TABLE_ALPHAS:
            raise SearchError(f"{d}/family.json: {what} has {len(t)} entries; allowed: at most {MAX_TABLE_ALPHAS}")
        for a, v in t.items():
            if not (math.isfinite(a) and 0.0 <= a <= 1.0):
                raise SearchError(f"{d}/family.json: {what} has alpha {a!r}; allowed: alphas in [0, 1]")
            ok = math.isfinite(v) and (v > 0 if what != "accuracy" else True)
            if not ok:
                raise SearchError(f"{d}/family.json: {what}[{a!r}] = {v!r}; allowed: a finite number"
                                  + (" > 0 (ms)" if what != "accuracy" else ""))


@dataclass
class LcsFamily:
    """A trained line model plus its tables (see the module docstring)."""

    ref: ModelRef
    net: nn.Module
    state: LineState
    flags: dict[str, Any] = field(default_factory=dict)
    accuracy: dict[float, float] = field(default_factory=dict)
    latency: dict[str, dict[float, float]] = field(default_factory=dict)
    latency_source: dict[str, str] = field(default_factory=dict)
    _groups: list[tuple[str, int]] | None = field(default=None, repr=False, compare=False)

    @classmethod
    def create(cls, ref: ModelRef, mode: str, *, lo: float | None = None, hi: float = 1.0, line_convs: bool = True,
               line_norms: bool = True, quantize_activations: bool = True,
               init: Mapping[str, torch.Tensor] | None = None, frozen_bn: bool = False,
               sort_channels: bool = False, train_stats: str = "frozen") -> LcsFamily:
        """A fresh (untrained) family on ``ref`` (a model with instance/group norm), ω₀ = the ref's weights.

        ``init``: a state dict of the same architecture with any norm (e.g. a trained batch-norm checkpoint) whose
        conv/linear weights and norm affine parameters become the start (:func:`init_from_state`); both endpoints
        of a line start there when the convs are shared, ω₁ stays an independent draw when they are on the line.
        ``frozen_bn`` (width only; ``ref`` a batch-norm model): its batch norms keep ``init``'s running statistics,
        frozen for every α, γ/β on the line; every member is then an ordinary batch-norm model of ``ref``.
        ``sort_channels`` (width, with ``init``): permute the start's channel groups by descending magnitude first
        (:func:`~hwloop.methods.lcs.bnstats.sort_channels_`, function-preserving), so prefixes keep the important
        channels. ``train_stats="batch"`` (``frozen_bn``): train with batch statistics; the members then need a
        per-α statistics table (:meth:`calibrate_statistics`) before :meth:`at`.
        """
        model = ref.build()
        if init is not None:
            init_from_state(model, init)
        if sort_channels:
            if init is None or mode != "width":
                raise SearchError("sort_channels needs mode 'width' and a start (init): it orders trained channels")
            from hwloop.methods.lcs.bnstats import sort_channels_

            sort_channels_(model, ref.example_input())
        net, state = to_lines(model, mode, lo=lo, hi=hi, line_convs=line_convs, line_norms=line_norms,
                              quantize_activations=quantize_activations, frozen_bn=frozen_bn, train_stats=train_stats)
        flags = {"line_convs": line_convs, "line_norms": line_norms, "quantize_activations": quantize_activations,
                 "init": "state" if init is not None else "scratch", "frozen_bn": frozen_bn,
                 "sort_channels": sort_channels, "train_stats": train_stats, "bn_table": 0}
        return cls(ref=ref, net=net, state=state, flags=flags)

    @property
    def mode(self) -> str:
        return self.state.mode

    # ------------------------------------------------------------------ members
    def level(self, alpha: float) -> dict[str, float]:
        s = copy.copy(self.state)
        s.set(alpha)
        s.warmup_steps = 0
        return {"width": s.width, "density": s.density, "bits": float(s.bits or 32)}

    def _check_statistics(self) -> None:
        """A family trained with batch statistics needs its per-alpha table before any member is taken."""
        if self.flags.get("train_stats") == "batch" and not self.flags.get("bn_table"):
            raise SearchError("this family trained with batch statistics has no statistics table yet; call "
                              "calibrate_statistics(loader) before taking members")

    def line_at(self, alpha: float) -> nn.Module:
        """A deep copy of the line model fixed at ``alpha`` (eval mode; dynamic slicing/masking/quantizing)."""
        self._check_statistics()
        net = copy.deepcopy(self.net).eval()
        st = next(m.state for _, m in line_layers(net))
        st.set(alpha)
        st.warmup_steps = 0
        return net

    def at(self, alpha: float) -> Member:
        """The real member at ``alpha`` (see the module docstring)."""
        from hwloop.compress.actions import Action, ChannelPrune, Sparsify
        from hwloop.compress.extract import analyze, compress_
        from hwloop.compress.plan import CompressionPlan

        if not 0.0 <= alpha <= 1.0:
            raise SearchError(f"alpha={alpha!r} must be in [0, 1]")
        self._check_statistics()
        lv = self.level(alpha)
        if self.mode == "bits":
            return Member(alpha, self.line_at(alpha), None, lv)
        x = self.ref.example_input()
        actions: list[Action]
        if self.mode == "width":
            if self._groups is None:   # (key, channels) of the base's coupled groups, traced once
                self._groups = [(g.key, g.channels) for g in analyze(self.ref.build(), x).groups]
            actions = [ChannelPrune(k, n_channels(lv["width"], c)) for k, c in self._groups
                       if n_channels(lv["width"], c) < c]
        else:
            actions = [Sparsify(n, "unstructured", density=lv["density"]) for n, m in line_layers(self.net)
                       if isinstance(m, LineConv2d) and not m.first and lv["density"] < 1.0]
        plan = CompressionPlan(base=self.ref.to_dict(), actions=tuple(actions))
        model = compress_(self.ref.build(), plan, x) if self.mode == "width" else self.ref.build()
        self._load_member(model, alpha, lv)
        return Member(alpha, model.eval(), plan, lv)

    def _load_member(self, model: nn.Module, alpha: float, lv: Mapping[str, float]) -> None:
        from hwloop.methods.lcs.lines import topk_mask

        mods = dict(model.named_modules())
        with torch.no_grad():
            for name, lm in line_layers(self.net):
                dst = mods[name]
                for p in lm.names:
                    v = lm.at(p, alpha)
                    t = getattr(dst, p)
                    v = v[tuple(slice(0, d) for d in t.shape)]
                    if self.mode == "topk" and p == "weight" and isinstance(lm, LineConv2d) and not lm.first:
                        v = v * topk_mask(v, lv["density"])
                    t.copy_(v)
                if isinstance(lm, LineNorm) and lm.kind == "fbn":   # the frozen (or tabled) statistics, sliced
                    for b, v in zip(("running_mean", "running_var"), lm.stats(alpha)):
                        t = getattr(dst, b)
                        t.copy_(v[: t.shape[0]])

    def fold_statistics(self, loader: Any, *, alpha: float = 0.0, batches: int = 16) -> dict[str, float]:
        """``frozen_bn`` only, at training time: fold the batch statistics of the member at an endpoint into that
        endpoint's γ/β.

        The member at ``alpha`` (0 or 1) runs ``batches`` training batches in train mode (its batch norms
        re-estimate their statistics, cumulative average); per channel the change is folded into the endpoint:
        ``γ' = γ·σ/σ̂``, ``β' = β + γ·(μ − μ̂)/σ̂`` (σ = √(var + eps)), so that with the family's frozen statistics
        (μ, σ) the member computes what the re-estimated one does. The frozen statistics stay as they are, so the
        member on the device still re-estimates nothing; the data is the training data, used once before training.
        Why: a narrow member sliced from a batch-norm checkpoint sees other statistics than the full network.

        Returns:
            ``{"layers": n, "mean_abs_log_scale": ...}`` (how far the statistics moved).
        """
        if not self.flags.get("frozen_bn"):
            raise SearchError("fold_statistics is for frozen_bn families (an instance norm has no statistics)")
        if alpha not in (0.0, 1.0):
            raise SearchError(f"alpha={alpha!r} must be an endpoint, 0 or 1")
        if batches < 1:
            raise SearchError(f"batches={batches!r} must be >= 1")
        model = self.at(alpha).model
        bns = {n: m for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)}
        for m in bns.values():
            m.reset_running_stats()
            m.momentum = None   # cumulative average over the batches
        model.train()
        with torch.no_grad():
            for i, (x, _) in enumerate(loader):
                if i >= batches:
                    break
                model(x)
        which, logs = (0 if alpha == 0.0 else 1), []
        with torch.no_grad():
            for name, lm in line_layers(self.net):
                if not (isinstance(lm, LineNorm) and lm.kind == "fbn"):
                    continue
                bn = bns[name]
                c = bn.num_features
                mu_hat, var_hat = bn.running_mean, bn.running_var
                assert mu_hat is not None and var_hat is not None   # track_running_stats (reset above)
                s = torch.sqrt(lm.running_var[:c] + lm.eps)
                s_hat = torch.sqrt(var_hat + lm.eps)
                g, b = lm.endpoint("weight", which), lm.endpoint("bias", which)
                g_new = g[:c] * s / s_hat
                b_new = b[:c] + g[:c] * (lm.running_mean[:c] - mu_hat) / s_hat
                g[:c].copy_(g_new)
                b[:c].copy_(b_new)
                logs.append(float(torch.log(s / s_hat).abs().mean()))
        return {"layers": float(len(logs)), "mean_abs_log_scale": sum(logs) / max(1, len(logs))}

    def calibrate_statistics(self, loader: Any, alphas: Sequence[float] | None = None, *, batches: int = 16,
                             progress: bool = False) -> dict[str, float]:
        """``frozen_bn`` only, before deployment: the per-α batch-norm statistics table on ``alphas`` (default: the
        7-point grid) from ``batches`` batches of ``loader`` (:func:`~hwloop.methods.lcs.bnstats.calibrate_table`),
        stored with the family; members between grid points interpolate it."""
        from hwloop.methods.lcs.bnstats import calibrate_table

        if not self.flags.get("frozen_bn"):
            raise SearchError("calibrate_statistics is for frozen_bn families (an instance norm has no statistics)")
        grid = default_grid(7) if alphas is None else list(alphas)
        out = calibrate_table(self.net, self.state, loader, grid, batches=batches, progress=progress)
        self.flags["bn_table"] = int(out["alphas"])
        return out

    # ------------------------------------------------------------------ tables
    def evaluate(self, eval_fn: Any, alphas: Sequence[float]) -> dict[float, float]:
        """Record ``eval_fn(member)`` for each α (on the real members) in :attr:`accuracy`."""
        for a in alphas:
            self.accuracy[float(a)] = float(eval_fn(self.at(a).model))
        return dict(self.accuracy)

    def measure(self, device: str | Any, alphas: Sequence[float], *, source: str = "measure", timing: Any = None,
                store: Any = None, progress: bool = False, calibrate: bool = True) -> dict[float, float]:
        """Fill the α → latency (ms) table of ``device``.

        ``source="measure"``: each member measured live as a whole model (:func:`~hwloop.search.report.
        measure_compressed` of its plan: the asic lowers the whole member through TVM, fusing what it can);
        ``"table"``: the members' layers costed through the shared
        layer cost table (one level per α, measured live on the device once per distinct layer spec and cached
        in ``store``), whole-model cost = :meth:`CostTable.model_cost`; with ``calibrate`` the table is scaled
        once so that the largest α equals that member's whole-model latency on the device
        (:meth:`CostTable.calibrate_model`): a sum of layers misses what the device does across layers (fusion
        on the asic, cache effects on the CPU).
        """
        from hwloop.devices import create_device

        dev = create_device(device) if isinstance(device, str) else device
        x = self.ref.example_input()
        members = {float(a): self.at(a) for a in alphas}
        out: dict[float, float] = {}
        if source == "measure":
            from hwloop.search.report import measure_compressed

            for a, m in members.items():
                out[a] = float(measure_compressed(dev, m.model, m.plan, example=x, timing=timing,
                                                  method="model" if m.plan is not None else "auto")["latency_ms"])
        elif source == "table":
            out = self._table_latency(dev, members, x, store=store, progress=progress, calibrate=calibrate)
        else:
            raise SearchError(f"latency source={source!r} is unknown; allowed: measure, table")
        self.latency.setdefault(dev.name, {}).update(out)
        self.latency_source[dev.name] = source + ("+calibrated" if source == "table" and calibrate else "")
        return out

    def _table_latency(self, dev: Any, members: Mapping[float, Member], x: torch.Tensor, *, store: Any,
                       progress: bool, calibrate: bool) -> dict[float, float]:
        from hwloop.search.costtable import build_cost_table
        from hwloop.search.report import layer_specs_with_bits

        levels: dict[str, dict[Hashable, list[Any]]] = {}
        for a, m in members.items():
            for i, s in enumerate(layer_specs_with_bits(m.model, x, m.plan)):
                if s.op == "other":
                    continue
                levels.setdefault(s.name or f"op{i}", {})[("alpha", a)] = [s]
        table = build_cost_table(levels, device=dev, source="measure", store=store, progress=progress)
        top = max(members)
        if calibrate and members[top].plan is not None:
            r = self.ref
            ref = ModelRef("hwloop.compress:from_plan", {"plan": members[top].plan.to_dict()},
                           input_shape=r.input_shape, batch=r.batch, dtype=r.dtype)
            table.calibrate_model(ref, {k: ("alpha", top) for k, v in levels.items() if ("alpha", top) in v},
                                  store=store)
        return {a: float(table.model_cost({k: ("alpha", a) for k, v in levels.items() if ("alpha", a) in v}))
                for a in members}

    def select(self, budget_ms: float, device: str) -> Selection:
        """The most accurate α whose table latency on ``device`` is within ``budget_ms`` (no data needed).

        Without recorded accuracies the largest such α is taken (accuracy grows with α by construction). When no
        α meets the budget the fastest α is returned with ``met=False``.
        """
        name = getattr(device, "name", device)
        table = self.latency.get(name)
        if not table:
            raise SearchError(f"family has no latency table for device {name!r}; known: {sorted(self.latency)} "
                              "(run measure() first)")
        if not isinstance(budget_ms, (int, float)) or isinstance(budget_ms, bool) or not math.isfinite(budget_ms):
            raise SearchError(f"budget_ms={budget_ms!r} must be a finite number of milliseconds")
        ok = [a for a, ms in table.items() if ms <= budget_ms]
        if not ok:
            a = min(table, key=lambda k: (table[k], k))
            return Selection(a, table[a], self.accuracy.get(a), False, float(budget_ms))
        a = max(ok, key=lambda k: (self.accuracy.get(k, -math.inf), k))
        return Selection(a, table[a], self.accuracy.get(a), True, float(budget_ms))

    # ------------------------------------------------------------------ files
    def describe(self) -> dict[str, Any]:
        s = self.state
        return {"format": FAMILY_FORMAT, "kind": "hwloop-lcs-family", "ref": self.ref.to_dict(), "mode": s.mode,
                "lo": s.lo, "hi": s.hi, "bits_lo": s.bits_lo, "bits_hi": s.bits_hi, "flags": dict(self.flags),
                "accuracy": {repr(a): v for a, v in sorted(self.accuracy.items())},
                "latency": {d: {repr(a): v for a, v in sorted(t.items())} for d, t in self.latency.items()},
                "latency_source": dict(self.latency_source)}

    def save_description(self, directory: str | Path) -> Path:
        """Rewrite only ``family.json`` (e.g. after :meth:`measure` added a latency table), atomically: the new
        file is written beside it and moved over it, so an interrupted write leaves the old one; the endpoints are
        not touched."""
        import os

        d = Path(directory)
        tmp = d / "family.json.tmp"
        tmp.write_text(json.dumps(self.describe(), indent=1) + "\n", encoding="utf-8")
        os.replace(tmp, d / "family.json")
        return d

    def save(self, directory: str | Path) -> Path:
        """Write ``family.json`` and ``endpoints.safetensors`` into ``directory``; returns it."""
        from safetensors.torch import save_file

        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        tensors = {k: v.detach().contiguous().clone() for k, v in self.net.state_dict().items()}
        save_file(tensors, str(d / "endpoints.safetensors"), metadata={"format": str(FAMILY_FORMAT)})
        return self.save_description(d)

    @classmethod
    def load(cls, directory: str | Path) -> LcsFamily:
        """Read a family written by :meth:`save` (JSON + safetensors only; nothing is imported or unpickled)."""
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        d = Path(directory)
        try:
            desc = json.loads((d / "family.json").read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise SearchError(f"{d}: no readable family.json ({type(e).__name__}: {e})") from e
        if not isinstance(desc, dict) or desc.get("kind") != "hwloop-lcs-family" or desc.get("format") != FAMILY_FORMAT:
            raise SearchError(f"{d}/family.json is not an hwloop LCS family of format {FAMILY_FORMAT}")
        try:
            ref = ModelRef.from_dict(desc["ref"])
            flags = dict(desc.get("flags", {}))
            fam = cls.create(ref, str(desc["mode"]), lo=float(desc["lo"]), hi=float(desc["hi"]),
                             line_convs=bool(flags.get("line_convs", True)),
                             line_norms=bool(flags.get("line_norms", True)),
                             quantize_activations=bool(flags.get("quantize_activations", True)),
                             frozen_bn=bool(flags.get("frozen_bn", False)),
                             train_stats=str(flags.get("train_stats", "frozen")))
            fam.flags.update(flags)
            n_table = int(flags.get("bn_table", 0) or 0)
            fam.state.bits_lo, fam.state.bits_hi = int(desc["bits_lo"]), int(desc["bits_hi"])
            fam.accuracy = {float(a): float(v) for a, v in desc.get("accuracy", {}).items()}
            fam.latency = {str(k): {float(a): float(v) for a, v in t.items()} for k, t in desc.get("latency", {}).items()}
            _check_tables(d, fam.accuracy, fam.latency)
            fam.latency_source = {str(k): str(v) for k, v in desc.get("latency_source", {}).items()}
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise SearchError(f"{d}/family.json is malformed: {type(e).__name__}: {e}") from e
        try:
            state = load_file(str(d / "endpoints.safetensors"))
        except (OSError, SafetensorError) as e:
            raise SearchError(f"{d}: cannot read endpoints.safetensors: {e}") from e
        if n_table:   # room for the per-alpha statistics table (its values come with the tensors)
            sizes = {int(v.shape[0]) for k, v in state.items() if k.endswith(".table_alpha") and v.dim() == 1}
            if not 1 <= n_table <= MAX_TABLE_ROWS or sizes != {n_table}:
                raise SearchError(f"{d}: bn_table={n_table!r} does not match the file's statistics tables (rows "
                                  f"{sorted(sizes)}); allowed: 1..{MAX_TABLE_ROWS} rows, the same in every table")
            for _, lm in line_layers(fam.net):
                if isinstance(lm, LineNorm) and lm.kind == "fbn":
                    z = torch.zeros(n_table, lm.num_channels)
                    lm.set_table(torch.zeros(n_table), z, z)
        try:
            missing, unexpected = fam.net.load_state_dict(state, strict=False)
        except RuntimeError as e:   # a tensor of the wrong shape
            raise SearchError(f"{d}/endpoints.safetensors does not fit the family: {str(e).splitlines()[0]}") from e
        if missing or unexpected:
            raise SearchError(f"{d}/endpoints.safetensors does not fit the family: missing {missing[:3]}, "
                              f"unexpected {unexpected[:3]}")
        for name, lm in line_layers(fam.net):
            a = getattr(lm, "table_alpha", None) if isinstance(lm, LineNorm) else None
            if isinstance(a, torch.Tensor):
                mean, var = getattr(lm, "table_mean"), getattr(lm, "table_var")
                assert isinstance(mean, torch.Tensor) and isinstance(var, torch.Tensor)
                ok = (bool(torch.isfinite(a).all()) and bool((a >= 0).all()) and bool((a <= 1).all())
                      and bool((a[1:] > a[:-1]).all()) and bool(torch.isfinite(mean).all())
                      and bool(torch.isfinite(var).all()) and bool((var >= 0).all()))
                if not ok:
                    raise SearchError(f"{d}/endpoints.safetensors: the statistics table of {name!r} is invalid; "
                                      "allowed: alphas finite, strictly ascending in [0, 1], means finite, "
                                      "variances finite and >= 0")
        fam.net.eval()
        return fam


#: batch-norm buffers that an instance/group-norm model has no place for (dropped by :func:`init_from_state`)
_NORM_BUFFERS = ("running_mean", "running_var", "num_batches_tracked")


def init_from_state(model: nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    """Copy ``state`` (same architecture, any norm) into ``model`` in place: weights, biases, norm γ/β.

    Batch-norm running statistics are dropped where ``model`` has no place for them (an instance/group norm
    computes its statistics per image; a batch-norm model, for ``frozen_bn``, takes them). Why
    (docs/lcs.md): an instance-norm ResNet-20 trained from scratch stays at chance for the first ~100 SGD steps on
    CIFAR-10 — every norm before the global average pool fixes each channel's mean per image, so the pooled
    features hardly differ between images — while one started from a trained checkpoint's weights learns at once.

    Raises:
        SearchError: a key of the model missing from ``state``, an extra key, or a shape that differs (one line).
    """
    own = model.state_dict()
    src = {k: v for k, v in state.items() if k in own or k.rpartition(".")[2] not in _NORM_BUFFERS}
    missing = sorted(set(own) - set(src))
    extra = sorted(set(src) - set(own))
    if missing or extra:
        raise SearchError(f"the initial weights do not fit the family's model: missing {missing[:3]}, unexpected "
                          f"{extra[:3]} (allowed: a state dict of the same architecture, any norm)")
    bad = [k for k in own if tuple(own[k].shape) != tuple(src[k].shape)]
    if bad:
        k = bad[0]
        raise SearchError(f"the initial weights do not fit the family's model: {k} has shape {tuple(src[k].shape)}, "
                          f"the model {tuple(own[k].shape)}")
    model.load_state_dict({k: v.to(own[k].dtype) for k, v in src.items()})


def norm_layers(net: nn.Module) -> list[str]:
    """Names of the line norms (for reports)."""
    return [n for n, m in line_layers(net) if isinstance(m, LineNorm)]
