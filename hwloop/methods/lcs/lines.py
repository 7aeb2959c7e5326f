"""Line layers: every conv, linear and norm layer holds two endpoints ω₀, ω₁ and runs at ω(α) = (1−α)ω₀ + αω₁.

A :class:`LineState` shared by all line layers of a model says where on the line the model is (``alpha``) and
which compression γ(α) applies (Nunez et al., *Learning Compressible Subspaces*; ``apple/learning-compressible-
subspaces``):

* ``width`` — structured: every layer but the output one uses the first ``round(width·C_out)`` output channels
  (prefix slicing; input channels follow the incoming tensor), ``width = w_lo + (w_hi − w_lo)·α``;
* ``topk`` — unstructured: each layer but the first keeps the ``round(density·numel)`` largest-magnitude entries
  of its *interpolated* weight (:func:`topk_mask`, the rule of :func:`hwloop.compress.sparsity.sparsity_mask`),
  ``density = d_lo + (d_hi − d_lo)·α``, annealed from dense over the warm-up (:func:`warmup_density`);
* ``bits`` — weights and input activations of each layer but the first fake-quantized (per-tensor affine
  min/max, straight-through) at :func:`alpha_to_bits` bits, 3..8.

Norm layers are instance norm (width: no statistic depends on the channel count) or group norm (topk, bits);
their affine parameters are on the line too, and nothing is re-estimated on the device. Opt-in (``frozen_bn``):
batch norm with its statistics frozen at the starting checkpoint's (sliced by prefix, never updated) and γ/β on
the line: at every α a fixed per-channel affine that folds into the conv before it, so nothing is re-estimated
either, and a member is an ordinary batch-norm model.

Example:
    >>> import torch
    >>> from hwloop.models import ModelRef
    >>> net, state = to_lines(ModelRef("small_cnn", {"norm": "in"}).build(), "width")
    >>> state.set(alpha=0.0)
    >>> float(state.width)
    0.25
    >>> net.features[0](torch.zeros(1, 1, 8, 8)).shape[1]
    4
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from hwloop.errors import SearchError

__all__ = ["MODES", "TRAIN_STATS", "LineConv2d", "LineLayer", "LineLinear", "LineNorm", "LineState", "alpha_to_bits",
           "cos2_regularizer", "fake_quant_affine", "line_layers", "n_channels", "sample_alphas", "to_lines",
           "topk_mask", "warmup_density"]

#: compression functions γ(α): structured width, unstructured magnitude top-k, bit-width
MODES = ("width", "topk", "bits")
#: which statistics a frozen batch norm normalises by in train mode: the frozen (or tabled) ones, or the batch's
TRAIN_STATS = ("frozen", "batch")


def n_channels(width: float, c: int) -> int:
    """Channels a layer of ``c`` outputs keeps at ``width`` (prefix slicing; at least one)."""
    return max(1, min(c, round(width * c)))


def alpha_to_bits(alpha: float, lo: int = 3, hi: int = 8) -> int:
    """Bits at ``alpha``: ``hi − lo + 1`` equal bins of (0, 1] (α = 1 → ``hi``, α ≤ 1/n → ``lo``); monotone.

    Example:
        >>> [alpha_to_bits(k / 6) for k in range(7)]
        [3, 3, 4, 5, 6, 7, 8]
    """
    n = hi - lo + 1
    return int(min(hi, max(lo, lo + math.ceil(alpha * n - 1e-9) - 1)))


def warmup_density(density: float, step: int, warmup_steps: int) -> float:
    """The kept fraction during the warm-up: ``d + (1 − d)·max(0, 1 − step/warmup)`` (dense at step 0)."""
    if warmup_steps <= 0:
        return density
    return density + (1.0 - density) * max(0.0, 1.0 - step / warmup_steps)


def topk_mask(w: torch.Tensor, density: float) -> torch.Tensor:
    """Boolean mask of the ``max(1, round(density·numel))`` largest ``|w|`` (ties broken by position)."""
    k = max(1, min(w.numel(), round(density * w.numel())))
    flat = w.detach().abs().reshape(-1)
    mask = torch.zeros_like(flat, dtype=torch.bool)
    mask[torch.topk(flat, k, sorted=False).indices] = True
    return mask.view_as(w)


class _RoundSTE(torch.autograd.Function):
    @staticmethod
    def forward(ctx: object, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return torch.round(x)

    @staticmethod
    def backward(ctx: object, g: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return g


def fake_quant_affine(x: torch.Tensor, bits: int) -> torch.Tensor:
    """Per-tensor affine (min/max) fake quantization to ``bits`` with a straight-through gradient."""
    lo, hi = x.detach().min(), x.detach().max()
    scale = torch.clamp((hi - lo) / (2**bits - 1), min=1e-8)
    q = _RoundSTE.apply((x - lo) / scale)
    return q * scale + lo


def sample_alphas(mode: str, gen: torch.Generator, *, n_samples: int = 4, endpoint_prob: float = 0.5,
                  bits_lo: int = 3, bits_hi: int = 8) -> list[float]:
    """The α values of one training batch.

    ``width``: the sandwich rule (α = 0, α = 1 and ``n_samples − 2`` uniform); ``topk``: one α, an endpoint with
    probability ``endpoint_prob`` (each equally likely), else uniform; ``bits``: one α from {1/n, ..., n/n}.
    """
    u = lambda: float(torch.rand((), generator=gen))
    if mode == "width":
        return [0.0, 1.0] + [u() for _ in range(max(0, n_samples - 2))]
    if mode == "topk":
        if u() < endpoint_prob:
            return [0.0 if u() < 0.5 else 1.0]
        return [u()]
    n = bits_hi - bits_lo + 1
    return [int(torch.randint(1, n + 1, (), generator=gen)) / n]


@dataclass
class LineState:
    """Where the line model is and how γ(α) compresses it (shared by every line layer of one model)."""

    mode: str
    lo: float = 0.25
    hi: float = 1.0
    bits_lo: int = 3
    bits_hi: int = 8
    alpha: float = 1.0
    warmup_steps: int = 0
    step: int = 0
    quantize_activations: bool = True

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise SearchError(f"mode={self.mode!r} is unknown; allowed: {', '.join(MODES)}")

    def set(self, alpha: float, step: int | None = None) -> None:
        if not 0.0 <= alpha <= 1.0:
            raise SearchError(f"alpha={alpha!r} must be in [0, 1]")
        self.alpha = float(alpha)
        if step is not None:
            self.step = step

    @property
    def width(self) -> float:
        return self.lo + (self.hi - self.lo) * self.alpha if self.mode == "width" else 1.0

    @property
    def density(self) -> float:
        if self.mode != "topk":
            return 1.0
        return warmup_density(self.lo + (self.hi - self.lo) * self.alpha, self.step, self.warmup_steps)

    @property
    def bits(self) -> int | None:
        return alpha_to_bits(self.alpha, self.bits_lo, self.bits_hi) if self.mode == "bits" else None


class LineLayer(nn.Module):
    """Base of the line layers: endpoint parameters ``<p>`` (ω₀) and ``<p>1`` (ω₁) for each of ``names``."""

    state: LineState
    names: tuple[str, ...] = ()

    def _init_line(self, src: nn.Module, state: LineState, names: tuple[str, ...], line: bool) -> None:
        object.__setattr__(self, "state", state)   # shared, not a submodule
        self.names = tuple(n for n in names if getattr(src, n, None) is not None)
        self.line = line
        for n in self.names:
            p = getattr(src, n).detach().clone()
            setattr(self, n, nn.Parameter(p))
            if line:
                p1 = torch.empty_like(p)
                if p.dim() > 1:
                    nn.init.kaiming_normal_(p1, nonlinearity="relu")   # an independent second endpoint
                else:
                    p1.copy_(p)
                setattr(self, n + "1", nn.Parameter(p1))

    def endpoint(self, name: str, which: int) -> torch.Tensor:
        p = getattr(self, name)
        return getattr(self, name + "1") if which == 1 and self.line else p

    def at(self, name: str, alpha: float | None = None) -> torch.Tensor:
        """ω(α) of parameter ``name`` (α of the shared state when None)."""
        a = self.state.alpha if alpha is None else alpha
        p = getattr(self, name)
        if not self.line:
            return p
        p1 = getattr(self, name + "1")
        if a == 0.0:
            return p
        if a == 1.0:
            return p1
        return (1.0 - a) * p + a * p1


class LineConv2d(LineLayer):
    """A ``Conv2d`` on the line (groups 1 only for width)."""

    def __init__(self, src: nn.Conv2d, state: LineState, *, line: bool = True, first: bool = False,
                 output: bool = False) -> None:
        super().__init__()
        self._init_line(src, state, ("weight", "bias"), line)
        self.stride, self.padding, self.dilation, self.groups = src.stride, src.padding, src.dilation, src.groups
        self.in_channels, self.out_channels = src.in_channels, src.out_channels
        self.first, self.output = first, output
        if state.mode == "width" and self.groups != 1:
            raise SearchError(f"LCS width mode slices channels of groups=1 convs only; a conv has groups={self.groups}")

    def effective(self, x_channels: int | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The weight and bias that run now (interpolated, sliced, masked, fake-quantized)."""
        s = self.state
        w = self.at("weight")
        b = self.at("bias") if "bias" in self.names else None
        if s.mode == "width":
            cout = self.out_channels if self.output else n_channels(s.width, self.out_channels)
            w = w[:cout, : (x_channels or w.shape[1])]
            b = b[:cout] if b is not None else None
        elif s.mode == "topk" and not self.first:
            w = w * topk_mask(w, s.density)
        elif s.mode == "bits" and not self.first:
            w = fake_quant_affine(w, s.bits or 8)
        return w, b

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w, b = self.effective(x.shape[1])
        if self.state.mode == "bits" and not self.first and self.state.quantize_activations:
            x = fake_quant_affine(x, self.state.bits or 8)
        return F.conv2d(x, w, b, self.stride, self.padding, self.dilation, self.groups)


class LineLinear(LineConv2d):
    """A ``Linear`` on the line (same compression rules as :class:`LineConv2d`)."""

    def __init__(self, src: nn.Linear, state: LineState, *, line: bool = True, first: bool = False,
                 output: bool = False) -> None:
        nn.Module.__init__(self)
        self._init_line(src, state, ("weight", "bias"), line)
        self.in_channels, self.out_channels = src.in_features, src.out_features
        self.first, self.output = first, output

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w, b = self.effective(x.shape[-1])
        if self.state.mode == "bits" and not self.first and self.state.quantize_activations:
            x = fake_quant_affine(x, self.state.bits or 8)
        return F.linear(x, w, b)


class LineNorm(LineLayer):
    """An ``InstanceNorm2d`` (affine, no running statistics) or ``GroupNorm`` whose affine parameters are lines;
    with ``frozen`` a ``BatchNorm2d`` whose running statistics are frozen buffers (always used, never updated,
    sliced to the incoming channels) and whose γ/β are lines."""

    running_mean: torch.Tensor
    running_var: torch.Tensor
    table_alpha: torch.Tensor | None
    table_mean: torch.Tensor | None
    table_var: torch.Tensor | None

    def __init__(self, src: nn.Module, state: LineState, *, line: bool = True, frozen: bool = False,
                 train_stats: str = "frozen") -> None:
        super().__init__()
        if train_stats not in TRAIN_STATS:
            raise SearchError(f"train_stats={train_stats!r} is unknown; allowed: {', '.join(TRAIN_STATS)}")
        self.train_stats = train_stats
        self._acc: list[Any] | None = None
        if frozen and isinstance(src, nn.BatchNorm2d):
            if not src.affine or src.running_mean is None or src.running_var is None:
                raise SearchError("LCS frozen batch norm needs BatchNorm2d(affine=True, track_running_stats=True)")
            self.kind, self.num_groups, self.num_channels = "fbn", 0, src.num_features
            self.register_buffer("running_mean", src.running_mean.detach().clone())
            self.register_buffer("running_var", src.running_var.detach().clone())
            for b in ("table_alpha", "table_mean", "table_var"):   # per-alpha statistics (bnstats.calibrate_table)
                self.register_buffer(b, None)
        elif isinstance(src, nn.InstanceNorm2d):
            if not src.affine or src.track_running_stats:
                raise SearchError("LCS needs InstanceNorm2d(affine=True, track_running_stats=False)")
            self.kind, self.num_groups, self.num_channels = "in", 0, src.num_features
        elif isinstance(src, nn.GroupNorm):
            if state.mode == "width" and src.num_groups > 1:
                raise SearchError("LCS width mode needs instance norm (norm='in'): group norm's groups do not "
                                  "follow a sliced channel count")
            self.kind, self.num_groups, self.num_channels = "gn", src.num_groups, src.num_channels
        else:
            raise SearchError(f"LCS line norms are InstanceNorm2d, GroupNorm or (frozen_bn) BatchNorm2d, got "
                              f"{type(src).__name__}")
        self.eps = src.eps
        self._init_line(src, state, ("weight", "bias"), line)

    # ---- frozen batch norm: which statistics run
    def set_table(self, alphas: torch.Tensor, mean: torch.Tensor, var: torch.Tensor) -> None:
        """Per-α statistics: ``alphas`` (G,) ascending, ``mean`` / ``var`` (G, C) (see ``bnstats.calibrate_table``)."""
        if self.kind != "fbn":
            raise SearchError("a statistics table is for frozen batch norm (kind 'fbn')")
        if mean.shape != (alphas.numel(), self.num_channels) or var.shape != mean.shape:
            raise SearchError(f"statistics table of shape {tuple(mean.shape)} / {tuple(var.shape)} does not fit "
                              f"{alphas.numel()} alphas x {self.num_channels} channels")
        self.register_buffer("table_alpha", alphas.detach().clone())
        self.register_buffer("table_mean", mean.detach().clone())
        self.register_buffer("table_var", var.detach().clone())

    def stats(self, alpha: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The (mean, var) a frozen batch norm uses at ``alpha`` (all C channels): the table's, interpolated in α,
        when there is one, else the frozen checkpoint statistics."""
        if self.table_alpha is None or self.table_mean is None or self.table_var is None:
            return self.running_mean, self.running_var
        from hwloop.methods.lcs.bnstats import table_stats

        return table_stats(self.table_alpha, self.table_mean, self.table_var,
                           self.state.alpha if alpha is None else alpha)

    def start_accumulating(self) -> None:
        """From now on, normalise by each batch's statistics and sum them (count, Σ mean, Σ unbiased var)."""
        self._acc = [0, None, None]

    def stop_accumulating(self) -> tuple[int, torch.Tensor, torch.Tensor]:
        acc, self._acc = self._acc, None
        if not acc or acc[0] == 0:
            return 0, self.running_mean.new_zeros(0), self.running_var.new_zeros(0)
        return int(acc[0]), acc[1], acc[2]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = x.shape[1]
        w, b = self.at("weight")[:c], self.at("bias")[:c]
        if self.kind == "fbn":
            if self._acc is not None:   # calibration: batch statistics, summed
                xd = x.detach()
                mu, var = xd.mean(dim=(0, 2, 3)), xd.var(dim=(0, 2, 3), unbiased=True)
                self._acc[0] += 1
                self._acc[1] = mu if self._acc[1] is None else self._acc[1] + mu
                self._acc[2] = var if self._acc[2] is None else self._acc[2] + var
                return F.batch_norm(x, None, None, w, b, True, 0.0, self.eps)
            if self.training and self.train_stats == "batch":   # trains as a model trained alone; nothing kept
                return F.batch_norm(x, None, None, w, b, True, 0.0, self.eps)
            # the frozen (or tabled) statistics, in train mode too: a per-channel affine at every alpha
            mean, var = self.stats()
            return F.batch_norm(x, mean[:c], var[:c], w, b, False, 0.0, self.eps)
        if self.kind == "in":
            return F.instance_norm(x, None, None, w, b, True, 0.0, self.eps)
        return F.group_norm(x, self.num_groups, w, b, self.eps)


def _swap(model: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, new)


def to_lines(model: nn.Module, mode: str, *, lo: float | None = None, hi: float = 1.0, line_convs: bool = True,
             line_norms: bool = True, output: str | None = None, frozen_bn: bool = False,
             train_stats: str = "frozen", **state_kw: object) -> tuple[nn.Module, LineState]:
    """Replace every Conv2d/Linear/InstanceNorm2d/GroupNorm of ``model`` (in place) by its line layer.

    The current weights become ω₀; ω₁ is drawn independently (Kaiming normal; norm affine starts equal).
    ``output`` names the layer whose outputs are the logits (never sliced; default: the last Linear/Conv2d);
    the first conv/linear is never sparsified nor quantized. Batch norm is refused: its running statistics
    would depend on α (LCS's point is that nothing is re-estimated on the device) — unless ``frozen_bn``
    (width mode only): then its current statistics are frozen for every α and only γ/β are on the line;
    ``train_stats="batch"`` (opt-in) normalises by each batch's statistics in train mode instead (the deployed
    statistics then come from a per-α table, :func:`hwloop.methods.lcs.bnstats.calibrate_table`).
    """
    lo = (0.25 if mode == "width" else 0.05 if mode == "topk" else 0.0) if lo is None else lo
    if not 0.0 < hi <= 1.0 or not 0.0 <= lo <= hi:
        raise SearchError(f"the compression range [{lo}, {hi}] must satisfy 0 <= lo <= hi <= 1, hi > 0")
    state = LineState(mode, lo=lo, hi=hi, **state_kw)  # type: ignore[arg-type]
    named = list(model.named_modules())
    if frozen_bn and mode != "width":
        raise SearchError(f"frozen_bn is for mode 'width' (mode={mode!r}: sparsified or quantized weights would "
                          "not match the frozen statistics); allowed there: instance or group norm")
    if train_stats != "frozen" and not frozen_bn:
        raise SearchError(f"train_stats={train_stats!r} is for frozen_bn families; allowed otherwise: 'frozen'")
    bns = [m for _, m in named if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if frozen_bn and any(not isinstance(m, nn.BatchNorm2d) for m in bns):
        raise SearchError("frozen_bn handles BatchNorm2d only")
    if bns and not frozen_bn:
        raise SearchError("LCS needs a model with instance or group norm (e.g. ModelRef kwargs norm='in' or 'gn'); "
                          "batch norm statistics would have to be re-estimated for every alpha (or frozen_bn=True "
                          "in width mode)")
    weighted = [n for n, m in named if isinstance(m, (nn.Conv2d, nn.Linear))]
    if not weighted:
        raise SearchError("the model has no Conv2d or Linear layer to put on a line")
    out_name = output or weighted[-1]
    for n, m in named:
        if isinstance(m, nn.Conv2d):
            _swap(model, n, LineConv2d(m, state, line=line_convs, first=n == weighted[0], output=n == out_name))
        elif isinstance(m, nn.Linear):
            _swap(model, n, LineLinear(m, state, line=line_convs, first=n == weighted[0], output=n == out_name))
        elif isinstance(m, (nn.InstanceNorm2d, nn.GroupNorm)) or (frozen_bn and isinstance(m, nn.BatchNorm2d)):
            _swap(model, n, LineNorm(m, state, line=line_norms, frozen=frozen_bn, train_stats=train_stats))
    return model, state


def line_layers(model: nn.Module) -> Iterator[tuple[str, LineLayer]]:
    for n, m in model.named_modules():
        if isinstance(m, LineLayer):
            yield n, m


def cos2_regularizer(model: nn.Module, *, norms: bool = False) -> torch.Tensor:
    """cos²(ω₀, ω₁) over all line conv/linear weights (and norm weights with ``norms``), in [0, 1].

    One cosine over the concatenated endpoints (Wortsman et al.'s subspace regulariser as LCS uses it):
    ``(Σ ω₀·ω₁)² / (Σ ω₀² · Σ ω₁²)``; 1 when ω₁ = c·ω₀, 0 when they are orthogonal.
    """
    terms = [(m.endpoint("weight", 0), m.endpoint("weight", 1)) for _, m in line_layers(model)
             if m.line and (norms or not isinstance(m, LineNorm))]
    if not terms:
        return torch.zeros(())
    num = torch.stack([(w0 * w1).sum() for w0, w1 in terms]).sum()
    den0 = torch.stack([(w0 * w0).sum() for w0, _ in terms]).sum()
    den1 = torch.stack([(w1 * w1).sum() for _, w1 in terms]).sum()
    return num.pow(2) / torch.clamp(den0 * den1, min=1e-30)
