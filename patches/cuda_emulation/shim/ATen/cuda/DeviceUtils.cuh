// Stands in for ATen/cuda/DeviceUtils.cuh in the CPU emulation (see
// prelude.h): the real header needs a CUDA compiler, and the shuffles it
// defines are emulated in prelude.h, which is included before any ATen
// device header.
#pragma once
