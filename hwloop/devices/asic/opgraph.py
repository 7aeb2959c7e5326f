"""The accelerator op graph: plain dataclasses the cost model reads (no TVM needed).

An :class:`AccelOp` is one operation as the accelerator executes it. Array ops
(``conv2d``, ``depthwise``, ``dense``, ``matmul``) carry their GEMM view: ``M = batch ·
out_h · out_w`` output positions, ``K = cin_per_group · kernel_h · kernel_w`` reduction,
``N = cout_per_group`` outputs, repeated over ``groups``. Vector ops (``pool``,
``eltwise``) and host ops (``host``) carry an op count; ``view`` ops (reshape) are free.
``epilogue`` ops are batch norm, ReLU/ReLU6 or a residual add applied in the output pipeline
of the array op that produced their input (inference semantics): they cost no op of their
own, only one cycle of pipeline latency and the read of a residual operand that is not on chip.
An :class:`OpGraph` is the ordered list of ops of a partitioned network.

Ops come from the TVM front end (:mod:`hwloop.devices.asic.frontend`) or straight from a
:class:`~hwloop.workload.LayerSpec` (:func:`ops_from_layer`), so search can cost compressed
layers without TVM.

Example:
    >>> from hwloop.workload import LayerSpec
    >>> from hwloop.devices.asic.opgraph import OpGraph
    >>> g = OpGraph.from_layer(LayerSpec("conv2d", (1, 16, 8, 8), out_channels=32, kernel=3, padding=1))
    >>> [(op.kind, op.m, op.k, op.n) for op in g.ops]
    [('conv2d', 64, 144, 32)]
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np

from hwloop.errors import WorkloadError
from hwloop.workload import LayerSpec

__all__ = [
    "ARRAY_KINDS",
    "OP_KINDS",
    "UNITS",
    "VECTOR_ACTIVATIONS",
    "VECTOR_KINDS",
    "AccelOp",
    "OpGraph",
    "ops_from_layer",
    "touched_input_elems",
]

ARRAY_KINDS = ("conv2d", "depthwise", "dense", "matmul")
VECTOR_KINDS = ("pool", "eltwise")
OP_KINDS = ARRAY_KINDS + VECTOR_KINDS + ("host", "view", "epilogue")
#: unit code per kind (the cost model's vectorised dispatch): 0 array, 1 vector, 2 host, 3 none,
#: 4 the array's output pipeline (an epilogue: only a residual read can cost).
UNITS = {**{k: 0 for k in ARRAY_KINDS}, "pool": 1, "eltwise": 1, "host": 2, "view": 3, "epilogue": 4}
#: activations the vector unit runs (piecewise linear); the rest fall back to the host.
VECTOR_ACTIVATIONS = ("relu", "relu6", "hardswish", "hardsigmoid")
#: activations the array's output pipeline applies (a clamp) when the spec has a fused epilogue.
EPILOGUE_ACTIVATIONS = ("relu", "relu6")
GRAPH_VERSION = 2


@dataclass(frozen=True)
class AccelOp:
    """One accelerator operation. Frozen; validated on construction.

    Attributes:
        name: where it sits in the model (module name, or ``<kind>_<index>``).
        kind: one of :data:`OP_KINDS`.
        batch, out_h, out_w: output positions ``M = batch·out_h·out_w`` (array ops; a dense
            op has ``out_h = out_w = 1`` and ``batch`` = its row count).
        kernel_h, kernel_w: kernel size (1 for dense).
        cin_per_group, cout_per_group, groups: the GEMM's ``K/(kh·kw)``, ``N`` and group count.
        in_elems / out_elems: elements of the input tensor(s) and of the output.
        in_read_elems: input elements the op actually reads (a strided 1×1 conv skips
            pixels); 0 means ``in_elems``.
        residual_elems: elements of a residual operand added in the epilogue (array and
            ``epilogue`` ops).
        epilogue_stages: batch norm, residual add and ReLU/clip stages in this op's output
            pipeline (each adds one cycle of pipeline latency, none of throughput).
        weight_elems / bias_elems: parameter elements (``weight_elems`` of a ``matmul`` is
            its second activation operand).
        vector_ops: operations of a vector/host op (e.g. ``kh·kw`` per pooled output).
        w_bits / a_bits: weight and activation bit-widths (outputs are written at ``a_bits``).
        fused: ops folded into this one (``batch_norm``, ``bias``, ``relu``...).
        pattern: the pattern that matched it (empty for host/view ops and layer specs).
    """

    name: str
    kind: str
    batch: int = 1
    out_h: int = 1
    out_w: int = 1
    kernel_h: int = 1
    kernel_w: int = 1
    cin_per_group: int = 0
    cout_per_group: int = 0
    groups: int = 1
    in_elems: int = 0
    out_elems: int = 0
    weight_elems: int = 0
    bias_elems: int = 0
    vector_ops: int = 0
    in_read_elems: int = 0
    residual_elems: int = 0
    epilogue_stages: int = 0
    w_bits: int = 8
    a_bits: int = 8
    fused: tuple[str, ...] = ()
    pattern: str = ""

    def __post_init__(self) -> None:
        if self.kind not in OP_KINDS:
            raise WorkloadError(f"accelerator op kind {self.kind!r} is unknown; allowed: {', '.join(OP_KINDS)}")
        object.__setattr__(self, "fused", tuple(str(x) for x in self.fused))
        ints = ("batch", "out_h", "out_w", "kernel_h", "kernel_w", "groups", "w_bits", "a_bits")
        for n in ints:
            v = getattr(self, n)
            if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < 1:
                raise WorkloadError(f"accelerator op {self.name!r}: {n}={v!r} must be an integer >= 1")
            object.__setattr__(self, n, int(v))
        for n in ("cin_per_group", "cout_per_group", "in_elems", "out_elems", "weight_elems", "bias_elems",
                  "vector_ops", "in_read_elems", "residual_elems", "epilogue_stages"):
            v = getattr(self, n)
            if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < 0:
                raise WorkloadError(f"accelerator op {self.name!r}: {n}={v!r} must be an integer >= 0")
            object.__setattr__(self, n, int(v))
        if self.w_bits > 32 or self.a_bits > 32:
            raise WorkloadError(f"accelerator op {self.name!r}: bits must be <= 32, got "
                                f"w_bits={self.w_bits} a_bits={self.a_bits}")
        if self.kind in ARRAY_KINDS and (self.cin_per_group < 1 or self.cout_per_group < 1):
            raise WorkloadError(f"accelerator op {self.name!r} ({self.kind}) needs cin_per_group and "
                                f"cout_per_group >= 1")
        if self.in_read_elems > self.in_elems:
            raise WorkloadError(f"accelerator op {self.name!r}: in_read_elems={self.in_read_elems} exceeds "
                                f"in_elems={self.in_elems}")

    @property
    def unit(self) -> str:
        """Which unit runs it: ``array``, ``vector``, ``host`` or ``none``."""
        return ("array", "vector", "host", "none", "epilogue")[UNITS[self.kind]]

    @property
    def m(self) -> int:
        """GEMM rows: output positions."""
        return self.batch * self.out_h * self.out_w

    @property
    def k(self) -> int:
        """GEMM reduction length per group."""
        return self.cin_per_group * self.kernel_h * self.kernel_w

    @property
    def n(self) -> int:
        """GEMM columns per group: output channels."""
        return self.cout_per_group

    @property
    def read_elems(self) -> int:
        """Input elements read: ``in_read_elems``, or ``in_elems`` when that is 0."""
        return self.in_read_elems or self.in_elems

    @property
    def macs(self) -> int:
        """Multiply-accumulates (0 for vector, host and view ops)."""
        return self.m * self.k * self.n * self.groups if self.kind in ARRAY_KINDS else 0

    def with_bits(self, w_bits: int | None = None, a_bits: int | None = None) -> AccelOp:
        """A copy at other bit-widths (``matmul`` weights follow ``a_bits``; views keep theirs)."""
        if self.kind == "view":
            return self
        a = a_bits if a_bits is not None else self.a_bits
        w = self.w_bits if w_bits is None else w_bits
        if self.kind == "matmul":
            w = a
        elif self.kind not in ARRAY_KINDS:
            w = self.w_bits
        return dataclasses.replace(self, w_bits=w, a_bits=a)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["fused"] = list(self.fused)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> AccelOp:
        known = {f.name for f in dataclasses.fields(cls)}
        extra = set(d) - known
        if extra:
            raise WorkloadError(f"unknown accelerator op field(s) {sorted(extra)}; allowed: {sorted(known)}")
        kwargs: dict[str, Any] = {k: tuple(v) if k == "fused" else v for k, v in d.items()}
        return cls(**kwargs)


def touched_input_elems(in_shape: Sequence[int], out_hw: Sequence[int], kernel: Sequence[int],
                        stride: Sequence[int], padding: Sequence[int], dilation: Sequence[int] = (1, 1)) -> int:
    """Input elements an NCHW conv/pool window actually reads (rows × columns touched × N·C).

    A 1×1 conv with stride 2 reads a quarter of its input; a 3×3 stride-1 conv reads all of it.

    Example:
        >>> touched_input_elems((1, 16, 32, 32), (16, 16), (1, 1), (2, 2), (0, 0))
        4096
    """
    b, c, h, w = (int(x) for x in in_shape)

    def axis(size: int, out: int, k: int, s: int, p: int, d: int) -> int:
        hit = np.zeros(size, dtype=bool)
        base = np.arange(out) * s - p
        for j in range(k):
            idx = base + j * d
            hit[idx[(idx >= 0) & (idx < size)]] = True
        return int(hit.sum())

    return b * c * axis(h, int(out_hw[0]), int(kernel[0]), int(stride[0]), int(padding[0]), int(dilation[0])) \
        * axis(w, int(out_hw[1]), int(kernel[1]), int(stride[1]), int(padding[1]), int(dilation[1]))


def _array_op(name: str, kind: str, *, batch: int, out_h: int, out_w: int, kh: int, kw: int, cin_g: int,
              cout_g: int, groups: int, in_elems: int, w_bits: int, a_bits: int, in_read: int = 0) -> AccelOp:
    # every array op carries its per-output-channel epilogue parameters (int32 bias + requantisation
    # scale; a folded batch norm lands there too), so bias_elems is the output channel count
    return AccelOp(name, kind, batch=batch, out_h=out_h, out_w=out_w, kernel_h=kh, kernel_w=kw,
                   cin_per_group=cin_g, cout_per_group=cout_g, groups=groups, in_elems=in_elems,
                   out_elems=batch * out_h * out_w * cout_g * groups, weight_elems=kh * kw * cin_g * cout_g * groups,
                   bias_elems=cout_g * groups, in_read_elems=in_read if in_read != in_elems else 0,
                   w_bits=w_bits, a_bits=a_bits)


def ops_from_layer(spec: LayerSpec, *, epilogue: bool = True) -> list[AccelOp]:
    """The accelerator ops that execute one :class:`LayerSpec` (two for a low-rank layer).

    Bits come from ``spec.w_bits``/``spec.a_bits`` (8 when None). ``groups == in_channels``
    (> 1) makes a ``depthwise`` op. ``matmul`` specs multiply two activations (both at
    ``a_bits``). Pooling runs on the vector unit. With ``epilogue`` (the spec's
    ``fused_epilogue``) batch norm, ReLU/ReLU6 and ``add`` are ``epilogue`` ops: inference
    applies them in the output pipeline of the array op that produced their input (batch
    norm folded into its weights and bias), so an add only reads its residual operand.
    Without it they run on the vector unit. Group and instance norm compute their statistics at run time:
    always on the vector unit (two passes over the input). Other piecewise-linear activations run on the
    vector unit; the rest, and ``other`` ops, on the host.

    Raises:
        WorkloadError: the spec cannot be executed (e.g. a conv2d that is not NCHW).
    """
    w_bits = spec.w_bits if spec.w_bits is not None else 8
    a_bits = spec.a_bits if spec.a_bits is not None else 8
    name = spec.name or spec.op
    if spec.op == "conv2d":
        b, cin, h, w = spec.in_shape
        oh, ow = spec.out_shape[2], spec.out_shape[3]
        kh, kw = spec.kernel
        g = spec.groups
        read = touched_input_elems(spec.in_shape, (oh, ow), spec.kernel, spec.stride, spec.padding, spec.dilation)
        if spec.rank is not None:
            r = spec.rank
            first = _array_op(f"{name}.0", "conv2d", batch=b, out_h=oh, out_w=ow, kh=kh, kw=kw, cin_g=cin, cout_g=r,
                              groups=1, in_elems=b * cin * h * w, in_read=read, w_bits=w_bits, a_bits=a_bits)
            second = _array_op(f"{name}.1", "conv2d", batch=b, out_h=oh, out_w=ow, kh=1, kw=1, cin_g=r,
                               cout_g=spec.out_channels, groups=1, in_elems=b * r * oh * ow, w_bits=w_bits,
                               a_bits=a_bits)
            return [first, second]
        kind = "depthwise" if g > 1 and g == cin else "conv2d"
        return [_array_op(name, kind, batch=b, out_h=oh, out_w=ow, kh=kh, kw=kw, cin_g=cin // g,
                          cout_g=spec.out_channels // g, groups=g, in_elems=spec.in_elements, in_read=read,
                          w_bits=w_bits, a_bits=a_bits)]
    if spec.op in ("linear", "matmul"):
        rows = math.prod(spec.in_shape[:-1])
        if spec.op == "matmul":
            groups = math.prod(spec.in_shape[:-2]) if len(spec.in_shape) > 2 else 1
            return [_array_op(name, "matmul", batch=rows // groups, out_h=1, out_w=1, kh=1, kw=1,
                              cin_g=spec.in_channels, cout_g=spec.out_channels, groups=groups,
                              in_elems=spec.in_elements, w_bits=a_bits, a_bits=a_bits)]
        if spec.rank is not None:
            r = spec.rank
            return [_array_op(f"{name}.0", "dense", batch=rows, out_h=1, out_w=1, kh=1, kw=1, cin_g=spec.in_channels,
                              cout_g=r, groups=1, in_elems=spec.in_elements, w_bits=w_bits, a_bits=a_bits),
                    _array_op(f"{name}.1", "dense", batch=rows, out_h=1, out_w=1, kh=1, kw=1, cin_g=r,
                              cout_g=spec.out_channels, groups=1, in_elems=rows * r, w_bits=w_bits, a_bits=a_bits)]
        return [_array_op(name, "dense", batch=rows, out_h=1, out_w=1, kh=1, kw=1, cin_g=spec.in_channels,
                          cout_g=spec.out_channels, groups=1, in_elems=spec.in_elements, w_bits=w_bits,
                          a_bits=a_bits)]
    out = spec.out_elements
    common: dict[str, Any] = {"out_elems": out, "w_bits": w_bits, "a_bits": a_bits}
    if spec.op == "pooling":
        per = spec.in_elements // max(1, out) if spec.variant == "adaptive_avg" else spec.kernel[0] * spec.kernel[1]
        return [AccelOp(name, "pool", in_elems=spec.in_elements, vector_ops=out * max(1, per), **common)]
    if epilogue and (spec.op == "batchnorm" or spec.op == "activation" and spec.variant in EPILOGUE_ACTIVATIONS):
        return [AccelOp(name, "epilogue", in_elems=spec.in_elements, fused=(spec.variant or spec.op,),
                        epilogue_stages=1, **common)]
    if epilogue and spec.op == "add":
        return [AccelOp(name, "epilogue", in_elems=spec.in_elements, residual_elems=spec.in_elements,
                        fused=("add",), epilogue_stages=1, **common)]
    if spec.op == "batchnorm":
        return [AccelOp(name, "eltwise", in_elems=spec.in_elements, vector_ops=2 * out, **common)]
    if spec.op in ("groupnorm", "instancenorm"):
        # statistics at run time: one pass reads the input for the sums (x, x²), a second normalises
        # (subtract, scale, shift): two reads of the input, four vector ops per element; never an epilogue
        return [AccelOp(name, "eltwise", in_elems=2 * spec.in_elements, vector_ops=4 * out,
                        fused=(spec.op,), **common)]
    if spec.op == "add":
        return [AccelOp(name, "eltwise", in_elems=2 * spec.in_elements, vector_ops=out, **common)]
    if spec.op == "activation" and spec.variant in VECTOR_ACTIVATIONS:
        return [AccelOp(name, "eltwise", in_elems=spec.in_elements, vector_ops=out, **common)]
    # transcendental activations and unknown ops: the host runs them (a few ops per element).
    return [AccelOp(name, "host", in_elems=spec.in_elements, vector_ops=4 * out, **common)]


@dataclass(frozen=True)
class OpGraph:
    """The ordered accelerator ops of a partitioned network (or of one layer).

    Attributes:
        name: a label (model key or layer name).
        ops: the ops in execution order; whole-network latency is the sum over them.
        source: ``tvm`` (the front end), ``layer`` (from LayerSpecs) or ``json``.
    """

    name: str
    ops: tuple[AccelOp, ...]
    source: str = "layer"
    meta: Mapping[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "ops", tuple(self.ops))
        if not self.ops:
            raise WorkloadError(f"op graph {self.name!r} has no ops")
        if not all(isinstance(o, AccelOp) for o in self.ops):
            raise WorkloadError(f"op graph {self.name!r}: every op must be an AccelOp")
        object.__setattr__(self, "meta", dict(self.meta))

    @classmethod
    def from_layer(cls, spec: LayerSpec, *, epilogue: bool = True) -> OpGraph:
        """A graph of one :class:`LayerSpec` (see :func:`ops_from_layer`)."""
        return cls(spec.name or spec.op, tuple(ops_from_layer(spec, epilogue=epilogue)), "layer")

    @classmethod
    def from_layers(cls, specs: Sequence[LayerSpec], name: str = "layers", *, epilogue: bool = True) -> OpGraph:
        """A graph of several layer specs in order (e.g. a compressed model's workload)."""
        return cls(name, tuple(op for s in specs for op in ops_from_layer(s, epilogue=epilogue)), "layer")

    @property
    def macs(self) -> int:
        return sum(o.macs for o in self.ops)

    @property
    def array_ops(self) -> tuple[AccelOp, ...]:
        return tuple(o for o in self.ops if o.kind in ARRAY_KINDS)

    @property
    def host_ops(self) -> tuple[AccelOp, ...]:
        return tuple(o for o in self.ops if o.kind == "host")

    def with_bits(self, w_bits: int | None = None, a_bits: int | None = None) -> OpGraph:
        """Every op at the given bit-widths (see :meth:`AccelOp.with_bits`)."""
        return OpGraph(self.name, tuple(o.with_bits(w_bits, a_bits) for o in self.ops), self.source, self.meta)

    @cached_property
    def arrays(self) -> dict[str, np.ndarray]:
        """Column arrays of every numeric field plus ``unit`` codes (cached; read by the cost model)."""
        cols: dict[str, np.ndarray] = {}
        for n in ("batch", "out_h", "out_w", "kernel_h", "kernel_w", "cin_per_group", "cout_per_group", "groups",
                  "in_elems", "out_elems", "weight_elems", "bias_elems", "vector_ops", "residual_elems", "w_bits",
                  "a_bits", "read_elems", "epilogue_stages"):
            cols[n] = np.array([getattr(o, n) for o in self.ops], dtype=np.float64)
        cols["unit"] = np.array([UNITS[o.kind] for o in self.ops], dtype=np.int64)
        cols["eltwise"] = np.array([o.kind == "eltwise" for o in self.ops], dtype=np.float64)
        for a in cols.values():
            a.setflags(write=False)
        return cols

    def to_dict(self) -> dict[str, Any]:
        return {"version": GRAPH_VERSION, "name": self.name, "source": self.source, "meta": dict(self.meta),
                "ops": [o.to_dict() for o in self.ops]}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> OpGraph:
        if not isinstance(d, Mapping) or d.get("version") != GRAPH_VERSION or "ops" not in d:
            raise WorkloadError(f"op graph JSON must have version {GRAPH_VERSION} and 'ops'")
        return cls(str(d.get("name", "graph")), tuple(AccelOp.from_dict(o) for o in d["ops"]),
                   str(d.get("source", "json")), dict(d.get("meta", {})))
