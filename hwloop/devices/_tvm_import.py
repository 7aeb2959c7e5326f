"""TVM helpers shared by the ``tvm`` device (and reusable by others): import, targets, torch → Relax.

Everything here imports TVM lazily, inside the function that needs it, so ``hwloop`` imports
without TVM installed; a missing TVM becomes a :class:`DeviceUnavailableError` naming the fix.

Example:
    >>> import torch
    >>> from hwloop.devices._tvm_import import torch_to_relax  # doctest: +SKIP
    >>> mod = torch_to_relax(torch.nn.Conv2d(3, 8, 3), (torch.randn(1, 3, 8, 8),))  # doctest: +SKIP
    >>> "main" in [gv.name_hint for gv in mod.get_global_vars()]  # doctest: +SKIP
    True
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from hwloop.errors import ConfigError, DeviceUnavailableError, WorkloadError

__all__ = [
    "INSTALL_HINT",
    "build_without_intrinsics",
    "fuse_for_tuning",
    "hwloop_home",
    "import_tensor_intrin",
    "make_target",
    "require_tvm",
    "target_string",
    "torch_to_relax",
    "tvm_version",
]

INSTALL_HINT = "pip install 'hwloop[tvm]'"


def require_tvm() -> Any:
    """Import and return the ``tvm`` module.

    Raises:
        DeviceUnavailableError: TVM is not installed (the message names the pip extra).
    """
    try:
        import tvm
        from tvm import relax  # noqa: F401  (fails on TVM builds without Relax)
    except ImportError as e:
        raise DeviceUnavailableError(f"the tvm backend needs apache-tvm with Relax ({e}); {INSTALL_HINT}") from e
    return tvm


def import_tensor_intrin() -> None:
    """Import ``tvm.s_tir.tensor_intrin`` (MetaSchedule's ``TuneContext`` does on first use) in a fraction of the time.

    The module parses a few hundred TVMScript intrinsics at import; each ``@T.prim_func`` calls ``inspect.stack()``,
    which by default reads a source line for every frame through ``inspect.getmodule`` (a scan of ``sys.modules``:
    thousands of entries once torch is loaded). That made the import cost ~60 s of CPU on this project's 2-core VM
    (~5 min of wall clock under load). During this one import ``inspect.stack`` returns frames without source lines
    (``context=0``): the parser uses the frames' locals for closure variables, and the source line only to spot
    functions defined inside ``@I.ir_module`` classes, of which that module has none. ~24 s of CPU instead.
    """
    import inspect
    import sys

    if "tvm.s_tir.tensor_intrin" in sys.modules:
        return
    require_tvm()
    orig = inspect.stack

    def stack(context: int = 1) -> list[inspect.FrameInfo]:
        return orig(0)

    inspect.stack = stack  # type: ignore[assignment]
    try:
        import tvm.s_tir.tensor_intrin  # noqa: F401
    finally:
        inspect.stack = orig  # type: ignore[assignment]


def build_without_intrinsics(mod: Any, target: Any, _params: Any) -> Any:
    """MetaSchedule's default candidate build without its ``import tvm.s_tir.tensor_intrin``.

    ``LocalBuilder`` starts a fresh worker process for every batch of candidates, and the default build imports
    every tensor intrinsic there (see :func:`import_tensor_intrin`: ~60 s of CPU each time, longer than the build
    time limit on a loaded 2-core machine, so every candidate failed and tuning never ended). The candidates come
    scheduled (tensorized blocks already hold the intrinsic's body), so the build itself needs no registry.
    """
    from tvm.driver import build as tvm_build
    from tvm.s_tir.transform import RemoveWeightLayoutRewriteBlock

    mod = RemoveWeightLayoutRewriteBlock(skip_tensor_rewrite=True)(mod)
    return tvm_build(mod, target=target)


def tvm_version() -> str:
    """The installed TVM version (``0.27.0.post1``...)."""
    return str(require_tvm().__version__)


def hwloop_home() -> Path:
    """``$HWLOOP_HOME`` (default ``~/.hwloop``): where tuning databases live."""
    from hwloop.paths import hwloop_home as _home

    return _home()


def make_target(target: str | Mapping[str, Any], *, threads: int = 1) -> Any:
    """A ``tvm.target.Target`` from a kind name (``"llvm"``, ``"cuda"``), a JSON string or a mapping.

    For ``llvm``, ``mcpu = "native"`` is replaced by the host CPU name LLVM detects (so the
    fingerprint records it) and ``num-cores`` defaults to ``threads`` (MetaSchedule needs it).

    Raises:
        ConfigError: the target cannot be parsed (the message names it).
    """
    tvm = require_tvm()
    if isinstance(target, str):
        s = target.strip()
        spec: dict[str, Any]
        if s.startswith("{"):
            try:
                spec = dict(json.loads(s))
            except (ValueError, TypeError) as e:
                raise ConfigError(f"tvm target {target!r} is not valid JSON: {e}") from e
        elif s and " " not in s:
            spec = {"kind": s}
        else:
            raise ConfigError(f"tvm target {target!r} must be a kind ('llvm', 'cuda'), a JSON object or a table "
                              "like {kind = 'llvm', mcpu = 'native'}")
    elif isinstance(target, Mapping):
        spec = dict(target)
    else:
        raise ConfigError(f"tvm target {target!r} must be a string or a table")
    if spec.get("kind") == "llvm":
        if spec.get("mcpu") == "native":
            from tvm.target import codegen

            spec["mcpu"] = str(codegen.llvm_get_system_cpu())
        spec.setdefault("num-cores", int(threads))
    try:
        return tvm.target.Target(spec)
    except Exception as e:  # TVM raises ValueError/TVMError subclasses for bad targets
        raise ConfigError(f"tvm target {spec!r} is invalid: {str(e).splitlines()[0]}") from e


def target_string(target: Any) -> str:
    """A canonical one-line string of a ``tvm.target.Target`` (its JSON form)."""
    return str(target)


def torch_to_relax(module: Any, inputs: tuple[Any, ...], *, keep_params_as_input: bool = False) -> Any:
    """``torch.export`` → ``from_exported_program`` → ``DecomposeOpsForInference``: a Relax IRModule.

    Args:
        module: a ``torch.nn.Module`` (exported in eval mode).
        inputs: example inputs (their shapes and dtypes are baked into the module).
        keep_params_as_input: keep weights as ``main`` parameters (``relax.frontend.detach_params``
            gives them back) instead of binding them as constants.

    Raises:
        WorkloadError: torch.export or the TVM front end rejects the module (e.g. an unsupported op).
    """
    require_tvm()
    import torch
    from tvm import relax
    from tvm.relax.frontend.torch import from_exported_program

    module = module.eval()
    try:
        with torch.no_grad():
            ep = torch.export.export(module, tuple(inputs))
    except Exception as e:  # export fails on data-dependent control flow and more
        raise WorkloadError(f"torch.export failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
                            ) from e
    try:
        mod = from_exported_program(ep, keep_params_as_input=keep_params_as_input)
    except Exception as e:  # the frontend raises AssertionError/KeyError/ValueError for unsupported ops
        first = str(e).splitlines()[0] if str(e) else ""
        raise WorkloadError(f"TVM's torch frontend cannot import this module: {type(e).__name__}: {first}") from e
    return relax.transform.DecomposeOpsForInference()(mod)


def fuse_for_tuning(mod: Any, target: Any) -> Any:
    """The fusion passes ``meta_schedule.relax_integration.compile_relax`` runs before it applies a
    tuning database, so tasks extracted from the result match what the tuned build looks up."""
    tvm = require_tvm()
    from tvm import relax

    try:
        dispatch = list(relax.pipeline.library_dispatch_passes(target))
    except (ValueError, AttributeError):
        dispatch = []
    seq = tvm.transform.Sequential([*dispatch, relax.transform.LegalizeOps(), relax.transform.AnnotateTIROpPattern(),
                                    relax.transform.FoldConstant(), relax.transform.FuseOps(),
                                    relax.transform.FuseTIR()])
    with target, tvm.transform.PassContext(opt_level=3):
        return seq(mod)
