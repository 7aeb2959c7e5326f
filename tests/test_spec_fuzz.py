"""Property-based fuzzing of the spec files a user writes or receives: sweep, search and compare specs
and device profiles.

Each file is written as TOML and read by the real loader. Whatever hypothesis puts in it (values
of the wrong type, NaN/inf, huge or negative numbers, unknown keys, missing keys, byte flips of the
shipped specs), the loader either returns a validated spec or raises a :class:`HwloopError` whose
message is one line; nothing else escapes. Accepted specs satisfy their invariants.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hwloop.errors import HwloopError

REPO = Path(__file__).resolve().parents[1]
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                          HealthCheck.too_slow])


# --------------------------------------------------------------------------- a tiny TOML writer (inline tables)
def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf") if math.isinf(v) else repr(v)
    if isinstance(v, str):
        return json.dumps(v)  # JSON string escapes are valid TOML basic-string escapes
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{json.dumps(k)} = {_toml_value(x)}" for k, x in v.items()) + " }"
    raise TypeError(type(v))


def to_toml(d: dict[str, Any]) -> str:
    return "".join(f"{json.dumps(k)} = {_toml_value(v)}\n" for k, v in d.items())


# --------------------------------------------------------------------------- values and mutations
scalars = st.one_of(
    st.integers(min_value=-(2**63), max_value=2**63 - 1), st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12), st.booleans(),
    st.sampled_from([0, -1, 1, 10**12, 0.0, -0.5, 1.5, 2.0, "abc", "", "small_cnn", "module:factory", "os:system"]))
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                       st.dictionaries(st.text(max_size=8), inner, max_size=3)),
                      max_leaves=8)


def _paths(d: dict[str, Any], prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    out = []
    for k, v in d.items():
        out.append((*prefix, k))
        if isinstance(v, dict):
            out.extend(_paths(v, (*prefix, k)))
    return out


@st.composite
def mutated(draw: st.DrawFn, base: dict[str, Any]) -> dict[str, Any]:
    """``base`` with 1-3 edits: a value replaced, a key removed, or an unknown key added (anywhere)."""
    d = json.loads(json.dumps(base))
    for _ in range(draw(st.integers(1, 3))):
        paths = _paths(d)
        op = draw(st.sampled_from(["replace", "replace", "delete", "add"]))
        if not paths:
            op = "add"
        if op == "add":
            tables = [p for p in paths if isinstance(_get(d, p), dict)]
            where = draw(st.sampled_from([(), *tables]))
            _get(d, where)[draw(st.text(min_size=1, max_size=8))] = draw(values)
            continue
        path = draw(st.sampled_from(paths))
        parent = _get(d, path[:-1])
        if op == "delete":
            del parent[path[-1]]
        else:
            parent[path[-1]] = draw(values)
    return d


def _get(d: dict[str, Any], path: tuple[str, ...]) -> Any:
    for k in path:
        d = d[k]
    return d


def _outcome(load: Callable[[Path], Any], path: Path) -> Any:
    """The loaded spec, or None after a one-line HwloopError; anything else fails the test."""
    try:
        return load(path)
    except HwloopError as e:
        msg = str(e)
        assert msg and "\n" not in msg, repr(msg)
        return None


# --------------------------------------------------------------------------- the loaders and valid bases
def _load_sweep(p: Path) -> Any:
    from hwloop.sweep import SweepSpec

    return SweepSpec.from_toml(p)


def _load_search(p: Path) -> Any:
    from hwloop.search.spec import load_spec

    return load_spec(p)


def _load_compare(p: Path) -> Any:
    from hwloop.search.compare import load_compare_spec

    return load_compare_spec(p)


def _load_profile(p: Path) -> Any:
    from hwloop.devices.profiles import load_profile

    return load_profile(p)


SWEEP_LAYERS = {"name": "s", "kind": "layers", "sampling": "random", "n": 8, "seed": 0,
                "space": {"op": ["conv2d", "linear"], "in_channels": {"min": 8, "max": 64, "log": True},
                          "out_channels": [8, 16], "kernel": [1, 3], "resolution": [8, 16]},
                "timing": {"repeats": 5, "warmup": 1}}
SWEEP_MODELS = {"name": "m", "kind": "models", "models": [{"name": "resnet20", "kwargs": {"width_mult": 0.5}}],
                "random_widths": {"family": "resnet20", "n": 3, "seed": 0}}
SEARCH = {"name": "s", "seed": 0, "model": {"name": "small_cnn"}, "data": {"task": "digits", "batch_size": 64},
          "device": {"name": "asic-tpu32"}, "predictor": {"objective": "auto"},
          "budget": {"target": 0.7, "lam": 1.0}, "space": {"channels": True, "bits": True, "a_bits": 8},
          "schedule": {"pretrain_epochs": 1, "search_epochs": 1, "finetune_epochs": 1, "lr": 0.05}}
COMPARE = {"name": "c", "seed": 0, "search": {k: v for k, v in SEARCH.items() if k not in ("name", "seed")},
           "differentiable": {"targets": [0.5, 0.7]},
           "optuna": {"samplers": ["tpe", "random"], "n_trials": 4, "latency": "predictor"},
           "report": {"unit": "train_images", "reference_latency": 1.0, "baseline": "tpe"}}
PROFILE_CPU = {"name": "p", "backend": "cpu", "description": "x", "options": {"threads": 1, "clock": "wall"},
               "timing": {"warmup": 2, "repeats": 5, "max_cv": 0.05}}
PROFILE_ASIC = {"name": "a", "backend": "asic", "options": {"seed": 0}, "timing": {"warmup": 0, "repeats": 1}}


def _check_sweep(s: Any) -> None:
    from hwloop.sweep import MAX_SWEEP_N

    assert s.kind in ("layers", "models") and (s.n is None or 1 <= s.n <= MAX_SWEEP_N)


def _check_search(s: Any) -> None:
    from hwloop.search.spec import SearchSpec

    b = s.budget
    assert b.target is None or (isinstance(b.target, (int, float)) and 0 < b.target <= 1)
    assert math.isfinite(b.lam) and b.lam >= 0 and s.schedule.lr > 0 and s.data.batch_size >= 1
    assert SearchSpec.from_dict(s.to_dict(), s.path) == s  # what was accepted survives a round trip


def _check_compare(s: Any) -> None:
    assert s.targets or s.lams
    assert all(0 < t <= 1 for t in s.targets) and isinstance(s.n_trials, int) and s.n_trials >= 1


def _check_profile(p: Any) -> None:
    from hwloop.devices.profiles import BACKENDS, backend_options

    assert p.backend in BACKENDS and isinstance(p.name, str) and p.name
    known = backend_options(p.backend)
    assert known is None or set(p.options) <= set(known[0])


KINDS = {
    "sweep-layers": (SWEEP_LAYERS, _load_sweep, _check_sweep),
    "sweep-models": (SWEEP_MODELS, _load_sweep, _check_sweep),
    "search": (SEARCH, _load_search, _check_search),
    "compare": (COMPARE, _load_compare, _check_compare),
    "profile-cpu": (PROFILE_CPU, _load_profile, _check_profile),
    "profile-asic": (PROFILE_ASIC, _load_profile, _check_profile),
}


@pytest.mark.parametrize("kind", list(KINDS))
def test_valid_base_loads(kind: str, tmp_path: Path) -> None:
    base, load, check = KINDS[kind]
    p = tmp_path / "spec.toml"
    p.write_text(to_toml(base))
    check(load(p))


@pytest.mark.parametrize("kind", list(KINDS))
def test_mutated_spec_is_validated_or_refused_in_one_line(kind: str, tmp_path: Path) -> None:
    base, load, check = KINDS[kind]
    seen = {"ok": 0, "refused": 0}

    @FUZZ
    @given(d=mutated(base))
    def run(d: dict[str, Any]) -> None:
        p = tmp_path / "spec.toml"
        p.write_text(to_toml(d), encoding="utf-8", errors="surrogatepass")
        spec = _outcome(load, p)
        if spec is not None:
            check(spec)
        seen["ok" if spec is not None else "refused"] += 1

    run()
    assert seen["refused"] > 0  # the mutations do reach the validation


SHIPPED = [REPO / "measurements/specs/conv-space.toml", REPO / "measurements/specs/resnet20-widths.toml",
           REPO / "search/digits_small_cnn_asic.toml", REPO / "search/compare-digits.toml",
           REPO / "devices/local-cpu.toml", REPO / "devices/asic-tpu32.toml"]
LOADERS = [_load_sweep, _load_sweep, _load_search, _load_compare, _load_profile, _load_profile]


@pytest.mark.parametrize("i", range(len(SHIPPED)), ids=[p.name for p in SHIPPED])
def test_byte_flips_and_truncations_of_shipped_specs(i: int, tmp_path: Path) -> None:
    src, load = SHIPPED[i].read_bytes(), LOADERS[i]
    assert load(SHIPPED[i]) is not None

    @FUZZ
    @given(pos=st.integers(0, len(src) - 1), byte=st.integers(0, 255), cut=st.booleans())
    def run(pos: int, byte: int, cut: bool) -> None:
        data = src[:pos] if cut else src[:pos] + bytes([byte]) + src[pos + 1:]
        p = tmp_path / SHIPPED[i].name
        p.write_bytes(data)
        _outcome(load, p)

    run()


@FUZZ
@given(data=st.binary(max_size=200))
def test_random_bytes_as_any_spec(data: bytes, tmp_path_factory: pytest.TempPathFactory) -> None:
    p = tmp_path_factory.getbasetemp() / "random.toml"
    p.write_bytes(data)
    for load in (_load_sweep, _load_search, _load_compare, _load_profile):
        _outcome(load, p)
