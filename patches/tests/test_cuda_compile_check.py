"""The spill report of ``patches.cuda_compile_check``: ptxas's resource lines
are read per kernel and per architecture, so a spilling kernel fails the check.

The sample is ptxas output recorded from a real run (nvcc 13.0, ``-Xptxas -v``,
sm_80 and sm_90, the series' FusedCrossEntropy.cu before its double kernels'
spills were fixed), cut to three kernels; the lines are as ptxas printed them.
"""

from __future__ import annotations

import shutil

import pytest

from patches import cuda_compile_check as check

_BACKWARD = (
    "_ZN2at6native53_GLOBAL__N__237ccf05_20_FusedCrossEntropy_cu_330b3de534cross_entropy_backward_rows_kernel"
    "IddLb0ELi2EEEvNS1_16CrossEntropyArgsIT_T0_EEPKS5_NS1_9GradScaleIS4_S5_EEPS4_SB_ib"
)
_SUM = (
    "_ZN2at6native53_GLOBAL__N__237ccf05_20_FusedCrossEntropy_cu_330b3de524cross_entropy_sum_kernel"
    "IN3c108BFloat16EfEEvPKT_lPT0_"
)

PTXAS_SAMPLE = f"""\
nvcc warning : incompatible redefinition for option 'output-file', the last value of this option was used
ptxas info    : 675 bytes gmem
ptxas info    : Compiling entry function '{_BACKWARD}' for 'sm_90'
ptxas info    : Function properties for {_BACKWARD}
    32 bytes stack frame, 112 bytes spill stores, 128 bytes spill loads
ptxas info    : Used 64 registers, used 0 barriers, 32 bytes cumulative stack size
ptxas info    : Compile time = 417.580 ms
ptxas info    : 675 bytes gmem, 384 bytes cmem[4]
ptxas info    : Compiling entry function '{_SUM}' for 'sm_80'
ptxas info    : Function properties for {_SUM}
    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 22 registers, used 1 barriers, 128 bytes smem, 376 bytes cmem[0]
ptxas info    : Compile time = 37.142 ms
ptxas info    : Compiling entry function '{_BACKWARD}' for 'sm_80'
ptxas info    : Function properties for {_BACKWARD}
    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 64 registers, used 0 barriers, 493 bytes cmem[0], 88 bytes cmem[2]
ptxas info    : Compile time = 366.409 ms
"""


def test_parser_reads_every_kernel_per_arch() -> None:
    kernels = check.parse_ptxas_report(PTXAS_SAMPLE)
    assert [(k.name, k.arch) for k in kernels] == [(_BACKWARD, "sm_90"), (_SUM, "sm_80"), (_BACKWARD, "sm_80")]
    spilling, summing, backward_80 = kernels
    assert (spilling.registers, spilling.shared_bytes, spilling.stack_bytes) == (64, 0, 32)
    assert (spilling.spill_stores, spilling.spill_loads) == (112, 128)
    assert spilling.spills
    assert (summing.registers, summing.shared_bytes, summing.stack_bytes) == (22, 128, 0)
    assert not summing.spills
    # The same kernel compiled for another arch is its own row, and the
    # cmem[...] counts are not taken for shared memory.
    assert (backward_80.registers, backward_80.shared_bytes, backward_80.spills) == (64, 0, False)


def test_parser_ignores_other_output() -> None:
    assert check.parse_ptxas_report("nvcc warning : something\nptxas info    : 675 bytes gmem\n") == []
    assert check.parse_ptxas_report("") == []


def test_spill_is_detected_from_either_count() -> None:
    assert check.KernelUsage("k", "sm_80", spill_stores=4).spills
    assert check.KernelUsage("k", "sm_80", spill_loads=4).spills
    assert not check.KernelUsage("k", "sm_80", stack_bytes=16).spills


@pytest.mark.skipif(shutil.which("c++filt") is None, reason="needs c++filt (binutils)")
def test_table_names_kernels_by_template() -> None:
    table = check.usage_table(check.parse_ptxas_report(PTXAS_SAMPLE)).splitlines()
    assert table[0].split() == ["kernel", "arch", "regs", "smem", "B", "stack", "B", "spill", "st", "B", "spill", "ld",
                                "B"]
    rows = [line.split() for line in table[1:]]
    assert rows[0][:2] == ["cross_entropy_backward_rows_kernel<double,", "double,"]
    assert [row[-6:] for row in rows] == [
        ["sm_80", "64", "0", "0", "0", "0"],
        ["sm_90", "64", "0", "32", "112", "128"],
        ["sm_80", "22", "128", "0", "0", "0"],
    ]
    assert rows[2][0] == "cross_entropy_sum_kernel<c10::BFloat16,"


def _result(kernels: list[check.KernelUsage]) -> check.CompileResult:
    return check.CompileResult("aten/src/ATen/native/cuda/X.cu", True, 1.0, "", 1, kernels)


def test_a_spill_fails_the_check(capsys: pytest.CaptureFixture[str]) -> None:
    kernels = check.parse_ptxas_report(PTXAS_SAMPLE)
    assert check.report([_result(kernels)], ["80", "90"], 1.0) == 1
    out = capsys.readouterr().out
    assert "1 kernel(s) spill registers" in out
    assert "(sm_90): 112 bytes stored, 128 bytes loaded" in out


def test_no_spill_passes_and_a_missing_report_fails() -> None:
    clean = [k for k in check.parse_ptxas_report(PTXAS_SAMPLE) if not k.spills]
    assert check.report([_result(clean)], ["80", "90"], 1.0) == 0
    # A compile whose output has no ptxas report (e.g. -Xptxas -v dropped)
    # must not pass the spill check by saying nothing.
    assert check.report([_result([])], ["80", "90"], 1.0) == 1
