"""Run the series' CUDA kernels on the CPU, in an emulation of the CUDA execution model.

CI has no GPU; ``patches.cuda_compile_check`` proves the CUDA sources compile,
this proves their kernels compute the right numbers.  ``python -m
patches.cuda_emulation`` takes the kernel part of
``aten/src/ATen/native/cuda/FusedCrossEntropy.cu`` from the series (from the
first anonymous namespace up to the host helpers that build the kernel
arguments), compiles it as host C++ together with ``prelude.h`` (one
std::thread per CUDA thread, barriers for ``__syncthreads`` and warp shuffles)
and ``harness.cpp`` (cases and a float64 reference), and runs it.  The ATen
device headers the kernels use (``cuda_utils::BlockReduce``,
``memory::aligned_vector``) are compiled as they are on top of the emulated
primitives (``shim/`` replaces the one CUDA-only header they include), so a
CUDA toolkit's headers (thrust) are needed, not nvcc itself.

What it cannot show: anything about speed, memory coalescing, real warp
scheduling, or the host entry points (allocation, dispatch), which the GPU run
of the conformance suite covers.
"""
