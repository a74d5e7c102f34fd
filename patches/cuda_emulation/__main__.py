"""``python -m patches.cuda_emulation``: compile and run the emulated-kernel checks."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .. import series
from ..cuda_compile_check import find_nvcc

CUDA_SOURCE = "aten/src/ATen/native/cuda/FusedCrossEntropy.cu"
HERE = Path(__file__).resolve().parent
# The kernels end where the host code that fills their arguments begins.
END_MARKER = "template <typename scalar_t, typename acc_t>\nCrossEntropyArgs<scalar_t, acc_t> make_args("
# The grid cap, lowered so that the small emulated cases run the grid-stride
# loops (several rows or positions per block), as large inputs do on a GPU.
GRID_CAP = "constexpr int64_t kMaxBlocks = 4096;"
EMULATED_GRID_CAP = "constexpr int64_t kMaxBlocks = 3;"


def kernel_section(source: str) -> str:
    """The device code of the .cu (inside its first anonymous namespace, before make_args), grid cap lowered."""
    opening = "namespace {\n"
    start = source.find(opening, source.find("namespace at::native {"))
    end = source.find(END_MARKER)
    if start < 0 or end < 0 or end < start:
        raise series.SeriesError(f"{CUDA_SOURCE}: cannot find the kernel section (anonymous namespace, make_args)")
    section = source[start + len(opening):end]
    if GRID_CAP not in section:
        raise series.SeriesError(f"{CUDA_SOURCE}: cannot find '{GRID_CAP}'")
    return section.replace(GRID_CAP, EMULATED_GRID_CAP)


def cuda_include_dirs(nvcc: Path) -> list[Path]:
    """The toolkit's include directories: MemoryAccess.cuh includes thrust (under cccl/ since CUDA 13)."""
    include = nvcc.resolve().parent.parent / "include"
    return [path for path in (include, include / "cccl") if path.is_dir()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m patches.cuda_emulation", description=__doc__)
    parser.add_argument("--keep", metavar="DIR", help="build in DIR and keep it")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds the emulated run may take")
    parser.add_argument("--nvcc", help="nvcc of the CUDA toolkit whose headers to use (default: as cuda_compile_check)")
    args = parser.parse_args(argv)
    from torch.utils.cpp_extension import include_paths

    # Only the toolkit's headers are used (prelude.h includes the ATen device
    # headers the kernels build on, and they include thrust); nothing is
    # compiled with nvcc.
    nvcc = find_nvcc(args.nvcc)
    if nvcc is None:
        print("cuda_emulation: no CUDA toolkit found (set CUDA_HOME or --nvcc)", file=sys.stderr)
        return 2

    sources = series.new_files()
    if CUDA_SOURCE not in sources:
        print(f"cuda_emulation: the series does not create {CUDA_SOURCE}", file=sys.stderr)
        return 2
    work = Path(args.keep or tempfile.mkdtemp(prefix="cuda_emulation_"))
    work.mkdir(parents=True, exist_ok=True)
    (work / "kernels.inc").write_text(kernel_section(sources[CUDA_SOURCE]))
    binary = work / "harness"
    command = [os.environ.get("CXX", "c++"), "-std=c++20", "-O1", "-pthread", "-Wno-unknown-pragmas",
               f"-I{work}", f"-I{HERE}", f"-I{HERE / 'shim'}", str(HERE / "harness.cpp"), "-o", str(binary),
               *[arg for path in include_paths() for arg in ("-isystem", path)],
               # After torch's: the toolkit's own copy of cuda_fp16.h etc. must not shadow anything.
               *[arg for path in cuda_include_dirs(nvcc) for arg in ("-isystem", str(path))]]
    start = time.monotonic()
    build = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    print(f"compiled the emulated kernels in {time.monotonic() - start:.1f} s")
    if build.returncode != 0:
        print(" ".join(command))
        print(build.stdout)
        return 1
    start = time.monotonic()
    try:
        run = subprocess.run([str(binary)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             timeout=args.timeout)
    except subprocess.TimeoutExpired:
        print(f"the emulated run exceeded {args.timeout:.0f} s (a __syncthreads or shuffle every thread does "
              "not reach deadlocks here, as it would hang on a GPU)")
        return 1
    print(f"ran the emulated kernels in {time.monotonic() - start:.1f} s, exit status {run.returncode}")
    print(run.stdout, end="")
    if run.returncode < 0:
        print("the emulated kernels crashed (signal): on a GPU this would be a memory fault, e.g. a misaligned "
              "vector access")
    return 0 if run.returncode == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
