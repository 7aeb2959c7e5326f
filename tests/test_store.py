"""MeasurementStore contract suite: every test runs against SQLite and a real PostgreSQL 15 server."""

from __future__ import annotations

import json
import math
import shutil
import sqlite3
from pathlib import Path

import pandas as pd
import pg
import pytest
import sqlalchemy as sa

from hwloop.devices.base import DeviceFingerprint, MeasureRequest, MeasureResult, TimingConfig, summarize
from hwloop.errors import StoreError
from hwloop.models import ModelRef
from hwloop.store import MeasurementStore, default_store_url, normalize_url, specs_from_frame
from hwloop.store._schema import SCHEMA_VERSION, V0_DDL
from hwloop.workload import LayerSpec

ASSETS = Path(__file__).with_name("assets")
T = TimingConfig(warmup=1, repeats=3, min_repeat_ms=0.2)
FP_A = DeviceFingerprint("dev-a", "cpu", {"cpu": "A", "threads": 1}, {"hostname": "h1"})
FP_B = DeviceFingerprint("dev-b", "cpu", {"cpu": "B", "threads": 1})


def conv(cin: int = 8, cout: int = 16, k: int = 3) -> MeasureRequest:
    return MeasureRequest.for_layer(LayerSpec("conv2d", (1, cin, 8, 8), out_channels=cout, kernel=k, padding=k // 2))


def ok(req: MeasureRequest, base: float = 1.0, timing: TimingConfig = T, **kw: object) -> MeasureResult:
    return summarize([base, base * 1.1, base * 0.9, base * 1.05], timing, request_key=req.key, **kw)  # type: ignore[arg-type]


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path):  # type: ignore[no-untyped-def]
    if request.param == "sqlite":
        yield str(tmp_path / "m.db")
        return
    admin = request.getfixturevalue("postgres_url")
    url = pg.create_database(admin)
    try:
        yield url
    finally:
        pg.drop_database(admin, url)


@pytest.fixture
def store(store_url: str):  # type: ignore[no-untyped-def]
    with MeasurementStore(store_url) as st:
        yield st


# --------------------------------------------------------------------------- keyed, durable writes
def test_add_then_same_key_keeps_the_first_ok_row(store: MeasurementStore) -> None:
    req = conv()
    assert store.add(FP_A, req, ok(req, 1.0)) is True
    assert store.add(FP_A, req, ok(req, 5.0)) is False
    got = store.get(FP_A.key, req.key, T.key)
    assert got is not None and got.latency_ms == pytest.approx(ok(req, 1.0).latency_ms)
    assert store.count() == 1


def test_failure_is_replaced_by_ok_but_ok_never_by_failure(store: MeasurementStore) -> None:
    req = conv()
    assert store.add(FP_A, req, MeasureResult.failure(req.key, T, "RuntimeError: boom"))
    assert store.missing(FP_A, [req], T) == [req]
    assert store.missing(FP_A, [req], T, retry_failed=False) == []
    assert store.add(FP_A, req, MeasureResult.failure(req.key, T, "RuntimeError: again")) is True
    assert store.get(FP_A.key, req.key, T.key).error == "RuntimeError: again"  # type: ignore[union-attr]
    assert store.add(FP_A, req, ok(req)) is True
    assert store.add(FP_A, req, MeasureResult.failure(req.key, T, "late failure")) is False
    got = store.get(FP_A.key, req.key, T.key)
    assert got is not None and got.ok and store.count() == 1


def test_missing_is_keyed_by_device_workload_and_timing(store: MeasurementStore) -> None:
    a, b, c = conv(8), conv(16), conv(24)
    store.add(FP_A, a, ok(a))
    assert store.missing(FP_A, [a, b, a, c, b], T) == [b, c]  # deduplicated, order kept
    assert store.missing(FP_B, [a], T) == [a]  # another device
    t2 = TimingConfig(warmup=1, repeats=4, min_repeat_ms=0.2)
    assert store.missing(FP_A, [a], t2) == [a]  # another timing
    assert store.missing(FP_A, [a], TimingConfig(warmup=1, repeats=3, min_repeat_ms=0.2, timeout_s=5)) == []
    assert store.get(FP_B.key, a.key, T.key) is None


def test_result_round_trips_every_field(store: MeasurementStore) -> None:
    req = MeasureRequest.for_model(ModelRef("small_cnn"), per_layer=True)
    res = summarize([2.0, 2.2, 1.9], T, request_key=req.key, attempts=3, per_layer_ms={"features.0": 0.5},
                    extra={"number": 7, "tuned": True})
    store.add(FP_A, req, res)
    got = store.get(FP_A.key, req.key, T.key)
    assert got is not None
    assert got.samples_ms == res.samples_ms and got.per_layer_ms == {"features.0": 0.5}
    assert got.extra == {"number": 7, "tuned": True} and got.attempts == 3 and got.unstable == res.unstable
    assert got.timing == T and got.latency_ms == pytest.approx(2.0) and got.cv == pytest.approx(res.cv)
    fail = MeasureResult.failure(conv().key, T, "timeout: 1 s")
    store.add(FP_A, conv(), fail)
    got = store.get(FP_A.key, conv().key, T.key)
    assert got is not None and got.error == "timeout: 1 s" and math.isnan(got.latency_ms) and got.samples_ms == ()


def test_devices_lists_fingerprints(store: MeasurementStore) -> None:
    store.add(FP_B, conv(), ok(conv()))
    store.add(FP_A, conv(), ok(conv()))
    assert [d.key for d in store.devices()] == [FP_A.key, FP_B.key]
    assert store.devices()[0].info == {"hostname": "h1"}
    counts = {c["device_name"]: c["ok"] for c in store.counts()}
    assert counts == {"dev-a": 1, "dev-b": 1}


def test_add_rejects_result_of_another_request(store: MeasurementStore) -> None:
    with pytest.raises(StoreError, match="cannot be stored under"):
        store.add(FP_A, conv(8), ok(conv(16)))


# --------------------------------------------------------------------------- frames
def _fill(store: MeasurementStore) -> list[MeasureRequest]:
    reqs = [conv(8, 16, 3), conv(16, 32, 1),
            MeasureRequest.for_layer(LayerSpec("linear", (2, 64), out_channels=10, rank=4))]
    for i, r in enumerate(reqs):
        store.add(FP_A, r, ok(r, 1.0 + i))
    store.add(FP_B, reqs[0], MeasureResult.failure(reqs[0].key, T, "RuntimeError: x"))
    m = MeasureRequest.for_model(ModelRef("resnet20", {"width_mult": 0.5}))
    store.add(FP_B, m, ok(m, 3.0))
    return reqs


def test_to_dataframe_columns_filters_and_flattened_facts(store: MeasurementStore) -> None:
    reqs = _fill(store)
    df = store.to_dataframe()
    for col in ("device_key", "device_name", "backend", "kind", "op", "workload_key", "timing_key", "mode",
                "latency_ms", "min_ms", "max_ms", "iqr_ms", "cv", "unstable", "attempts", "error", "created_at",
                "hwloop_version", "spec_json", "model_json", "per_layer_json", "extra_json", "samples_json",
                "batch", "in_channels", "out_channels", "kernel_h", "kernel_w", "stride", "groups", "h", "w",
                "dtype", "rank", "w_bits", "a_bits", "macs", "params", "bytes_moved", "model"):
        assert col in df.columns, col
    assert len(df) == 4 and len(store.to_dataframe(ok_only=False)) == 5
    a = store.to_dataframe("dev-a", kind="layer")
    assert list(a["workload_key"]) == [r.key for r in reqs]
    assert list(a["macs"]) == [r.layer.macs for r in reqs]  # type: ignore[union-attr]
    assert list(a["bytes_moved"]) == [r.layer.bytes_moved for r in reqs]  # type: ignore[union-attr]
    assert list(a["kernel_h"]) == [3, 1, 1] and list(a["rank"]) == [0, 0, 4] and list(a["h"]) == [8, 8, 1]
    assert len(store.to_dataframe(FP_A.key)) == 3
    b = store.to_dataframe("dev-b", ok_only=False)
    assert b["error"].notna().sum() == 1 and list(b["model"].dropna()) == ["resnet20"]
    assert len(store.to_dataframe(kind="model")) == 1 and store.to_dataframe(mode="tvm").empty
    assert str(df["created_at"].dtype).startswith("datetime64")
    assert [s.key for s in specs_from_frame(a)] == [r.key for r in reqs]
    with pytest.raises(StoreError, match="no spec_json"):
        specs_from_frame(store.to_dataframe("dev-b"))
    with pytest.raises(StoreError, match="'nope' has no rows.*dev-a, dev-b"):
        store.to_dataframe("nope")
    with pytest.raises(StoreError, match="kind 'layers' is unknown"):
        store.to_dataframe(kind="layers")


@pytest.mark.parametrize("suffix", [".parquet", ".csv"])
def test_export_import_round_trip(store: MeasurementStore, tmp_path: Path, suffix: str) -> None:
    _fill(store)
    path = tmp_path / f"export{suffix}"
    assert store.export(path) == 5
    with MeasurementStore(tmp_path / "other.db") as other:
        assert other.import_(path) == 5
        assert other.import_(path) == 0  # dedup by key
        cols = ["device_key", "workload_key", "timing_key", "latency_ms", "samples_json", "error", "created_at"]
        want = store.to_dataframe(ok_only=False)[cols].reset_index(drop=True)
        got = other.to_dataframe(ok_only=False)[cols].reset_index(drop=True)
        pd.testing.assert_frame_equal(got, want)
        assert {d.key for d in other.devices()} == {FP_A.key, FP_B.key}
    # a failed row in the target is replaced by the export's ok row, an ok row is kept
    with MeasurementStore(tmp_path / "third.db") as third:
        r0 = conv(8, 16, 3)
        third.add(FP_A, r0, MeasureResult.failure(r0.key, T, "old failure"))
        assert third.import_(path) == 5
        assert third.get(FP_A.key, r0.key, T.key).ok  # type: ignore[union-attr]


def test_import_refuses_tampered_rows_and_bad_paths(store: MeasurementStore, tmp_path: Path) -> None:
    _fill(store)
    path = tmp_path / "e.csv"
    store.export(path)
    df = pd.read_csv(path, dtype=str)
    df.loc[1, "workload_key"] = "0000000000000000"
    bad = tmp_path / "bad.csv"
    df.to_csv(bad, index=False)
    n = store.count()
    with pytest.raises(StoreError, match=r"bad.csv row 1: workload_key '0000000000000000' does not match"):
        store.import_(bad)
    assert store.count() == n
    df.drop(columns=["timing_json"]).to_csv(bad, index=False)
    with pytest.raises(StoreError, match="missing column"):
        store.import_(bad)
    with pytest.raises(StoreError, match="must end in .parquet or .csv"):
        store.export(tmp_path / "x.json")
    with pytest.raises(StoreError, match="does not exist"):
        store.import_(tmp_path / "nope.parquet")


# --------------------------------------------------------------------------- schema versions
def _v0_fill(url: str) -> list[MeasureRequest]:
    eng = sa.create_engine(normalize_url(url))
    reqs = [conv(8), conv(16)]
    with eng.begin() as c:
        c.execute(sa.text(V0_DDL))
        for i, r in enumerate(reqs):
            res = ok(r, 1.0 + i)
            c.execute(sa.text(
                "INSERT INTO results (id, device_key, device_name, backend, fingerprint_json, workload_key, "
                "timing_key, kind, op, latency_ms, min_ms, max_ms, iqr_ms, cv, unstable, attempts, error, "
                "samples_json, spec_json, model_json, timing_json, created_at) VALUES (:id, :dk, :dn, 'cpu', :fp, "
                ":wk, :tk, 'layer', 'conv2d', :lat, :lo, :hi, 0.1, 0.05, :u, 1, NULL, :s, :spec, NULL, :t, "
                "'2025-01-01T00:00:00+00:00')"),
                {"id": i + 1, "dk": FP_A.key, "dn": FP_A.name, "fp": json.dumps(FP_A.to_dict()), "wk": r.key,
                 "tk": T.key, "lat": res.latency_ms, "lo": res.min_ms, "hi": res.max_ms, "u": False,
                 "s": json.dumps(list(res.samples_ms)), "spec": json.dumps(r.layer.to_dict()),  # type: ignore[union-attr]
                 "t": json.dumps(T.to_dict())})
    eng.dispose()
    return reqs


def test_v0_schema_is_upgraded_in_place(store_url: str) -> None:
    reqs = _v0_fill(store_url)
    with MeasurementStore(store_url) as st:
        assert st.opened_version == 0
        assert st.count() == 2 and st.missing(FP_A, reqs, T) == []
        got = st.get(FP_A.key, reqs[1].key, T.key)
        assert got is not None and got.latency_ms == pytest.approx(ok(reqs[1], 2.0).latency_ms)
        assert st.to_dataframe()["mode"].tolist() == ["eager", "eager"]
        assert st.add(FP_A, conv(32), ok(conv(32)))
    with MeasurementStore(store_url) as st:
        assert st.opened_version == SCHEMA_VERSION and st.count() == 3


def test_newer_schema_is_refused_with_one_line(store_url: str) -> None:
    MeasurementStore(store_url).close()
    eng = sa.create_engine(normalize_url(store_url))
    with eng.begin() as c:
        c.execute(sa.text("UPDATE meta SET value = '99' WHERE key = 'schema_version'"))
    eng.dispose()
    with pytest.raises(StoreError, match="schema version 99, newer than this hwloop's 1") as ei:
        MeasurementStore(store_url)
    assert "\n" not in str(ei.value)


def test_foreign_database_is_refused(store_url: str) -> None:
    eng = sa.create_engine(normalize_url(store_url))
    with eng.begin() as c:
        c.execute(sa.text("CREATE TABLE customers (id INTEGER PRIMARY KEY)"))
    eng.dispose()
    with pytest.raises(StoreError, match=r"tables \['customers'\] but no hwloop 'meta' table"):
        MeasurementStore(store_url)


# --------------------------------------------------------------------------- SQLite / URL specifics
def test_v0_asset_file_upgrades(tmp_path: Path) -> None:
    db = tmp_path / "old.db"
    shutil.copy(ASSETS / "store_v0.db", db)
    with MeasurementStore(db) as st:
        assert st.opened_version == 0 and st.count() == 3 and st.count(ok_only=True) == 2
        (fp,) = st.devices()
        assert fp.name == "old-cpu" and fp.identity == {"cpu": "Prototype CPU", "threads": 1}
        df = st.to_dataframe("old-cpu", kind="layer")
        assert sorted(df["op"]) == ["conv2d", "linear"] and sorted(df["latency_ms"]) == [0.004, 0.125]
        spec = specs_from_frame(df[df["op"] == "conv2d"])[0]
        assert (spec.in_channels, spec.out_channels, spec.kernel) == (16, 32, (3, 3))
    con = sqlite3.connect(db)
    assert con.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone() == (str(SCHEMA_VERSION),)
    assert con.execute("SELECT count(*) FROM sqlite_master WHERE name='results'").fetchone() == (0,)
    con.close()


def test_sqlite_is_wal_and_synchronous_full(tmp_path: Path) -> None:
    with MeasurementStore(tmp_path / "m.db") as st:
        with st._engine.connect() as c:  # noqa: SLF001 - checking the connection settings themselves
            assert c.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert c.exec_driver_sql("PRAGMA synchronous").scalar() == 2  # FULL
            assert c.exec_driver_sql("PRAGMA busy_timeout").scalar() >= 1000


def test_urls_and_default_location(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HWLOOP_HOME", str(tmp_path / "home"))
    assert default_store_url() == f"sqlite:///{tmp_path / 'home' / 'measurements.db'}"
    with MeasurementStore() as st:
        st.add(FP_A, conv(), ok(conv()))
    assert (tmp_path / "home" / "measurements.db").is_file()
    assert normalize_url("postgres://u@h/db") == "postgresql+psycopg://u@h/db"
    assert normalize_url(f"sqlite:///{tmp_path}/x.db") == f"sqlite:///{tmp_path}/x.db"
    with pytest.raises(StoreError, match="unknown scheme 'foo'"):
        MeasurementStore("foo://bar")
    with pytest.raises(StoreError, match="folder .* does not exist"):
        MeasurementStore(tmp_path / "no" / "such" / "m.db")
    with pytest.raises(StoreError, match=r"store postgresql\+psycopg://nobody@127.0.0.1:1/x: "):
        MeasurementStore("postgresql://nobody@127.0.0.1:1/x")
