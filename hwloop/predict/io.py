"""Predictor files and training data.

A saved predictor is a JSON metadata file plus, beside it, the model in its library's own
format (``.ubj`` for XGBoost) and/or a ``.safetensors`` file of arrays (scikit-learn trees,
lookup tables). The metadata records the schema version, feature list, device fingerprint,
execution mode, training-data hash, metrics, aggregation model, hwloop version and the
SHA-256 of every file; ``metadata_sha256`` covers the metadata itself. Loading a file of
another schema version, with a tampered hash or a modified model file fails with one line.
No pickle anywhere.

A predictor file is untrusted input (it may come from someone else, and anyone can recompute
its hashes): every metadata field and array is validated on load
(:mod:`hwloop.predict.validate`), an XGBoost model is parsed and checked by hwloop before
XGBoost sees it (:mod:`hwloop.predict.booster_check`), and a ``predictor`` that is not a
built-in kind but a ``module:Class`` is imported only with the opt-in of :mod:`hwloop.trust`.

Training data comes from a measurement directory of JSON lines (``layers.jsonl``,
``models.jsonl``, ``workloads.jsonl`` as written by ``benchmarks/record_cpu_dataset.py``)
or from a :class:`hwloop.store.MeasurementStore` URL.

Example:
    >>> from hwloop.predict import SurrogatePredictor, load_predictor
    >>> import tempfile, os
    >>> d = tempfile.mkdtemp()
    >>> path = SurrogatePredictor().save(os.path.join(d, "p.json"))
    >>> type(load_predictor(path)).__name__
    'SurrogatePredictor'
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hwloop.errors import PredictorError
from hwloop.predict import PREDICTORS  # re-exported: the registry lives in hwloop.predict
from hwloop.predict.features import FEATURE_SCHEMA, FEATURE_SCHEMAS, feature_names

__all__ = [
    "PREDICTORS",
    "READABLE_SCHEMA_VERSIONS",
    "SCHEMA_VERSION",
    "STATISTICS",
    "TrainingData",
    "load_predictor",
    "load_training_data",
    "metadata_hash",
    "read_metadata",
    "save_predictor",
]

#: version 2: feature schema 2 and the XGBoost baseline (``state.baseline_coef``); version 1 files still load
SCHEMA_VERSION = 2
READABLE_SCHEMA_VERSIONS = (1, 2)
#: timing statistics a predictor can be trained on
STATISTICS = ("min", "median")


#: the largest model/arrays file a predictor may have (hwloop's own are about 1 MB)
_MAX_MODEL_BYTES = 1 << 30


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def metadata_hash(meta: Mapping[str, Any]) -> str:
    """SHA-256 of the canonical JSON of ``meta`` without its ``metadata_sha256`` field."""
    body = {k: v for k, v in meta.items() if k != "metadata_sha256"}
    return _sha(json.dumps(body, sort_keys=True, separators=(",", ":")).encode())


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (np.floating, float)):
        v = float(x)
        return v if np.isfinite(v) else None
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, np.bool_):
        return bool(x)
    return x


def save_predictor(p: Any, path: Any) -> Path:
    """Write predictor ``p`` to ``path`` (metadata JSON) plus its model files; returns ``path``."""
    from safetensors.numpy import save

    import hwloop

    path = Path(path)
    if path.suffix != ".json":
        raise PredictorError(f"predictor path {str(path)!r} must end in .json (the metadata file)")
    if not p.fitted:
        raise PredictorError(f"{type(p).__name__} is not fitted; fit it before saving")
    path.parent.mkdir(parents=True, exist_ok=True)
    state, arrays, native = p._state()
    files: dict[str, dict[str, str]] = {}
    if native is not None:
        mp = path.with_suffix(f".{p.model_ext}")
        _atomic_write(mp, native)
        files["model"] = {"name": mp.name, "sha256": _sha(native)}
    if arrays:
        blob = save({k: np.ascontiguousarray(v) for k, v in arrays.items()})
        ap = path.with_suffix(".safetensors")
        _atomic_write(ap, blob)
        files["arrays"] = {"name": ap.name, "sha256": _sha(blob)}
    agg = getattr(p, "aggregator_", None)
    meta: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "predictor": p.kind,
        "params": p.get_params(),
        "feature_schema": getattr(p, "feature_schema_", FEATURE_SCHEMA),
        "features": list(feature_names(getattr(p, "feature_schema_", FEATURE_SCHEMA))),
        "target": "log(latency_ms)",
        "target_statistic": getattr(p, "target_statistic_", None),
        "fingerprint": p.fingerprint.to_dict() if p.fingerprint is not None else None,
        "mode": p.mode,
        "training_data_hash": getattr(p, "training_data_hash_", None),
        "n_train": getattr(p, "n_train_", 0),
        "metrics": getattr(p, "metrics_", {}),
        "aggregator": agg.to_dict() if agg is not None else None,
        **({"probe": p.probe_} if getattr(p, "probe_", None) else {}),
        "state": state,
        "files": files,
        "hwloop_version": hwloop.__version__,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    meta = _jsonable(meta)
    meta["metadata_sha256"] = metadata_hash(meta)
    _atomic_write(path, (json.dumps(meta, indent=1, sort_keys=True) + "\n").encode())
    return path


def read_metadata(path: Any, *, verify: bool = True) -> dict[str, Any]:
    """The metadata of a predictor file, checked for schema version and hash unless ``verify`` is False."""
    from hwloop.predict.validate import strict_json

    path = Path(path)
    try:
        if path.stat().st_size > 64 << 20:
            raise PredictorError(f"predictor file {str(path)!r} is larger than 64 MiB; it is not predictor metadata")
        meta = strict_json(path.read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise PredictorError(f"predictor file {str(path)!r} does not exist") from e
    except IsADirectoryError as e:
        raise PredictorError(f"predictor file {str(path)!r} is a directory; give the .json metadata file") from e
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise PredictorError(f"predictor file {str(path)!r} is not JSON metadata ({msg})") from e
    except PredictorError as e:
        raise PredictorError(f"predictor file {str(path)!r} is not valid metadata: {e}") from e
    if not isinstance(meta, dict):
        raise PredictorError(f"predictor file {str(path)!r} must hold a JSON object")
    if not verify:
        return meta
    ver = meta.get("schema_version")
    if ver not in READABLE_SCHEMA_VERSIONS:
        raise PredictorError(f"predictor file {str(path)!r} has schema version {ver!r}; this hwloop reads "
                             f"versions {', '.join(map(str, READABLE_SCHEMA_VERSIONS))} (refit it with "
                             "'hwloop predictor fit')")
    if meta.get("metadata_sha256") != metadata_hash(meta):
        raise PredictorError(f"predictor file {str(path)!r} fails its metadata hash check (edited or corrupt); "
                             "refit or restore it")
    fs = meta.get("feature_schema")
    if not isinstance(fs, bool) and fs in FEATURE_SCHEMAS and meta.get("features") != list(feature_names(fs)):
        raise PredictorError(f"predictor file {str(path)!r} lists features that differ from feature schema {fs}'s "
                             f"{len(feature_names(fs))} (edited or corrupt); refit or restore it")
    if isinstance(fs, bool) or fs not in FEATURE_SCHEMAS:
        raise PredictorError(f"predictor file {str(path)!r} uses feature schema {fs!r}; this hwloop computes "
                             f"schemas {', '.join(map(str, FEATURE_SCHEMAS))} (refit it with 'hwloop predictor fit')")
    from hwloop.predict.validate import validate_metadata

    kind = meta.get("predictor")
    validate_metadata(meta, str(path), builtin_kind=isinstance(kind, str) and kind in PREDICTORS)
    return meta


def _predictor_class(kind: Any, path: Path, allow_import: bool | None) -> Any:
    """The class of a file's ``predictor``: a built-in kind, or ``module:Class`` under :mod:`hwloop.trust`."""
    from hwloop.predict.base import BasePredictor
    from hwloop.trust import resolve

    cls = resolve(str(kind), what=f"predictor class in {str(path)!r}", builtins=PREDICTORS,
                  allow_import=allow_import, error=PredictorError)
    if not (isinstance(cls, type) and issubclass(cls, BasePredictor)):
        raise PredictorError(f"predictor class {kind!r} in {str(path)!r} is not a hwloop BasePredictor subclass")
    return cls


def load_predictor(path: Any, *, allow_import: bool | None = None, probe: str | None = None) -> Any:
    """Load any predictor saved with ``save`` (see the module docstring for the checks).

    Args:
        path: the ``.json`` metadata file.
        allow_import: allow a ``module:Class`` predictor class named in the file (imports that code;
            default: only built-in kinds, unless ``hwloop --allow-import`` or ``HWLOOP_ALLOW_IMPORT=1``).
        probe: ``"scale"`` or ``"refuse"`` runs the probe (:mod:`hwloop.predict.probe`: a few reference layers
            measured here, about a second; needs torch for a CPU predictor) and scales or refuses on a mismatch;
            ``"off"`` none; default: ``HWLOOP_PREDICTOR_PROBE`` (``off`` when unset: no probe, no torch).

    Example:
        >>> import hwloop  # doctest: +SKIP
        >>> p = hwloop.load_predictor("measurements/local-cpu/predictor.json")  # doctest: +SKIP
        >>> p.predict_model(model, example)  # doctest: +SKIP
    """
    from hwloop.devices.base import DeviceFingerprint
    from hwloop.predict.aggregate import Aggregator
    from hwloop.predict.validate import validate_arrays

    path = Path(path)
    meta = read_metadata(path)
    kind = meta.get("predictor")
    cls = _predictor_class(kind, path, allow_import)
    fp = DeviceFingerprint.from_dict(meta["fingerprint"]) if meta.get("fingerprint") else None
    try:
        p = cls(**meta.get("params", {}), fingerprint=fp, mode=meta.get("mode", "eager"))
    except (TypeError, ValueError) as e:
        raise PredictorError(f"predictor file {str(path)!r} has bad params for {kind}: {e}") from e
    blobs: dict[str, bytes] = {}
    for role, info in meta.get("files", {}).items():
        fpath = path.parent / Path(str(info["name"])).name
        try:
            if fpath.stat().st_size > _MAX_MODEL_BYTES:
                raise PredictorError(f"predictor model file {str(fpath)!r} is larger than "
                                     f"{_MAX_MODEL_BYTES >> 20} MiB; refusing to read it")
            data = fpath.read_bytes()
        except FileNotFoundError as e:
            raise PredictorError(f"predictor model file {str(fpath)!r} is missing (it belongs to {path.name})") from e
        if _sha(data) != info.get("sha256"):
            raise PredictorError(f"predictor model file {str(fpath)!r} fails its SHA-256 check (modified or "
                                 "corrupt); refit or restore it")
        blobs[role] = data
    arrays: dict[str, np.ndarray] = {}
    if "arrays" in blobs:
        from safetensors.numpy import load

        try:
            arrays = load(blobs["arrays"])
        except Exception as e:  # noqa: BLE001 - safetensors raises its own error types on a corrupt file
            raise PredictorError(f"predictor arrays file of {str(path)!r} is corrupt: "
                                 f"{(str(e).splitlines() or [type(e).__name__])[0]}") from None
    n_features = len(feature_names(int(meta["feature_schema"])))
    validate_arrays(str(kind), arrays, str(path), n_features)
    p.feature_schema_ = int(meta["feature_schema"])
    try:
        p._set_state(meta.get("state", {}), arrays, blobs.get("model"))
    except PredictorError as e:
        model_file = meta.get("files", {}).get("model", {}).get("name", "")
        if model_file and model_file not in str(e):  # name the file the defect is in
            raise PredictorError(f"{str(path.parent / Path(str(model_file)).name)!r} (model of {path.name}): "
                                 f"{e}") from None
        raise
    except (KeyError, TypeError, ValueError, IndexError) as e:
        raise PredictorError(f"predictor file {str(path)!r} has a malformed state for {kind}: "
                             f"{type(e).__name__}: {(str(e).splitlines() or [''])[0]}") from None
    p.n_train_ = int(meta.get("n_train", 0))
    if meta.get("training_data_hash"):
        p.training_data_hash_ = meta["training_data_hash"]
    p.metrics_ = dict(meta.get("metrics") or {})
    if meta.get("target_statistic"):
        p.target_statistic_ = meta["target_statistic"]
    if meta.get("aggregator"):
        p.aggregator_ = Aggregator.from_dict(meta["aggregator"])
    if meta.get("probe"):
        p.probe_ = meta["probe"]
    p.metadata_ = meta
    if probe is None:
        from hwloop.predict.probe import env_probe_action

        probe = env_probe_action()
    if probe is not None and probe != "off":
        from hwloop.predict.probe import run_probe

        run_probe(p, on_mismatch=probe)
    return p


@dataclass(frozen=True)
class TrainingData:
    """Measured layers and whole models of one device and execution mode.

    Attributes:
        fingerprint: the ``DeviceFingerprint`` (None if the source had none).
        mode: execution mode of the timings.
        layer_specs / layer_ms: isolated layer timings.
        model_refs / model_ms / workloads: whole models, their end-to-end latency and traced workload.
        per_layer_ms: per model, the in-context per-module timings (``model_layers`` requests; may be empty).
        statistic: which timing statistic the latencies are (``min`` or ``median``).
    """

    fingerprint: Any
    mode: str
    layer_specs: tuple[Any, ...]
    layer_ms: np.ndarray
    model_refs: tuple[Any, ...] = ()
    model_ms: np.ndarray = field(default_factory=lambda: np.zeros(0))
    workloads: tuple[Any, ...] = ()
    per_layer_ms: tuple[Mapping[str, float], ...] = ()
    statistic: str = "min"

    def __post_init__(self) -> None:
        object.__setattr__(self, "layer_ms", np.asarray(self.layer_ms, dtype=np.float64))
        object.__setattr__(self, "model_ms", np.asarray(self.model_ms, dtype=np.float64))
        if len(self.layer_specs) != len(self.layer_ms):
            raise PredictorError(f"{len(self.layer_specs)} layer specs but {len(self.layer_ms)} latencies")
        if not (len(self.model_refs) == len(self.model_ms) == len(self.workloads)):
            raise PredictorError(f"{len(self.model_refs)} models, {len(self.model_ms)} latencies and "
                                 f"{len(self.workloads)} workloads must match")

    @property
    def n_layers(self) -> int:
        return len(self.layer_specs)

    @property
    def n_models(self) -> int:
        return len(self.model_refs)


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    import gzip

    gz = path.with_name(path.name + ".gz")
    if not path.exists() and not gz.exists():
        return []
    out = []
    with (open(path, encoding="utf-8") if path.exists() else gzip.open(gz, "rt", encoding="utf-8")) as f:
        for line in f:
            if not line.strip():
                continue
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a torn last line (interrupted recording) is tolerated
    return out


def _trace_missing(refs: Sequence[Any], have: Mapping[str, Any], progress: bool) -> dict[str, Any]:
    from tqdm import tqdm

    from hwloop.workload import WorkloadWarning, extract_workload

    out = dict(have)
    todo = [r for r in refs if r.key not in out]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", WorkloadWarning)
        for ref in tqdm(todo, desc="trace models", unit="model", disable=not progress or not todo):
            out[ref.key] = extract_workload(ref.build(), ref.example_input(), name=ref.label)
    return out


def _from_dir(d: Path, device: str | None, mode: str | None, progress: bool, statistic: str) -> TrainingData:
    from hwloop.devices.base import DeviceFingerprint, MeasureRequest, MeasureResult
    from hwloop.workload import Workload

    layers = _read_jsonl(d / "layers.jsonl")
    models = _read_jsonl(d / "models.jsonl")
    if not layers and not models:
        raise PredictorError(f"measurement directory {str(d)!r} has no layers.jsonl or models.jsonl")
    fps = {r["fingerprint"]["key"]: r["fingerprint"] for r in layers + models}
    if device is not None:
        fps = {k: v for k, v in fps.items() if v["name"] == device or k == device}
        if not fps:
            raise PredictorError(f"measurement directory {str(d)!r} has no data for device {device!r}")
    if len(fps) > 1:
        names = sorted(f"{v['name']}({k})" for k, v in fps.items())
        raise PredictorError(f"measurement directory {str(d)!r} mixes devices {names}; pick one with --device")
    fp_key, fp_dict = next(iter(fps.items()))
    specs, ys, refs, yms, per = [], [], [], [], []
    m = None
    for rec in layers + models:
        if rec["fingerprint"]["key"] != fp_key:
            continue
        res = MeasureResult.from_dict(rec["result"])
        if not res.ok or (mode is not None and res.timing.mode != mode):
            continue
        m = m or res.timing.mode
        req = MeasureRequest.from_dict(rec["request"])
        val = res.min_ms if statistic == "min" else res.latency_ms
        if req.kind == "layer":
            specs.append(req.layer)
            ys.append(val)
        else:
            assert req.model is not None  # a model request names its model
            refs.append(req.model)
            yms.append(val)
            per.append(dict(res.per_layer_ms))
    wl = {r["model_key"]: Workload.from_dict(r["workload"]) for r in _read_jsonl(d / "workloads.jsonl")}
    wl = _trace_missing(refs, wl, progress)
    return TrainingData(DeviceFingerprint.from_dict(fp_dict), m or mode or "eager", tuple(specs), np.array(ys),
                        tuple(refs), np.array(yms), tuple(wl[r.key] for r in refs), tuple(per), statistic)


def _from_store(store: Any, device: str | None, mode: str | None, progress: bool, statistic: str,
                wl_have: Mapping[str, Any] | None = None, where: str = "store") -> TrainingData:
    import pandas as pd

    from hwloop.devices.base import DeviceFingerprint
    from hwloop.models import ModelRef
    from hwloop.store import specs_from_frame

    frames = [store.to_dataframe(device, kind=k, mode=mode) for k in ("layer", "model", "model_layers")]
    allf = pd.concat([f for f in frames if len(f)], ignore_index=True) if any(len(f) for f in frames) else frames[0]
    if allf.empty:
        raise PredictorError(f"{where} has no measurements" + (f" for device {device!r}" if device else ""))
    keys = sorted(set(allf["device_key"]))
    if len(keys) > 1:
        names = sorted({f"{n}({k})" for n, k in zip(allf["device_name"], allf["device_key"])})
        raise PredictorError(f"{where} mixes devices {names}; pick one with --device NAME or a fingerprint key")
    modes = sorted(set(allf["mode"]))
    if len(modes) > 1:
        raise PredictorError(f"{where} holds modes {modes} for this device; pick one with --mode")
    col = "min_ms" if statistic == "min" else "latency_ms"
    fp = DeviceFingerprint.from_dict(json.loads(str(allf["fingerprint_json"].iloc[0])))
    lay = frames[0]
    mod = allf[allf["kind"] != "layer"].drop_duplicates("model_json", keep="last")
    specs = tuple(specs_from_frame(lay)) if len(lay) else ()
    refs = tuple(ModelRef.from_dict(json.loads(v)) for v in mod["model_json"])
    per = tuple(json.loads(v) if isinstance(v, str) and v else {} for v in mod["per_layer_json"])
    wl = _trace_missing(refs, wl_have or {}, progress)
    return TrainingData(fp, modes[0], specs, lay[col].to_numpy(dtype=np.float64) if len(lay) else np.zeros(0), refs,
                        mod[col].to_numpy(dtype=np.float64), tuple(wl[r.key] for r in refs), per, statistic)


def load_training_data(source: Any, *, device: str | None = None, mode: str | None = None,
                       statistic: str = "min", progress: bool = True) -> TrainingData:
    """Measured layers and models from a JSON-lines directory or a store URL.

    Args:
        source: a store URL (``sqlite:///...``, ``postgresql://...``) or a directory holding a store
            export ``measurements.parquet`` (or ``layers.jsonl``/``models.jsonl``), plus optionally
            ``workloads.jsonl[.gz]`` (traced workloads, so models need not be traced again).
        device: device name (or fingerprint key) to select.
        mode: execution mode to select (default: whatever the data holds).
        statistic: ``"min"`` (the minimum over timed samples: the uncontended latency, robust on a
            shared machine; default) or ``"median"`` (the store's ``latency_ms``).
        progress: show a progress bar while tracing models that have no stored workload.
    """
    if statistic not in STATISTICS:
        raise PredictorError(f"statistic {statistic!r} is unknown; allowed: {', '.join(STATISTICS)}")
    from hwloop.store import MeasurementStore

    s = str(source)
    if "://" in s:
        with MeasurementStore(s) as st:
            return _from_store(st, device, mode, progress, statistic, where=f"store {s!r}")
    d = Path(s)
    if not d.is_dir():
        raise PredictorError(f"training data {s!r} is neither a measurement directory nor a store URL")
    if (d / "measurements.parquet").is_file():
        from hwloop.workload import Workload

        wl = {r["model_key"]: Workload.from_dict(r["workload"]) for r in _read_jsonl(d / "workloads.jsonl")}
        with MeasurementStore("sqlite://") as st:
            st.import_(d / "measurements.parquet")
            return _from_store(st, device, mode, progress, statistic, wl, where=f"{str(d)!r}")
    return _from_dir(d, device, mode, progress, statistic)
