"""Declarative sample generators, in the style of OpInfo's ``SampleInput``/``ErrorInput``.

A ``SampleSpec`` names one case (its id reads like the case: ``index/N,C/mean/weight``)
and knows how to build its tensors for any device and dtype, from a seed derived
from its id, so every implementation is graded on the same numbers.  The matrix
covers what OpInfo's own cross_entropy samples leave out: label smoothing, unbatched
input, empty batches, the default and in-range ignore_index, all-ignored batches,
memory layouts and non-finite logits.
"""

from __future__ import annotations

import dataclasses
import zlib
from typing import Any, Dict, Iterator, List, Optional, Tuple

import torch

DTYPES: Tuple[torch.dtype, ...] = (torch.float64, torch.float32, torch.float16, torch.bfloat16)
REDUCTIONS: Tuple[str, ...] = ("none", "sum", "mean")


@dataclasses.dataclass(frozen=True)
class SampleSpec:
    """One case of the matrix; tensors are made by :meth:`build`."""

    kind: str                      # "index" or "prob"
    shape: Tuple[int, ...]         # input shape
    reduction: str = "mean"
    weight: bool = False
    ignore_index: Optional[int] = None   # None: the default (-100)
    ignored: str = "none"          # which positions carry the ignore_index: none / some / all
    label_smoothing: float = 0.0
    layout: str = "contiguous"     # contiguous / noncontiguous / transposed / expanded / channels_last
    logits: str = "normal"         # normal / extreme / neginf / neginf_target / nan / ignored_neginf_row
    targets: str = "normalized"    # prob only: normalized / unnormalized / with_zeros
    scale: float = 1.0             # logit scale
    tag: str = ""                  # extra words for the id
    rules: Tuple[str, ...] = ()

    @property
    def id(self) -> str:
        dims = {1: "C", 2: "N,C"}.get(len(self.shape), "N,C," + ",".join(f"d{i + 1}" for i in range(len(self.shape) - 2)))
        words = []
        if self.weight:
            words.append("weight")
        if self.ignore_index is not None or self.ignored != "none":
            value = -100 if self.ignore_index is None else self.ignore_index
            words.append(f"ignore{value}" + ("" if self.ignored == "none" else f"-{self.ignored}"))
        if self.label_smoothing:
            words.append(f"smooth{self.label_smoothing:g}")
        for attr, default in (("layout", "contiguous"), ("logits", "normal"), ("targets", "normalized")):
            value = getattr(self, attr)
            if value != default:
                words.append(value)
        if self.tag:
            words.append(self.tag)
        shape = "x".join(map(str, self.shape))
        return f"{self.kind}/{dims}={shape}/{self.reduction}/" + ("+".join(words) or "plain")

    @property
    def finite(self) -> bool:
        """Whether every logit is finite and moderate (gradcheck needs that)."""
        return self.logits == "normal"

    @property
    def undefined_mean(self) -> bool:
        """A mean over nothing (CE-EMPTY, CE-ALL-IGNORED): NaN, with no derivative to check."""
        positions = _numel(_target_shape(self.shape))
        all_ignored = self.ignored == "all" or (self.ignored == "some" and positions == 1)
        return self.reduction == "mean" and (positions == 0 or all_ignored)

    @property
    def ignore_value(self) -> int:
        return -100 if self.ignore_index is None else self.ignore_index

    def kwargs(self, weight: Optional[torch.Tensor]) -> Dict[str, Any]:
        out: Dict[str, Any] = {"reduction": self.reduction}
        if weight is not None:
            out["weight"] = weight
        if self.ignore_index is not None:
            out["ignore_index"] = self.ignore_index
        if self.label_smoothing:
            out["label_smoothing"] = self.label_smoothing
        return out

    def build(self, device: str, dtype: torch.dtype) -> "SampleInput":
        return _build(self, device, dtype)


@dataclasses.dataclass
class SampleInput:
    """Tensors of one case, as an implementation receives them."""

    spec: SampleSpec
    input: torch.Tensor
    target: torch.Tensor
    weight: Optional[torch.Tensor]

    @property
    def kwargs(self) -> Dict[str, Any]:
        return self.spec.kwargs(self.weight)

    def cast(self, dtype: torch.dtype, device: str = "cpu") -> "SampleInput":
        """The same values in another dtype (the reference is evaluated in float64)."""
        target = self.target.to(device=device, dtype=dtype) if self.spec.kind == "prob" else self.target.to(device)
        weight = None if self.weight is None else self.weight.to(device=device, dtype=dtype)
        return SampleInput(self.spec, self.input.detach().to(device=device, dtype=dtype), target.detach(), weight)


def _seed(spec: SampleSpec, dtype: torch.dtype) -> int:
    return zlib.crc32(f"{spec.id}|{dtype}".encode())


def _class_dim(shape: Tuple[int, ...]) -> int:
    return 0 if len(shape) == 1 else 1


def _target_shape(shape: Tuple[int, ...]) -> Tuple[int, ...]:
    return shape[:1] + shape[2:] if len(shape) > 1 else ()


def _logits(spec: SampleSpec, gen: torch.Generator) -> torch.Tensor:
    x = torch.randn(spec.shape, generator=gen, dtype=torch.float64) * spec.scale
    if spec.logits == "extreme":
        signs = torch.randint(0, 2, spec.shape, generator=gen).to(torch.float64) * 2 - 1
        x = torch.where(torch.rand(spec.shape, generator=gen) < 0.5, signs * 1e4, x)
    return x


def _index_targets(spec: SampleSpec, gen: torch.Generator) -> torch.Tensor:
    c = spec.shape[_class_dim(spec.shape)]
    y = torch.randint(0, c, _target_shape(spec.shape), generator=gen)
    if spec.ignored == "some" and y.numel() > 1:
        mask = torch.rand(y.shape, generator=gen) < 0.3
        mask.view(-1)[0] = True
        mask.view(-1)[-1] = False
        y = torch.where(mask, torch.full_like(y, spec.ignore_value), y)
    elif spec.ignored == "all" or (spec.ignored == "some" and y.numel() == 1):
        y = torch.full_like(y, spec.ignore_value)
    return y


def _prob_targets(spec: SampleSpec, gen: torch.Generator) -> torch.Tensor:
    cd = _class_dim(spec.shape)
    if spec.targets == "unnormalized":
        return torch.rand(spec.shape, generator=gen, dtype=torch.float64) * 2
    t = torch.softmax(torch.randn(spec.shape, generator=gen, dtype=torch.float64) * 2, cd)
    if spec.targets == "with_zeros" or spec.logits in ("neginf", "neginf_target"):
        zeros = torch.rand(spec.shape, generator=gen) < 0.4
        zeros.select(cd, 0).fill_(False)  # keep some mass in every position
        t = t.masked_fill(zeros, 0)
        t = t / t.sum(cd, keepdim=True)
    return t


def _apply_nonfinite(spec: SampleSpec, x: torch.Tensor, target: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Place -inf / NaN logits where the case wants them."""
    cd = _class_dim(spec.shape)
    x = x.clone()
    if spec.logits == "nan":
        x.view(-1)[0] = float("nan")
    elif spec.logits == "neginf" and spec.kind == "prob":
        # -inf exactly where the target has no mass: 0 * log 0 (CE-DIV-ZERO-LOG-ZERO)
        x = x.masked_fill(target == 0, float("-inf"))
    elif spec.logits == "neginf" and spec.kind == "index":
        # -inf on classes other than the target class: finite loss
        classes = torch.arange(x.shape[cd]).view([-1 if d == cd else 1 for d in range(x.dim())])
        hit = classes != target.unsqueeze(cd)
        keep = torch.zeros_like(hit)
        keep.select(cd, 0).fill_(True)
        x = x.masked_fill(hit & (torch.rand(x.shape, generator=gen) < 0.5) & ~keep | (hit & (classes == x.shape[cd] - 1)), float("-inf"))
    elif spec.logits == "neginf_target":
        # -inf at the target class: +inf loss (CE-NONFINITE)
        if spec.kind == "index":
            x.scatter_(cd, target.clamp(min=0).unsqueeze(cd), float("-inf"))
        else:
            x.select(cd, 0).fill_(float("-inf"))
    elif spec.logits == "ignored_neginf_row":
        # an ignored position whose logits are all -inf (CE-DIV-IGNORED-GRAD)
        ignored = target == spec.ignore_value
        x = x.masked_fill(ignored.unsqueeze(cd), float("-inf"))
    return x


def _relayout(t: torch.Tensor, layout: str) -> torch.Tensor:
    """Same values, other strides (CE-LAYOUT)."""
    if layout == "noncontiguous":
        big = torch.zeros(*t.shape[:-1], t.shape[-1] * 2, dtype=t.dtype, device=t.device) if t.dim() else t.clone()
        if t.dim() == 0:
            return big
        big[..., ::2] = t
        return big[..., ::2]
    if layout == "transposed" and t.dim() >= 2:
        return t.transpose(0, 1).contiguous().transpose(0, 1)
    if layout == "channels_last" and t.dim() == 4:
        return t.contiguous(memory_format=torch.channels_last)
    return t


def _build(spec: SampleSpec, device: str, dtype: torch.dtype) -> SampleInput:
    gen = torch.Generator().manual_seed(_seed(spec, dtype))
    cd = _class_dim(spec.shape)
    if spec.layout == "expanded":
        row_shape = (1,) + spec.shape[1:]
        base = dataclasses.replace(spec, shape=row_shape, layout="contiguous")
        row = _build(base, "cpu", dtype)
        x = row.input.expand(spec.shape)
        target = row.target.expand(_target_shape(spec.shape) if spec.kind == "index" else spec.shape)
        weight = row.weight
    else:
        x = _logits(spec, gen)
        target = _index_targets(spec, gen) if spec.kind == "index" else _prob_targets(spec, gen)
        x = _apply_nonfinite(spec, x, target, gen)
        weight = torch.rand(spec.shape[cd], generator=gen, dtype=torch.float64) + 0.25 if spec.weight else None
        x = x.to(dtype)
        if spec.kind == "prob":
            target = target.to(dtype)
        weight = weight.to(dtype) if weight is not None else None
    x = _relayout(x.to(device), spec.layout)
    target = _relayout(target.to(device), spec.layout)
    weight = weight.to(device) if weight is not None else None
    return SampleInput(spec, x, target, weight)


# --------------------------------------------------------------------------- the matrix

CORE_SHAPES: Tuple[Tuple[int, ...], ...] = ((5,), (4, 5), (3, 5, 4), (2, 5, 3, 2), (2, 3, 2, 2, 2))

INDEX_OPTIONS: Tuple[Dict[str, Any], ...] = (
    {},
    {"weight": True},
    {"label_smoothing": 0.1},
    {"label_smoothing": 1.0},
    {"weight": True, "label_smoothing": 0.1},
    {"ignored": "some"},
    {"ignore_index": -1, "ignored": "some"},
    {"ignore_index": 1, "ignored": "some"},
    {"weight": True, "ignored": "some", "label_smoothing": 0.1},
)
PROB_OPTIONS: Tuple[Dict[str, Any], ...] = (
    {},
    {"weight": True},
    {"label_smoothing": 0.1},
    {"label_smoothing": 1.0},
    {"weight": True, "label_smoothing": 0.1},
    {"ignore_index": -5},
    {"targets": "unnormalized"},
    {"weight": True, "targets": "with_zeros", "label_smoothing": 0.1},
)

RULES_BY_KIND = {
    "index": ("CE-INDEX-LOSS", "CE-INDEX-SHAPE"),
    "prob": ("CE-PROB-LOSS", "CE-KIND"),
}


def _rules(kind: str, options: Dict[str, Any], reduction: str) -> Tuple[str, ...]:
    rules = list(RULES_BY_KIND[kind])
    prefix = "CE-INDEX" if kind == "index" else "CE-PROB"
    if options.get("weight"):
        rules.append(f"{prefix}-WEIGHT")
    if options.get("label_smoothing"):
        rules.append(f"{prefix}-SMOOTH")
    if "ignore_index" in options or options.get("ignored", "none") != "none":
        rules.append(f"{prefix}-IGNORE")
    rules.append({"none": "CE-REDUCE-NONE", "sum": "CE-REDUCE-SUM", "mean": f"{prefix}-MEAN"}[reduction])
    return tuple(rules)


def _core() -> Iterator[SampleSpec]:
    for shape in CORE_SHAPES:
        for kind, options_list in (("index", INDEX_OPTIONS), ("prob", PROB_OPTIONS)):
            for options in options_list:
                for reduction in REDUCTIONS:
                    yield SampleSpec(kind, shape, reduction, rules=_rules(kind, options, reduction), **options)


def _specials() -> Iterator[SampleSpec]:
    both = ("index", "prob")
    for kind in both:
        for reduction in REDUCTIONS:
            yield SampleSpec(kind, (0, 5), reduction, rules=("CE-EMPTY",))
            yield SampleSpec(kind, (4, 1), reduction, tag="one-class", rules=("CE-SHAPE",))
            yield SampleSpec(kind, (6, 67), reduction, weight=True, tag="vector-tail", rules=("CE-SHAPE",))
            yield SampleSpec(kind, (3, 67, 5), reduction, tag="vector-tail", rules=("CE-SHAPE",))
        yield SampleSpec(kind, (0, 5, 3), "mean", rules=("CE-EMPTY",))
        # K-dim inputs whose positions span several of the CPU kernel's blocks
        # (up to 1024 positions each) and end in a partial vector, and many
        # classes over a few positions (blocks of one vector).
        yield SampleSpec(kind, (2, 5, 1037), "none", weight=True, tag="blocks", rules=("CE-SHAPE",))
        yield SampleSpec(kind, (2, 5, 1037), "mean", label_smoothing=0.1, tag="blocks", rules=("CE-SHAPE",))
        yield SampleSpec(kind, (2, 300, 3), "sum", weight=True, tag="blocks", rules=("CE-SHAPE",))
        yield SampleSpec(kind, (16, 1000), "mean", label_smoothing=0.1, tag="wide", rules=("CE-SHAPE",))
        for layout, shape in (("noncontiguous", (4, 5)), ("noncontiguous", (2, 5, 3)),
                              ("transposed", (6, 5)), ("expanded", (4, 5)), ("expanded", (3, 5, 2)),
                              ("channels_last", (2, 5, 3, 4))):
            for reduction in ("none", "mean"):
                yield SampleSpec(kind, shape, reduction, layout=layout, weight=True, rules=("CE-LAYOUT",))
        for reduction in ("none", "mean"):
            yield SampleSpec(kind, (4, 5), reduction, logits="extreme", rules=("CE-NONFINITE",))
            yield SampleSpec(kind, (4, 5), reduction, logits="neginf", rules=("CE-NONFINITE",))
            yield SampleSpec(kind, (4, 5), reduction, logits="neginf_target", rules=("CE-NONFINITE",))
            yield SampleSpec(kind, (4, 5), reduction, logits="nan", rules=("CE-NONFINITE",))
        yield SampleSpec(kind, (4, 5), "mean", logits="neginf", label_smoothing=0.1, rules=("CE-NONFINITE",))
        yield SampleSpec(kind, (3, 5, 4), "sum", logits="neginf", weight=True, rules=("CE-NONFINITE",))
        # fp16 sums that overflow unless accumulated in float32 (upstream 85791 / 61523)
        yield SampleSpec(kind, (70000, 8), "mean", scale=3.0, tag="accumulate", rules=("CE-PRECISION",))
        yield SampleSpec(kind, (3000, 8), "sum", scale=0.01, tag="accumulate", rules=("CE-PRECISION",))
    for reduction in REDUCTIONS:
        yield SampleSpec("index", (4, 5), reduction, ignored="all", rules=("CE-ALL-IGNORED",))
        yield SampleSpec("index", (3, 5, 2), reduction, ignored="all", weight=True, label_smoothing=0.1,
                         rules=("CE-ALL-IGNORED",))
        yield SampleSpec("index", (4, 5), reduction, ignored="some", logits="ignored_neginf_row",
                         rules=("CE-GRAD-IGNORED",))
        yield SampleSpec("index", (2, 5, 3), reduction, ignored="some", label_smoothing=0.2, weight=True,
                         logits="ignored_neginf_row", rules=("CE-GRAD-IGNORED",))


def all_samples() -> List[SampleSpec]:
    """Every case of the matrix, in a stable order with unique ids."""
    specs = list(_core()) + list(_specials())
    ids = [s.id for s in specs]
    duplicates = {i for i in ids if ids.count(i) > 1}
    assert not duplicates, f"duplicate sample ids: {sorted(duplicates)}"
    return specs


def small_samples() -> List[SampleSpec]:
    """Cases small enough for numerical gradient checks."""
    return [s for s in all_samples() if _numel(s.shape) <= 400]


def _numel(shape: Tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n
