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
)


def find(impl: str, conformance_id: str) -> Optional[Divergence]:
    """The declared divergence that covers this test, if any."""
    for entry in DIVERGENCES:
        if entry.matches(impl, conformance_id):
            return entry
    return None


def for_impl(impl: str) -> List[Divergence]:
    return [d for d in DIVERGENCES if d.impl == impl]
