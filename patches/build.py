"""Build the series' new C++ (and CUDA) files as a torch extension.

Sources come only from the patch text (``series.new_files``) plus what
``codegen`` generates, so there is no second copy of the kernels.  The CPU
kernel file is compiled once per CPU capability, as ATen's build does
(``CPU_CAPABILITY=DEFAULT`` and ``CPU_CAPABILITY=AVX2`` with ``-mavx2
-mfma -mf16c``); without those macros ``at::vec::Vectorized`` is scalar.
The AVX512 slot of each DispatchStub is registered empty, which is what
``REGISTER_DISPATCH`` does for AVX512 in ATen, so AVX512 machines run the
AVX2 copy.  ``*.cu`` files in the series are built too when torch has CUDA
and nvcc is found.

ATen's CPU code is compiled with ``-fopenmp`` and linked against the OpenMP
runtime the wheel ships (``torch/lib/libgomp.so.1``), and ``at::parallel_for``
is inlined into the kernel translation units, so the kernels and the
extension are compiled with OpenMP too and linked against the very runtime
file libtorch_cpu has loaded: without the flag ``#pragma omp parallel`` is
ignored and every kernel runs on one thread, and a second OpenMP runtime in
the process would keep its own thread pool and settings.

Everything lands in ``patches/.cache/build/<key>/`` where the key hashes the
series (BASE + series + patches) and the build tooling (this module and the
code generators, compiler, flags, torch version), so changing a flag or the
generator rebuilds instead of silently reusing an old library.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

from . import codegen, series

EXTENSION_PREFIX = "fused_cross_entropy_oot"
KERNEL_SUFFIX = "Kernel.cpp"
# (capability, macros and flags) as in ATen's cmake/Codegen.cmake.
CPU_CAPABILITIES = [
    ("DEFAULT", ["-DCPU_CAPABILITY=DEFAULT", "-DCPU_CAPABILITY_DEFAULT"]),
    ("AVX2", ["-DCPU_CAPABILITY=AVX2", "-DCPU_CAPABILITY_AVX2", "-mavx2", "-mfma", "-mf16c"]),
]
COMMON_DEFINES = ["-DHAVE_AVX2_CPU_DEFINITION", "-DHAVE_AVX512_CPU_DEFINITION", "-DAT_PER_OPERATOR_HEADERS"]


# Python packages the build imports or runs: module -> pip distribution.
# torchgen (codegen, autograd_gen) imports yaml; cpp_extension imports
# setuptools and drives ninja.
BUILD_REQUIREMENTS = {"yaml": "pyyaml", "setuptools": "setuptools", "ninja": "ninja"}
# Modules whose text decides what is compiled: a change to them must rebuild.
TOOLING_MODULES = ["build.py", "codegen.py", "series.py", "workspace.py"]


class BuildError(Exception):
    """The extension could not be built; the message carries the compiler output."""


def missing_build_requirements() -> list[str]:
    """pip names of the build's Python dependencies that are not installed."""
    missing = []
    for module, distribution in BUILD_REQUIREMENTS.items():
        if module == "ninja":
            # cpp_extension runs the ninja executable, not the module.
            if shutil.which("ninja") is None and importlib.util.find_spec("ninja") is None:
                missing.append(distribution)
        elif importlib.util.find_spec(module) is None:
            missing.append(distribution)
    return missing


def check_build_requirements() -> None:
    """Raise one BuildError naming every missing build dependency.

    Without this a fresh environment fails deep inside torchgen or
    cpp_extension with an unrelated-looking ImportError, once per test.
    """
    missing = missing_build_requirements()
    if missing:
        names = " ".join(missing)
        raise BuildError(
            f"the out-of-tree build needs the Python package(s) {', '.join(missing)}, "
            f"which are not installed; install them with: {sys.executable} -m pip install {names}"
        )


def mapped_openmp_runtimes() -> list[Path]:
    """OpenMP runtime files mapped into this process, in /proc/self/maps order (empty without /proc)."""
    maps = Path("/proc/self/maps")
    if not maps.exists():
        return []
    found: list[Path] = []
    for line in maps.read_text().splitlines():
        fields = line.split()
        name = os.path.basename(fields[-1]) if len(fields) >= 6 else ""
        if name.startswith(("libgomp", "libiomp5", "libomp")) and ".so" in name and Path(fields[-1]) not in found:
            found.append(Path(fields[-1]))
    return found


@functools.lru_cache(maxsize=None)
def openmp_runtime() -> Path | None:
    """The OpenMP runtime file libtorch_cpu has loaded, or None without OpenMP.

    Read from the process's mappings, so it is the wheel's bundled copy
    (torch/lib/libgomp.so.1) rather than whatever the compiler would link.
    Cached: the flag and key helpers ask once per compile command.
    """
    import torch

    if not torch._C.has_openmp:
        return None
    mapped = mapped_openmp_runtimes()
    if mapped:
        return mapped[0]
    bundled = Path(torch.__file__).parent / "lib" / "libgomp.so.1"
    if bundled.exists():
        return bundled
    raise BuildError("torch uses OpenMP but its OpenMP runtime could not be found to link against")


def openmp_compile_flags() -> list[str]:
    """``-fopenmp`` exactly when ATen itself was built with OpenMP."""
    return ["-fopenmp"] if openmp_runtime() is not None else []


def openmp_link_flags() -> list[str]:
    """Link the runtime torch loaded (by path, with an rpath), never the compiler's."""
    runtime = openmp_runtime()
    if runtime is None:
        return []
    return [str(runtime), f"-Wl,-rpath,{runtime.parent}"]


def tooling_fingerprint() -> dict:
    """Everything besides the series that decides the build's output."""
    import torch

    here = Path(__file__).resolve().parent
    return {
        "modules": {name: hashlib.sha256((here / name).read_bytes()).hexdigest() for name in TOOLING_MODULES},
        "compiler": os.environ.get("CXX", "c++"),
        "torch": torch.__version__,
        "compile": [*compile_flags_base(), *COMMON_DEFINES, *openmp_compile_flags()],
        "capabilities": CPU_CAPABILITIES,
        "link": openmp_link_flags(),
        "cuda": cuda_wanted(),
    }


# Upstream files whose hunks the build compiles (through codegen); new files
# count when they are sources or headers.
COMPILED_PATHS = (codegen.NATIVE_YAML, codegen.LOSS_NLL, codegen.AUTOCAST_H)
COMPILED_SUFFIXES = (".cpp", ".h", ".cu", ".cuh")


def build_key() -> str:
    """Cache key: what the build compiles from the series, and the tooling fingerprint."""
    digest = hashlib.sha256(series.build_inputs_hash(COMPILED_PATHS, COMPILED_SUFFIXES).encode())
    digest.update(json.dumps(tooling_fingerprint(), sort_keys=True).encode())
    return digest.hexdigest()[:16]


def build_dir() -> Path:
    return series.CACHE_DIR / "build" / build_key()


def cuda_wanted() -> bool:
    """Build the .cu files: torch was built with CUDA and nvcc is available."""
    import torch
    from torch.utils import cpp_extension

    if torch.version.cuda is None:
        return False
    home = cpp_extension.CUDA_HOME
    return bool(home) and (Path(home) / "bin/nvcc").exists()


def _is_kernel(path: str) -> bool:
    return "/native/cpu/" in path and path.endswith(".cpp")


def extract_sources(directory: Path) -> dict[str, Path]:
    """Write the series' new files under directory/src; returns path -> file."""
    written: dict[str, Path] = {}
    for path, text in series.new_files().items():
        target = directory / "src" / path
        target.parent.mkdir(parents=True, exist_ok=True)
        if not target.exists() or target.read_text() != text:
            target.write_text(text)
        written[path] = target
    return written


def include_dirs(directory: Path) -> list[Path]:
    # Generated headers first, then the series' own include root.
    return [directory / "gen/include", directory / "src/aten/src"]


def compile_flags_base() -> list[str]:
    import torch

    abi = int(torch._C._GLIBCXX_USE_CXX11_ABI)
    return ["-O3", "-std=c++17", "-fPIC", f"-D_GLIBCXX_USE_CXX11_ABI={abi}", "-Wno-unused-function"]


def compile_capability_objects(directory: Path, kernels: list[Path], verbose: bool) -> list[Path]:
    """Compile each CPU kernel file once per capability into objects."""
    from torch.utils import cpp_extension

    includes = [*include_dirs(directory), *map(Path, cpp_extension.include_paths())]
    compiler = os.environ.get("CXX", "c++")
    objects: list[Path] = []
    jobs: list[tuple[Path, list[str]]] = []
    for kernel in kernels:
        for capability, flags in CPU_CAPABILITIES:
            obj = directory / "obj" / f"{kernel.stem}.{capability}.o"
            obj.parent.mkdir(parents=True, exist_ok=True)
            command = [
                compiler, "-c", str(kernel), "-o", str(obj),
                *compile_flags_base(), *openmp_compile_flags(), *COMMON_DEFINES, *flags,
                *[f"-I{path}" for path in includes],
                f"-I{sysconfig.get_paths()['include']}",
            ]
            objects.append(obj)
            stamp = obj.with_suffix(".cmd")
            key = " ".join(command) + hashlib.sha256(kernel.read_bytes()).hexdigest()
            if obj.exists() and stamp.exists() and stamp.read_text() == key:
                continue
            jobs.append((obj, command))
            stamp.write_text("")  # invalidated until the compile succeeds
    running = [(obj, command, subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
               for obj, command in jobs]
    failures = []
    for obj, command, process in running:
        output, _ = process.communicate()
        if verbose or process.returncode != 0:
            print(" ".join(command), file=sys.stderr)
            print(output, file=sys.stderr)
        if process.returncode != 0:
            failures.append(f"{obj.name}:\n{output}")
        else:
            key = " ".join(command) + hashlib.sha256(Path(command[2]).read_bytes()).hexdigest()
            obj.with_suffix(".cmd").write_text(key)
    if failures:
        raise BuildError("compiling the CPU kernels failed:\n" + "\n".join(failures))
    return objects


def write_avx512_slots(directory: Path, stub_header: str, stub_names: list[str]) -> Path:
    """Empty AVX512 DispatchStub slots (ATen's REGISTER_DISPATCH does the same)."""
    lines = ["// Generated by patches/build.py: AVX512 falls back to the AVX2 kernels.",
             f"#include <{stub_header}>", "namespace at::native {"]
    lines += [f"REGISTER_AVX512_DISPATCH({name}, nullptr)" for name in stub_names]
    lines += ["} // namespace at::native", ""]
    path = directory / "gen/FusedCrossEntropyAvx512Slots.cpp"
    text = "\n".join(lines)
    if not path.exists() or path.read_text() != text:
        path.write_text(text)
    return path


def declared_stubs(sources: dict[str, Path]) -> tuple[str, list[str]]:
    """The header declaring the DispatchStubs, and their names."""
    import re

    for path, file in sources.items():
        if path.endswith(".h"):
            names = re.findall(r"DECLARE_DISPATCH\(\s*[\w:]+\s*,\s*(\w+)\s*\)", file.read_text())
            if names:
                return path.split("aten/src/", 1)[1], names
    raise BuildError("no DECLARE_DISPATCH in the series' headers")


def build_extension(force: bool = False, verbose: bool = False) -> Path:
    """Build (or reuse) the extension; returns the shared library path.

    Serialised with a file lock: test runners may start several processes
    that all want the extension at once.
    """
    import fcntl

    check_build_requirements()
    lock_path = series.CACHE_DIR / "build.lock"
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            return _build_locked(force, verbose)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _build_locked(force: bool, verbose: bool) -> Path:
    from torch.utils import cpp_extension

    directory = build_dir()
    library = directory / "ext" / f"{EXTENSION_PREFIX}.so"
    if library.exists() and not force:
        return library
    if force and directory.exists():
        shutil.rmtree(directory)
    for stale in directory.parent.glob("*"):
        # Builds of earlier versions of the series are never used again.
        if stale.is_dir() and stale != directory:
            shutil.rmtree(stale, ignore_errors=True)
    directory.mkdir(parents=True, exist_ok=True)
    sources = extract_sources(directory)
    with_cuda = cuda_wanted()
    backends = {"CPU"} | ({"CUDA"} if with_cuda else set())
    generated = codegen.generate(directory / "gen", backends)
    kernels = [file for path, file in sources.items() if _is_kernel(path)]
    main_sources = [file for path, file in sources.items() if path.endswith(".cpp") and not _is_kernel(path)]
    cuda_sources = [file for path, file in sources.items() if path.endswith(".cu")] if with_cuda else []
    stub_header, stub_names = declared_stubs(sources)
    main_sources.append(write_avx512_slots(directory, stub_header, stub_names))
    objects = compile_capability_objects(directory, kernels, verbose)
    ext_dir = directory / "ext"
    ext_dir.mkdir(parents=True, exist_ok=True)
    cflags = [*compile_flags_base()[:1], *openmp_compile_flags(), *COMMON_DEFINES]
    try:
        cpp_extension.load(
            name=EXTENSION_PREFIX,
            sources=[str(p) for p in [*main_sources, *generated, *cuda_sources]],
            extra_cflags=cflags,
            extra_cuda_cflags=[*COMMON_DEFINES],
            extra_include_paths=[str(p) for p in include_dirs(directory)],
            extra_ldflags=[*(str(obj) for obj in objects), *openmp_link_flags()],
            build_directory=str(ext_dir),
            with_cuda=bool(cuda_sources),
            is_python_module=False,
            verbose=verbose,
        )
    except (RuntimeError, subprocess.CalledProcessError) as error:
        raise BuildError(f"building the extension failed: {error}") from error
    if not library.exists():
        raise BuildError(f"the build produced no {library}")
    return library
