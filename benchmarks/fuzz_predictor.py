"""Fuzz a shipped predictor's files: random byte flips and truncations must never crash hwloop.

Each case copies the predictor (metadata JSON + its model/arrays files), then either flips 1-4
random bytes or truncates one file at a random length (60% of the cases damage the model or
arrays file, 40% the metadata; half of the metadata flips change characters of numbers into other
number characters, so the JSON still parses and the damage reaches the value checks), then
**recomputes the hashes** (the
file's SHA-256 in the metadata and ``metadata_sha256``; a metadata file that is no longer
JSON is left as is), so the damage reaches the JSON parser, the metadata checks and the
booster parser rather than stopping at a hash check. The case is loaded with
``load_predictor`` and, if it loads, predicts a fixed set of layers and a whole model.

Cases run in a worker process; if the worker dies (a segfault in a native parser, say) the
case is counted as a crash and a new worker takes the next case. Each outcome is one of

* ``error``: a one-line :class:`~hwloop.errors.HwloopError` (the wanted failure);
* ``ok``: loaded, every metadata value passed validation, every latency finite and > 0;
* ``unclean``: any other exception, or an error message of several lines (a bug);
* ``crash``: the worker process died (a bug).

It also counts how far each case got: the metadata checks (JSON parsed, hashes passed), the
booster parser (:func:`hwloop.predict.booster_check.checked_booster`), and XGBoost's loader.

Usage::

    OMP_NUM_THREADS=1 python benchmarks/fuzz_predictor.py [--cases 1000] [--seed 0]
        [--predictor measurements/local-cpu/predictor.json] [--json OUT] [--no-booster-check]

``--no-booster-check`` hands XGBoost the damaged booster bytes directly (hwloop's check off) to show
what the check prevents.

Exit status 0 when there is no crash and no unclean case.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

import numpy as np

REPO = Path(__file__).resolve().parents[1]
_STAGES = ("metadata_checks", "booster_parser", "xgboost_loader")
DEFAULT = REPO / "measurements" / "local-cpu" / "predictor.json"


# ----------------------------------------------------------------------------- making cases
def _meta_hash(meta: dict[str, Any]) -> str:
    body = {k: v for k, v in meta.items() if k != "metadata_sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _dump(meta: dict[str, Any]) -> bytes:
    return (json.dumps(meta, indent=1, sort_keys=True) + "\n").encode()


_NUMBER_CHARS = b"0123456789-+.eE"


def mutate(data: bytes, rng: np.random.Generator, *, numeric: bool = False) -> tuple[bytes, str]:
    """Flip 1-4 random bytes (XOR a random non-zero value) or truncate at a random length.

    ``numeric``: flip bytes of numbers only, each into another number character (metadata JSON:
    the result usually still parses, so it reaches the value checks instead of the JSON parser).
    """
    if rng.random() < 0.25 or len(data) < 2:
        n = int(rng.integers(0, len(data)))
        return data[:n], f"truncate to {n} of {len(data)} bytes"
    b = bytearray(data)
    if numeric:
        digits = np.flatnonzero(np.isin(np.frombuffer(data, dtype=np.uint8), np.frombuffer(_NUMBER_CHARS, np.uint8)))
        pos = sorted(int(p) for p in rng.choice(digits, size=min(len(digits), int(rng.integers(1, 5))),
                                                replace=False))
        for p in pos:
            b[p] = _NUMBER_CHARS[int(rng.integers(0, len(_NUMBER_CHARS)))]
        return bytes(b), f"number characters at {pos}"
    pos = sorted(int(p) for p in rng.choice(len(b), size=int(rng.integers(1, 5)), replace=False))
    for p in pos:
        b[p] ^= int(rng.integers(1, 256))
    return bytes(b), f"flip bytes {pos}"


def make_case(src: Path, dst: Path, rng: np.random.Generator) -> dict[str, Any]:
    """Write a damaged copy of predictor ``src`` (metadata path) into directory ``dst``; describe it."""
    meta = json.loads(src.read_text(encoding="utf-8"))
    files = {role: info["name"] for role, info in meta.get("files", {}).items()}
    # 40% of the cases damage the metadata, 60% a model/arrays file
    target = "metadata" if not files or rng.random() < 0.4 else list(files)[int(rng.integers(0, len(files)))]
    dst.mkdir(parents=True, exist_ok=True)
    for name in files.values():
        shutil.copyfile(src.parent / name, dst / name)
    if target == "metadata":
        data, how = mutate(src.read_bytes(), rng, numeric=rng.random() < 0.5)
        try:
            m2 = json.loads(data.decode("utf-8"))
            if isinstance(m2, dict):
                for role, name in files.items():  # the files' hashes too, where the damage left them in place
                    info = m2.get("files", {}).get(role) if isinstance(m2.get("files"), dict) else None
                    if isinstance(info, dict) and info.get("name") == name:
                        info["sha256"] = hashlib.sha256((dst / name).read_bytes()).hexdigest()
                m2["metadata_sha256"] = _meta_hash(m2)
                data = _dump(m2)
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError, ValueError):
            pass  # no longer JSON: written as is, it reaches the JSON parser
        (dst / src.name).write_bytes(data)
    else:
        name = files[target]
        data, how = mutate((src.parent / name).read_bytes(), rng)
        (dst / name).write_bytes(data)
        meta["files"][target]["sha256"] = hashlib.sha256(data).hexdigest()
        meta["metadata_sha256"] = _meta_hash(meta)
        (dst / src.name).write_bytes(_dump(meta))
    return {"target": target, "how": how}


# ----------------------------------------------------------------------------- the worker
def _worker(unchecked: bool = False) -> int:
    """Read case paths on stdin, answer one JSON outcome line per case on stdout."""
    import warnings

    import hwloop.predict.booster_check as bc
    import hwloop.predict.validate as va
    import xgboost as xgb

    from hwloop.errors import HwloopError
    from hwloop.models import ModelRef
    from hwloop.predict import load_predictor
    from hwloop.predict.sampling import random_layer_specs
    from hwloop.workload import extract_workload

    warnings.simplefilter("ignore")
    specs = random_layer_specs(64, np.random.default_rng(0))
    ref = ModelRef("small_cnn")
    wl = extract_workload(ref.build(), ref.example_input())
    stage: dict[str, bool] = {}
    orig_validate, orig_checked, orig_load = va.validate_metadata, bc.checked_booster, xgb.Booster.load_model

    def validate(*a: Any, **k: Any) -> Any:
        stage["metadata_checks"] = True
        return orig_validate(*a, **k)

    def checked(*a: Any, **k: Any) -> Any:
        stage["booster_parser"] = True
        if unchecked:  # --no-booster-check: what XGBoost does with the raw bytes (the comparison in the docs)
            return a[0]
        return orig_checked(*a, **k)

    def load_model(self: Any, *a: Any, **k: Any) -> Any:
        stage["xgboost_loader"] = True
        return orig_load(self, *a, **k)

    va.validate_metadata, bc.checked_booster, xgb.Booster.load_model = validate, checked, load_model
    print("ready", flush=True)
    for line in sys.stdin:
        path = line.strip()
        stage.clear()
        out: dict[str, Any]
        try:
            p = load_predictor(path)
            ms = p.predict(specs)
            whole = p.predict_workload(wl)
            ok = bool(np.all(np.isfinite(ms)) and np.all(ms > 0) and np.isfinite(whole) and whole > 0)
            out = {"outcome": "ok" if ok else "unclean", "message": "" if ok else f"bad latency {whole!r}"}
        except HwloopError as e:
            msg = str(e)
            out = {"outcome": "error" if msg and "\n" not in msg else "unclean", "message": msg[:300]}
        except Exception as e:  # noqa: BLE001 - anything else is what this benchmark looks for
            out = {"outcome": "unclean", "message": f"{type(e).__name__}: {str(e)[:300]}"}
        out["stages"] = sorted(stage)
        print(json.dumps(out), flush=True)
    return 0


class Pool:
    """One worker process; restarted after it dies."""

    def __init__(self, unchecked: bool = False) -> None:
        self.proc: subprocess.Popen[str] | None = None
        self.unchecked = unchecked

    def _start(self) -> subprocess.Popen[str]:
        flags = ["--no-booster-check"] if self.unchecked else []
        p = subprocess.Popen([sys.executable, __file__, "--worker", *flags], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True, cwd=str(REPO))
        assert p.stdout is not None
        if p.stdout.readline().strip() != "ready":
            raise RuntimeError("fuzz worker failed to start")
        return p

    def run(self, path: Path) -> dict[str, Any]:
        if self.proc is None or self.proc.poll() is not None:
            self.proc = self._start()
        assert self.proc.stdin is not None and self.proc.stdout is not None
        try:
            self.proc.stdin.write(f"{path}\n")
            self.proc.stdin.flush()
            line = self.proc.stdout.readline()
        except BrokenPipeError:
            line = ""
        if not line:
            rc = self.proc.wait()
            self.proc = None
            return {"outcome": "crash", "message": f"worker died with status {rc}", "stages": []}
        return json.loads(line)  # type: ignore[no-any-return]

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
            self.proc.wait(timeout=60)


def _gist(msg: str) -> str:
    """An error message without its file path, shortened: what kind of error it was."""
    msg = re.sub(r"'?/[^ ']*hwloop-fuzz-[^ ']*'?:? ?", "", msg)
    return re.sub(r"\d+", "N", msg)[:60]


def fuzz(predictor: Path, cases: int, seed: int = 0, progress: bool = True, unchecked: bool = False,
         pool: Pool | None = None) -> dict[str, Any]:
    """Run ``cases`` damaged copies of ``predictor``; returns counts and the cases that were not clean.

    ``unchecked`` hands XGBoost the raw booster bytes (hwloop's booster check off), for comparison.
    ``pool``: a worker pool to reuse (closed by the caller); default: a new one, closed at the end.
    """
    from tqdm import tqdm

    rng = np.random.default_rng(seed)
    own = pool is None
    pool = pool if pool is not None else Pool(unchecked)
    outcomes: Counter[str] = Counter()
    stages: Counter[str] = Counter()
    targets: Counter[str] = Counter()
    bad: list[dict[str, Any]] = []
    errors: Counter[str] = Counter()
    failed_at: Counter[str] = Counter()
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="hwloop-fuzz-") as tmp:
        try:
            for i in tqdm(range(cases), desc="fuzz cases", unit="case", disable=not progress):
                d = Path(tmp) / f"case{i}"
                desc = make_case(predictor, d, rng)
                res = pool.run(d / predictor.name)
                outcomes[res["outcome"]] += 1
                targets[desc["target"]] += 1
                stages.update(res["stages"])
                if res["outcome"] == "error":
                    deepest = [k for k in _STAGES if k in res["stages"]]
                    failed_at[deepest[-1] if deepest else "json_or_hash"] += 1
                    errors[_gist(res["message"])] += 1
                if res["outcome"] in ("crash", "unclean"):
                    bad.append({"case": i, **desc, **res})
                shutil.rmtree(d)
        finally:
            if own:
                pool.close()
    return {"predictor": str(predictor), "cases": cases, "seed": seed, "outcomes": dict(outcomes),
            "targets": dict(targets), "reached": {k: stages.get(k, 0) for k in
                                                  _STAGES},
            "errors_after": dict(failed_at), "seconds": round(time.perf_counter() - t0, 1), "not_clean": bad,
            "top_errors": dict(errors.most_common(8))}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--predictor", type=Path, default=DEFAULT)
    ap.add_argument("--json", type=Path, default=None, help="also write the report as JSON")
    ap.add_argument("--no-booster-check", action="store_true",
                    help="hand XGBoost the raw booster bytes (hwloop's check off), to see what it would do")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.worker:
        return _worker(a.no_booster_check)
    rep = fuzz(a.predictor.resolve(), a.cases, a.seed, unchecked=a.no_booster_check)
    o, r = rep["outcomes"], rep["reached"]
    print(f"{rep['cases']} cases of {a.predictor} (seed {a.seed}) in {rep['seconds']} s; damaged file: "
          + ", ".join(f"{k} {v}" for k, v in sorted(rep["targets"].items())))
    print(f"outcomes: one-line error {o.get('error', 0)}, loaded and valid {o.get('ok', 0)}, "
          f"unclean {o.get('unclean', 0)}, crash {o.get('crash', 0)}")
    print(f"reached: metadata checks {r['metadata_checks']}, booster parser {r['booster_parser']}, "
          f"XGBoost loader (after the checks) {r['xgboost_loader']}")
    e = rep["errors_after"]
    print(f"one-line errors raised by: the JSON parser or hash checks {e.get('json_or_hash', 0)}, the metadata/array "
          f"checks {e.get('metadata_checks', 0)}, the booster checks {e.get('booster_parser', 0)}, after XGBoost's "
          f"load (latency guard) {e.get('xgboost_loader', 0)}")
    print("most frequent errors: " + "; ".join(f"{k} ({v})" for k, v in rep["top_errors"].items()))
    for b in rep["not_clean"][:10]:
        print(f"NOT CLEAN case {b['case']} ({b['target']}, {b['how']}): {b['outcome']}: {b['message']}")
    if a.json:
        a.json.write_text(json.dumps(rep, indent=1), encoding="utf-8")
    return 0 if not rep["not_clean"] else 1


if __name__ == "__main__":
    sys.exit(main())
