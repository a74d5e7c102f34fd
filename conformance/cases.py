"""Test cases: a family, a dtype and a sample, under one readable conformance id."""

from __future__ import annotations

import dataclasses
from typing import Iterable, List, Optional, Sequence

import torch

from conformance.samples import DTYPES, SampleSpec

DTYPE_NAMES = {torch.float64: "float64", torch.float32: "float32",
               torch.float16: "float16", torch.bfloat16: "bfloat16"}


@dataclasses.dataclass(frozen=True)
class Case:
    family: str
    dtype: Optional[torch.dtype]
    spec: Optional[SampleSpec] = None
    name: str = ""

    @property
    def dtype_name(self) -> str:
        return DTYPE_NAMES[self.dtype] if self.dtype is not None else "any"

    @property
    def subject(self) -> str:
        return self.spec.id if self.spec is not None else self.name

    @property
    def conformance_id(self) -> str:
        return f"{self.family}:{self.dtype_name}:{self.subject}"

    def __str__(self) -> str:
        return f"{self.dtype_name}:{self.subject}"


def cases(family: str, specs: Iterable[SampleSpec], dtypes: Sequence[torch.dtype] = DTYPES) -> List[Case]:
    return [Case(family, dtype, spec) for spec in specs for dtype in dtypes]
