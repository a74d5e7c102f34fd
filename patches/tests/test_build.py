"""The out-of-tree build must behave like a PyTorch build with the series:
OpenMP as ATen uses it, build dependencies checked up front, a cache that
notices tooling changes, and upstream's autocast policy for the routing."""

from __future__ import annotations

import os
import sys
import threading
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from patches import build, codegen, oot
from patches.tests.objects import binutils_output

needs_openmp = pytest.mark.skipif(not torch._C.has_openmp, reason="torch was built without OpenMP")


@needs_openmp
def test_kernel_objects_call_the_openmp_runtime() -> None:
    # at::parallel_for is inlined into the kernels; without -fopenmp its
    # "#pragma omp parallel" is dropped and the objects never call GOMP.
    for name, undefined in binutils_output("nm", "-u", "*.o").items():
        assert "GOMP_parallel" in undefined, name


@needs_openmp
@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="needs /proc (Linux)")
def test_one_openmp_runtime_the_one_torch_loaded() -> None:
    before = set(build.mapped_openmp_runtimes())
    oot.load()
    after = set(build.mapped_openmp_runtimes())
    assert len(after) == 1, f"OpenMP runtimes in the process: {sorted(after)}"
    assert after == before or not before


def _thread_ticks() -> dict[int, int]:
    ticks = {}
    for tid in os.listdir("/proc/self/task"):
        try:
            fields = Path(f"/proc/self/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()
        except FileNotFoundError:
            continue
        ticks[int(tid)] = int(fields[11]) + int(fields[12])  # utime + stime
    return ticks


@needs_openmp
@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="needs /proc (Linux)")
def test_fused_kernels_run_on_the_intra_op_threads() -> None:
    # CPU time accrued by threads other than the caller while only the fused
    # ops run: independent of machine load, unlike a wall-clock speed-up.
    oot.load()
    ops = torch.ops.aten
    x = torch.randn(2048, 16384)
    target = torch.softmax(torch.randn(2048, 16384), 1)
    previous = torch.get_num_threads()
    main = threading.get_native_id()
    try:
        torch.set_num_threads(2)
        ops._fused_cross_entropy(x, target, None, 1, -100, 0.0)
        before = _thread_ticks()
        for _ in range(3):
            _, lse = ops._fused_cross_entropy(x, target, None, 1, -100, 0.0)
            ops._fused_cross_entropy_backward(torch.ones(()), x, target, None, 1, -100, 0.0, lse, [True, False])
        after = _thread_ticks()
    finally:
        torch.set_num_threads(previous)
    own = after[main] - before.get(main, 0)
    others = sum(value - before.get(tid, 0) for tid, value in after.items() if tid != main)
    assert others >= 0.25 * (own + others), f"caller {own} ticks, other threads {others} ticks"


def test_cache_key_covers_flags_and_tooling(monkeypatch: pytest.MonkeyPatch) -> None:
    key = build.build_key()
    assert build.build_dir().name == key
    monkeypatch.setattr(build, "COMMON_DEFINES", [*build.COMMON_DEFINES, "-DEXTRA"])
    assert build.build_key() != key
    monkeypatch.undo()
    monkeypatch.setattr(build, "openmp_compile_flags", lambda: [])
    assert build.build_key() != key
    monkeypatch.undo()
    fingerprint = build.tooling_fingerprint()
    assert {"build.py", "codegen.py"} <= set(fingerprint["modules"])


def test_missing_build_dependency_is_one_named_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(build.importlib.util, "find_spec", lambda name, *a: None if name == "yaml" else real(name, *a))
    with pytest.raises(build.BuildError) as error:
        build.build_extension()
    message = str(error.value)
    assert "pyyaml" in message
    assert f"{sys.executable} -m pip install pyyaml" in message


def test_declared_dependencies_cover_the_build() -> None:
    import tomllib

    pyproject = Path(__file__).resolve().parents[2] / "pyproject.toml"
    declared = tomllib.loads(pyproject.read_text())["project"]["dependencies"]
    names = {d.split(";")[0].split("[")[0].split("=")[0].split(">")[0].split("<")[0].strip().lower() for d in declared}
    assert set(build.BUILD_REQUIREMENTS.values()) <= names


def test_routing_op_has_upstreams_autocast_kernels() -> None:
    oot.load()
    stock = codegen.installed_autocast_keys("aten::cross_entropy_loss")
    routing = codegen.installed_autocast_keys(f"{codegen.ROUTING_NAMESPACE}::cross_entropy_loss")
    assert routing == stock
    assert "AutocastCPU" in routing  # KERNEL_CPU(cross_entropy_loss, fp32) upstream


@pytest.mark.parametrize("target_kind", ["index", "prob"])
def test_cpu_autocast_bf16_loss_is_float32_as_stock(target_kind: str) -> None:
    torch.manual_seed(0)
    linear = torch.nn.Linear(8, 5)
    x = torch.randn(6, 8)
    target = torch.randint(0, 5, (6,)) if target_kind == "index" else torch.softmax(torch.randn(6, 5), 1)
    results = []
    for fn in (oot.patched_cross_entropy, F.cross_entropy):
        linear.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits = linear(x)
            loss = fn(logits, target, label_smoothing=0.1)
        assert logits.dtype == torch.bfloat16
        loss.backward()
        results.append((loss, linear.weight.grad.clone()))
    (loss, grad), (stock_loss, stock_grad) = results
    assert loss.dtype == stock_loss.dtype == torch.float32
    torch.testing.assert_close(loss, stock_loss, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grad, stock_grad, rtol=1e-4, atol=1e-5)
