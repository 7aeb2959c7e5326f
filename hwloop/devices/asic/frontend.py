"""TVM front end: a model → Relax → hwloop's accelerator patterns → an :class:`OpGraph`.

The model is exported with ``torch.export`` and imported with
``tvm.relax.frontend.torch.from_exported_program`` (parameters kept as inputs, so their
names map back to module names). ``FuseOpsByPattern`` then groups the Relax bindings into
accelerator operations with the patterns of :func:`asic_patterns`:

* ``hwloop_asic.conv2d`` / ``hwloop_asic.depthwise``: conv2d (+ batch_norm folded into
  scale/bias) (+ bias add) (+ relu / clip), on the PE array;
* ``hwloop_asic.dense``: matmul by a parameter (+ transpose of the weight) (+ bias) (+ relu);
  ``hwloop_asic.matmul``: matmul of two activations (+ bias) (+ relu), on the PE array;
* ``hwloop_asic.pool``: max/avg/adaptive-avg pooling and spatial ``mean``, on the vector unit;
* ``hwloop_asic.eltwise``: add (+ relu/clip), batch_norm, group_norm, instance_norm (+ the tiling of its
  parameters), multiply, divide, subtract, maximum/minimum, relu, clip, on the vector unit.

Every other op (sigmoid, softmax, permute of activations, ...) runs on the modelled host;
reshapes are free views. :func:`tir_gemm_macs` cross-checks the graph against TVM's own
TIR FLOP estimate of the legalized module.

Example:
    >>> from hwloop.models import ModelRef
    >>> from hwloop.devices.asic.frontend import lower_model
    >>> g = lower_model(ModelRef("small_cnn"))  # doctest: +SKIP
    >>> [op.kind for op in g.ops][:3]  # doctest: +SKIP
    ['conv2d', 'conv2d', 'pool']
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from hwloop.devices.asic.opgraph import AccelOp, OpGraph, touched_input_elems
from hwloop.errors import WorkloadError
from hwloop.models import ModelRef

if TYPE_CHECKING:  # pragma: no cover
    import tvm

__all__ = [
    "PATTERN_PREFIX",
    "VIEW_OPS",
    "asic_patterns",
    "graph_from_relax",
    "import_model",
    "lower_model",
    "partition",
    "tir_gemm_macs",
]

PATTERN_PREFIX = "hwloop_asic"
#: relax ops that only re-label memory (free on the accelerator; a broadcast is a strided read).
VIEW_OPS = ("relax.reshape", "relax.squeeze", "relax.expand_dims", "relax.flatten", "relax.broadcast_to")
_ACTS = {"relu": "relax.nn.relu", "clip": "relax.clip"}
_POOL_OPS = ("relax.nn.max_pool2d", "relax.nn.avg_pool2d", "relax.nn.adaptive_avg_pool2d", "relax.mean")
_ELTWISE_OPS = ("relax.add", "relax.subtract", "relax.multiply", "relax.divide", "relax.maximum",
                "relax.minimum", "relax.nn.relu", "relax.clip")
#: group / instance norm: statistics computed at run time, two passes over the input on the vector unit
_NORM_OPS = ("relax.nn.group_norm", "relax.nn.instance_norm")
_GEMM_TIR_PREFIXES = ("conv2d", "group_conv2d", "depthwise_conv2d", "matmul", "dense", "batch_matmul")


# --------------------------------------------------------------------------- patterns
def _shape(expr: Any) -> tuple[int, ...]:
    """Static shape of a relax expression's tensor struct info."""
    from tvm import relax

    si = expr.ty
    if not isinstance(si, relax.TensorType) or si.shape is None:
        raise WorkloadError(f"expected a tensor with a static shape, got {si}")
    try:
        return tuple(int(d) for d in si.shape.values)
    except (TypeError, AttributeError) as e:
        raise WorkloadError(f"shape {si.shape} is not static; the asic front end needs static shapes") from e


def _is_param(expr: Any) -> bool:
    import tvm
    from tvm import relax

    return isinstance(expr, tvm.ir.Constant) or (isinstance(expr, relax.Var) and
                                                  not isinstance(expr, relax.DataflowVar))


def _single_use(ctx: Any) -> bool:
    """Whether every value inside the match but its result is used only inside the match.

    Without it an ``add(x, conv(x))`` could be fused with the conv that *produced* ``x``,
    although ``x`` also feeds the next block.
    """
    inside = list(ctx.matched_bindings.keys())
    result = ctx.value_to_bound_var.get(ctx.matched_expr)
    for var in inside:
        if result is not None and var.same_as(result):
            continue
        if any(not any(u.same_as(v) for v in inside) for u in ctx.var_usages.get(var, [])):
            return False
    return True


def _check(kind: str, has_bias: bool, has_res: bool | str) -> Callable[[Any], bool]:
    """The FusionPattern check of a pattern family (depthwise vs conv, bias vs residual, weight is a param)."""

    def check(ctx: Any) -> bool:
        if not _single_use(ctx):
            return False
        ann = ctx.annotated_expr
        root = ann["root"]
        if kind in ("conv2d", "depthwise"):
            groups = int(root.attrs.groups)
            cin = _shape(root.args[0])[1]
            if str(root.attrs.data_layout) != "NCHW" or str(root.attrs.kernel_layout) != "OIHW":
                return False
            if (groups > 1 and groups == cin) != (kind == "depthwise"):
                return False
        if kind == "dense" and not _is_param(ann["weight"]):
            return False
        if kind == "matmul" and _is_param(ann["weight"]):
            return False
        out = _shape(root)
        if has_bias:
            n_bias = math.prod(_shape(ann["bias"]))
            channels = out[1] if kind in ("conv2d", "depthwise") else out[-1]
            if n_bias != channels or not _is_param(ann["bias"]):  # a residual add, not a bias
                return False
        if has_res:
            res = ann["residual"]
            if _is_param(res) or _shape(res) != out:  # a bias or a broadcast, not a residual
                return False
        return True

    return check


def _family(kind: str, with_bn: bool, with_bias: bool, with_res: str, act: str | None
            ) -> tuple[str, Any, dict[str, Any]]:
    from tvm.relax.dpl import is_op, is_tuple_get_item, wildcard

    ann: dict[str, Any] = {}
    if kind in ("conv2d", "depthwise"):
        root = is_op("relax.nn.conv2d")(wildcard(), wildcard())
    else:
        w = wildcard()
        rhs = (is_op("relax.permute_dims")(w) | w) if kind == "dense" else w
        root = is_op("relax.matmul")(wildcard(), rhs)
        ann["weight"] = w
    ann["root"] = root
    out = root
    parts = [kind]
    if with_bn:
        bn = is_op("relax.nn.batch_norm")(out, wildcard(), wildcard(), wildcard(), wildcard())
        # FuseOpsByPattern roots a match at a call: a chain ending in batch_norm returns its tuple
        out = is_tuple_get_item(bn, 0) if (with_bias or with_res or act) else bn
        parts.append("bn")
    if with_bias:
        bias = wildcard()
        ann["bias"] = bias
        b = is_op("relax.reshape")(bias, wildcard()) | bias
        out = is_op("relax.add")(out, b) | is_op("relax.add")(b, out)
        parts.append("bias")
    if with_res:
        # one pattern per operand order: a failed check does not retry the other branch of an alternative
        res = wildcard()
        ann["residual"] = res
        out = is_op("relax.add")(out, res) if with_res == "right" else is_op("relax.add")(res, out)
        parts.append("res" if with_res == "right" else "resl")
    if act:
        out = is_op(_ACTS[act])(out, varg_default_wildcard=True)
        parts.append(act)
    return f"{PATTERN_PREFIX}.{kind}." + "_".join(parts), out, ann


def asic_patterns(epilogue: bool = True) -> list[Any]:
    """hwloop's ``FusionPattern`` list for ``relax.transform.FuseOpsByPattern``, highest priority first.

    Pattern names are ``hwloop_asic.<kind>.<parts>``; ``<kind>`` is the accelerator op kind.
    With ``epilogue`` (the spec's ``fused_epilogue``) an array op absorbs the batch norm, bias,
    residual add and ReLU/clip that follow it, as the array's output pipeline applies them;
    without, it takes only its bias and the rest are vector-unit ops.
    """
    from tvm.relax.dpl import is_op, is_tuple_get_item, wildcard
    from tvm.relax.transform import FusionPattern

    out: list[Any] = []
    fams = []
    for kind in ("depthwise", "conv2d", "dense", "matmul"):
        for bn in ((True, False) if kind in ("conv2d", "depthwise") and epilogue else (False,)):
            for bias in (True, False):
                for res in (("right", "left", "") if epilogue else ("",)):
                    for act in (("relu", "clip", None) if epilogue else (None,)):
                        fams.append((kind, bn, bias, res, act))
    fams.sort(key=lambda f: -(f[1] + f[2] + bool(f[3]) + (f[4] is not None)))  # longest chains first
    for kind, bn, bias, res, act in fams:
        name, pat, ann = _family(kind, bn, bias, res, act)
        out.append(FusionPattern(name, pat, ann, _check(kind, bias, res)))
    for op in _POOL_OPS:
        pat = is_op(op)(wildcard(), varg_default_wildcard=True)
        out.append(FusionPattern(f"{PATTERN_PREFIX}.pool.{op.rsplit('.', 1)[1]}", pat, {}))
    if epilogue:
        for act in ("relu", "clip"):
            add = is_op("relax.add")(wildcard(), wildcard())
            out.append(FusionPattern(f"{PATTERN_PREFIX}.eltwise.add_{act}",
                                     is_op(_ACTS[act])(add, varg_default_wildcard=True), {}))
            bn = is_tuple_get_item(is_op("relax.nn.batch_norm")(wildcard(), wildcard(), wildcard(), wildcard(),
                                                                wildcard()), 0)
            out.append(FusionPattern(f"{PATTERN_PREFIX}.eltwise.bn_{act}",
                                     is_op(_ACTS[act])(bn, varg_default_wildcard=True), {}))
    for op in _NORM_OPS:   # run-time statistics: the vector unit, never an epilogue
        par = lambda: is_op("relax.tile")(wildcard()) | wildcard()  # instance norm tiles its params
        out.append(FusionPattern(f"{PATTERN_PREFIX}.eltwise.{op.rsplit('.', 1)[1]}",
                                 is_op(op)(wildcard(), par(), par()), {}))
    out.append(FusionPattern(f"{PATTERN_PREFIX}.eltwise.bn",
                             is_op("relax.nn.batch_norm")(wildcard(), wildcard(), wildcard(), wildcard(), wildcard()),
                             {}))
    for op in _ELTWISE_OPS:
        n_args = 1 if op in ("relax.nn.relu", "relax.clip") else 2
        pat = is_op(op)(*[wildcard() for _ in range(n_args)], varg_default_wildcard=True)
        out.append(FusionPattern(f"{PATTERN_PREFIX}.eltwise.{op.rsplit('.', 1)[1]}", pat, {}))
    return out


# --------------------------------------------------------------------------- import + partition
def import_model(ref: ModelRef) -> tuple[tvm.IRModule, dict[str, str]]:
    """``ref`` → a Relax ``IRModule`` (params as inputs) and a map relax param name → torch name.

    Raises:
        WorkloadError: torch.export or the Relax import failed.
    """
    import torch
    from tvm import relax
    from tvm.relax.frontend.torch import from_exported_program

    model = ref.build()
    x = ref.example_input()
    try:
        with torch.no_grad():
            ep = torch.export.export(model, (x,))
        mod = from_exported_program(ep, keep_params_as_input=True)
    except Exception as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise WorkloadError(f"cannot import {ref.label} into TVM Relax: {first}") from e
    names = {s.arg.name: s.target for s in ep.graph_signature.input_specs
             if getattr(s, "target", None) and hasattr(s.arg, "name")}
    mod = relax.transform.CanonicalizeBindings()(mod)
    mod = relax.transform.DeadCodeElimination()(mod)
    return mod, names


def partition(mod: tvm.IRModule, epilogue: bool = True) -> tvm.IRModule:
    """Group ``mod``'s bindings into composite functions with :func:`asic_patterns`."""
    from tvm import relax

    return relax.transform.FuseOpsByPattern(asic_patterns(epilogue), bind_constants=False)(mod)


# --------------------------------------------------------------------------- op graph
def _calls(func: Any) -> list[Any]:
    """Calls to relax ops inside ``func``, in post order."""
    import tvm
    from tvm import relax

    found: list[Any] = []

    def visit(e: Any) -> None:
        if isinstance(e, relax.Call) and isinstance(e.op, tvm.ir.Op):
            found.append(e)

    relax.analysis.post_order_visit(func.body, visit)
    return found


def _elems(expr: Any) -> int:
    return _elems_si(expr.ty)


def _elems_si(si: Any) -> int:
    from tvm import relax

    if isinstance(si, relax.TensorType) and si.shape is not None:
        try:
            return math.prod(int(d) for d in si.shape.values)
        except (TypeError, AttributeError):
            return 0
    if isinstance(si, relax.TupleType):
        # batch_norm returns (out, mean, var): only the first field is written
        return _elems_si(si.fields[0]) if si.fields else 0
    return 0


def _tensor_args(call: Any) -> int:
    from tvm import relax

    return sum(_elems(a) for a in call.args if isinstance(a.ty, (relax.TensorType, relax.TupleType)))


def _stages(comp: str) -> int:
    """Epilogue stages of an array composite (``...conv2d.conv2d_bn_res_relu`` → 3): BN, residual add, act."""
    return sum(p in ("bn", "res", "resl", "relu", "clip") for p in comp.rsplit(".", 1)[1].split("_")[1:])


def _composite_op(name: str, comp: str, func: Any, call: Any) -> AccelOp:
    """The AccelOp of one composite function ``func`` called by ``call``."""
    kind = comp.split(".")[1]
    calls = _calls(func)
    fused = tuple(dict.fromkeys(c.op.name.rsplit(".", 1)[1] for c in calls))
    out_elems = _elems(call)
    if kind in ("conv2d", "depthwise"):
        conv = next(c for c in calls if c.op.name == "relax.nn.conv2d")
        b, cin, h, w = _shape(conv.args[0])
        cout, cin_g, kh, kw = _shape(conv.args[1])
        oh, ow = _shape(conv)[2:]
        g = int(conv.attrs.groups)
        a = conv.attrs
        read = touched_input_elems((b, cin, h, w), (oh, ow), (kh, kw), [int(x) for x in a.strides],
                                   [int(x) for x in a.padding][:2], [int(x) for x in a.dilation])
        out = b * cout * oh * ow
        return AccelOp(name, kind, batch=b, out_h=oh, out_w=ow, kernel_h=kh, kernel_w=kw, cin_per_group=cin_g,
                       cout_per_group=cout // g, groups=g, in_elems=b * cin * h * w, out_elems=out,
                       weight_elems=cout * cin_g * kh * kw, bias_elems=cout,
                       in_read_elems=read if read != b * cin * h * w else 0,
                       residual_elems=out if "_res" in comp else 0, epilogue_stages=_stages(comp), fused=fused,
                       pattern=comp)
    if kind in ("dense", "matmul"):
        mm = next(c for c in calls if c.op.name == "relax.matmul")
        a_shape, b_shape, o_shape = _shape(mm.args[0]), _shape(mm.args[1]), _shape(mm)
        k = a_shape[-1]
        n = o_shape[-1]
        if kind == "dense":
            rows, groups = math.prod(a_shape[:-1]), 1
        else:
            groups = math.prod(b_shape[:-2]) if len(b_shape) > 2 else 1
            rows = math.prod(a_shape[:-1]) // groups
        out = math.prod(o_shape)
        return AccelOp(name, kind, batch=rows, cin_per_group=k, cout_per_group=n, groups=groups,
                       in_elems=math.prod(a_shape), out_elems=out, weight_elems=math.prod(b_shape),
                       bias_elems=n * groups, residual_elems=out if "_res" in comp else 0,
                       epilogue_stages=_stages(comp), fused=fused, pattern=comp)
    in_elems = _tensor_args(call)
    if kind == "pool":
        pool = calls[0]
        if pool.op.name in ("relax.nn.max_pool2d", "relax.nn.avg_pool2d"):
            ops = out_elems * math.prod(int(x) for x in pool.attrs.pool_size)
        else:
            ops = max(in_elems, out_elems)
        return AccelOp(name, "pool", in_elems=in_elems, out_elems=out_elems, vector_ops=ops, fused=fused,
                       pattern=comp)
    if comp.rsplit(".", 1)[1] in ("group_norm", "instance_norm"):
        data = max(_elems(a) for a in call.args)
        return AccelOp(name, "eltwise", in_elems=2 * data, out_elems=out_elems, vector_ops=4 * out_elems,
                       fused=fused, pattern=comp)
    per = 2 if "bn" in comp.rsplit(".", 1)[1] else 1
    return AccelOp(name, "eltwise", in_elems=in_elems, out_elems=out_elems,
                   vector_ops=out_elems * (per + len(calls) - 1), fused=fused, pattern=comp)


def _label(call: Any, names: Mapping[str, str], fallback: str) -> str:
    """The torch module a composite call belongs to (from its weight's name), else ``fallback``."""
    from tvm import relax

    for a in call.args:
        if isinstance(a, relax.Var) and a.name in names:
            target = names[a.name]
            if target.endswith(".weight"):
                return target[: -len(".weight")]
    return fallback


def graph_from_relax(mod: tvm.IRModule, names: Mapping[str, str] | None = None, *, name: str = "main"
                     ) -> OpGraph:
    """The :class:`OpGraph` of a partitioned module's ``main`` (bindings in order).

    Composite calls become accelerator ops; other relax op calls become ``view`` ops
    (:data:`VIEW_OPS`) or ``host`` ops; tuples and constants are skipped.
    """
    import tvm
    from tvm import relax

    names = names or {}
    main = mod["main"]
    ops: list[AccelOp] = []
    counts: dict[str, int] = {}

    def fallback(kind: str) -> str:
        counts[kind] = counts.get(kind, 0) + 1
        return f"{kind}_{counts[kind]}"

    used: set[str] = set()
    for block in main.body.blocks:
        for binding in block.bindings:
            val = binding.value
            if not isinstance(val, relax.Call):
                continue
            if isinstance(val.op, relax.GlobalVar):
                func = mod[val.op]
                comp = str(func.attrs["Composite"]) if func.attrs and "Composite" in func.attrs else ""
                if not comp.startswith(PATTERN_PREFIX + "."):
                    raise WorkloadError(f"main calls {val.op.name_hint}, which is not an asic composite")
                kind = comp.split(".")[1]
                label = _label(val, names, "")
                if not label or label in used:
                    label = fallback(kind)
                used.add(label)
                ops.append(_composite_op(label, comp, func, val))
            elif isinstance(val.op, tvm.ir.Op):
                op_name = val.op.name
                short = op_name.rsplit(".", 1)[1]
                if op_name in VIEW_OPS:
                    ops.append(AccelOp(fallback("view"), "view", in_elems=_tensor_args(val), out_elems=_elems(val),
                                       fused=(short,)))
                else:
                    out = _elems(val)
                    ops.append(AccelOp(fallback(short), "host", in_elems=_tensor_args(val), out_elems=out,
                                       vector_ops=4 * out, fused=(short,)))
            else:
                raise WorkloadError(f"main calls {val.op!r}; the asic front end handles relax ops only")
    if not ops:
        raise WorkloadError(f"model {name} has no ops to run")
    return OpGraph(name, tuple(ops), "tvm")


def lower_model(ref: ModelRef, *, epilogue: bool = True) -> OpGraph:
    """Import ``ref`` into Relax, partition it with :func:`asic_patterns`, return its op graph (8-bit).

    ``epilogue``: fuse batch norm, bias, a residual add and ReLU/clip into the array op they
    follow (the spec's ``fused_epilogue``). The graph's ``meta`` records the model, the
    lowering time and the host ops.
    """
    if not isinstance(ref, ModelRef):
        raise WorkloadError(f"lower_model needs a ModelRef, got {type(ref).__name__}")
    t0 = time.perf_counter()
    mod, names = import_model(ref)
    graph = graph_from_relax(partition(mod, epilogue), names, name=ref.label)
    meta = {"model": ref.to_dict(), "lower_s": time.perf_counter() - t0, "epilogue": epilogue,
            "host_ops": [o.fused[0] for o in graph.host_ops]}
    return OpGraph(graph.name, graph.ops, "tvm", meta)


def tir_gemm_macs(mod: tvm.IRModule) -> list[int]:
    """TVM's own MAC count of every conv/matmul of ``mod``: ``estimate_tir_flops / 2`` per
    legalized PrimFunc, in call order (``mod`` unpartitioned, as from :func:`import_model`)."""
    import tvm
    from tvm import relax
    from tvm.s_tir.analysis import estimate_tir_flops

    leg = relax.transform.LegalizeOps()(mod)
    call_tir = tvm.ir.Op.get("relax.call_tir")
    out: list[int] = []
    cache: dict[str, int] = {}
    for block in leg["main"].body.blocks:
        for binding in block.bindings:
            val = binding.value
            if not (isinstance(val, relax.Call) and val.op.same_as(call_tir)):
                continue
            gv = val.args[0]
            fname = gv.name_hint
            if not fname.startswith(_GEMM_TIR_PREFIXES):
                continue
            if fname not in cache:
                flops = estimate_tir_flops(tvm.IRModule({"main": leg[gv]}))
                cache[fname] = round(flops / 2)
            out.append(cache[fname])
    return out
