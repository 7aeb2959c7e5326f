"""Built-in example models and :class:`ModelRef`, a JSON description of a model to build.

Built-ins (CIFAR-style unless noted), each with width controls so random-width variants
can be generated for data sets and search:

* ``small_cnn``  — a 3-conv CNN for 8×8 digits (input 1×8×8, 10 classes).
* ``resnet20`` / ``resnet56`` — CIFAR ResNets (He et al. 2016), ``widths=(16, 32, 64)``.
* ``vgg16`` — VGG-16 for CIFAR (13 conv + 1 linear).
* ``mobilenetv2`` — MobileNetV2 for CIFAR (stride-1 stem).

A user model is named ``"package.module:factory"``; the factory is called with the
ref's ``kwargs``. Such a name imports code, so it resolves only after an explicit opt-in
(``allow_import=True``, ``hwloop --allow-import``, or ``HWLOOP_ALLOW_IMPORT=1``; see
:mod:`hwloop.trust`): a ``ModelRef`` read from a file without it is still a valid description
(it can be stored, listed and exported) but :meth:`ModelRef.build` refuses it.

Example:
    >>> from hwloop.models import ModelRef
    >>> ref = ModelRef("resnet20", {"width_mult": 0.5})
    >>> net = ref.build()
    >>> tuple(ref.example_input().shape)
    (1, 3, 32, 32)
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from hwloop.errors import ConfigError

__all__ = ["BUILTIN_MODELS", "MAX_INPUT_ELEMENTS", "MAX_MODEL_PARAMS", "ModelRef", "build_model", "check_size", "SmallCNN", "CifarResNet", "VGG", "MobileNetV2",
           "random_width_kwargs"]


def _w(c: int, mult: float, divisor: int = 1) -> int:
    return max(divisor, int(round(c * mult / divisor)) * divisor)


#: normalisation layers ``small_cnn`` and the CIFAR ResNets take (``norm=``): batch norm (default), instance norm
#: (affine, no running statistics) and group norm (affine; the most groups of 8, 4, 2, 1 that divide the channels)
NORMS = ("bn", "in", "gn")


def _norm(kind: str, c: int) -> nn.Module:
    """The ``norm`` layer of ``c`` channels (see :data:`NORMS`)."""
    if kind == "bn":
        return nn.BatchNorm2d(c)
    if kind == "in":
        return nn.InstanceNorm2d(c, affine=True)
    if kind == "gn":
        return nn.GroupNorm(next(g for g in (8, 4, 2, 1) if c % g == 0), c)
    raise ConfigError(f"norm={kind!r} is unknown; allowed: {', '.join(NORMS)}")


class SmallCNN(nn.Module):
    """Three 3×3 convs + linear for 1×8×8 digits."""

    def __init__(self, num_classes: int = 10, widths: Sequence[int] = (16, 32, 64), width_mult: float = 1.0,
                 in_channels: int = 1, norm: str = "bn") -> None:
        super().__init__()
        w = [_w(c, width_mult) for c in widths]
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, w[0], 3, padding=1, bias=False), _norm(norm, w[0]), nn.ReLU(),
            nn.Conv2d(w[0], w[1], 3, padding=1, bias=False), _norm(norm, w[1]), nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(w[1], w[2], 3, padding=1, bias=False), _norm(norm, w[2]), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1))
        self.classifier = nn.Linear(w[2], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))


class BasicBlock(nn.Module):
    def __init__(self, cin: int, mid: int, cout: int, stride: int, norm: str = "bn") -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, mid, 3, stride, 1, bias=False)
        self.bn1 = _norm(norm, mid)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(mid, cout, 3, 1, 1, bias=False)
        self.bn2 = _norm(norm, cout)
        self.relu2 = nn.ReLU()
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), _norm(norm, cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """CIFAR ResNet-(6n+2). ``widths`` per stage; ``mids`` optionally sets each block's inner width; ``norm`` one
    of :data:`NORMS`."""

    def __init__(self, depth: int = 20, num_classes: int = 10, widths: Sequence[int] = (16, 32, 64),
                 width_mult: float = 1.0, mids: Sequence[int] | None = None, in_channels: int = 3,
                 norm: str = "bn") -> None:
        super().__init__()
        if (depth - 2) % 6:
            raise ConfigError(f"ResNet depth={depth} must be 6n+2 (20, 32, 44, 56, 110)")
        n = (depth - 2) // 6
        w = [_w(c, width_mult) for c in widths]
        if mids is not None and len(mids) != 3 * n:
            raise ConfigError(f"mids has {len(mids)} entries; ResNet-{depth} has {3 * n} blocks")
        self.conv1 = nn.Conv2d(in_channels, w[0], 3, 1, 1, bias=False)
        self.bn1 = _norm(norm, w[0])
        self.relu = nn.ReLU()
        blocks: list[nn.Module] = []
        cin = w[0]
        for s, cout in enumerate(w):
            for b in range(n):
                mid = int(mids[s * n + b]) if mids is not None else cout
                blocks.append(BasicBlock(cin, mid, cout, 2 if (b == 0 and s > 0) else 1, norm))
                cin = cout
        self.layers = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layers(x)
        return self.fc(torch.flatten(self.pool(x), 1))


VGG16_CFG: tuple[int | str, ...] = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M",
                                    512, 512, 512, "M")


class VGG(nn.Module):
    """VGG-16 for CIFAR; ``widths`` gives the 13 conv widths."""

    def __init__(self, num_classes: int = 10, widths: Sequence[int] | None = None, width_mult: float = 1.0,
                 in_channels: int = 3) -> None:
        super().__init__()
        convs = [c for c in VGG16_CFG if c != "M"]
        if widths is not None and len(widths) != len(convs):
            raise ConfigError(f"vgg16 widths has {len(widths)} entries; expected {len(convs)}")
        ws = iter(widths if widths is not None else [_w(int(c), width_mult) for c in convs])
        layers: list[nn.Module] = []
        cin = in_channels
        for c in VGG16_CFG:
            if c == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                cout = int(next(ws))
                layers += [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]
                cin = cout
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, hidden: int) -> None:
        super().__init__()
        self.use_res = stride == 1 and cin == cout
        layers: list[nn.Module] = []
        if hidden != cin:
            layers += [nn.Conv2d(cin, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU6()]
        layers += [nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False), nn.BatchNorm2d(hidden),
                   nn.ReLU6(), nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout)]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_res else self.conv(x)


class MobileNetV2(nn.Module):
    """MobileNetV2 for 32×32 inputs (first stride and stem stride set to 1)."""

    CFG = ((1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
           (6, 320, 1, 1))

    def __init__(self, num_classes: int = 10, width_mult: float = 1.0, in_channels: int = 3,
                 expand_mult: float = 1.0) -> None:
        super().__init__()
        cin = _w(32, width_mult, 8)
        last = _w(1280, max(1.0, width_mult), 8)
        layers: list[nn.Module] = [nn.Conv2d(in_channels, cin, 3, 1, 1, bias=False), nn.BatchNorm2d(cin),
                                   nn.ReLU6()]
        for t, c, n, s in self.CFG:
            cout = _w(c, width_mult, 8)
            for i in range(n):
                hidden = cin if t == 1 else _w(cin * t, expand_mult, 8)
                layers.append(InvertedResidual(cin, cout, s if i == 0 else 1, hidden))
                cin = cout
        layers += [nn.Conv2d(cin, last, 1, bias=False), nn.BatchNorm2d(last), nn.ReLU6()]
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(last, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


BUILTIN_MODELS: dict[str, tuple[Callable[..., nn.Module], tuple[int, ...]]] = {
    "small_cnn": (SmallCNN, (1, 8, 8)),
    "resnet20": (lambda **kw: CifarResNet(depth=20, **kw), (3, 32, 32)),
    "resnet56": (lambda **kw: CifarResNet(depth=56, **kw), (3, 32, 32)),
    "vgg16": (VGG, (3, 32, 32)),
    "mobilenetv2": (MobileNetV2, (3, 32, 32)),
    # GPU data-set architectures (hwloop/gpu_models.py, imported when built)
    "vgg16_gap": (lambda **kw: importlib.import_module("hwloop.gpu_models").GAP_VGG16(**kw), (3, 32, 32)),
    "resnet18": (lambda **kw: importlib.import_module("hwloop.gpu_models").ResNet18(**kw), (3, 224, 224)),
}


def _resolve(name: str, allow_import: bool | None = None) -> tuple[Callable[..., nn.Module], tuple[int, ...] | None]:
    """The factory and default input shape of a model name, under the import policy of :mod:`hwloop.trust`."""
    from hwloop.trust import resolve

    if name in BUILTIN_MODELS:
        return BUILTIN_MODELS[name]
    if ":" not in name:
        raise ConfigError(f"model {name!r} is unknown; allowed: {', '.join(BUILTIN_MODELS)} "
                          "or 'package.module:factory' (with --allow-import)")
    factory = resolve(name, what="model", builtins=tuple(BUILTIN_MODELS), allow_import=allow_import)
    if not callable(factory):
        raise ConfigError(f"model {name!r}: {name.partition(':')[0]} has no callable {name.partition(':')[2]!r}")
    return factory, None


@dataclass(frozen=True)
class ModelRef:
    """A model described by name + JSON kwargs + per-sample input shape; builds the same model anywhere.

    Attributes:
        name: a built-in name or ``"package.module:factory"``.
        kwargs: JSON-serialisable keyword arguments for the factory.
        input_shape: per-sample input shape (C, H, W); defaults to the built-in's.
        batch: batch size of the example input.
        dtype: ``float32``/``float16``/``bfloat16``.
        allow_import: opt in to importing a ``module:factory`` name (not part of the description:
            never read from or written to files).
    """

    name: str
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    input_shape: tuple[int, ...] = ()
    batch: int = 1
    dtype: str = "float32"
    allow_import: bool = field(default=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        from hwloop.trust import HWLOOP_FACTORIES, import_allowed, is_import_name

        if not isinstance(self.name, str) or not self.name:
            raise ConfigError(f"model name {self.name!r} must be a non-empty string")
        if (self.name in BUILTIN_MODELS or self.name in HWLOOP_FACTORIES or import_allowed(self.allow_import)
                or not is_import_name(self.name)):
            _, default_shape = _resolve(self.name, self.allow_import)  # checks the name (imports only if allowed)
        else:
            default_shape = None  # an untrusted module:factory name: a description only; build() refuses it
        shape = tuple(int(x) for x in self.input_shape) or default_shape
        if not shape:
            raise ConfigError(f"model {self.name!r} needs an input_shape (e.g. [3, 32, 32])")
        object.__setattr__(self, "input_shape", shape)
        if self.batch < 1:
            raise ConfigError(f"batch={self.batch} must be >= 1")
        if self.dtype not in ("float32", "float16", "bfloat16"):
            raise ConfigError(f"dtype {self.dtype!r} is unknown; allowed: float32, float16, bfloat16")
        try:
            json.dumps(dict(self.kwargs))
        except TypeError as e:
            raise ConfigError(f"model kwargs must be JSON-serialisable: {e}") from e
        object.__setattr__(self, "kwargs", dict(self.kwargs))
        _check_input(self)

    def require_trust(self) -> ModelRef:
        """Raise now (ConfigError saying how to opt in) if :meth:`build` would be refused; returns self.

        Specs call this when they are read, so a refused name is an error before any work starts.
        """
        _resolve(self.name, self.allow_import)
        return self

    def build(self) -> nn.Module:
        """Instantiate the model (eval mode, the ref's dtype, CPU, seeded weights)."""
        factory, _ = _resolve(self.name, self.allow_import)
        check_size(self)
        torch.manual_seed(0)
        try:
            model = factory(**self.kwargs)
        except (TypeError, ValueError, RuntimeError) as e:
            raise ConfigError(f"model {self.name!r} rejected kwargs {dict(self.kwargs)}: "
                              f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from e
        return model.to(getattr(torch, self.dtype)).eval()

    def example_input(self, device: str = "cpu") -> torch.Tensor:
        g = torch.Generator().manual_seed(0)
        x = torch.randn((self.batch, *self.input_shape), generator=g)
        return x.to(getattr(torch, self.dtype)).to(device)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "kwargs": dict(self.kwargs), "input_shape": list(self.input_shape),
                "batch": self.batch, "dtype": self.dtype}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], *, allow_import: bool = False) -> ModelRef:
        """A ref from its :meth:`to_dict` form (a file's ``module:factory`` name stays unresolved unless allowed)."""
        allowed = {"name", "kwargs", "input_shape", "batch", "dtype"}
        if not isinstance(d, Mapping) or "name" not in d or set(d) - allowed:
            raise ConfigError(f"model description needs 'name' and only {sorted(allowed)}, got {d!r}")
        return cls(name=str(d["name"]), kwargs=dict(d.get("kwargs", {})), input_shape=tuple(d.get("input_shape", ())),
                   batch=int(d.get("batch", 1)), dtype=str(d.get("dtype", "float32")), allow_import=allow_import)

    @property
    def key(self) -> str:
        blob = json.dumps(self.to_dict(), sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    @property
    def label(self) -> str:
        kw = ",".join(f"{k}={v}" for k, v in sorted(self.kwargs.items()))
        return f"{self.name}({kw})" if kw else self.name


#: the largest example input (batch x per-sample elements) and built-in model (parameters) a ref may describe:
#: 2^28 elements is 1 GiB in float32, beyond what hwloop's CPU/agent measurements hold (agent default: 2 GiB)
MAX_INPUT_ELEMENTS = 2**28
MAX_MODEL_PARAMS = 2**28
_MULTS = ("width_mult", "expand_mult")


def _check_input(ref: ModelRef) -> None:
    """Cheap checks on construction: width multipliers > 0 and finite, an input that can be allocated."""
    import math

    for k in _MULTS:
        v = ref.kwargs.get(k)
        if k in ref.kwargs and (isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v)
                                or v <= 0):
            raise ConfigError(f"model {ref.name!r}: {k}={v!r} must be a finite number > 0, e.g. 0.5")
    for k in ("widths", "mids"):
        v = ref.kwargs.get(k)
        if v is not None and (not isinstance(v, (list, tuple)) or not all(
                isinstance(c, int) and not isinstance(c, bool) and c >= 1 for c in v)):
            raise ConfigError(f"model {ref.name!r}: {k}={v!r} must be a list of channel counts >= 1")
    n_in = ref.batch * math.prod(ref.input_shape)
    if n_in > MAX_INPUT_ELEMENTS:
        raise ConfigError(f"model {ref.name!r}: input batch {ref.batch} x shape {tuple(ref.input_shape)} has {n_in} "
                          f"elements; allowed: at most {MAX_INPUT_ELEMENTS} (2^28)")


def check_size(ref: ModelRef) -> None:
    """Refuse (one-line ConfigError) a built-in model too big to allocate, before it is built.

    The model is counted on PyTorch's ``meta`` device (no memory), so an absurd width is an
    error naming it instead of an out-of-memory crash. Sweeps call it up front for every model.
    """
    if ref.name in BUILTIN_MODELS:
        _check_params(ref.name, json.dumps(dict(ref.kwargs), sort_keys=True))


@functools.lru_cache(maxsize=1024)
def _check_params(name: str, kwargs_json: str) -> None:
    kwargs = json.loads(kwargs_json)
    factory, _ = BUILTIN_MODELS[name]
    label = ModelRef(name, kwargs).label
    try:
        with torch.device("meta"):
            n_params = sum(p.numel() for p in factory(**kwargs).parameters())
    except (TypeError, ValueError, RuntimeError) as e:
        raise ConfigError(f"model {name!r} rejected kwargs {kwargs}: "
                          f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from e
    if n_params > MAX_MODEL_PARAMS:
        raise ConfigError(f"model {label} has {n_params} parameters; allowed: at most {MAX_MODEL_PARAMS} (2^28): "
                          "lower width_mult/widths")


def build_model(name: str, *, allow_import: bool = False, **kwargs: Any) -> nn.Module:
    """Build a built-in or (with ``allow_import=True``) ``module:factory`` model by name."""
    return ModelRef(name, kwargs, allow_import=allow_import).build()


def random_width_kwargs(name: str, rng: Any) -> dict[str, Any]:
    """Random width settings for a built-in family (for whole-model data sets).

    ``rng`` is a ``numpy.random.Generator``.
    """
    if name in ("resnet20", "resnet56"):
        n = 3 if name == "resnet20" else 9
        widths = [int(rng.integers(8, 2 * c + 1)) for c in (16, 32, 64)]
        mids = [int(rng.integers(4, 2 * widths[i // n] + 1)) for i in range(3 * n)]
        return {"widths": widths, "mids": mids}
    if name == "vgg16":
        convs = [int(c) for c in VGG16_CFG if c != "M"]
        return {"widths": [int(rng.integers(max(8, c // 4), c + 1)) for c in convs]}
    if name == "mobilenetv2":
        return {"width_mult": float(rng.choice([0.35, 0.5, 0.75, 1.0, 1.25])),
                "expand_mult": float(rng.uniform(0.5, 1.0))}
    if name == "small_cnn":
        return {"widths": [int(rng.integers(4, 65)) for _ in range(3)]}
    raise ConfigError(f"no random widths for model {name!r}; allowed: {', '.join(BUILTIN_MODELS)}")
