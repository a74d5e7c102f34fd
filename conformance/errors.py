"""Error inputs (OpInfo ``ErrorInput`` style): bad calls and the rule each one breaks.

The expected exception type and message of each live next to its test, recorded
with expecttest (``conformance/tests/test_errors.py``), because they are stock
PyTorch 2.13's own words and an implementation must reproduce them exactly.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Dict, Tuple

import torch

Call = Tuple[tuple, dict]


@dataclasses.dataclass(frozen=True)
class ErrorInput:
    name: str
    rule: str
    build: Callable[[str], Call]
    device_assert_on_cuda: bool = False   # CE-ERR-RANGE: CUDA reports it with a device-side assert


def _x(*shape: int, device: str, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    gen = torch.Generator().manual_seed(sum(shape) + len(shape))
    return torch.randn(shape, generator=gen).to(device=device, dtype=dtype)


def _long(values, device: str) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.long, device=device)


def _error_inputs() -> Tuple[ErrorInput, ...]:
    return (
        ErrorInput("reduction_invalid", "CE-ERR-REDUCTION",
                   lambda d: ((_x(3, 4, device=d), _long([0, 1, 2], d)), {"reduction": "avg"})),
        ErrorInput("index_target_int32", "CE-ERR-INDEX-DTYPE",
                   lambda d: ((_x(3, 4, device=d), _long([0, 1, 2], d).int()), {})),
        ErrorInput("index_target_float_vector", "CE-ERR-INDEX-DTYPE",
                   lambda d: ((_x(3, 4, device=d), torch.rand(3, device=d)), {})),
        ErrorInput("index_target_uint8_kdim", "CE-ERR-INDEX-DTYPE",
                   lambda d: ((_x(2, 3, 4, device=d), torch.zeros(2, 4, dtype=torch.uint8, device=d)), {})),
        ErrorInput("prob_target_long", "CE-ERR-PROB-DTYPE",
                   lambda d: ((_x(3, 4, device=d), torch.zeros(3, 4, dtype=torch.long, device=d)), {})),
        ErrorInput("prob_target_bool", "CE-ERR-PROB-DTYPE",
                   lambda d: ((_x(3, 4, device=d), torch.ones(3, 4, dtype=torch.bool, device=d)), {})),
        ErrorInput("prob_ignore_index", "CE-ERR-PROB-IGNORE",
                   lambda d: ((_x(3, 4, device=d), torch.rand(3, 4, device=d)), {"ignore_index": 1})),
        ErrorInput("index_out_of_range", "CE-ERR-RANGE",
                   lambda d: ((_x(3, 4, device=d), _long([0, 1, 7], d)), {}), device_assert_on_cuda=True),
        ErrorInput("index_negative_out_of_range", "CE-ERR-RANGE",
                   lambda d: ((_x(3, 4, device=d), _long([0, 1, -5], d)), {}), device_assert_on_cuda=True),
        ErrorInput("index_out_of_range_smoothing", "CE-ERR-RANGE",
                   lambda d: ((_x(3, 4, device=d), _long([0, 4, 2], d)), {"label_smoothing": 0.1}),
                   device_assert_on_cuda=True),
        ErrorInput("index_out_of_range_kdim", "CE-ERR-RANGE",
                   lambda d: ((_x(2, 3, 4, device=d), _long([[0, 1, 2, 5], [0, 0, 0, 0]], d)), {}),
                   device_assert_on_cuda=True),
        ErrorInput("smoothing_above_one_index", "CE-ERR-SMOOTHING",
                   lambda d: ((_x(3, 4, device=d), _long([0, 1, 2], d)), {"label_smoothing": 1.5})),
        ErrorInput("smoothing_above_one_prob", "CE-ERR-SMOOTHING",
                   lambda d: ((_x(3, 4, device=d), torch.rand(3, 4, device=d)), {"label_smoothing": 1.5})),
        ErrorInput("weight_shape_index", "CE-ERR-WEIGHT-SHAPE",
                   lambda d: ((_x(3, 4, device=d), _long([0, 1, 2], d)), {"weight": torch.ones(3, device=d)})),
        ErrorInput("weight_matrix_index", "CE-ERR-WEIGHT-SHAPE",
                   lambda d: ((_x(3, 4, device=d), _long([0, 1, 2], d)), {"weight": torch.ones(1, 4, device=d)})),
        ErrorInput("weight_shape_prob", "CE-ERR-WEIGHT-SHAPE",
                   lambda d: ((_x(3, 4, device=d), torch.rand(3, 4, device=d)), {"weight": torch.ones(3, device=d)})),
        ErrorInput("weight_shape_kdim", "CE-ERR-WEIGHT-SHAPE",
                   lambda d: ((_x(2, 3, 4, device=d), torch.zeros(2, 4, dtype=torch.long, device=d)),
                              {"weight": torch.ones(2, device=d)})),
        ErrorInput("weight_dtype_index", "CE-ERR-WEIGHT-DTYPE",
                   lambda d: ((_x(3, 4, device=d), _long([0, 1, 2], d)),
                              {"weight": torch.ones(4, dtype=torch.float64, device=d)})),
        ErrorInput("batch_mismatch", "CE-ERR-BATCH",
                   lambda d: ((_x(3, 4, device=d), _long([0, 1], d)), {})),
        ErrorInput("kdim_target_shape", "CE-ERR-KDIM-SHAPE",
                   lambda d: ((_x(2, 3, 4, device=d), torch.zeros(2, 5, dtype=torch.long, device=d)), {})),
        ErrorInput("kdim_target_shape_4d", "CE-ERR-KDIM-SHAPE",
                   lambda d: ((_x(2, 3, 4, 5, device=d), torch.zeros(2, 4, 6, dtype=torch.long, device=d)), {})),
        ErrorInput("unbatched_target_size", "CE-ERR-1D-TARGET",
                   lambda d: ((_x(4, device=d), _long([2, 1], d)), {})),
        ErrorInput("unbatched_vector_target_smoothing", "CE-INDEX-SHAPE",
                   lambda d: ((_x(4, device=d), _long([2], d)), {"label_smoothing": 0.1})),
        ErrorInput("target_rank", "CE-ERR-TARGET-RANK",
                   lambda d: ((_x(3, 4, device=d), torch.zeros(3, 1, dtype=torch.long, device=d)), {})),
        ErrorInput("input_integer", "CE-ERR-INPUT-DTYPE",
                   lambda d: ((torch.ones(3, 4, dtype=torch.long, device=d), _long([0, 1, 2], d)), {})),
        ErrorInput("input_0d", "CE-ERR-0D",
                   lambda d: ((torch.tensor(1.0, device=d), torch.tensor(1.0, device=d)), {})),
    )


ERROR_INPUTS: Dict[str, ErrorInput] = {e.name: e for e in _error_inputs()}
