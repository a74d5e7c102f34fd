"""Compile every CUDA source of the series with nvcc, compile only, no GPU needed.

``python -m patches.cuda_compile_check`` takes the ``.cu`` files the series
creates (from the patch text: the series is the single source of truth), and
compiles each with ``nvcc -c`` for sm_80 and sm_90 against the installed torch's
headers, as ATen's own build would compile them in a PyTorch checkout with the
series applied.  CI machines have no GPU, so this is how the CUDA half of the
patch is kept compiling.

What a checkout's build would generate and the wheel lacks comes from the
out-of-tree build's own steps (``patches.build`` / ``patches.codegen``): the
series' new files (headers included) are extracted, and torchgen writes the
``ATen/ops/<op>_native.h`` of the new ops from the patched
``native_functions.yaml``, declaring their CUDA kernels.  A kernel whose signature drifts from
the yaml schema would compile as an unrelated overload, so after compiling,
each native function the header declares and the source defines is looked up
in the object file under the declaration's mangled name (``nm``).

A CPU-only wheel ships the CUDA headers of ATen and c10 but not the
configure-time ``c10/cuda/impl/cuda_cmake_macros.h``; its one macro only
matters for Windows DLL exports, so the compile then defines
``C10_CUDA_NO_CMAKE_CONFIGURE_FILE``, the switch c10 provides for builds
without that file.  No cuBLAS/cuSPARSE headers are needed: the kernels do not
include ``ATen/cuda/CUDAContext.h``.

ptxas runs verbose (``-Xptxas -v``): its report of every kernel (registers,
shared memory, stack frame, spill stores and loads, per architecture) is
parsed and printed as a table, and a kernel that spills fails the check: a
spill is local-memory traffic in the inner loop of a bandwidth-bound kernel.

Exit status: 0 when every source compiled without spills, 1 when one failed
(its nvcc output is printed) or a kernel spills, 2 when there is nothing to
compile or no nvcc.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from . import build, codegen

DEFAULT_ARCHS = ("80", "90")
NVCC_CANDIDATES = ("/usr/local/cuda-13.0/bin/nvcc", "/usr/local/cuda/bin/nvcc")


@dataclasses.dataclass
class KernelUsage:
    """ptxas's resource report for one function compiled for one architecture."""

    name: str  # mangled
    arch: str  # e.g. "sm_90"
    registers: int = 0
    shared_bytes: int = 0
    stack_bytes: int = 0
    spill_stores: int = 0
    spill_loads: int = 0

    @property
    def spills(self) -> bool:
        return self.spill_stores > 0 or self.spill_loads > 0


@dataclasses.dataclass
class CompileResult:
    """The outcome of compiling one source for the requested architectures."""

    source: str
    ok: bool
    seconds: float
    output: str
    object_bytes: int
    kernels: list[KernelUsage] = dataclasses.field(default_factory=list)


_COMPILING = re.compile(r"ptxas info\s*: Compiling (?:entry )?function '(?P<name>[^']+)' for '(?P<arch>sm_\w+)'")
_PROPERTIES = re.compile(r"ptxas info\s*: Function properties for (?P<name>\S+)")
_FRAME = re.compile(
    r"(?P<stack>\d+) bytes stack frame, (?P<stores>\d+) bytes spill stores, (?P<loads>\d+) bytes spill loads")
_USED = re.compile(r"ptxas info\s*: Used (?P<registers>\d+) registers")
_SMEM = re.compile(r"(?P<smem>\d+) bytes smem")


def parse_ptxas_report(text: str) -> list[KernelUsage]:
    """The per-function resource lines of ``ptxas -v`` output, in order of appearance.

    ptxas reports each function it compiles as a "Compiling entry function
    'NAME' for 'sm_XX'" line, then "Function properties for NAME" followed by
    the stack frame and spill line, then (for kernels) a "Used N registers,
    ..., M bytes smem, ..." line.  A non-inlined device function called by a
    kernel gets its own "Function properties" block inside the kernel's
    section; it is reported (its spills count too) under the kernel's arch.
    Other lines (nvcc, compiler warnings, timings) are ignored.
    """
    found: list[KernelUsage] = []
    by_key: dict[tuple[str, str], KernelUsage] = {}
    arch = ""
    current: KernelUsage | None = None  # the function whose lines follow

    def usage(name: str) -> KernelUsage:
        key = (name, arch)
        if key not in by_key:
            by_key[key] = KernelUsage(name, arch)
            found.append(by_key[key])
        return by_key[key]

    for line in text.splitlines():
        if match := _COMPILING.search(line):
            arch = match["arch"]
            current = usage(match["name"])
        elif match := _PROPERTIES.search(line):
            current = usage(match["name"])
        elif (match := _FRAME.search(line)) and current is not None:
            current.stack_bytes = int(match["stack"])
            current.spill_stores = int(match["stores"])
            current.spill_loads = int(match["loads"])
        elif (match := _USED.search(line)) and current is not None:
            current.registers = int(match["registers"])
            smem = _SMEM.search(line)
            current.shared_bytes = int(smem["smem"]) if smem else 0
    return found


def demangle(names: list[str]) -> dict[str, str]:
    """Readable short names (``kernel<args>``, no namespaces or parameters); mangled ones without c++filt."""
    readable = dict(zip(names, names))
    cxxfilt = shutil.which("c++filt")
    if not names or cxxfilt is None:
        return readable
    proc = subprocess.run([cxxfilt], input="\n".join(names), stdout=subprocess.PIPE, text=True)
    lines = proc.stdout.splitlines()
    if proc.returncode != 0 or len(lines) != len(names):
        return readable
    for name, line in zip(names, lines):
        # "void ns::(anonymous namespace)::kernel<T, ...>(params)" -> "kernel<T, ...>"
        line = re.sub(r"^void ", "", line)
        depth, cut = 0, len(line)
        for i, char in enumerate(line):  # the parameter list: the last top-level "(...)"
            if char == "<":
                depth += 1
            elif char == ">":
                depth -= 1
            elif char == "(" and depth == 0 and not line.startswith("(anonymous", i):
                cut = i
        short = line[:cut]
        short = re.sub(r"^.*?::(?=[A-Za-z_]\w*(<|$))", "", short.replace("(anonymous namespace)::", ""))
        readable[name] = short or line
    return readable


def usage_table(kernels: list[KernelUsage]) -> str:
    """A fixed-width table of the kernels' resource usage, one row per kernel and arch."""
    names = demangle(sorted({k.name for k in kernels}))
    header = ("kernel", "arch", "regs", "smem B", "stack B", "spill st B", "spill ld B")
    rows = [header] + [
        (names[k.name], k.arch, str(k.registers), str(k.shared_bytes), str(k.stack_bytes),
         str(k.spill_stores), str(k.spill_loads))
        for k in sorted(kernels, key=lambda k: (names[k.name], k.arch))
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = []
    for row in rows:
        cells = [row[0].ljust(widths[0]), row[1].ljust(widths[1])]
        cells += [cell.rjust(width) for cell, width in zip(row[2:], widths[2:])]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def find_nvcc(explicit: str | None = None) -> Path | None:
    """nvcc from --nvcc, $CUDA_HOME, PATH, then the usual install locations."""
    candidates: list[str] = []
    if explicit:
        candidates.append(explicit)
    for variable in ("CUDA_HOME", "CUDA_PATH"):
        if os.environ.get(variable):
            candidates.append(os.path.join(os.environ[variable], "bin", "nvcc"))
    on_path = shutil.which("nvcc")
    if on_path:
        candidates.append(on_path)
    candidates.extend(NVCC_CANDIDATES)
    for candidate in candidates:
        if Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return Path(candidate)
    return None


def cuda_sources(sources: dict[str, Path]) -> dict[str, Path]:
    """The ``.cu`` files among the series' new files: upstream path -> extracted file."""
    return {path: file for path, file in sources.items() if path.endswith(".cu")}


def nvcc_command(nvcc: Path, source: Path, output: Path, include_dirs: list[Path], archs: list[str]) -> list[str]:
    """The nvcc line: compile only, against the installed torch's headers.

    The flags are those both builds that compile these files use: ATen's own
    (half/bfloat16 operator macros, relaxed constexpr) and torch's
    cpp_extension, which the out-of-tree build uses (it does not pass
    ``--expt-extended-lambda``, so neither does this check).
    """
    import torch
    from torch.utils.cpp_extension import include_paths

    torch_include = include_paths()
    command = [
        str(nvcc),
        "-c",
        str(source),
        "-o",
        str(output),
        "-std=c++20",
        "-Xcompiler",
        "-fPIC",
        f"-D_GLIBCXX_USE_CXX11_ABI={int(torch._C._GLIBCXX_USE_CXX11_ABI)}",
        "-DAT_PER_OPERATOR_HEADERS",
        "-D__CUDA_NO_HALF_OPERATORS__",
        "-D__CUDA_NO_HALF_CONVERSIONS__",
        "-D__CUDA_NO_BFLOAT16_CONVERSIONS__",
        "-D__CUDA_NO_HALF2_OPERATORS__",
        "--expt-relaxed-constexpr",
        "--threads",
        str(min(len(archs), os.cpu_count() or 1)),
        # Our own code must be warning free; torch's headers are system headers.
        "-Werror",
        "all-warnings",
        # Resource usage of every kernel, parsed by parse_ptxas_report.
        "-Xptxas",
        "-v",
        *[f"-I{path}" for path in include_dirs],
    ]
    for path in torch_include:
        command += ["-isystem", path]
    macros = Path(torch_include[0]) / "c10" / "cuda" / "impl" / "cuda_cmake_macros.h"
    if not macros.exists():
        command.append("-DC10_CUDA_NO_CMAKE_CONFIGURE_FILE")
    for arch in archs:
        command += ["-gencode", f"arch=compute_{arch},code=sm_{arch}"]
    return command


def native_declarations(include_dir: Path) -> dict[str, str]:
    """Functions declared by the generated ``ATen/ops/*_native.h``: name -> header."""
    found: dict[str, str] = {}
    for header in sorted((include_dir / "ATen" / "ops").glob("*_native.h")):
        for name in re.findall(r"^TORCH_API .*?\b(\w+)\(", header.read_text(), re.M):
            found[name] = f"ATen/ops/{header.name}"
    return found


def check_native_symbols(obj: Path, source_text: str, include_dirs: list[Path], work_dir: Path) -> str:
    """'' when every declared native function the source defines is in obj with its declared signature.

    A probe translation unit takes the address of each declared function, so
    its undefined symbols are the declarations' mangled names; each must be a
    defined text symbol of the compiled object.
    """
    from torch.utils.cpp_extension import include_paths

    declared = native_declarations(include_dirs[0])
    defined_here = sorted(name for name in declared if re.search(rf"\b{name}\s*\(", source_text))
    if not defined_here:
        return "the source defines none of the native functions the series declares"
    probe = work_dir / f"{obj.stem}_probe.cpp"
    probe.write_text(
        "".join(f"#include <{header}>\n" for header in sorted({declared[n] for n in defined_here}))
        + "void* fused_ce_probe[] = {\n"
        + "".join(f"    reinterpret_cast<void*>(&at::native::{name}),\n" for name in defined_here)
        + "};\n"
    )
    probe_obj = probe.with_suffix(".o")
    compiler = os.environ.get("CXX", "c++")
    command = [compiler, "-std=c++20", "-c", str(probe), "-o", str(probe_obj),
               *[f"-I{path}" for path in include_dirs],
               *[arg for path in include_paths() for arg in ("-isystem", path)]]
    proc = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if proc.returncode != 0:
        return "probe compile failed:\n" + proc.stdout
    wanted = set(subprocess.run(["nm", "-u", "--format=just-symbols", str(probe_obj)],
                                stdout=subprocess.PIPE, text=True, check=True).stdout.split())
    have = set(subprocess.run(["nm", "--defined-only", "--format=just-symbols", str(obj)],
                              stdout=subprocess.PIPE, text=True, check=True).stdout.split())
    missing = sorted(symbol for symbol in wanted if "native" in symbol and symbol not in have)
    if missing:
        return "declared but not defined with the declared signature: " + ", ".join(missing)
    return ""


def compile_source(nvcc: Path, upstream_path: str, source: Path, include_dirs: list[Path],
                   archs: list[str]) -> CompileResult:
    """Compile one source and check its native symbols; never raises on a compiler error."""
    output = source.with_suffix(".o")
    output.unlink(missing_ok=True)
    command = nvcc_command(nvcc, source, output, include_dirs, archs)
    start = time.monotonic()
    proc = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    log = " ".join(command) + "\n" + proc.stdout
    ok = proc.returncode == 0 and output.exists()
    if ok:
        problem = check_native_symbols(output, source.read_text(), include_dirs, source.parent)
        if problem:
            ok = False
            log += "\nsymbol check: " + problem
    seconds = time.monotonic() - start
    return CompileResult(upstream_path, ok, seconds, log, output.stat().st_size if ok else 0,
                         parse_ptxas_report(proc.stdout))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m patches.cuda_compile_check", description=__doc__.splitlines()[0])
    parser.add_argument("--arch", action="append", help="SM architecture, repeatable (default: 80 and 90)")
    parser.add_argument("--nvcc", help="path to nvcc (default: $CUDA_HOME/bin/nvcc, PATH, /usr/local/cuda-13.0)")
    parser.add_argument("--jobs", type=int, default=1, help="sources compiled at once (default 1)")
    parser.add_argument("--keep", metavar="DIR", help="keep sources, generated headers and objects in DIR")
    parser.add_argument("-v", "--verbose", action="store_true", help="print nvcc commands and output")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    archs = args.arch or list(DEFAULT_ARCHS)
    started = time.monotonic()
    nvcc = find_nvcc(args.nvcc)
    if nvcc is None:
        print("cuda_compile_check: nvcc not found (set CUDA_HOME or --nvcc)", file=sys.stderr)
        return 2
    version = subprocess.run([str(nvcc), "--version"], stdout=subprocess.PIPE, text=True).stdout.strip().splitlines()[-1]
    print(f"nvcc: {nvcc} ({version}); archs: {', '.join('sm_' + a for a in archs)}")

    work_dir = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="cuda_compile_check_"))
    work_dir.mkdir(parents=True, exist_ok=True)
    try:
        # The out-of-tree build's own steps: the series' new files under
        # src/, torchgen's ATen/ops headers of the new ops (with their CUDA
        # kernels declared) under gen/include.
        extracted = build.extract_sources(work_dir)
        sources = cuda_sources(extracted)
        if not sources:
            print("cuda_compile_check: the series creates no .cu file", file=sys.stderr)
            return 2
        codegen.generate(work_dir / "gen", {"CPU", "CUDA"})
        include_dirs = build.include_dirs(work_dir)
        generated = sorted(p.name for p in (work_dir / "gen/include/ATen/ops").glob("*_native.h"))
        print(f"generated native headers: {', '.join(generated) or 'none'}")
        with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
            results = list(pool.map(
                lambda item: compile_source(nvcc, item[0], item[1], include_dirs, archs),
                sorted(sources.items())))
    finally:
        if not args.keep:
            shutil.rmtree(work_dir, ignore_errors=True)

    return report(results, archs, time.monotonic() - started, args.verbose)


def report(results: list[CompileResult], archs: list[str], seconds: float, verbose: bool = False) -> int:
    """Prints each source's outcome and its kernels' resource table; the exit status (1: a failure or a spill)."""
    failed = [r for r in results if not r.ok]
    spilling = [k for r in results for k in r.kernels if k.spills]
    for result in results:
        status = "ok" if result.ok else "FAILED"
        print(f"{status:6} {result.source}  ({result.seconds:.1f} s, object {result.object_bytes} bytes)")
        if verbose or not result.ok:
            print(result.output)
        if result.kernels:
            print(usage_table(result.kernels))
        elif result.ok:
            # Without the report the spill check would pass vacuously.
            failed.append(result)
            print("no ptxas resource report found in the nvcc output")
    print(f"compiled {len(results) - len(failed)}/{len(results)} CUDA sources for "
          f"{', '.join('sm_' + a for a in archs)} in {seconds:.1f} s")
    if spilling:
        names = demangle(sorted({k.name for k in spilling}))
        print(f"{len(spilling)} kernel(s) spill registers to local memory:")
        for kernel in spilling:
            print(f"  {names[kernel.name]} ({kernel.arch}): {kernel.spill_stores} bytes stored, "
                  f"{kernel.spill_loads} bytes loaded")
    return 1 if failed or spilling else 0


if __name__ == "__main__":
    sys.exit(main())
