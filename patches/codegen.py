"""Generate, from the series, the C++ that ATen's codegen would produce.

Inside a PyTorch build, torchgen turns the new ``native_functions.yaml``
entries into per-operator headers (``ATen/ops/<op>.h``, ``<op>_ops.h``,
``<op>_native.h``), the ``at::_ops`` dispatcher stubs and the kernel
registrations.  Out of tree we run the same torchgen functions (shipped in
the wheel) on the patched yaml, and add the registration of the new schemas
(``TORCH_LIBRARY_FRAGMENT(aten, ...)``) that a PyTorch build gets from its
generated ``RegisterSchema.cpp``.

The routing decision is not re-implemented: the lines the series adds to
``cross_entropy_loss_symint`` in ``LossNLL.cpp`` are pasted verbatim into a
wrapper op ``fused_ce_oot::cross_entropy_loss`` whose fallback is the
installed ``at::cross_entropy_loss_symint``.

In a PyTorch build those lines run inside ``aten::cross_entropy_loss``, so the
autocast policy upstream registers for that op applies before them.  The
wrapper op gets the same policy: ``autocast_policies()`` reads which Autocast
keys the installed ``aten::cross_entropy_loss`` has (v2.13: ``AutocastCPU``
with ``fp32`` from ``KERNEL_CPU(cross_entropy_loss, fp32)`` in
``aten/src/ATen/autocast_mode.cpp``; CUDA lists it nowhere, so AutocastCUDA
falls through there and here) and the generated C++ registers ATen's own
``at::autocast::WrapFunction`` for them, so casting, the cast cache and
eligibility rules are ATen's rather than a re-implementation.
"""

from __future__ import annotations

import dataclasses
import re
import tempfile
from pathlib import Path

from . import series, workspace

NATIVE_YAML = "aten/src/ATen/native/native_functions.yaml"
DERIVATIVES_YAML = "tools/autograd/derivatives.yaml"
META_PY = "torch/_meta_registrations.py"
AUTOCAST_H = "aten/src/ATen/autocast_mode.h"
LOSS_NLL = "aten/src/ATen/native/LossNLL.cpp"
ROUTING_NAMESPACE = "fused_ce_oot"
# Upstream (v2.13 autocast_mode.cpp) policy for aten::cross_entropy_loss, per
# Autocast dispatch key; cross-checked against the installed dispatcher by
# autocast_policies() and by patches/tests.
AUTOCAST_POLICIES = {"AutocastCPU": ("fp32", "c10::DeviceType::CPU")}
_FUNC_LINE = re.compile(r"^- func: ([A-Za-z0-9_.]+)\(", re.M)


def patched_text(upstream_path: str) -> str:
    """The installed wheel's copy of an upstream file with the series applied."""
    source = workspace.wheel_source(upstream_path)
    if source is None or not source.exists():
        raise series.SeriesError(f"the installed wheel has no copy of {upstream_path}")
    text = source.read_text()
    for diff in series.all_diffs():
        if diff.path == upstream_path and not diff.is_new:
            text = series.apply_hunks(text, diff)
    return text


def tags_yaml() -> Path:
    import torchgen

    return Path(torchgen.__file__).resolve().parent / "packaged/ATen/native/tags.yaml"


@dataclasses.dataclass
class ParsedYaml:
    """The patched native_functions.yaml as torchgen sees it."""

    result: object  # torchgen.gen.ParsedYaml
    new_names: list[str]  # ops the series adds
    path: Path  # where the patched yaml was written


def parse_patched_native_yaml(directory: Path) -> ParsedYaml:
    """Write the patched yaml to directory and parse it with torchgen."""
    from torchgen.gen import parse_native_yaml

    base = workspace.wheel_source(NATIVE_YAML).read_text()
    text = patched_text(NATIVE_YAML)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "native_functions.yaml"
    path.write_text(text)
    before = set(_FUNC_LINE.findall(base))
    new_names = [name for name in _FUNC_LINE.findall(text) if name not in before]
    result = parse_native_yaml(str(path), str(tags_yaml()), skip_native_fns_gen=False)
    return ParsedYaml(result, new_names, path)


def new_native_functions(parsed: ParsedYaml) -> list:
    by_name = {str(f.func.name): f for f in parsed.result.native_functions}
    return [by_name[name] for name in parsed.new_names]


def native_function(parsed: ParsedYaml, name: str):
    for f in parsed.result.native_functions:
        if str(f.func.name) == name:
            return f
    raise KeyError(name)


def kernel_keys(parsed: ParsedYaml, f) -> dict[str, str]:
    """Dispatch key -> native kernel name for one op."""
    keys: dict[str, str] = {}
    for key, index in parsed.result.backend_indices.items():
        if index.has_kernel(f):
            keys[str(key)] = index.get_kernel(f).kernel
    return keys


def routing_block() -> str:
    """The lines the series adds to cross_entropy_loss_symint (LossNLL.cpp)."""
    blocks = [
        block
        for diff in series.all_diffs()
        if diff.path == LOSS_NLL
        for block in diff.added_blocks()
        if "use_fused_cross_entropy(" in block
    ]
    if len(blocks) != 1:
        raise series.SeriesError(
            f"expected one added block calling use_fused_cross_entropy in {LOSS_NLL}, found {len(blocks)}"
        )
    return blocks[0]


def installed_kernel_keys(op: str = "aten::cross_entropy_loss") -> set[str]:
    """Dispatch keys (alias keys without their "[alias]") with a kernel for op."""
    import torch

    keys = set()
    for line in torch._C._dispatch_dump(op).splitlines()[4:]:
        key = line.split(":", 1)[0].strip()
        if key:
            keys.add(key.removesuffix("[alias]"))
    return keys


def installed_autocast_keys(op: str = "aten::cross_entropy_loss") -> set[str]:
    """Autocast dispatch keys with a kernel for op in the installed torch."""
    return {key for key in installed_kernel_keys(op) if key.startswith("Autocast")}


def autocast_policies() -> dict[str, tuple[str, str]]:
    """Autocast key -> (CastPolicy, DeviceType) to register for the routing op.

    Fails when the installed torch registers a policy for cross_entropy_loss
    on a key this table does not know, rather than silently dropping it.
    """
    installed = installed_autocast_keys()
    unknown = installed - set(AUTOCAST_POLICIES)
    if unknown:
        raise series.SeriesError(
            f"aten::cross_entropy_loss has autocast kernels for {sorted(unknown)} that "
            "patches/codegen.py does not mirror; add their policy to AUTOCAST_POLICIES"
        )
    return {key: AUTOCAST_POLICIES[key] for key in sorted(installed)}


def autocast_fp32_ops(new_names: set[str]) -> list[str]:
    """New ops the series lists in AT_FORALL_FP32 (autocast_mode.h).

    In-tree that list becomes KERNEL_CUDA(op, fp32) (and the same for the
    other device autocast keys that expand it); out of tree the generated
    registration gives those ops the fp32 policy on AutocastCUDA.
    """
    if AUTOCAST_H not in series.touched_paths():
        return []
    text = patched_text(AUTOCAST_H)
    start = text.index("#define AT_FORALL_FP32(_)")
    block = text[start:text.index("\n\n", start)]
    listed = re.findall(r"_\(([A-Za-z0-9_]+)\)", block)
    return [name for name in listed if name in new_names]


def _header(lines: list[str]) -> str:
    return "#pragma once\n// Generated by patches/codegen.py from the patch series; do not edit.\n" + "\n".join(lines) + "\n"


def generate(directory: Path, backends: set[str]) -> list[Path]:
    """Write generated headers under directory/include and sources under directory.

    backends: dispatch keys whose kernels are compiled (CPU, and CUDA when the
    .cu files are built).  Returns the generated .cpp files.
    """
    from torchgen.dest import compute_native_function_declaration
    from torchgen.api.types import NativeSignature
    from torchgen.gen import ComputeFunction, ComputeOperators
    from torchgen.utils import Target

    parsed = parse_patched_native_yaml(directory / "yaml")
    functions = new_native_functions(parsed)
    if not functions:
        raise series.SeriesError(f"the series adds no operator to {NATIVE_YAML}")
    ops_dir = directory / "include/ATen/ops"
    ops_dir.mkdir(parents=True, exist_ok=True)

    for f in functions:
        name = str(f.func.name.name)
        declarations: list[str] = []
        for key, index in parsed.result.backend_indices.items():
            if index.has_kernel(f):
                for declaration in compute_native_function_declaration(f, index):
                    if declaration not in declarations:
                        declarations.append(declaration)
        (ops_dir / f"{name}_native.h").write_text(
            _header(
                [
                    "#include <ATen/core/Tensor.h>",
                    "#include <c10/core/Scalar.h>",
                    "#include <optional>",
                    "#include <tuple>",
                    "namespace at {",
                    "namespace native {",
                    *declarations,
                    "} // namespace native",
                    "} // namespace at",
                ]
            )
        )
        (ops_dir / f"{name}_ops.h").write_text(
            _header(
                [
                    "#include <ATen/core/Tensor.h>",
                    "#include <ATen/core/ATen_fwd.h>",
                    "#include <optional>",
                    "#include <tuple>",
                    "namespace at {",
                    "namespace _ops {",
                    ComputeOperators(Target.DECLARATION, static_dispatch_backend_indices=[])(f),
                    "} // namespace _ops",
                    "} // namespace at",
                ]
            )
        )
        (ops_dir / f"{name}.h").write_text(
            _header(
                [
                    "#include <ATen/core/Tensor.h>",
                    f"#include <ATen/ops/{name}_ops.h>",
                    "namespace at {",
                    ComputeFunction()(f),
                    "} // namespace at",
                ]
            )
        )

    operators = ["// Generated by patches/codegen.py from the patch series; do not edit.",
                 "#include <ATen/core/dispatch/Dispatcher.h>",
                 "#include <ATen/core/op_registration/adaption.h>",
                 "#include <torch/csrc/autograd/autograd_not_implemented_fallback.h>",
                 "#include <torch/library.h>"]
    for f in functions:
        name = str(f.func.name.name)
        operators += [f"#include <ATen/ops/{name}_ops.h>", f"#include <ATen/ops/{name}_native.h>"]
    operators += ["#include <ATen/autocast_mode.h>",
                  "#include <ATen/ops/cross_entropy_loss.h>",
                  "#include <ATen/native/FusedCrossEntropy.h>"]
    for f in functions:
        operators.append(f"#include <ATen/ops/{f.func.name.name}.h>")
    operators += ["", "namespace at {", "namespace _ops {"]
    for f in functions:
        operators.append(ComputeOperators(Target.DEFINITION, static_dispatch_backend_indices=[])(f))
    operators += ["} // namespace _ops", "} // namespace at", ""]

    # The routing: cross_entropy_loss_symint's new lines, then the stock op.
    stock = native_function(parsed, "cross_entropy_loss")
    signature = NativeSignature(stock.func, prefix="", symint=True)
    call_args = ", ".join(
        f"std::move({a.name})" if "SymInt" in a.type else a.name for a in signature.arguments()
    )
    operators += [
        "namespace at::native {",
        "// Body: the lines the series adds to cross_entropy_loss_symint in LossNLL.cpp.",
        signature.defn(name="patched_cross_entropy_loss_symint") + " {",
        routing_block().rstrip("\n"),
        f"  return at::cross_entropy_loss_symint({call_args});",
        "}",
        "} // namespace at::native",
        "",
        "TORCH_LIBRARY_FRAGMENT(aten, m) {",
    ]
    for f in functions:
        operators.append(f'  m.def("{f.func}");')
    operators.append("}")
    by_key: dict[str, list[tuple[str, str]]] = {}
    for f in functions:
        for key, kernel in kernel_keys(parsed, f).items():
            by_key.setdefault(key, []).append((str(f.func.name), kernel))
    for key, entries in by_key.items():
        if key not in backends and key not in ("CompositeImplicitAutograd", "CompositeExplicitAutograd"):
            continue
        operators.append(f"TORCH_LIBRARY_IMPL(aten, {key}, m) {{")
        for op_name, kernel in entries:
            operators.append(f'  m.impl("{op_name}", TORCH_FN(at::native::{kernel}));')
        operators.append("}")
    # torchgen registers autogradNotImplementedFallback() for an op with kernels
    # and no derivatives.yaml entry ("NOTE: [ Registering AutogradNotImplemented
    # boxed kernel ]"): forward runs, backward raises "derivative for ... is not
    # implemented".  The Python autograd of autograd_gen covers the ops with one.
    with_derivatives = set(derivative_infos())
    without = [str(f.func.name) for f in functions
               if str(f.func.name) not in with_derivatives
               and "CompositeImplicitAutograd" not in kernel_keys(parsed, f)
               and any(r.type.is_tensor_like() for r in f.func.returns)]
    if without:
        operators.append("TORCH_LIBRARY_IMPL(aten, Autograd, m) {")
        for op_name in without:
            operators.append(f'  m.impl("{op_name}", torch::autograd::autogradNotImplementedFallback());')
        operators.append("}")
    operators += [
        f"TORCH_LIBRARY({ROUTING_NAMESPACE}, m) {{",
        f'  m.def("{stock.func}");',
        "}",
        f"TORCH_LIBRARY_IMPL({ROUTING_NAMESPACE}, CompositeImplicitAutograd, m) {{",
        '  m.impl("cross_entropy_loss", TORCH_FN(at::native::patched_cross_entropy_loss_symint));',
        "}",
        "",
    ]
    if "FuncTorchBatchedDecomposition" in installed_kernel_keys():
        # functorch decomposes aten::cross_entropy_loss under vmap
        # (OP_DECOMPOSE in BatchRulesDecompositions.cpp), so in a patched
        # build the routing runs on the batched tensors; without this the
        # wrapper op would hit the per-sample batching fallback instead.
        operators += [
            f"TORCH_LIBRARY_IMPL({ROUTING_NAMESPACE}, FuncTorchBatchedDecomposition, m) {{",
            '  m.impl("cross_entropy_loss", TORCH_FN(at::native::patched_cross_entropy_loss_symint));',
            "}",
            "",
        ]
    policies = autocast_policies()
    if policies:
        # Autocast redispatches to the routing op below the Autocast key, as
        # ATEN_FN(cross_entropy_loss) does for the stock op.
        operators += [
            "namespace at::native {",
            signature.defn(name="redispatch_patched_cross_entropy_loss") + " {",
            "  static auto op = c10::Dispatcher::singleton()",
            f'      .findSchemaOrThrow("{ROUTING_NAMESPACE}::cross_entropy_loss", "")',
            "      .typed<decltype(at::_ops::cross_entropy_loss::call)>();",
            f"  return op.call({call_args});",
            "}",
            "} // namespace at::native",
        ]
        for key, (policy, device) in policies.items():
            operators += [
                f"TORCH_LIBRARY_IMPL({ROUTING_NAMESPACE}, {key}, m) {{",
                '  m.impl("cross_entropy_loss",',
                "         &at::autocast::WrapFunction<",
                f"             at::autocast::CastPolicy::{policy}, {device},",
                "             decltype(at::_ops::cross_entropy_loss::call),",
                "             decltype(at::native::redispatch_patched_cross_entropy_loss),",
                "             &at::native::redispatch_patched_cross_entropy_loss>::type::call);",
                "}",
            ]
        operators.append("")
    fp32_ops = autocast_fp32_ops({str(f.func.name.name) for f in functions})
    if fp32_ops:
        # KERNEL_CUDA(op, fp32) as autocast_mode.cpp expands AT_FORALL_FP32.
        operators.append("TORCH_LIBRARY_IMPL(aten, AutocastCUDA, m) {")
        for name in fp32_ops:
            operators += [
                f'  m.impl("{name}",',
                "         &at::autocast::WrapFunction<",
                "             at::autocast::CastPolicy::fp32, c10::DeviceType::CUDA,",
                f"             decltype(at::_ops::{name}::call), decltype(at::_ops::{name}::call),",
                f"             &at::_ops::{name}::call>::type::call);",
            ]
        operators += ["}", ""]
    registration = directory / "FusedCrossEntropyRegistration.cpp"
    registration.write_text("\n".join(operators))
    return [registration]


def meta_source() -> str:
    """The Python the series adds to torch/_meta_registrations.py."""
    import difflib

    base = workspace.wheel_source(META_PY).read_text().splitlines()
    patched = patched_text(META_PY).splitlines()
    added: list[str] = []
    matcher = difflib.SequenceMatcher(a=base, b=patched, autojunk=False)
    for tag, _, _, j1, j2 in matcher.get_opcodes():
        if tag in ("insert", "replace"):
            added.extend(patched[j1:j2])
            added.append("")
    return "\n".join(added) + "\n"


def derivative_infos() -> dict:
    """derivatives.yaml entries of the new ops: op name -> DifferentiabilityInfo."""
    from torchgen.packaged.autograd.load_derivatives import load_derivatives

    with tempfile.TemporaryDirectory() as tmp:
        parsed = parse_patched_native_yaml(Path(tmp))
        derivatives = Path(tmp) / "derivatives.yaml"
        derivatives.write_text(patched_text(DERIVATIVES_YAML))
        infos, _ = load_derivatives(str(derivatives), str(parsed.path), str(tags_yaml()))
        result = {}
        for schema, by_key in infos.items():
            if str(schema.name) in parsed.new_names:
                result[str(schema.name)] = by_key["Default"]
        return result
