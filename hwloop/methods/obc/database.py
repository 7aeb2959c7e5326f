"""OBC's database: every unit's levels, their weights and their errors, built once per model and calibration set.

A *unit* is what the dynamic program decides: a coupled channel group (levels: channels kept, from
:func:`~hwloop.methods.obc.structured.structured_database`) or a layer (levels: float, OBQ at each bit-width,
unstructured ExactOBS at each sparsity, 2:4). A level's *error* is the calibration loss increase with only that
unit at that level (``error="loss"``, OBC's default), or its layer-wise output error (``error="obs"``: free,
but not comparable across layers of different scale).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from hwloop.compress.extract import get_module
from hwloop.methods.obc.exactobs import collect_hessians, layer_weight, nm_prune, obq_quantize, unstructured_database
from hwloop.methods.obc.structured import GroupDatabase, GroupInfo, apply_group_, group_infos, structured_database

__all__ = ["Database", "Unit", "build_database", "compress_layer", "database_key", "layer_level_name", "load_database",
           "save_database"]

#: a layer level: ("float",), ("bits", b), ("unstructured", sparsity), ("n:m", n, m)
LayerLevel = tuple


def layer_level_name(lv: LayerLevel) -> str:
    return "float" if lv[0] == "float" else f"w{lv[1]}" if lv[0] == "bits" else \
        f"sparse{lv[1]:g}" if lv[0] == "unstructured" else f"{lv[1]}:{lv[2]}"


def compress_layer(weight: torch.Tensor, H: torch.Tensor, level: LayerLevel, *, rel_damp: float,
                   dtype: torch.dtype) -> tuple[torch.Tensor, float]:
    """One layer level by ExactOBS/OBQ: ``(weight, layer output error)``."""
    if level[0] == "float":
        return weight.detach().clone(), 0.0
    if level[0] == "bits":
        return obq_quantize(weight, H, int(level[1]), rel_damp=rel_damp, dtype=dtype)
    if level[0] == "unstructured":
        db = unstructured_database(weight, H, [float(level[1])], rel_damp=rel_damp, dtype=dtype)
        return db.weights[float(level[1])], db.loss[float(level[1])]
    if level[0] == "n:m":
        return nm_prune(weight, H, int(level[1]), int(level[2]), rel_damp=rel_damp, dtype=dtype)
    raise ValueError(f"unknown layer level {level!r}")


@dataclass
class Unit:
    """One DP unit: ``kind`` ``group`` (levels = channels kept) or ``layer`` (levels = :data:`LayerLevel`)."""

    kind: str
    name: str
    levels: list[Any]
    errors: list[float] = field(default_factory=list)
    obs_loss: list[float] = field(default_factory=list)
    group: GroupDatabase | None = None
    weights: dict[Any, torch.Tensor] = field(default_factory=dict)

    @property
    def full(self) -> Any:
        return self.levels[0]


@dataclass
class Database:
    units: list[Unit]
    hessians: dict[str, torch.Tensor]
    dense_loss: float
    skipped: list[str]
    seconds: dict[str, float]


def _loss(model: nn.Module, batches: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> float:
    tot, n = 0.0, 0
    with torch.no_grad():
        for x, y in batches:
            tot += float(nn.functional.cross_entropy(model(x), y, reduction="sum"))
            n += int(y.shape[0])
    return tot / max(n, 1)


def _snapshot(model: nn.Module, names: Sequence[str]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    out: list[tuple[torch.Tensor, torch.Tensor]] = []
    for n in names:
        for p in get_module(model, n).parameters(recurse=False):
            out.append((p, p.detach().clone()))
    return out


def _restore(snap: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
    with torch.no_grad():
        for p, v in snap:
            p.copy_(v)


def build_database(model: nn.Module, space: Any, calib: Sequence[tuple[torch.Tensor, torch.Tensor]], *,
                   kinds: Sequence[str], channel_levels: Sequence[float], bits: Sequence[int],
                   sparsities: Sequence[float], error: str = "loss", error_images: int = 256, rel_damp: float = 0.0,
                   dtype: torch.dtype = torch.float32, progress: bool = False,
                   say: Callable[[str], None] | None = None) -> Database:
    """Hessians from ``calib``, then every unit's levels with their weights and errors (``model`` is restored
    after each evaluation; it is not changed)."""
    say = say or (lambda _m: None)
    t0 = time.perf_counter()
    units: list[Unit] = []
    skipped: list[str] = []
    weighted = [n for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    infos: list[GroupInfo] = []
    if "channels" in kinds:
        infos, skipped = group_infos(model, space.graph.groups)
        for s in skipped:
            say(f"obc: group {s}: not searched")
    layer_names: list[str] = []
    layer_levels: list[LayerLevel] = [("float",)]
    if "bits" in kinds:
        layer_levels += [("bits", int(b)) for b in sorted(set(bits), reverse=True)]
    if "unstructured" in kinds:
        layer_levels += [("unstructured", float(s)) for s in sorted(set(sparsities))]
    if "n:m" in kinds:
        layer_levels += [("n:m", 2, 4)]
    if len(layer_levels) > 1:
        layer_names = list(space.bit_layers) or [n for n in weighted[1:] if n not in space.ignored]
        if "bits" in kinds and not space.bit_layers:
            say("obc: the search space has no bit layers (SpaceOptions(bits=True)); bit levels cost as float")
    need = sorted({n for i in infos for n in i.consumers} | set(layer_names), key=weighted.index)
    xs = [x for x, _ in calib]
    hessians = collect_hessians(model, need, xs)
    t_h = time.perf_counter()
    for info in infos:
        C = info.channels
        keeps = sorted({C} | {max(space.min_keep(C), min(C, round(f * C))) for f in channel_levels}, reverse=True)
        units.append(Unit("group", info.key, keeps))
    for n in layer_names:
        units.append(Unit("layer", n, list(layer_levels)))
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(units), desc="obc database", unit="unit", leave=False)
    err_batches: list[tuple[torch.Tensor, torch.Tensor]] = []
    left = error_images
    for x, y in calib:
        if left <= 0:
            break
        err_batches.append((x[:left], y[:left]))
        left -= int(x.shape[0])
    model.eval()
    dense = _loss(model, err_batches) if error == "loss" else 0.0
    info_of = {i.key: i for i in infos}
    try:
        for u in units:
            if u.kind == "group":
                info = info_of[u.name]
                db = structured_database(model, info, hessians, u.levels, rel_damp=rel_damp, dtype=dtype)
                u.group = db
                touched = [*info.producers, *info.norms, *info.consumers]
                for k in u.levels:
                    u.obs_loss.append(db.loss[k])
                    if k == u.full or error != "loss":
                        u.errors.append(db.loss[k] if k != u.full else 0.0)
                        continue
                    snap = _snapshot(model, touched)
                    apply_group_(model, info, db.masks[k], db.weights[k])
                    u.errors.append(_loss(model, err_batches) - dense)
                    _restore(snap)
            else:
                w = layer_weight(get_module(model, u.name))
                for lv in u.levels:
                    wq, loss = compress_layer(w, hessians[u.name], lv, rel_damp=rel_damp, dtype=dtype)
                    u.weights[lv] = wq
                    u.obs_loss.append(loss)
                    if lv == u.full or error != "loss":
                        u.errors.append(loss)
                        continue
                    snap = _snapshot(model, [u.name])
                    with torch.no_grad():
                        w.copy_(wq)
                    u.errors.append(_loss(model, err_batches) - dense)
                    _restore(snap)
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    # the float/full level is the reference: errors are relative to it and never negative in the DP
    for u in units:
        u.errors = [max(0.0, e) if math.isfinite(e) else math.inf for e in u.errors]
        u.errors[0] = 0.0
    t1 = time.perf_counter()
    return Database(units, hessians, dense, skipped, {"hessians": t_h - t0, "database": t1 - t_h})


def database_key(model: nn.Module, calib: Sequence[tuple[torch.Tensor, torch.Tensor]], keys: dict[str, Any]) -> str:
    """A short hash of what decides a database: every weight and buffer of ``model``, the calibration images and
    labels, and ``keys`` (the database's configuration); the name of its cache file."""
    import hashlib
    import json

    h = hashlib.sha256(json.dumps(keys, sort_keys=True, default=str).encode())
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    for x, y in calib:
        for t in (x, y):
            h.update(str(tuple(t.shape)).encode())
            h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:20]


def save_database(db: Database, path: str) -> None:
    """Write a database to one safetensors file (tensors) with its tables in the metadata (JSON; no pickle)."""
    import json

    from safetensors.torch import save_file

    tensors: dict[str, torch.Tensor] = {f"H/{n}": h.contiguous().cpu() for n, h in db.hessians.items()}
    units = []
    for i, u in enumerate(db.units):
        d: dict[str, Any] = {"kind": u.kind, "name": u.name, "levels": [list(lv) if isinstance(lv, tuple) else lv
                                                                          for lv in u.levels],
                             "errors": u.errors, "obs_loss": u.obs_loss}
        if u.group is not None:
            gi = u.group.info
            d["info"] = {"key": gi.key, "channels": gi.channels, "producers": list(gi.producers),
                         "norms": list(gi.norms), "consumers": list(gi.consumers)}
            for k in u.levels:
                tensors[f"{i}/mask/{k}"] = u.group.masks[k].to(torch.uint8).contiguous()
                for n, w in u.group.weights[k].items():
                    tensors[f"{i}/w/{k}/{n}"] = w.contiguous().cpu()
        for j, lv in enumerate(u.levels):
            if lv in u.weights:
                tensors[f"{i}/lw/{j}"] = u.weights[lv].contiguous().cpu()
        units.append(d)
    meta = {"units": units, "dense_loss": db.dense_loss, "skipped": db.skipped, "seconds": db.seconds}
    save_file(tensors, path, metadata={"hwloop.obc_database": json.dumps(meta)})


def load_database(path: str, device: torch.device | str = "cpu") -> Database:
    """Read a database written by :func:`save_database`."""
    import json

    from safetensors import safe_open

    from hwloop.methods.obc.structured import GroupDatabase, GroupInfo

    with safe_open(path, framework="pt", device=str(device)) as f:
        meta = json.loads((f.metadata() or {})["hwloop.obc_database"])
        t = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    units = []
    for i, d in enumerate(meta["units"]):
        levels = [tuple(lv) if isinstance(lv, list) else lv for lv in d["levels"]]
        u = Unit(d["kind"], d["name"], levels, list(d["errors"]), list(d["obs_loss"]))
        if "info" in d:
            gi = d["info"]
            info = GroupInfo(gi["key"], gi["channels"], tuple(gi["producers"]), tuple(gi["norms"]),
                             tuple(gi["consumers"]))
            g = GroupDatabase(info)
            for k in levels:
                assert isinstance(k, int)
                g.masks[k] = t[f"{i}/mask/{k}"].to(torch.bool).cpu()
                g.weights[k] = {n: t[f"{i}/w/{k}/{n}"] for n in info.consumers}
            u.group = g
        for j, lv in enumerate(levels):
            if f"{i}/lw/{j}" in t:
                u.weights[lv] = t[f"{i}/lw/{j}"]
        units.append(u)
    hess = {k[2:]: v for k, v in t.items() if k.startswith("H/")}
    return Database(units, hess, float(meta["dense_loss"]), list(meta["skipped"]), dict(meta["seconds"]))
