"""The harness's table and Pareto plot: mean ± std over seeds per entry × device × target.

:func:`summarize` groups the finished cell rows; :func:`write_table` writes ``results.csv`` (one row per
entry × device × target: mean and std of the measured latency ratio, test and validation accuracy, compute),
``results.md`` (the same as ``mean ± std``, with the shared costs and the seeds each row has) and ``pareto.png``
(test accuracy vs measured latency ratio, one panel per device; methods solid, controls dashed).

Example:
    >>> rows = [{"entry": "l1l2", "kind": "method", "device": "d", "target": 0.5, "seed": s, "measured_ratio": r,
    ...          "test_accuracy": a, "val_accuracy": a, "train_images": 10, "cell_wall_s": 1.0, "measure_s": 0.1,
    ...          "status": "met", "predicted_ratio": 0.5} for s, r, a in [(0, 0.5, 90.0), (1, 0.52, 92.0)]]
    >>> g = summarize(rows)[0]
    >>> g["n"], round(g["test_accuracy_mean"], 1), round(g["test_accuracy_std"], 3), g["status"]
    (2, 91.0, 1.414, 'met 2/2')
"""

from __future__ import annotations

import csv
import math
import statistics
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["paired", "summarize", "write_table"]

_STATS = ("measured_ratio", "test_accuracy", "val_accuracy", "predicted_ratio", "train_images", "cell_wall_s",
          "measure_s", "interp_test_accuracy", "interp_val_accuracy")
#: fields only some rows have (flops-matched: the accuracy interpolated at the method's measured latency between its
#: bracketing runs); their columns appear only in tables that have them, with the count of seeds that have a value
_OPTIONAL = ("interp_test_accuracy", "interp_val_accuracy")


def _num(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else None


#: a method whose measured ratio is above ``target * (1 + MEASURED_SLACK)`` is flagged in the table's status (issue 17's
#: "measured latency within 5% of the target"), whatever its own cost model said
MEASURED_SLACK = 0.05


def _mean_std(vals: Sequence[float]) -> tuple[float | None, float | None]:
    """Mean and sample std (0 with one value; both None without values)."""
    if not vals:
        return None, None
    return statistics.fmean(vals), statistics.stdev(vals) if len(vals) > 1 else 0.0


def summarize(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One dict per (entry, device, target), in first-seen order: ``<field>_mean`` / ``<field>_std`` (sample
    std; 0 with one seed; None without values), ``n`` seeds, ``seeds`` and ``status`` counts."""
    groups: dict[tuple[str, str, float], list[Mapping[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["entry"], r["device"], float(r["target"])), []).append(r)
    out = []
    for (entry, dev, t), rs in groups.items():
        g: dict[str, Any] = {"entry": entry, "kind": rs[0].get("kind"), "device": dev, "target": t, "n": len(rs),
                             "seeds": sorted(int(r["seed"]) for r in rs)}
        for f in _STATS:
            vals = [v for r in rs if (v := _num(r.get(f))) is not None]
            g[f"{f}_mean"], g[f"{f}_std"] = _mean_std(vals)
            if f in _OPTIONAL:
                g[f"{f}_n"] = len(vals)
        counts = Counter(str(r.get("status")) for r in rs)
        g["status"] = ", ".join(f"{k} {v}/{len(rs)}" for k, v in sorted(counts.items()))
        # a method's status, and a budgeted control's (random search, TPE: "met"), is its own cost model's verdict:
        # say what the device says
        if rs[0].get("kind") == "method" or any(str(r.get("status")) in ("met", "missed") for r in rs):
            over = [m for r in rs if (m := _num(r.get("measured_ratio"))) is not None and m > t * (1 + MEASURED_SLACK)]
            if over:
                g["status"] += (f"; MEASURED above the target by more than {MEASURED_SLACK:.0%}: {len(over)}/{len(rs)} "
                                f"(up to {max(over) / t - 1:+.0%})")
        out.append(g)
    return out


def paired(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Each control against the method it ran for (its ``ref``), seed by seed at the same device and target.

    One dict per (control, method, device, target). ``seeds``: the seeds where both have a test accuracy;
    ``no_result``: seeds where the method has one and the control none (e.g. a random search that found nothing
    within the budget: left out of the means, listed). Per seed in ``seeds``: ``d_test`` / ``d_val`` = the method's
    accuracy minus the control's — the control's accuracy interpolated at the method's measured latency where it
    has one (flops-matched with a bracket; ``interp`` lists those seeds), else its own — and ``d_ratio`` = the
    control's measured latency ratio minus the method's (0 for an interpolated seed: that comparison is at the
    method's own latency; > 0: the control had more latency). Each with ``*_mean`` and ``*_std`` (sample std; 0
    with one seed). ``ahead``: ``"ahead"`` / ``"behind"`` / ``"level"`` by the sign of the mean test difference,
    with ``", beyond the spread"`` when its size exceeds the std of the per-seed differences (≥ 2 seeds; a plain
    yardstick, not a significance test), else ``", inside the spread"`` (``" (one seed)"`` with one).

    Example:
        >>> m = [{"entry": "m", "kind": "method", "device": "d", "target": 0.5, "seed": s, "test_accuracy": a,
        ...       "val_accuracy": a, "measured_ratio": 0.5} for s, a in [(0, 80.0), (1, 81.0)]]
        >>> c = [{"entry": "u", "kind": "control", "ref": "m", "device": "d", "target": 0.5, "seed": s,
        ...       "test_accuracy": a, "val_accuracy": a, "measured_ratio": 0.52} for s, a in [(0, 78.0), (1, 80.0)]]
        >>> p = paired(m + c)[0]
        >>> p["d_test"], p["d_test_mean"], p["ahead"]
        ([2.0, 1.0], 1.5, 'ahead, beyond the spread')
    """
    def key(r: Mapping[str, Any], entry: str) -> tuple[str, str, float, int]:
        return entry, str(r["device"]), round(float(r["target"]), 9), int(r["seed"])

    methods = {key(r, str(r["entry"])): r for r in rows if r.get("kind") == "method"}
    groups: dict[tuple[str, str, str, float], dict[int, tuple[Mapping[str, Any], Mapping[str, Any]]]] = {}
    for r in rows:
        if r.get("kind") != "control" or not r.get("ref"):
            continue
        k = key(r, str(r["ref"]))
        if k in methods:   # one pair per seed (a repeated row replaces the earlier one)
            groups.setdefault((str(r["entry"]), str(r["ref"]), k[1], k[2]), {})[k[3]] = (methods[k], r)
    out = []
    for (entry, ref, dev, t), by_seed in groups.items():
        g: dict[str, Any] = {"entry": entry, "ref": ref, "device": dev, "target": t, "seeds": [], "no_result": [],
                             "interp": [], "d_test": [], "d_val": [], "d_ratio": []}
        for seed, (m, c) in sorted(by_seed.items()):
            mt, it = _num(m.get("test_accuracy")), _num(c.get("interp_test_accuracy"))
            ct = it if it is not None else _num(c.get("test_accuracy"))
            if mt is None:
                continue
            if ct is None:
                g["no_result"].append(seed)
                continue
            g["seeds"].append(seed)
            g["d_test"].append(mt - ct)
            if it is not None:
                g["interp"].append(seed)
            mv = _num(m.get("val_accuracy"))
            cv = _num(c.get("interp_val_accuracy")) if it is not None else _num(c.get("val_accuracy"))
            if mv is not None and cv is not None:
                g["d_val"].append(mv - cv)
            mr, cr = _num(m.get("measured_ratio")), _num(c.get("measured_ratio"))
            if it is not None:
                g["d_ratio"].append(0.0)
            elif mr is not None and cr is not None:
                g["d_ratio"].append(cr - mr)
        for f in ("d_test", "d_val", "d_ratio"):
            g[f"{f}_mean"], g[f"{f}_std"] = _mean_std(g[f])
        mean, sd = g["d_test_mean"], g["d_test_std"]
        g["ahead"] = ("–" if mean is None else ("ahead" if mean > 0 else "behind" if mean < 0 else "level") + (
            " (one seed)" if len(g["d_test"]) == 1 else ", beyond the spread" if abs(mean) > (sd or 0.0)
            else ", inside the spread"))
        out.append(g)
    return out


def _paired_lines(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    ps = paired(rows)
    if not ps:
        return []
    lines = ["", "## Paired: the method minus each control, seed by seed", "",
             ("Same device, target and seed; the control's interpolated accuracy at the method's measured latency "
              "where it has one (flops-matched), else its own. Δ ratio = the control's measured latency ratio minus "
              "the method's (> 0: the control had more latency; 0 where the accuracy is interpolated at the method's "
              "latency). Ahead / behind: the sign of the mean test difference; \"beyond the spread\": its size is "
              "larger than the std of the per-seed differences (a plain yardstick, not a significance test). Seeds "
              "where the control has no result are listed, not averaged."), "",
             "| control | method | device | target | seeds | Δ test (per seed) | Δ test mean ± std | Δ val mean ± std | "
             "Δ ratio mean | method ahead? |", "|---" * 10 + "|"]

    def pm(p: Mapping[str, Any], key: str) -> str:
        m, sd, n = p[f"{key}_mean"], p[f"{key}_std"], len(p[key])
        return "–" if m is None else f"{m:+.2f}" if n == 1 else f"{m:+.2f} ± {sd or 0.0:.2f}"

    for p in ps:
        notes = []
        if p["interp"] and len(p["interp"]) < len(p["seeds"]):
            notes.append(f"interpolated at seeds {','.join(map(str, p['interp']))} only")
        if p["no_result"]:
            notes.append(f"no control result at seeds {','.join(map(str, p['no_result']))}")
        lines.append(f"| {p['entry']} | {p['ref']} | {p['device']} | {p['target']:g} | "
                     f"{','.join(map(str, p['seeds'])) or '–'} | {' / '.join(f'{v:+.2f}' for v in p['d_test'])} | "
                     f"{pm(p, 'd_test')} | {pm(p, 'd_val')} | "
                     + ("–" if p["d_ratio_mean"] is None else f"{p['d_ratio_mean']:+.3f}")
                     + f" | {p['ahead']}{' (' + '; '.join(notes) + ')' if notes else ''} |")
    return lines


def _pm(g: Mapping[str, Any], f: str, fmt: str) -> str:
    m, s = g.get(f"{f}_mean"), g.get(f"{f}_std")
    if m is None:
        return "–"
    if g.get("n") == 1:   # one seed: no spread to show
        return f"{m:{fmt}}"
    return f"{m:{fmt}} ± {s:{fmt}}"


def _pm_k(g: Mapping[str, Any], f: str) -> str:
    """``mean ± std`` of an optional field and, when not every seed has it, ``(k/n)``."""
    k = g.get(f"{f}_n") or 0
    if not k:
        return "–"
    v = f"{g[f + '_mean']:.2f}" if k == 1 else f"{g[f + '_mean']:.2f} ± {g[f + '_std']:.2f}"
    return v if k == g.get("n") else f"{v} ({k}/{g.get('n')})"


def write_table(out: str | Path, rows: Sequence[Mapping[str, Any]], shared: Mapping[str, Any], spec: Any) -> Path:
    """Write ``results.csv``, ``results.md`` and ``pareto.png`` into ``out``; returns the markdown path."""
    d = Path(out)
    groups = summarize(rows)
    pre = shared.get("pretrain") or {}
    cost = shared.get("cost_sources") or {}
    opt = [f for f in _OPTIONAL if any(g.get(f"{f}_n") for g in groups)]
    stats = [f for f in _STATS if f not in _OPTIONAL or f in opt]
    with open(d / "results.csv", "w", newline="", encoding="utf-8") as fh:
        cols = ["entry", "kind", "device", "target", "n", "seeds", *[f"{f}_{s}" for f in stats for s in
                                                                    ("mean", "std")],
                *[f"{f}_n" for f in opt], "status", "pretrain_wall_s", "cost_source_build_s"]
        w = csv.DictWriter(fh, fieldnames=cols, extrasaction="ignore")
        w.writeheader()
        for g in groups:
            src = cost.get(f"{g['device']}/{spec.cost.objective}", {})
            w.writerow({**g, "seeds": " ".join(map(str, g["seeds"])), "pretrain_wall_s": pre.get("wall_s"),
                        "cost_source_build_s": src.get("build_s")})
    n_cells = len(spec.seeds) * len(spec.devices) * len(spec.targets) * (
        len(spec.methods) + len(spec.controls.run) * len(spec.controls.against))
    lines = [f"# {spec.name}: methods vs controls", "",
             (f"{len(rows)} of {n_cells} cells finished"
              + (" (**partial**: the rest is still running or not started)" if len(rows) < n_cells else "") + "."),
             (f"Starting model: {shared.get('checkpoint')} — validation {shared.get('base_val_accuracy', 0):.2f}%, "
              f"test {shared.get('base_test_accuracy', 0):.2f}%; splits {shared.get('splits')}."),
             (f"Pre-training (shared, not in the rows): {pre.get('wall_s')} s, {pre.get('epochs')} epochs "
              f"({pre.get('source')})."),
             ("Cost sources (built once per device, shared): "
              + "; ".join(f"{k}: {v.get('build_s', 0):.1f} s" for k, v in cost.items()) + "."),
             f"Schedule every entry gets: {dict(vars(spec.schedule))}; controls: {dict(vars(spec.controls))}.", "",
             ("Latency ratio = measured on the device against the dense model; accuracy = test set (choices were "
              "made on the validation split); mean ± std over the seeds listed (the value alone: one seed). Compute = training images and wall "
              "seconds of the cell (search, trials, fine-tuning, measurement, evaluation)."), "",
             *([("Interpolated (flops-matched only): the test / validation accuracy linearly interpolated in measured "
                 "latency between the two runs that bracket the method's measured latency (one at or under, one "
                 "over), at that latency; (k/n): seeds with a bracket. The accuracy columns before it are the run "
                 "nearest that latency."), ""] if opt else []),
             ("| entry | device | target | seeds | measured ratio | test acc % | val acc % | "
              + "".join({"interp_test_accuracy": "interpolated test acc % | ",
                         "interp_val_accuracy": "interpolated val acc % | "}[f] for f in opt)
              + "train images | wall s | measure s | status |"), "|---" * (11 + len(opt)) + "|"]
    for g in groups:
        lines.append(f"| {g['entry']} | {g['device']} | {g['target']:g} | {','.join(map(str, g['seeds']))} | "
                     f"{_pm(g, 'measured_ratio', '.3f')} | {_pm(g, 'test_accuracy', '.2f')} | "
                     f"{_pm(g, 'val_accuracy', '.2f')} | {''.join(_pm_k(g, f) + ' | ' for f in opt)}"
                     f"{_pm(g, 'train_images', '.0f')} | "
                     f"{_pm(g, 'cell_wall_s', '.0f')} | {_pm(g, 'measure_s', '.0f')} | {g['status']} |")
    lines += _paired_lines(rows)
    md = d / "results.md"
    md.write_text("\n".join(lines) + "\n", encoding="utf-8")
    plot_pareto(d / "pareto.png", groups, shared, title=spec.name)
    return md


def plot_pareto(path: Path, groups: Sequence[Mapping[str, Any]], shared: Mapping[str, Any], *, title: str = ""
                ) -> None:
    """Test accuracy vs measured latency ratio (mean ± std), one panel per device; controls dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    devices = list(dict.fromkeys(g["device"] for g in groups))
    fig, axes = plt.subplots(1, len(devices), figsize=(5.5 * len(devices), 4.2), squeeze=False)
    entries = list(dict.fromkeys(g["entry"] for g in groups))
    colors = {e: plt.get_cmap("tab10")(i % 10) for i, e in enumerate(entries)}
    for ax, dev in zip(axes[0], devices):
        for e in entries:
            gs = sorted((g for g in groups if g["device"] == dev and g["entry"] == e
                         and g.get("measured_ratio_mean") is not None and g.get("test_accuracy_mean") is not None),
                        key=lambda g: g["target"])
            if not gs:
                continue
            method = gs[0].get("kind") == "method"
            ax.errorbar([g["measured_ratio_mean"] for g in gs], [g["test_accuracy_mean"] for g in gs],
                        xerr=[g["measured_ratio_std"] or 0 for g in gs], yerr=[g["test_accuracy_std"] or 0 for g in gs],
                        label=e, color=colors[e], marker="o" if method else "s", ls="-" if method else "--",
                        lw=2 if method else 1, ms=6 if method else 4, mfc=None if method else "none", capsize=2)
        if shared.get("base_test_accuracy") is not None:
            ax.scatter([1.0], [shared["base_test_accuracy"]], marker="*", s=120, color="k", label="dense", zorder=5)
        ax.set_title(f"{title} on {dev}", fontsize=9)
        ax.set_xlabel("measured latency / dense model's")
        ax.set_ylabel("test accuracy (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
