"""Check an XGBoost model file before XGBoost parses it; hand XGBoost only a document built here.

XGBoost's C++ loader trusts its input: a flipped byte in a ``.ubj`` file can make it index out
of bounds and take the whole process down (a segfault no ``try`` can catch). A predictor file
may come from someone else, so :func:`checked_booster` does this instead:

1. parse the UBJSON (`ubjson.org <https://ubjson.org>`_) with a strict reader written here in
   Python and numpy (bounded lengths and nesting, no trailing bytes, no duplicate keys, UTF-8
   strings, big-endian typed arrays);
2. check the model: exactly the gbtree regression layout hwloop writes (``reg:squarederror``,
   one target, no categorical splits), the feature count of the predictor's schema, and per
   tree every array of ``num_nodes`` entries, children in range, each node the child of
   exactly one parent with a larger id than it (so a tree, no cycles), split features in range,
   and every float finite;
3. re-encode the checked structure (known keys only) as canonical UBJSON and return those
   bytes, which are what XGBoost loads. For a file XGBoost wrote they are byte-identical.

Every failure is a :class:`~hwloop.errors.PredictorError` of one line. This costs about 30 ms
for the shipped 80-tree models (XGBoost's own load takes 4 ms); a subprocess that loads the
file where a crash cannot hurt would cost a second per load and still leave the model to be
parsed again in this process.

Example:
    >>> from hwloop.predict.booster_check import checked_booster
    >>> checked_booster(b"{L", n_features=108)
    Traceback (most recent call last):
    ...
    hwloop.errors.PredictorError: XGBoost model file is corrupt: truncated at byte 2 (needs 8 more bytes)
"""

from __future__ import annotations

import struct
from typing import Any, NamedTuple

import numpy as np

from hwloop.errors import PredictorError

__all__ = ["MAX_NODES", "MAX_TREES", "UbjArray", "UbjNum", "checked_booster", "decode_ubj", "encode_ubj"]

#: limits of a model hwloop accepts
MAX_TREES = 100_000
MAX_NODES = 1 << 20
_MAX_DEPTH = 32
_INT = {"i": ">i1", "U": ">u1", "I": ">i2", "l": ">i4", "L": ">i8"}
_FLOAT = {"d": ">f4", "D": ">f8"}
_TYPED = {**_INT, **_FLOAT}
_STRUCT = {"i": ">b", "U": ">B", "I": ">h", "l": ">i", "L": ">q", "d": ">f", "D": ">d"}
_ROOT_PARENT = 2147483647


class UbjNum(NamedTuple):
    """A UBJSON number with its type marker (kept so the re-encoded file has the same types)."""

    marker: str
    value: int | float


class UbjArray(NamedTuple):
    """A strongly typed UBJSON array (``[$X#n``) as a numpy array of its big-endian type."""

    marker: str
    values: np.ndarray


class _Bad(Exception):
    pass


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.b = bytes(data)
        self.i = 0

    def take(self, n: int) -> bytes:
        if n < 0 or self.i + n > len(self.b):
            raise _Bad(f"truncated at byte {self.i} (needs {n} more bytes)")
        out = self.b[self.i:self.i + n]
        self.i += n
        return out

    def marker(self) -> str:
        return chr(self.take(1)[0])

    def number(self, m: str) -> int | float:
        fmt = _STRUCT[m]
        return struct.unpack(fmt, self.take(struct.calcsize(fmt)))[0]  # type: ignore[no-any-return]

    def length(self, m: str | None = None) -> int:
        m = m or self.marker()
        if m not in _INT:
            raise _Bad(f"length at byte {self.i - 1} has type {m!r}, not an integer")
        n = int(self.number(m))
        if n < 0 or n > len(self.b) - self.i:
            raise _Bad(f"length {n} at byte {self.i} exceeds the {len(self.b) - self.i} bytes left")
        return n

    def text(self) -> str:
        at = self.i
        try:
            return self.take(self.length()).decode("utf-8")
        except UnicodeDecodeError as e:
            raise _Bad(f"string at byte {at} is not UTF-8") from e

    def value(self, m: str, depth: int) -> Any:
        if depth > _MAX_DEPTH:
            raise _Bad(f"nesting deeper than {_MAX_DEPTH} at byte {self.i}")
        if m == "Z":
            return None
        if m in "TF":
            return m == "T"
        if m in _TYPED:
            return UbjNum(m, self.number(m))
        if m == "S":
            return self.text()
        if m == "[":
            return self.array(depth)
        if m == "{":
            return self.obj(depth)
        raise _Bad(f"unknown type marker {m!r} at byte {self.i - 1}")

    def _count(self) -> tuple[str | None, int | None]:
        typ = cnt = None
        if self.i < len(self.b) and chr(self.b[self.i]) == "$":
            self.i += 1
            typ = self.marker()
            if typ not in _TYPED:
                raise _Bad(f"typed container of type {typ!r} at byte {self.i - 1} is not supported")
            if self.marker() != "#":
                raise _Bad(f"typed container at byte {self.i - 1} has no count")
        if typ is not None or (self.i < len(self.b) and chr(self.b[self.i]) == "#"):
            if typ is None:
                self.i += 1
            cnt = self.length()
        return typ, cnt

    def array(self, depth: int) -> Any:
        typ, cnt = self._count()
        if typ is not None:
            dt = np.dtype(_TYPED[typ])
            assert cnt is not None
            raw = self.take(cnt * dt.itemsize)
            return UbjArray(typ, np.frombuffer(raw, dtype=dt))
        out: list[Any] = []
        if cnt is not None:
            for _ in range(cnt):
                out.append(self.value(self.marker(), depth + 1))
            return out
        while True:
            m = self.marker()
            if m == "]":
                return out
            out.append(self.value(m, depth + 1))

    def obj(self, depth: int) -> dict[str, Any]:
        typ, cnt = self._count()
        if typ is not None:
            raise _Bad(f"typed object at byte {self.i} is not supported")
        out: dict[str, Any] = {}
        k = 0
        while cnt is None or k < cnt:
            if cnt is None and self.i < len(self.b) and chr(self.b[self.i]) == "}":
                self.i += 1
                return out
            at = self.i
            key = self.text()
            if key in out:
                raise _Bad(f"duplicate key {key!r} at byte {at}")
            out[key] = self.value(self.marker(), depth + 1)
            k += 1
        return out


def decode_ubj(data: bytes) -> Any:
    """Parse UBJSON strictly (see the module docstring); raises PredictorError on any defect."""
    r = _Reader(data)
    try:
        v = r.value(r.marker(), 0)
        if r.i != len(r.b):
            raise _Bad(f"{len(r.b) - r.i} trailing bytes after the document")
    except (_Bad, struct.error) as e:
        raise PredictorError(f"XGBoost model file is corrupt: {e}") from None
    return v


def _enc_len(n: int) -> bytes:
    return b"L" + struct.pack(">q", n)


def encode_ubj(v: Any) -> bytes:
    """Canonical UBJSON of a :func:`decode_ubj` structure (objects open-ended, arrays counted)."""
    out: list[bytes] = []

    def put(x: Any) -> None:
        if x is None:
            out.append(b"Z")
        elif x is True or x is False:
            out.append(b"T" if x else b"F")
        elif isinstance(x, UbjNum):
            out.append(x.marker.encode() + struct.pack(_STRUCT[x.marker], x.value))
        elif isinstance(x, UbjArray):
            out.append(b"[$" + x.marker.encode() + b"#" + _enc_len(len(x.values))
                       + np.ascontiguousarray(x.values, dtype=_TYPED[x.marker]).tobytes())
        elif isinstance(x, str):
            b = x.encode()
            out.append(b"S" + _enc_len(len(b)) + b)
        elif isinstance(x, list):
            out.append(b"[#" + _enc_len(len(x)))
            for e in x:
                put(e)
        elif isinstance(x, dict):
            out.append(b"{")
            for k, e in x.items():
                kb = k.encode()
                out.append(_enc_len(len(kb)) + kb)
                put(e)
            out.append(b"}")
        else:  # pragma: no cover - decode_ubj yields nothing else
            raise TypeError(type(x).__name__)

    put(v)
    return b"".join(out)


# ----------------------------------------------------------------------------- model checks
def _obj(x: Any, where: str, required: set[str], optional: frozenset[str] | set[str] = frozenset()) -> dict[str, Any]:
    if not isinstance(x, dict):
        raise _Bad(f"{where} must be an object")
    missing, extra = required - set(x), set(x) - required - set(optional)
    if missing or extra:
        raise _Bad(f"{where} has keys {sorted(x)}; needs {sorted(required)}" + (f" (optional {sorted(optional)})"
                                                                                  if optional else ""))
    return x


def _int_str(x: Any, where: str, lo: int, hi: int) -> int:
    if not isinstance(x, str) or not x.isdigit() or not lo <= int(x) <= hi:
        raise _Bad(f"{where}={x!r} must be an integer string in [{lo}, {hi}]")
    return int(x)


def _num(x: Any, where: str) -> int | float:
    if not isinstance(x, UbjNum) or not np.isfinite(x.value):
        raise _Bad(f"{where} must be a finite number, got {x!r}")
    return x.value


def _str_map(x: Any, where: str) -> None:
    if not isinstance(x, dict) or not all(isinstance(v, str) and len(v) < 4096 for v in x.values()):
        raise _Bad(f"{where} must map names to strings")


def _typed(t: dict[str, Any], key: str, n: int, markers: str, where: str) -> np.ndarray:
    a = t[key]
    if isinstance(a, list) and not a and n == 0:  # XGBoost writes an empty untyped array for some empty fields
        return np.zeros(0)
    if not isinstance(a, UbjArray) or a.marker not in markers:
        raise _Bad(f"{where}.{key} must be a typed array of {'/'.join(markers)}")
    if len(a.values) != n:
        raise _Bad(f"{where}.{key} has {len(a.values)} entries, not {n}")
    if a.marker in _FLOAT and not np.all(np.isfinite(a.values)):
        raise _Bad(f"{where}.{key} holds a non-finite value")
    return a.values.astype(np.int64) if a.marker in _INT else a.values.astype(np.float64)


_TREE_KEYS = {"base_weights", "categories", "categories_nodes", "categories_segments", "categories_sizes",
              "default_left", "id", "left_children", "loss_changes", "parents", "right_children",
              "split_conditions", "split_indices", "split_type", "sum_hessian", "tree_param"}


def _check_tree(t: Any, idx: int, n_features: int) -> None:
    where = f"tree {idx}"
    _obj(t, where, _TREE_KEYS)
    tp = _obj(t["tree_param"], f"{where}.tree_param", {"num_deleted", "num_feature", "num_nodes",
                                                       "size_leaf_vector"})
    n = _int_str(tp["num_nodes"], f"{where}.num_nodes", 1, MAX_NODES)
    _int_str(tp["num_deleted"], f"{where}.num_deleted", 0, 0)
    if _int_str(tp["num_feature"], f"{where}.num_feature", 0, 1 << 20) != n_features:
        raise _Bad(f"{where}.num_feature={tp['num_feature']} differs from the predictor's {n_features} features")
    _int_str(tp["size_leaf_vector"], f"{where}.size_leaf_vector", 0, 1)
    if not isinstance(t["id"], UbjNum) or t["id"].marker not in _INT or t["id"].value != idx:
        raise _Bad(f"{where}.id is {t['id']!r}, not {idx}")
    left = _typed(t, "left_children", n, "l", where)
    right = _typed(t, "right_children", n, "l", where)
    parents = _typed(t, "parents", n, "l", where)
    feat = _typed(t, "split_indices", n, "l", where)
    for k in ("base_weights", "loss_changes", "split_conditions", "sum_hessian"):
        _typed(t, k, n, "d", where)
    if not np.all(np.isin(_typed(t, "default_left", n, "U", where), (0, 1))):
        raise _Bad(f"{where}.default_left must be 0 or 1")
    if np.any(_typed(t, "split_type", n, "U", where) != 0):
        raise _Bad(f"{where} has categorical splits, which hwloop does not write")
    for k in ("categories", "categories_nodes", "categories_segments", "categories_sizes"):
        _typed(t, k, 0, "lLiU", where)
    ids = np.arange(n)
    leaf = left == -1
    if np.any(leaf != (right == -1)):
        raise _Bad(f"{where} has a node with one child")
    inner = ~leaf
    kids = np.concatenate([left[inner], right[inner]])
    if np.any(kids <= np.concatenate([ids[inner], ids[inner]])) or np.any(kids >= n):
        raise _Bad(f"{where} has a child index out of range")
    if len(kids) != n - 1 or len(np.unique(kids)) != n - 1:
        raise _Bad(f"{where} is not a tree (every node but the root must be the child of exactly one node)")
    if parents[0] != _ROOT_PARENT or np.any(parents[left[inner]] != ids[inner]) \
            or np.any(parents[right[inner]] != ids[inner]):
        raise _Bad(f"{where}.parents disagree with its children")
    if np.any((feat < 0) | (feat >= n_features)):
        raise _Bad(f"{where} splits on a feature outside [0, {n_features})")


def _ints(x: Any) -> list[int] | None:
    """The integers of a typed or untyped integer array (None if it is anything else)."""
    if isinstance(x, UbjArray) and x.marker in _INT:
        return [int(v) for v in x.values]
    if isinstance(x, list) and all(isinstance(v, UbjNum) and v.marker in _INT for v in x):
        return [int(v.value) for v in x]
    return None


def _check_model(doc: Any, n_features: int) -> None:
    top = _obj(doc, "model", {"learner", "version"})
    ver = top["version"]
    if not isinstance(ver, list) or len(ver) != 3 or not all(isinstance(v, UbjNum) and v.marker in _INT
                                                             for v in ver):
        raise _Bad("version must be three integers")
    ln = _obj(top["learner"], "learner", {"gradient_booster", "learner_model_param", "objective"},
              {"attributes", "feature_names", "feature_types"})
    _str_map(ln.get("attributes", {}), "learner.attributes")
    for k in ("feature_names", "feature_types"):
        v = ln.get(k, [])
        if not isinstance(v, list) or not all(isinstance(s, str) for s in v) or len(v) not in (0, n_features):
            raise _Bad(f"learner.{k} must be 0 or {n_features} strings")
    mp = _obj(ln["learner_model_param"], "learner_model_param", {"base_score", "num_class", "num_feature"},
              {"boost_from_average", "num_target"})
    _str_map(mp, "learner_model_param")
    _int_str(mp["num_class"], "num_class", 0, 0)
    _int_str(mp.get("num_target", "1"), "num_target", 1, 1)
    _int_str(mp.get("boost_from_average", "1"), "boost_from_average", 0, 1)
    if _int_str(mp["num_feature"], "num_feature", 0, 1 << 20) != n_features:
        raise _Bad(f"num_feature={mp['num_feature']} differs from the predictor's {n_features} features")
    try:
        base = float(mp["base_score"].strip("[]"))
    except ValueError:
        raise _Bad(f"base_score={mp['base_score']!r} is not a number") from None
    if not np.isfinite(base) or abs(base) > 1e6:
        raise _Bad(f"base_score={mp['base_score']!r} must be finite")
    obj = _obj(ln["objective"], "objective", {"name"}, {"reg_loss_param"})
    if obj["name"] != "reg:squarederror":
        raise _Bad(f"objective {obj['name']!r} is not reg:squarederror")
    _str_map(obj.get("reg_loss_param", {}), "objective.reg_loss_param")
    gb = _obj(ln["gradient_booster"], "gradient_booster", {"name", "model"})
    if gb["name"] != "gbtree":
        raise _Bad(f"booster {gb['name']!r} is not gbtree")
    m = _obj(gb["model"], "gbtree model", {"gbtree_model_param", "tree_info", "trees"}, {"cats", "iteration_indptr"})
    gp = _obj(m["gbtree_model_param"], "gbtree_model_param", {"num_trees"}, {"num_parallel_tree"})
    _int_str(gp.get("num_parallel_tree", "1"), "num_parallel_tree", 1, 1)
    n_trees = _int_str(gp["num_trees"], "num_trees", 1, MAX_TREES)
    trees, info = m["trees"], m["tree_info"]
    if not isinstance(trees, list) or len(trees) != n_trees:
        raise _Bad(f"model holds {len(trees) if isinstance(trees, list) else '?'} trees, not num_trees={n_trees}")
    if _ints(info) != [0] * n_trees:
        raise _Bad("tree_info must be one 0 per tree")
    if "iteration_indptr" in m and _ints(m["iteration_indptr"]) != list(range(n_trees + 1)):
        raise _Bad("iteration_indptr must be 0, 1, ..., num_trees")
    if "cats" in m:
        cats = _obj(m["cats"], "cats", set(), {"enc", "feature_segments", "sorted_idx"})
        if any(len(v.values if isinstance(v, UbjArray) else v) for v in cats.values()
               if isinstance(v, (list, UbjArray))) or not all(isinstance(v, (list, UbjArray)) for v in cats.values()):
            raise _Bad("model has categorical encodings, which hwloop does not write")
    for i, t in enumerate(trees):
        _check_tree(t, i, n_features)


def checked_booster(data: bytes, *, n_features: int) -> bytes:
    """The canonical bytes of an XGBoost ``.ubj`` model after the checks above (PredictorError on failure).

    Args:
        data: the file's bytes.
        n_features: the number of features of the predictor's feature schema.
    """
    doc = decode_ubj(data)
    try:
        _check_model(doc, n_features)
    except _Bad as e:
        raise PredictorError(f"XGBoost model file is invalid: {e}") from None
    return encode_ubj(doc)
