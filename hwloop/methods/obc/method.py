"""``obc``: Optimal Brain Compression to a latency budget, post-training (no retraining) behind the method seam.

1. Hessians ``H = 2XXᵀ/N`` of every layer from ``calib`` calibration images (forward hooks, float64).
2. The database (:mod:`~hwloop.methods.obc.database`): every coupled channel group removed channel by channel
   with the block OBS update of its consumers (residual-tied layers decide together), every layer quantized
   with OBQ at each of ``bits`` (and, with ``kinds``, unstructured/2:4 ExactOBS), each level's error the
   calibration loss with only that unit changed.
3. The budget (:mod:`~hwloop.methods.obc.dp`): each level's latency saving from the context's latency model
   (``cost_source="latency"``) or the shared layer cost table on the context's device (``"table"``), a knapsack
   DP with ``buckets`` buckets for ``target``. The DP's first answer is ``search_end`` (its whole-model latency,
   next to its additive estimate); when the whole model is above the target (the per-unit savings are additive,
   the latency of a conv is not: it falls with input × output width) the required saving is raised by the
   miss and the DP re-solved (``corrections`` times at most), each step listed in ``repairs``. ``dp="joint"``
   costs the whole model op by op; ``calibrate`` adds its fixed share fitted before the DP (the CPU's overhead).
4. Stitch: the chosen groups' compensated weights, OBQ / ExactOBS re-run on each chosen layer's *remaining*
   weights (the Hessian's kept block), batch-norm statistics re-estimated (``bn_data``: training-loader
   images), the masked channels removed for real; the plan (``ChannelPrune``, ``Sparsify``, ``Quantize``)
   plus the weights rebuild it.

Sparse levels cost as dense (no device cost model here sees sparsity): the DP never buys latency with them.
"""

from __future__ import annotations

import copy
import time
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from hwloop.compress.actions import ChannelPrune, Quantize, Sparsify
from hwloop.compress.extract import get_module
from hwloop.compress.keys import SizeKey
from hwloop.compress.plan import CompressionPlan
from hwloop.errors import SearchError
from hwloop.methods.base import Candidate, CompressionMethod, MethodConfig, MethodContext, MethodResult, Repair
from hwloop.methods.obc.config import DTYPES, KINDS, ObcConfig
from hwloop.methods.obc.database import Database, build_database, compress_layer, layer_level_name
from hwloop.methods.obc.dp import solve_savings, unit_savings_from_latency, unit_savings_from_table
from hwloop.methods.obc.exactobs import layer_weight
from hwloop.methods.obc.joint import JointCost, op_costs, solve_joint, solve_joint_top
from hwloop.methods.obc.overhead import (
    RatioMap,
    budget_of,
    calibrate_dp,
    calibrate_overhead,
    calibrate_segments,
    ratio_of,
)
from hwloop.methods.obc.structured import apply_group_, physical_prune, reestimate_bn
from hwloop.search.accounting import ComputeRecord

__all__ = ["KINDS", "ObcConfig", "ObcMethod"]


def _calibration(context: MethodContext, n: int, device: torch.device) -> list[tuple[torch.Tensor, torch.Tensor]]:
    out, have = [], 0
    for x, y in context.train:
        take = min(n - have, int(x.shape[0]))
        out.append((x[:take].to(device), y[:take].to(device)))
        have += take
        if have >= n:
            break
    if not out:
        raise SearchError("obc: the training loader gave no calibration images")
    return out


class ObcMethod(CompressionMethod):
    """Optimal Brain Compression to a latency budget (see the module docstring)."""

    name: ClassVar[str] = "obc"
    summary: ClassVar[str] = ("Optimal Brain Compression: ExactOBS channel removal + OBQ from calibration data, "
                              "knapsack DP on latency, no retraining (Frantar et al. 2022)")
    config_class: ClassVar[type[MethodConfig]] = ObcConfig
    smoke_config: ClassVar[dict[str, Any]] = {"calib": 128, "error_images": 64, "channel_levels": [0.75, 0.5, 0.25],
                                              "bits": [8, 4], "buckets": 1000}

    def check(self, target: float | None) -> None:
        cfg = self.config
        assert isinstance(cfg, ObcConfig)
        if target is None and not cfg.targets:
            raise SearchError("[method] obc needs a budget: [budget] target or the method's targets")

    # ------------------------------------------------------------------ pieces the benchmark reuses
    def database(self, context: MethodContext, model: nn.Module) -> tuple[Database, list[tuple[torch.Tensor, torch.Tensor]]]:
        cfg = self.config
        assert isinstance(cfg, ObcConfig)
        dev = next(model.parameters()).device
        calib = _calibration(context, cfg.calib, dev)
        path = None
        if cfg.database_cache is not None:
            from pathlib import Path

            from hwloop.methods.obc.database import database_key, load_database

            key = database_key(model, calib, {**self._db_keys(), "space": repr(context.space.options)})
            path = Path(cfg.database_cache) / f"obc-db-{key}.safetensors"
            if path.is_file():
                context.say(f"obc: database read from {path} (same weights, calibration images and keys)")
                return load_database(str(path), dev), calib
        db = build_database(model, context.space, calib, kinds=cfg.kinds, channel_levels=cfg.channel_levels,
                            bits=cfg.bits, sparsities=cfg.sparsities, error=cfg.error, error_images=cfg.error_images,
                            rel_damp=cfg.rel_damp, dtype=DTYPES[cfg.dtype], progress=context.progress,
                            say=context.say)
        if path is not None:
            from hwloop.methods.obc.database import save_database

            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            save_database(db, str(tmp))
            tmp.replace(path)
            context.say(f"obc: database written to {path}")
        return db, calib

    def _db_keys(self) -> dict[str, Any]:
        """The keys a database depends on (besides the weights and the calibration images)."""
        cfg = self.config
        assert isinstance(cfg, ObcConfig)
        return {k: getattr(cfg, k) for k in ("kinds", "channel_levels", "bits", "sparsities", "error",
                                             "error_images", "rel_damp", "dtype")}

    def savings(self, context: MethodContext, db: Database) -> tuple[float, list[list[float]], str]:
        """``(original, savings[u][l], what)`` in the units the DP uses."""
        cfg = self.config
        assert isinstance(cfg, ObcConfig)
        space, lat = context.space, context.latency
        full = dict(space.full_sizes())
        if cfg.cost_source == "latency":
            changes = [[self._sizes_of(u, lv, full) for lv in u.levels] for u in db.units]
            base, sv = unit_savings_from_latency(lat, full, changes)
            return base, sv, f"{lat.kind} latency model ({lat.unit})"
        if context.device is None:
            raise SearchError("[method] obc: cost_source='table' needs a device (MethodContext.device)")
        specs, full_level = self._level_specs(space, db)
        table, sv = unit_savings_from_table(specs, full_level, device=context.device, progress=context.progress,
                                            say=context.say)
        from hwloop.search.report import measure_compressed

        base = float(measure_compressed(context.device, context.model, None, example=context.example())["latency_ms"])
        return base, sv, f"cost table {table.device}/{table.source} ({table.unit}); whole dense model measured"

    @staticmethod
    def _sizes_of(u: Any, lv: Any, full: dict[str, float]) -> dict[str, float]:
        if u.kind == "group":
            return {} if lv == u.full else {SizeKey.channels(u.name): float(lv)}
        key = SizeKey.bits(u.name)
        if lv[0] == "bits" and key in full:
            return {key: float(lv[1])}
        return {}

    @staticmethod
    def _level_specs(space: Any, db: Database) -> tuple[dict[str, dict[Any, list[Any]]], dict[str, Any]]:
        slots = [*space.slots, *space.passive_slots()]
        a_bits = space.options.a_bits
        out: dict[str, dict[Any, list[Any]]] = {}
        full: dict[str, Any] = {}
        for u in db.units:
            if u.kind == "group":
                touched = [s for s in slots if u.name in (s.in_key, s.out_key)]
                out[u.name] = {("ch", k): [s.spec_at(k if s.in_key == u.name else None,
                                                     k if s.out_key == u.name else None) for s in touched]
                               for k in u.levels}
                full[u.name] = ("ch", u.full)
            else:
                slot = next(s for s in space.slots if s.name == u.name)
                out[f"layer:{u.name}"] = {lv: [slot.spec_at(None, None, lv[1], a_bits) if lv[0] == "bits"
                                               else slot.spec]
                                          for lv in u.levels}
                full[f"layer:{u.name}"] = u.full
        return out, full

    def joint_cost(self, context: MethodContext, db: Database) -> tuple[JointCost, Any]:
        """The whole model's cost as one term per op (``dp="joint"``, :func:`~hwloop.methods.obc.joint.op_costs`)
        on the context's device."""
        if context.device is None:
            raise SearchError("[method] obc: dp='joint' needs a device (MethodContext.device)")
        cfg = self.config
        assert isinstance(cfg, ObcConfig)
        return op_costs(context.space, db.units, context.device, progress=context.progress, source=cfg.joint_source,
                        predictor=cfg.joint_predictor)

    def arch_plan(self, context: MethodContext, db: Database, choice: list[int]) -> CompressionPlan:
        """The plan of a choice (one level index per unit)."""
        a_bits = context.space.options.a_bits
        prune, sparse, quant = [], [], []
        for u, li in zip(db.units, choice):
            lv = u.levels[li]
            if u.kind == "group":
                if lv < u.full:
                    prune.append(ChannelPrune(u.name, int(lv)))
            elif lv[0] == "bits":
                quant.append(Quantize(u.name, int(lv[1]), a_bits))
            elif lv[0] == "n:m":
                sparse.append(Sparsify(u.name, "n:m", n=int(lv[1]), m=int(lv[2])))
            elif lv[0] == "unstructured":
                sparse.append(Sparsify(u.name, "unstructured", density=1.0 - float(lv[1])))
        ref = context.ref
        return CompressionPlan(base=ref.to_dict() if ref is not None else None, actions=[*prune, *sparse, *quant],
                               meta={"method": "obc"})

    def interleaved(self, context: MethodContext) -> bool:
        """Whether the whole-model check is an interleaved ratio against the dense model (``check="device"`` on a
        device that interleaves, i.e. the CPU): two absolute latencies measured at different times on a shared
        CPU differ by more than the differences the corrections steer by (docs/devices.md, "CPU timing on a
        shared machine")."""
        cfg = self.config
        assert isinstance(cfg, ObcConfig)
        if cfg.check != "device" or context.device is None:
            return False
        from hwloop.devices import create_device

        dev = create_device(context.device) if isinstance(context.device, str) else context.device
        return callable(getattr(dev, "measure_interleaved", None)) and context.ref is not None

    def whole_model(self, context: MethodContext, model: nn.Module, plan: CompressionPlan | None) -> float:
        """Whole-model latency of a plan's architecture: the context's latency model (``check="latency"``) or
        measured on the context's device (``check="device"``: the plan replayed on a copy, no OBS needed; the
        dense model (``plan=None``) measured as a whole model too)."""
        cfg = self.config
        assert isinstance(cfg, ObcConfig)
        if cfg.check == "latency":
            return context.latency.original() if plan is None else context.latency.plan_latency(plan)
        from hwloop.compress.extract import compress_
        from hwloop.search.report import measure_compressed

        if context.device is None:
            raise SearchError("[method] obc: check='device' needs a device (MethodContext.device)")
        ex = context.example()
        net = copy.deepcopy(model).cpu().eval()
        if plan is not None:
            net = compress_(net, plan, ex)
        elif context.ref is not None:     # the dense model timed the way a plan's model is (not a layer sum)
            plan = CompressionPlan(base=context.ref.to_dict())
        return float(measure_compressed(context.device, net, plan, example=ex)["latency_ms"])

    def whole_ratio(self, context: MethodContext, model: nn.Module, plan: CompressionPlan,
                    whole0: float) -> tuple[float, float, dict[str, Any]]:
        """``(ratio, whole, info)`` of a plan against the dense model: on an interleaving device one interleaved
        comparison of the two whole models (``ratio`` its median per-round ratio, ``whole = ratio·whole0``),
        else ``whole_model(plan) / whole0``."""
        if not self.interleaved(context):
            whole = self.whole_model(context, model, plan)
            return whole / whole0, whole, {}
        from hwloop.search.report import compare_compressed

        assert context.device is not None
        m = compare_compressed(context.device, model, plan, model, example=context.example())
        r = float(m["ratio"])
        info = {"ratio_ci": m["ratio_ci"], "unstable": bool(m["unstable"]), "load1": m.get("load", {}).get("load1")}
        return r, r * whole0, info

    def solve(self, context: MethodContext, db: Database, original: float, savings: list[list[float]],
              target: float, model: nn.Module | None = None, joint: JointCost | None = None,
              pick: Any = None, alpha: float | RatioMap = 0.0) -> tuple[list[int], dict[str, Any]]:
        """The DP's first answer, then corrections against the whole-model latency: the required saving moves
        by the whole model's miss (up when above the target, down when more than ``tolerance`` below it);
        the answer is the lowest-error one within the target (else the last). With ``joint`` (``dp="joint"``)
        the DP's cost is the whole model's op sum (:mod:`~hwloop.methods.obc.joint`), in units scaled so its
        dense total is ``original``; with ``pick`` (a choice's measured calibration loss) and ``rerank`` ≥ 2 its
        ``rerank`` best answers are stitched and the lowest loss is the DP's answer (``rerank`` in the step);
        ``alpha``: the dense model's fixed share (:mod:`~hwloop.methods.obc.overhead`, ``calibrate``), or the
        :class:`~hwloop.methods.obc.overhead.RatioMap` of ``calibrate_by = "dp"``."""
        cfg = self.config
        assert isinstance(cfg, ObcConfig)
        errors = [u.errors for u in db.units]
        base_model = context.model if model is None else model
        whole0 = self.whole_model(context, base_model, None)
        required = original * (1.0 - target * (1.0 - cfg.margin))   # the first answer aims under a noisy cost
        steps: list[dict[str, Any]] = []
        best: tuple[float, list[int], int] | None = None
        last: list[int] | None = None
        lo: float | None = None     # required savings known to land within / above the target
        hi: float | None = None

        def cost_ratio(ch: list[int]) -> float:   # the joint DP's whole-model ratio of a choice
            assert joint is not None
            return ratio_of(alpha, joint.total(ch) / joint.full())
        for i in range(cfg.corrections + 1):
            rerank: list[dict[str, Any]] = []
            if joint is None:
                got = solve_savings(errors, savings, required, cfg.buckets)
            else:
                budget = joint.full() * budget_of(alpha, 1 - required / original)
                tops = solve_joint_top(errors, joint, budget, cfg.buckets,
                                       candidates=[j for j, u in enumerate(db.units) if u.kind == "group"],
                                       top=max(1, cfg.rerank))
                got = tops[0] if tops else None
                if len(tops) > 1 and pick is not None:
                    losses = [float(pick(ch)) for ch, _ in tops]
                    got = tops[int(np.argmin(losses))]
                    rerank = [{"dp_error": float(e), "calib_loss": lo, "dp_ratio": cost_ratio(ch),
                               "choice": [int(v) for v in ch]} for (ch, e), lo in zip(tops, losses)]
                    context.say(f"obc: rerank: calibration loss {min(losses):.4f} (DP's best answer: {losses[0]:.4f})")
            feasible = got is not None
            if got is None:      # even the largest savings together fall short: take them all (reported missed)
                got = ([max(range(len(s)), key=s.__getitem__) for s in savings], float("nan"))
            choice = got[0]
            additive = original - sum(s[li] for s, li in zip(savings, choice))
            model_cost = cost_ratio(choice) * original if joint is not None else additive
            ratio, whole, how = self.whole_ratio(context, base_model, self.arch_plan(context, db, choice), whole0)
            steps.append({"required_saving": required, "additive": additive, "additive_ratio": additive / original,
                          "dp_cost": model_cost, "dp_ratio": model_cost / original,
                          "whole": whole, "whole_ratio": ratio, "feasible": feasible, "error": float(got[1]),
                          "choice": [int(li) for li in choice], **({"rerank": rerank} if rerank else {}), **how})
            context.say(f"obc: DP {'answer' if i == 0 else f'correction {i}'}: additive {additive / original:.4f} "
                        f"x, DP cost {model_cost / original:.4f} x, whole model {ratio:.4f} x (target {target:.4f})")
            last = choice
            if ratio <= target * (1 + 1e-9) and (best is None or got[1] < best[0]):
                best = (float(got[1]), choice, i)
            if not feasible or target * (1 - cfg.tolerance) <= ratio <= target * (1 + 1e-9):
                break
            if ratio > target:
                hi = required
            else:
                lo = required
            required = (lo + hi) / 2 if lo is not None and hi is not None else required + (ratio - target) * original
        final = best[1] if best is not None else last
        assert final is not None
        steps.append({"chosen": len(steps) - 1 if best is None else best[2]})
        return final, {"steps": steps, "whole0": whole0}

    def bn_batches(self, context: MethodContext, calib: list[tuple[torch.Tensor, torch.Tensor]]) -> list[torch.Tensor]:
        """The images batch-norm statistics are re-estimated on: ``bn_data="train"``: as many images as the
        calibration set, drawn from the context's training loader *as it gives them* (with its augmentation, as
        the trained statistics were: re-estimating a crop-and-flip-trained CIFAR-10 ResNet-20 on un-augmented
        images cost 2.5 points of the dense model's validation accuracy, see docs/obc.md); ``"calib"``: the
        calibration images themselves."""
        cfg = self.config
        assert isinstance(cfg, ObcConfig)
        if cfg.bn_data == "calib":
            return [x for x, _ in calib]
        n = sum(int(x.shape[0]) for x, _ in calib)
        key = (id(context.train), n)
        cache = self.__dict__.setdefault("_bn_cache", {})
        if key not in cache:     # one draw per loader: every target of a run gets the same images
            cache[key] = [x for x, _ in _calibration(context, n, calib[0][0].device)]
        return list(cache[key])

    def stitch(self, context: MethodContext, model: nn.Module, db: Database, choice: list[int],
               calib: list[tuple[torch.Tensor, torch.Tensor]]) -> nn.Module:
        """The compressed model of a choice: masked groups, layers re-compressed on their remaining weights,
        batch-norm re-estimated, channels removed for real."""
        cfg = self.config
        assert isinstance(cfg, ObcConfig)
        net = copy.deepcopy(model).eval()
        masks: dict[str, torch.Tensor] = {}
        in_mask: dict[str, torch.Tensor] = {}
        out_mask: dict[str, torch.Tensor] = {}
        for u, li in zip(db.units, choice):
            if u.kind != "group":
                continue
            assert u.group is not None
            k = u.levels[li]
            masks[u.name] = u.group.masks[k]
            for n in u.group.info.consumers:
                in_mask[n] = u.group.masks[k]
            for n in u.group.info.producers:
                out_mask[n] = u.group.masks[k]
            if k < u.full:
                apply_group_(net, u.group.info, u.group.masks[k], u.group.weights[k])
        for u, li in zip(db.units, choice):
            lv = u.levels[li]
            if u.kind != "layer" or lv[0] == "float":
                continue
            w = layer_weight(get_module(net, u.name))
            W = w.detach().reshape(w.shape[0], -1)
            rows = out_mask.get(u.name, torch.ones(W.shape[0], dtype=torch.bool)).to(W.device)
            cm = in_mask.get(u.name)
            cols = (torch.ones(W.shape[1], dtype=torch.bool) if cm is None
                    else cm.repeat_interleave(W.shape[1] // cm.numel())).to(W.device)
            H = db.hessians[u.name][cols][:, cols]
            sub = W[rows][:, cols]
            new, _ = compress_layer(sub, H, lv, rel_damp=cfg.rel_damp, dtype=DTYPES[cfg.dtype])
            full = torch.zeros_like(W)
            full[rows.nonzero()[:, 0][:, None], cols.nonzero()[:, 0][None, :]] = new.to(W.dtype)
            with torch.no_grad():
                w.copy_(full.reshape(w.shape))
        if cfg.bn_reestimate:
            reestimate_bn(net, self.bn_batches(context, calib), mode=cfg.bn_mode)
        net.eval()
        return physical_prune(net, context.example().to(next(net.parameters()).device), masks,
                              context.space.ignored)

    # ------------------------------------------------------------------ run
    def run(self, context: MethodContext) -> MethodResult:
        cfg = self.config
        assert isinstance(cfg, ObcConfig)
        self.check(context.target)
        torch.manual_seed(context.seed)
        ledger = context.ledger
        assert ledger is not None
        n0 = len(ledger)
        model = copy.deepcopy(context.model).eval()
        t0 = time.perf_counter()
        db, calib = self.database(context, model)
        return self.run_with(context, model, db, calib, t0=t0, n0=n0)

    def run_with(self, context: MethodContext, model: nn.Module, db: Database,
                 calib: list[tuple[torch.Tensor, torch.Tensor]], *, t0: float | None = None,
                 n0: int | None = None) -> MethodResult:
        """:meth:`run` from a database already built (or loaded) for ``model`` and ``calib``."""
        cfg = self.config
        assert isinstance(cfg, ObcConfig)
        ledger = context.ledger
        assert ledger is not None
        n0 = len(ledger) if n0 is None else n0
        t0 = time.perf_counter() if t0 is None else t0
        joint, overhead = None, None
        alpha: float | RatioMap = 0.0
        if cfg.dp == "joint":
            from hwloop.search.report import measure_compressed

            joint, tab = self.joint_cost(context, db)
            original = float(measure_compressed(context.device, context.model, None,
                                                example=context.example())["latency_ms"])
            if cfg.calibrate:    # the dense model's fixed share, from whole-model probes measured before the DP
                whole0 = self.whole_model(context, model, None)

                def probe(ch: list[int]) -> tuple[float, dict[str, Any]]:
                    r, _, how = self.whole_ratio(context, model, self.arch_plan(context, db, ch), whole0)
                    return r, how

                groups = [j for j, u in enumerate(db.units) if u.kind == "group"]
                if cfg.calibrate_by == "resolution":     # one scale per resolution; the cost carries the fixed part
                    joint, overhead = calibrate_segments(joint, groups, cfg.calibrate, probe, context.say)
                elif cfg.calibrate_by == "dp":           # the DP's own answers at fixed op-sum budgets as the probes
                    plain = joint

                    def solve(budget: float) -> list[int] | None:
                        got = solve_joint([u.errors for u in db.units], plain, budget, cfg.buckets,
                                          candidates=groups)
                        return None if got is None else got[0]

                    alpha, overhead = calibrate_dp(joint, groups, cfg.calibrate, solve, probe, context.say)
                else:
                    alpha, overhead = calibrate_overhead(joint, groups, cfg.calibrate, probe, context.say)
            share = alpha.alpha if isinstance(alpha, RatioMap) else alpha
            savings = [[x * original / joint.full() * (1 - share) for x in row] for row in joint.single_savings()]
            what = (f"per-op cost table {tab.device}/{tab.source} ({tab.unit}; {len(joint.terms)} terms, dense sum "
                    f"{joint.full():.6g}, whole dense model measured {original:.6g}); DP on the whole op sum"
                    + (f", fixed share {overhead['alpha']:.4f} from {len(overhead['probes'])} whole-model probes"
                       + {"resolution": ", one scale per resolution", "dp": " (the DP's own answers)"}.get(
                           cfg.calibrate_by, "")
                       if overhead is not None else ""))
        else:
            original, savings, what = self.savings(context, db)
        t1 = time.perf_counter()
        ledger.add("search", trial=context.trial, wall_s=t1 - t0)
        context.say(f"obc: database of {len(db.units)} units ready after {t1 - t0:.1f} s; costs from {what}")
        targets = [context.target] if context.target is not None else []
        targets += [t for t in (cfg.targets or []) if t not in targets]
        cands = []
        lat = context.latency
        for target in targets:
            ts = time.perf_counter()
            pick = None
            if cfg.rerank > 1:
                def pick(ch: list[int]) -> float:
                    return calib_loss(self.stitch(context, model, db, ch, calib), calib, cfg.error_images)
            choice, info = self.solve(context, db, original, savings, target, model, joint, pick, alpha)
            plan = self.arch_plan(context, db, choice)
            te = time.perf_counter()
            net = self.stitch(context, model, db, choice, calib)
            tx = time.perf_counter()
            ledger.add("extract", trial=context.trial, wall_s=tx - ts)
            acc = acc_x = context.eval_fn(net) if context.eval_fn is not None else None
            if cfg.finetune_epochs:     # optional; OBC itself does not retrain (default 0)
                from hwloop.compress.extract import apply_bits_
                from hwloop.compress.sparsity import sparsity_kept
                from hwloop.search.train import train_epochs

                with sparsity_kept(net, plan.actions):      # the zeros of every Sparsify stay zero
                    ft = train_epochs(net, context.train, cfg.finetune_epochs, cfg.finetune_lr,
                                      progress=context.progress)
                apply_bits_(net, plan.w_bits)    # back onto a grid of each quantized layer's bits
                net.eval()
                ledger.add("finetune", trial=context.trial, wall_s=float(ft["seconds"]), train_images=int(ft["images"]),
                           epochs=float(cfg.finetune_epochs))
                acc = context.eval_fn(net) if context.eval_fn is not None else None
            tv = time.perf_counter()
            ledger.add("eval", trial=context.trial, wall_s=tv - tx)
            steps = info["steps"][:-1]
            chosen = info["steps"][-1]["chosen"]
            first, last = steps[0], steps[chosen]
            ctx_ratio = lat.plan_latency(plan) / lat.original()
            if cfg.check == "device":   # the method's cost source is the device: its whole-model latency (ms)
                orig, pred, unit = float(info["whole0"]), float(last["whole"]), "ms"
            else:
                orig, pred, unit = lat.original(), lat.plan_latency(plan), lat.unit
            scale = orig / info["whole0"]     # the check's units -> the candidate's
            repairs = [] if chosen == 0 else [Repair("dp-correction", f"after the DP ({chosen} corrections)",
                                                     first["whole"] * scale, last["whole"] * scale)]
            sizes = {str(SizeKey.channels(u.name)): {"original": float(u.full), "chosen": float(u.levels[li])}
                     for u, li in zip(db.units, choice) if u.kind == "group"}
            sizes.update({str(SizeKey.bits(u.name)): {"original": 32.0, "chosen": float(u.levels[li][1])}
                          for u, li in zip(db.units, choice) if u.kind == "layer" and u.levels[li][0] == "bits"})
            layers = {u.name: layer_level_name(u.levels[li]) for u, li in zip(db.units, choice) if u.kind == "layer"}
            cand = Candidate(
                setting=f"target={target}", model=net, plan=plan, original=orig, predicted=pred, unit=unit,
                predicted_ms=pred if unit == "ms" else None, accuracy=acc, accuracy_extracted=acc_x, target=target,
                search_end=first["whole"] * scale, repairs=repairs, seconds={"database": t1 - t0, "dp": te - ts,
                                                                     "stitch": tx - te, "eval": tv - tx},
                sizes=sizes,
                extra={"dp": cfg.dp, "dp_first_cost_ratio": first["dp_ratio"],
                       "dp_first_additive_ratio": first["additive_ratio"], "dp_first_whole_ratio": first["whole_ratio"],
                       "final_additive_ratio": last["additive_ratio"], "final_whole_ratio": last["whole_ratio"],
                       "context_latency_ratio": ctx_ratio, "dp_steps": steps, "dp_chosen": chosen, "check": cfg.check, "costs": what, "calib_images": sum(int(y.shape[0]) for _, y in calib),
                       "units": len(db.units), "skipped_groups": db.skipped, "layers": layers,
                       **({"overhead": overhead} if overhead is not None else {}),
                       "note": "sparse levels cost as dense (no sparse execution modelled)"})
            cand.cost = dataclasses_total(ledger, n0, context.trial)
            cand.judge(context.base_accuracy, context.max_repair_drop)
            context.say(f"obc: target {target}: budget {cand.status}: {cand.status_reason}")
            cands.append(cand)
        return MethodResult(method=self.name, config=cfg.to_dict(), candidates=cands)


def calib_loss(net: nn.Module, calib: list[tuple[torch.Tensor, torch.Tensor]], images: int) -> float:
    """Mean cross-entropy of ``net`` on the first ``images`` calibration images (the level errors' images)."""
    from hwloop.methods.obc.database import _loss

    batches, left = [], images
    for x, y in calib:
        if left <= 0:
            break
        batches.append((x[:left], y[:left]))
        left -= int(x.shape[0])
    net.eval()
    return _loss(net, batches)


def dataclasses_total(ledger: Any, n0: int, trial: int | None) -> ComputeRecord:
    import dataclasses

    cost = ComputeRecord("total")
    for r in ledger.records[n0:]:
        cost = cost + r
    return dataclasses.replace(cost, phase="total", trial=trial)

