"""Known divergences of an implementation from the spec: the one reviewed table.

Each entry names the implementation, a pattern over conformance ids
(``family:dtype:sample-id``, shell-style wildcards), the rule of
``docs/semantics.md`` that the implementation breaks, and why.  Matching tests run
as strict xfail: a fix shows up as XPASS and fails the run until the entry goes.
An entry that matches no collected test is reported as stale.
"""

from __future__ import annotations

import dataclasses
import fnmatch
from typing import List, Optional, Tuple


@dataclasses.dataclass(frozen=True)
class Divergence:
    impl: str
    pattern: str
    rule: str
    reason: str

    def matches(self, impl: str, conformance_id: str) -> bool:
        return self.impl == impl and fnmatch.fnmatchcase(conformance_id, self.pattern)


_ZERO_LOG_ZERO = ("stock computes -(log_softmax(x) * t).sum(): a -inf logit whose target mass is 0 "
                  "gives 0 * -inf = NaN; the spec takes the limit, 0")
_IGNORED_GRAD = ("stock runs log_softmax over ignored positions too; a non-finite ignored row gets a NaN "
                 "gradient (upstream 11551); the spec gives ignored positions exact zeros")
_PRECISION = ("stock rounds the half-precision log_softmax before reducing; the error exceeds the "
              "two-ulp bound (or the float16 sum overflows, upstream 85791 / 61523)")

_COMPILE_ERRORS = ("torch.compile reports a bad argument as torch._dynamo.exc.TorchRuntimeError carrying "
                   "Dynamo's explanation (some from its decompositions, e.g. gather's dtype check), and an "
                   "out-of-range class index as Inductor's 'index out of bounds' RuntimeError or not at all; "
                   "stock's exception type and message are not kept")

# One line per error input, so that a fix shows up as an XPASS for exactly that input.
_COMPILE_ERROR_INPUTS = (
    ("reduction_invalid", "CE-ERR-REDUCTION"),
    ("index_target_int32", "CE-ERR-INDEX-DTYPE"),
    ("index_target_float_vector", "CE-ERR-INDEX-DTYPE"),
    ("index_target_uint8_kdim", "CE-ERR-INDEX-DTYPE"),
    ("prob_target_long", "CE-ERR-PROB-DTYPE"),
    ("prob_target_bool", "CE-ERR-PROB-DTYPE"),
    ("prob_ignore_index", "CE-ERR-PROB-IGNORE"),
    ("index_out_of_range", "CE-ERR-RANGE"),
    ("index_negative_out_of_range", "CE-ERR-RANGE"),
    ("index_out_of_range_smoothing", "CE-ERR-RANGE"),
    ("index_out_of_range_kdim", "CE-ERR-RANGE"),
    ("smoothing_above_one_index", "CE-ERR-SMOOTHING"),
    ("smoothing_above_one_prob", "CE-ERR-SMOOTHING"),
    ("weight_shape_index", "CE-ERR-WEIGHT-SHAPE"),
    ("weight_matrix_index", "CE-ERR-WEIGHT-SHAPE"),
    ("weight_shape_prob", "CE-ERR-WEIGHT-SHAPE"),
    ("weight_shape_kdim", "CE-ERR-WEIGHT-SHAPE"),
    ("weight_dtype_index", "CE-ERR-WEIGHT-DTYPE"),
    ("batch_mismatch", "CE-ERR-BATCH"),
    ("kdim_target_shape", "CE-ERR-KDIM-SHAPE"),
    ("kdim_target_shape_4d", "CE-ERR-KDIM-SHAPE"),
    ("unbatched_target_size", "CE-ERR-1D-TARGET"),
    ("unbatched_vector_target_smoothing", "CE-INDEX-SHAPE"),
    ("target_rank", "CE-ERR-TARGET-RANK"),
    ("input_integer", "CE-ERR-INPUT-DTYPE"),
    ("input_0d", "CE-ERR-0D"),
)

_DTENSOR_BATCH_MEAN = ("stock's DTensor sharding rule for nll_loss_forward on a batch-sharded input (Shard(0); target "
                       "Shard(0) or Replicate) averages the shards' own means: with class weights or ignored targets the "
                       "shards' total weights differ and the 'mean' loss is wrong (its input gradient is right)")
_DTENSOR_UNEVEN = ("stock refuses a 'mean' over a batch that does not split evenly across the mesh (Shard(0), 7 rows on 2 "
                   "ranks): RuntimeError 'The intermediate results of nll_loss cannot be evenly sharded, resulting in "
                   "biased mean result.'")
_LP_WEIGHT_IGNORE = ("loss_parallel()'s nll_loss backward handler gathers the class weight at the raw target "
                     "(torch.gather(w, 1, target)): a weight with ignored targets raises 'index -100 is out of bounds "
                     "for dimension 1 with size 6' in loss.backward()")
_LP_UNSUPPORTED = ("loss_parallel() documents label smoothing and probability targets as unsupported; with a plain "
                   "target stock raises RuntimeError 'aten.masked_fill_.Scalar (smoothing) / aten.mul.Tensor "
                   "(probabilities) got mixed torch.Tensor and DTensor'")
_LP_PROB_GRAD = ("loss_parallel()'s _log_softmax_backward handler returns the incoming gradient unchanged (the softmax "
                 "term lives in its nll_loss backward handler), so a probability target given as a DTensor (the input's "
                 "placements, or Replicate on the TP dim) gets a silently wrong input gradient (the loss value is right, "
                 "but it is Partial(sum) on the TP dim where the contract says Replicate)")
_LP_LEAK = ("loss_parallel() installs its DTensor op handlers without try/finally: after an exception inside it they "
            "stay installed, and a Replicate-input cross_entropy outside it raises ValueError 'loss_parallel() requires "
            "exactly one mesh dim to shard tensor dimension 1'")
_LP_MEAN_2D = ("loss_parallel() refuses reduction='mean' on a multi-dimensional mesh: NotImplementedError "
               "'loss_parallel() with reduction='mean' is only supported on one-dimensional DeviceMesh; got mesh with ndim=2. "
               "Use reduction='sum' or 'none' instead.' (the spec: the global mean)")
_LP_SMOOTHING = ("loss_parallel() documents label smoothing as unsupported; with class indices placed as its docstring "
                 "derives them (a DTensor) stock raises RuntimeError 'aten.masked_fill_.Scalar: in-place operations that "
                 "require placement changes are not supported. The input has placement (Partial(sum),) ...', with a class "
                 "weight 'aten.mul.Tensor got mixed torch.Tensor and DTensor'")
_LP_PROB_WEIGHT = ("probability targets inside loss_parallel() run stock's composite -(log_softmax(x) * t * w).sum(): "
                   "a class weight given as the full plain tensor (as loss_parallel()'s docstring asks) raises "
                   "RuntimeError 'aten.mul.Tensor got mixed torch.Tensor and DTensor, need to convert all torch.Tensor "
                   "to DTensor before calling distributed operators!'")
_LP_PROB_NEGINF = ("probability targets inside loss_parallel() run stock's composite -(log_softmax(x) * t).sum(): a "
                   "local class shard that is all -inf with zero target mass gives 0 * -inf = NaN in the loss "
                   "(CE-DIV-ZERO-LOG-ZERO), and the input gradient is wrong as for any probability target there")
_COMPILE_LP = ("the torch.compile'd F.cross_entropy, called inside loss_parallel() on a Shard(1) input after it ran on "
               "Replicate/Shard(0) DTensors, returns a silently wrong loss and input gradient (1.964 expected, 0.676); "
               "compiled first inside loss_parallel() it is right")
_REFERENCE_DTENSOR = ("the reference's plain-op composite mixes plain tensors into DTensor ops: its default all-ones "
                      "class weight indexed by a DTensor target ('aten.index.Tensor got mixed torch.Tensor and DTensor'), "
                      "and inside loss_parallel() a mask built from the plain target ('aten.masked_fill.Scalar got mixed "
                      "torch.Tensor and DTensor'); with a class weight, and for probability targets, it is right")
_REFERENCE_LP = ("the reference's plain-op composite inside loss_parallel() (the lp/ cases) runs stock's handlers and DTensor "
                 "ops: its plain all-ones weight or masks meet DTensors ('aten.index.Tensor' / 'aten.mul.Tensor' / "
                 "'aten.masked_fill.Scalar got mixed torch.Tensor and DTensor'), an unbatched or K-dim input raises "
                 "'IndexError: too many indices for tensor of dimension 1', and probability targets get stock's wrong input "
                 "gradient (CE-DIV-DTENSOR)")
LINES = (
)

_STOCK_VMAP_MASKED_SELECT = (
    "stock's label-smoothing path for 'mean' with a class weight and ignored positions divides by "
    "weight.gather(target.masked_select(~ignore_mask)).sum(); masked_select has no batch rule for a batched "
    "mask: 'vmap: Attempted to vmap over `mask` in torch.masked_select(self, mask) We cannot support this "
    "because for each batch this would return a differently shaped Tensor' (vmap(grad(f)) of the same call works)")
_COMPILE_DOUBLE_BACKWARD = (
    "torch.compile (AOTAutograd) has no double backward: 'torch.compile with aot_autograd does not currently "
    "support double backward', or, for a graph first compiled without create_graph, 'This backward function was "
    "compiled with non-empty donated buffers which requires create_graph=False and retain_graph=False'")
_COMPILE_NUMERICS = (
    "Inductor's fused float32 reduction of stock's probability-target composite -(log_softmax(x) * t).sum() / N "
    "loses ~3 ulps of the mean loss at logits offset by 30 / 1000 (stock eager: < 1 ulp)")

_COMPILE_FAKE = ("torch.compile's guards do not tell FakeTensors from real CPU tensors: after a real call, a call "
                 "under FakeTensorMode runs the compiled Inductor kernel on null data pointers (SIGSEGV)")
_COMPILE_MODE = ("torch.compile does not trace under a non-infra TorchDispatchMode; with fullgraph=True it raises "
                 "'found no compiled frames ... non-infra torch dispatch mode present'")
_COMPILE_LAYOUT = ("Dynamo rejects sparse / nested inputs with its own exception (Unsupported, TorchRuntimeError) "
                   "instead of stock's NotImplementedError / RuntimeError")

DIVERGENCES: Tuple[Divergence, ...] = (
    # ---- stock torch 2.13 (the installed F.cross_entropy)
    Divergence("torch", "forward:*:prob/*/neginf", "CE-DIV-ZERO-LOG-ZERO", _ZERO_LOG_ZERO),
    Divergence("torch", "forward:*:prob/*/weight+neginf", "CE-DIV-ZERO-LOG-ZERO", _ZERO_LOG_ZERO),
    Divergence("torch", "backward:*:index/*ignored_neginf_row", "CE-DIV-IGNORED-GRAD", _IGNORED_GRAD),
    Divergence("torch", "forward:float16:*/N,C=70000x8/mean/accumulate", "CE-DIV-PRECISION", _PRECISION),
    Divergence("torch", "forward:float16:index/N,C=16x1000/mean/smooth0.1+wide", "CE-DIV-PRECISION", _PRECISION),
    Divergence("torch", "backward:bfloat16:prob/N,C=4x5/none/unnormalized", "CE-DIV-PRECISION", _PRECISION),
    Divergence("torch", "backward:bfloat16:prob/N,C=4x5/sum/unnormalized", "CE-DIV-PRECISION", _PRECISION),
    Divergence("torch", "backward:float16:prob/N,C,d1=3x5x4/none/unnormalized", "CE-DIV-PRECISION", _PRECISION),
    # ---- torch.compile of stock F.cross_entropy (observed in float32 forward/backward; Inductor
    # compiles stock's composite, so it inherits stock's artefacts)
    Divergence("compile", "forward:float32:prob/*/neginf", "CE-DIV-ZERO-LOG-ZERO", _ZERO_LOG_ZERO),
    Divergence("compile", "forward:float32:prob/*/weight+neginf", "CE-DIV-ZERO-LOG-ZERO", _ZERO_LOG_ZERO),
    Divergence("compile", "backward:float32:index/*ignored_neginf_row", "CE-DIV-IGNORED-GRAD", _IGNORED_GRAD),
    *(Divergence("compile", f"errors:any:{name}", rule, _COMPILE_ERRORS) for name, rule in _COMPILE_ERROR_INPUTS),
    # ---- stock torch 2.13 on DTensor (the distributed family)
    Divergence("torch", "distributed:*:shard0*/index/*/mean/weight*", "CE-DIV-DTENSOR", _DTENSOR_BATCH_MEAN),
    Divergence("torch", "distributed:*:shard0*/index/*/mean/ignore*", "CE-DIV-DTENSOR", _DTENSOR_BATCH_MEAN),
    Divergence("torch", "distributed:*:shard0*/index/N,C=7x6/mean/*", "CE-DIV-DTENSOR", _DTENSOR_UNEVEN),
    Divergence("torch", "distributed:*:loss_parallel/shard1/index/*/weight+ignore*", "CE-DIV-DTENSOR", _LP_WEIGHT_IGNORE),
    Divergence("torch", "distributed:*:loss_parallel/shard1/index/*/smooth*", "CE-DIV-DTENSOR", _LP_UNSUPPORTED),
    Divergence("torch", "distributed:*:loss_parallel/shard1/prob/*", "CE-DIV-DTENSOR", _LP_UNSUPPORTED),
    Divergence("torch", "distributed:*:loss_parallel/shard1+shard1-target/prob/*", "CE-DIV-DTENSOR", _LP_PROB_GRAD),
    Divergence("torch", "distributed:*:loss_parallel/after-exception/replicate-outside/*", "CE-DIV-DTENSOR", _LP_LEAK),
    Divergence("torch", "distributed:*:loss_parallel/after-exception/handlers-removed/*", "CE-DIV-DTENSOR", _LP_LEAK),
    # loss_parallel() cases of the contract (lp/<mesh>/<input placements>/t=<target placements>/...)
    Divergence("torch", "distributed:*:lp/2x2/*/index/*/mean/*", "CE-DIV-DTENSOR", _LP_MEAN_2D),
    Divergence("torch", "distributed:*:lp/*/index/*smooth*", "CE-DIV-DTENSOR", _LP_SMOOTHING),
    Divergence("torch", "distributed:*:lp/*/index/*/weight+ignore*", "CE-DIV-DTENSOR", _LP_WEIGHT_IGNORE),
    Divergence("torch", "distributed:*:lp/*/t=plain/prob/*", "CE-DIV-DTENSOR", _LP_UNSUPPORTED),
    Divergence("torch", "distributed:*:lp/*/prob/*weight*", "CE-DIV-DTENSOR", _LP_PROB_WEIGHT),
    Divergence("torch", "distributed:*:lp/*/prob/*masked-shard*", "CE-DIV-DTENSOR", _LP_PROB_NEGINF),
    Divergence("torch", "distributed:*:lp/*/prob/*", "CE-DIV-DTENSOR", _LP_PROB_GRAD),
    # ---- torch.compile (runs distributed_cases.COMPILE_CASES only)
    Divergence("compile", "distributed:*:shard0*/index/*/mean/weight*", "CE-DIV-DTENSOR", _DTENSOR_BATCH_MEAN),
    Divergence("compile", "distributed:*:loss_parallel/shard1/index/N,C=8x6/mean/plain", "CE-DIV-DTENSOR", _COMPILE_LP),
    Divergence("compile", "distributed:*:loss_parallel/shard1+shard1-target/prob/*", "CE-DIV-DTENSOR", _LP_PROB_GRAD),
    # ---- the reference
    Divergence("reference", "distributed:*:replicate/index/*/plain", "CE-SYS-DTENSOR", _REFERENCE_DTENSOR),
    Divergence("reference", "distributed:*:replicate/index/*/mean/ignore*", "CE-SYS-DTENSOR", _REFERENCE_DTENSOR),
    Divergence("reference", "distributed:*:replicate/index/*/mean/smooth*", "CE-SYS-DTENSOR", _REFERENCE_DTENSOR),
    Divergence("reference", "distributed:*:shard0*/index/*/plain", "CE-SYS-DTENSOR", _REFERENCE_DTENSOR),
    Divergence("reference", "distributed:*:shard0*/index/*/mean/ignore*", "CE-SYS-DTENSOR", _REFERENCE_DTENSOR),
    Divergence("reference", "distributed:*:shard0*/index/*/mean/smooth*", "CE-SYS-DTENSOR", _REFERENCE_DTENSOR),
    Divergence("reference", "distributed:*:loss_parallel/shard1/*", "CE-SYS-DTENSOR", _REFERENCE_DTENSOR),
    Divergence("reference", "distributed:*:loss_parallel/shard1+replicate-target/*", "CE-SYS-DTENSOR", _REFERENCE_DTENSOR),
    Divergence("reference", "distributed:*:loss_parallel/after-exception/reenter/*", "CE-SYS-DTENSOR", _REFERENCE_DTENSOR),
    Divergence("reference", "distributed:*:loss_parallel/shard1+shard1-target/prob/*", "CE-DIV-DTENSOR", _LP_PROB_GRAD),
    Divergence("reference", "distributed:*:loss_parallel/after-exception/replicate-outside/*", "CE-DIV-DTENSOR", _LP_LEAK),
    Divergence("reference", "distributed:*:loss_parallel/after-exception/handlers-removed/*", "CE-DIV-DTENSOR", _LP_LEAK),
    Divergence("reference", "distributed:*:lp/*", "CE-SYS-DTENSOR", _REFERENCE_LP),
    # ---- the patch series
    # ---- functorch and numerics families
    Divergence("torch", "functorch:*:vmap/in_dims=0/chunk_size=2/index/N,C=4x5/mean/weight+ignore1-some+smooth0.1",
               "CE-SYS-VMAP", _STOCK_VMAP_MASKED_SELECT),
    Divergence("compile", "functorch:float64:gradgradcheck/*", "CE-GRAD-HIGHER", _COMPILE_DOUBLE_BACKWARD),
    Divergence("compile", "numerics:float32:prob/N,C=64x1000/mean/offset30/loss", "CE-SYS-NUMERICS", _COMPILE_NUMERICS),
    Divergence("compile", "numerics:float32:prob/N,C=64x1000/mean/offset1000/loss", "CE-SYS-NUMERICS", _COMPILE_NUMERICS),
    # ---- export, dynamo, subclasses and robustness families
    Divergence("compile", "subclasses:*:fake/*", "CE-SYS-SUBCLASS", _COMPILE_FAKE),
    Divergence("compile", "subclasses:float32:dispatch-mode/*", "CE-SYS-SUBCLASS", _COMPILE_MODE),
    Divergence("compile", "subclasses:any:sparse-coo/*", "CE-SYS-SUBCLASS", _COMPILE_LAYOUT),
    Divergence("compile", "subclasses:any:nested/*", "CE-SYS-SUBCLASS", _COMPILE_LAYOUT),
    Divergence("compile", "subclasses:any:nested-jagged/*", "CE-SYS-SUBCLASS", _COMPILE_LAYOUT),
)


def find(impl: str, conformance_id: str) -> Optional[Divergence]:
    """The declared divergence that covers this test, if any."""
    for entry in DIVERGENCES:
        if entry.matches(impl, conformance_id):
            return entry
    return None


def for_impl(impl: str) -> List[Divergence]:
    return [d for d in DIVERGENCES if d.impl == impl]
