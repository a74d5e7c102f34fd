"""Error inputs: stock PyTorch 2.13's exception type and message, recorded with expecttest.

One test per error input (``conformance/errors.py``); ``EXPECTTEST_ACCEPT=1``
rewrites a literal when run against stock torch.  Messages are CPU messages: on
CUDA, an out-of-range class index is a device-side assert (CE-ERR-RANGE), which
kills the CUDA context, so those inputs run in a child process there.
"""

import subprocess
import sys
import textwrap

import expecttest

from conformance.errors import ERROR_INPUTS
from conformance.impls import get_impl
from conformance.plugin import STATE

CUDA_ONLY_TYPE = {"input_integer"}  # the kernel name in the message is the CPU kernel's


class TestErrors(expecttest.TestCase):
    longMessage = True

    def call(self, name: str):
        """The bad call, ready for ``assertExpectedRaisesInline``."""
        args, kwargs = ERROR_INPUTS[name].build(STATE.device)
        impl = get_impl(STATE.impl)
        return lambda: impl(*args, **kwargs)

    def checked_another_way(self, name: str, error_type) -> bool:
        """On CUDA some inputs cannot be checked by message; check them as they fail there."""
        if STATE.device != "cuda":
            return False
        if ERROR_INPUTS[name].device_assert_on_cuda:
            self.assert_device_assert(name)
            return True
        if name in CUDA_ONLY_TYPE:
            self.assertRaises(error_type, self.call(name))
            return True
        return False

    def assert_device_assert(self, name: str) -> None:
        """CE-ERR-RANGE on CUDA: the child process must die with a device-side assert."""
        code = textwrap.dedent(f"""
            import torch
            from conformance.errors import ERROR_INPUTS
            from conformance.impls import get_impl
            args, kwargs = ERROR_INPUTS[{name!r}].build("cuda")
            get_impl({STATE.impl!r})(*args, **kwargs)
            torch.cuda.synchronize()
        """)
        child = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
        self.assertNotEqual(child.returncode, 0, "an out-of-range class index passed unnoticed on CUDA")
        self.assertIn("device-side assert", child.stderr)

    def test_every_error_input_has_a_test(self) -> None:
        tested = {n.removeprefix("test_") for n in dir(self) if n.startswith("test_")}
        self.assertEqual(sorted(set(ERROR_INPUTS) - tested), [])

    def test_reduction_invalid(self) -> None:  # CE-ERR-REDUCTION
        self.assertExpectedRaisesInline(ValueError, self.call("reduction_invalid"), """avg is not a valid value for reduction""")

    def test_index_target_int32(self) -> None:  # CE-ERR-INDEX-DTYPE
        self.assertExpectedRaisesInline(RuntimeError, self.call("index_target_int32"), """expected target dtype to be Long or Byte, but got Int""")

    def test_index_target_float_vector(self) -> None:  # CE-ERR-INDEX-DTYPE
        self.assertExpectedRaisesInline(RuntimeError, self.call("index_target_float_vector"), """expected target dtype to be Long or Byte, but got Float""")

    def test_index_target_uint8_kdim(self) -> None:  # CE-ERR-INDEX-DTYPE
        self.assertExpectedRaisesInline(RuntimeError, self.call("index_target_uint8_kdim"), """expected scalar type Long but found Byte""")

    def test_prob_target_long(self) -> None:  # CE-ERR-PROB-DTYPE
        self.assertExpectedRaisesInline(RuntimeError, self.call("prob_target_long"), """Expected floating point type for target with class probabilities, got Long""")

    def test_prob_target_bool(self) -> None:  # CE-ERR-PROB-DTYPE
        self.assertExpectedRaisesInline(RuntimeError, self.call("prob_target_bool"), """Expected floating point type for target with class probabilities, got Bool""")

    def test_prob_ignore_index(self) -> None:  # CE-ERR-PROB-IGNORE
        self.assertExpectedRaisesInline(RuntimeError, self.call("prob_ignore_index"), """ignore_index is not supported for floating point target""")

    def test_index_out_of_range(self) -> None:  # CE-ERR-RANGE
        if self.checked_another_way("index_out_of_range", IndexError):
            return
        self.assertExpectedRaisesInline(IndexError, self.call("index_out_of_range"), """Target 7 is out of bounds.""")

    def test_index_negative_out_of_range(self) -> None:  # CE-ERR-RANGE
        if self.checked_another_way("index_negative_out_of_range", IndexError):
            return
        self.assertExpectedRaisesInline(IndexError, self.call("index_negative_out_of_range"), """Target -5 is out of bounds.""")

    def test_index_out_of_range_smoothing(self) -> None:  # CE-ERR-RANGE
        if self.checked_another_way("index_out_of_range_smoothing", IndexError):
            return
        self.assertExpectedRaisesInline(IndexError, self.call("index_out_of_range_smoothing"), """Target 4 is out of bounds.""")

    def test_index_out_of_range_kdim(self) -> None:  # CE-ERR-RANGE
        if self.checked_another_way("index_out_of_range_kdim", IndexError):
            return
        self.assertExpectedRaisesInline(IndexError, self.call("index_out_of_range_kdim"), """Target 5 is out of bounds.""")

    def test_smoothing_above_one_index(self) -> None:  # CE-ERR-SMOOTHING
        self.assertExpectedRaisesInline(RuntimeError, self.call("smoothing_above_one_index"), """label_smoothing must be between 0.0 and 1.0. Got: 1.5""")

    def test_smoothing_above_one_prob(self) -> None:  # CE-ERR-SMOOTHING
        self.assertExpectedRaisesInline(RuntimeError, self.call("smoothing_above_one_prob"), """label_smoothing must be between 0.0 and 1.0. Got: 1.5""")

    def test_weight_shape_index(self) -> None:  # CE-ERR-WEIGHT-SHAPE
        self.assertExpectedRaisesInline(RuntimeError, self.call("weight_shape_index"), """weight tensor should be defined either for all 4 classes or no classes but got weight tensor of shape: [3]""")

    def test_weight_matrix_index(self) -> None:  # CE-ERR-WEIGHT-SHAPE
        self.assertExpectedRaisesInline(RuntimeError, self.call("weight_matrix_index"), """weight tensor should be defined either for all 4 classes or no classes but got weight tensor of shape: [1, 4]""")

    def test_weight_shape_prob(self) -> None:  # CE-ERR-WEIGHT-SHAPE
        self.assertExpectedRaisesInline(RuntimeError, self.call("weight_shape_prob"), """cross_entropy: weight tensor should be defined either for all 4 classes or no classes but got weight tensor of shape: [3]""")

    def test_weight_shape_kdim(self) -> None:  # CE-ERR-WEIGHT-SHAPE
        self.assertExpectedRaisesInline(RuntimeError, self.call("weight_shape_kdim"), """weight tensor should be defined either for all or no classes""")

    def test_weight_dtype_index(self) -> None:  # CE-ERR-WEIGHT-DTYPE
        self.assertExpectedRaisesInline(RuntimeError, self.call("weight_dtype_index"), """expected scalar type Float but found Double""")

    def test_batch_mismatch(self) -> None:  # CE-ERR-BATCH
        self.assertExpectedRaisesInline(ValueError, self.call("batch_mismatch"), """Expected input batch_size (3) to match target batch_size (2).""")

    def test_kdim_target_shape(self) -> None:  # CE-ERR-KDIM-SHAPE
        self.assertExpectedRaisesInline(RuntimeError, self.call("kdim_target_shape"), """Expected target size [2, 4], got [2, 5]""")

    def test_kdim_target_shape_4d(self) -> None:  # CE-ERR-KDIM-SHAPE
        self.assertExpectedRaisesInline(RuntimeError, self.call("kdim_target_shape_4d"), """size mismatch (got input: [2, 3, 4, 5] , target: [2, 4, 6]""")

    def test_unbatched_target_size(self) -> None:  # CE-ERR-1D-TARGET
        self.assertExpectedRaisesInline(ValueError, self.call("unbatched_target_size"), """For 1D input, 1D target must have size 1, but got target size: 2""")

    def test_unbatched_vector_target_smoothing(self) -> None:  # CE-INDEX-SHAPE
        self.assertExpectedRaisesInline(RuntimeError, self.call("unbatched_vector_target_smoothing"), """output with shape [] doesn't match the broadcast shape [1]""")

    def test_target_rank(self) -> None:  # CE-ERR-TARGET-RANK
        self.assertExpectedRaisesInline(RuntimeError, self.call("target_rank"), """0D or 1D target tensor expected, multi-target not supported""")

    def test_input_integer(self) -> None:  # CE-ERR-INPUT-DTYPE
        if self.checked_another_way("input_integer", NotImplementedError):
            return
        self.assertExpectedRaisesInline(NotImplementedError, self.call("input_integer"), """"log_softmax_lastdim_kernel_impl" not implemented for 'Long'""")

    def test_input_0d(self) -> None:  # CE-ERR-0D
        self.assertExpectedRaisesInline(IndexError, self.call("input_0d"), """Dimension specified as 1 but tensor has no dimensions""")
