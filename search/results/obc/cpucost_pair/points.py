"""Every whole-model ratio measured on the quiet machine (local-cpu, wall clock; sessions 4, 5 and the lead's
session-7 run at 13:14 UTC) for ResNet-20 channel choices of the OBC ladder: (source, kind, choice, measured ratio).
kind: "uniform" (every group at one point of its ladder), "stage" (one stage cut alone), "pattern" (a stage's
inner groups deep with its hub full, or the reverse), "dp" (a DP answer or a correction step). No measurement."""
import json
from pathlib import Path

R = Path(__file__).resolve().parents[1]
STAGES = {"32x32": [0, 1, 2, 3], "16x16": [4, 5, 6, 7], "8x8": [8, 9, 10, 11]}
HUBS = {0, 5, 9}


def points():
    pts = []

    def add(src, kind, ch, r):
        if ch is not None and r is not None:
            pts.append((src, kind, [int(v) for v in ch], float(r)))

    for f in ("cpu_wall_quiet2", "cpu_wall_joint", "cpu_wall_calib6"):
        d = json.loads((R / f / "results.json").read_text())["latency:local-cpu"]
        for row in d["rows"]:
            for st in row["extra"]["dp_steps"]:
                add(f, "dp", st.get("choice"), st.get("whole_ratio"))
            for p in (row["extra"].get("overhead") or {}).get("probes", []) if f == "cpu_wall_calib6" else []:
                add(f, "uniform", p["choice"], p["measured_ratio"])
    for f in ("cpucost_local-cpu/results.json", "cpucost_local-cpu/results_predictor-wall.json",
              "cpucost_resolution/results.json"):
        d = json.loads((R / f).read_text())
        for src, v in d["sources"].items():
            seen = set()
            for p in [*v["calibration"]["probes"], *(v.get("resolution") or {}).get("probes", [])]:
                if tuple(p["choice"]) in seen:
                    continue
                seen.add(tuple(p["choice"]))
                add(f, "stage" if p.get("probe_kind", "uniform").startswith("deep") else "uniform", p["choice"],
                    p["measured_ratio"])
            for row in v["rows"]:
                if row.get("feasible"):
                    for m in row["measured"]:
                        add(f, "dp", row["choice"], m)
    # the lead's pattern probes (asym_probe.py on local-cpu, two measurements each)
    txt = (R / "cpucost_deep/asym_probe_local-cpu.txt").read_text().splitlines()
    n_levels = 10
    for line in txt[2:]:
        parts = line.split()
        st, what = parts[0], " ".join(parts[1:4])
        us = STAGES[st]
        deep = [u for u in us if (u in HUBS) == what.startswith("hub")]
        ch = [0] * 12
        for u in deep:
            ch[u] = n_levels - 1
        for m in parts[-3:-1]:
            add("asym_probe_local-cpu", "pattern", ch, float(m))
    return pts


if __name__ == "__main__":
    from collections import Counter
    p = points()
    print(len(p), Counter(k for _, k, _, _ in p))
