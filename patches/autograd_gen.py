"""Autograd for the new ops, generated from the series' derivatives.yaml.

In a PyTorch build, torchgen turns each derivatives.yaml entry into a C++
autograd node.  Out of tree we load the patched derivatives.yaml with the
wheel's torchgen and turn each entry of a new op into a
``torch.autograd.Function`` whose ``backward`` and ``jvp`` evaluate the
entry's formulas, which are plain calls of aten ops and so read as Python:
``_fused_cross_entropy_backward(grad, self, ..., grad_input_mask)`` becomes
``torch.ops.aten._fused_cross_entropy_backward(grad, self, ...)`` with the
variables bound as torchgen binds them (``grad``, ``grads``,
``grad_input_mask``, outputs by name or ``resultN``, ``<input>_t`` and
``<input>_p`` for forward AD).  The Function is registered as the op's
Autograd kernel, so C++ callers (the routing) get it too.

Where torchgen's generated code raises, so does this: an op without a
forward-AD formula raises torchgen's ``NotImplementedError`` ("Trying to use
forward AD with <op> that does not support it because it has not been
implemented yet. ...") as soon as a differentiable input carries a tangent,
instead of returning no tangent (which forward-over-reverse would read as a
zero derivative); and an input with no formula that requires grad raises
``check_no_requires_grad``'s ``RuntimeError``.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any

import torch
from torch._functorch.autograd_function import enable_single_level_autograd_function
from torch.autograd.forward_ad import _set_fwd_grad_enabled


class _CallerModes(threading.local):
    """(grad mode, forward grad mode) at each active kernel call, innermost last."""

    def __init__(self) -> None:
        self.stack: list[tuple[bool, bool]] = []


_CALLER_MODES = _CallerModes()


class FormulaError(Exception):
    """A derivatives.yaml formula is not a plain call we can evaluate."""


# torchgen's FW_DERIVATIVE_FORBID_TEMPLATE with emit_forbid_fw_derivatives()'s
# message (torchgen/packaged/autograd/gen_variable_type.py).
FORWARD_AD_NOT_IMPLEMENTED = (
    "Trying to use forward AD with {name} that does not support it because it has not been "
    "implemented yet.\nPlease file an issue to PyTorch at "
    "https://github.com/pytorch/pytorch/issues/new?template=feature-request.yml "
    "so that we can prioritize its implementation."
)
# check_no_requires_grad (torch/csrc/autograd/VariableTypeUtils.h).
NO_REQUIRES_GRAD = (
    "The function '{name}' is not differentiable with respect to argument '{arg}'. "
    "This input cannot have requires_grad True."
)


def not_implemented(name: str, reason: str = "") -> None:
    """derivatives.yaml's ``not_implemented(...)`` (FunctionsManual.cpp)."""
    message = f"the derivative for '{name}' is not implemented."
    raise NotImplementedError(f"{message} {reason}" if reason else message)


class _Scope(Mapping):
    """Names visible to a formula: its variables, then aten ops by name."""

    def __init__(self, variables: dict[str, Any]):
        self.variables = variables

    def __getitem__(self, name: str) -> Any:
        if name in self.variables:
            return self.variables[name]
        if name == "not_implemented":
            return not_implemented
        if name == _GRAD_MODE_IS_ENABLED:
            return torch.is_grad_enabled
        if name.startswith("__"):
            raise KeyError(name)
        # C++ formulas call the SymInt overloads (foo_symint); the Python op
        # takes SymInts as they are.
        if name.endswith("_symint"):
            name = name[: -len("_symint")]
        try:
            return getattr(torch.ops.aten, name)
        except (AttributeError, RuntimeError) as error:
            raise KeyError(name) from error

    def __iter__(self):
        return iter(self.variables)

    def __len__(self) -> int:
        return len(self.variables)


# C++ idioms of derivatives.yaml formulas and their Python spelling.  Only
# these are translated; any other C++ makes the formula a FormulaError.
_GRAD_MODE_IS_ENABLED = "grad_mode_is_enabled"
_CPP_IDIOMS = {"GradMode::is_enabled()": f"{_GRAD_MODE_IS_ENABLED}()"}


def split_conditional(formula: str) -> tuple[str, str, str] | None:
    """``cond ? a : b`` at the top level of formula, as (cond, a, b), or None."""
    depth = 0
    question = None
    for index, char in enumerate(formula):
        if char in "([{":
            depth += 1
        elif char in ")]}":
            depth -= 1
        elif depth == 0 and char == "?" and question is None:
            question = index
        elif depth == 0 and char == ":" and question is not None:
            if formula[index - 1 : index + 1] == "::" or formula[index : index + 2] == "::":
                continue
            return formula[:question], formula[question + 1 : index], formula[index + 1 :]
    return None


def to_python(formula: str) -> str:
    """A formula as a Python expression: C++ conditionals become ``a if cond else b``.

    Why: upstream switches between a fused backward and a differentiable one
    with ``GradMode::is_enabled() ? ... : ...`` (``_fused_rms_norm``); the
    branches themselves are plain calls of aten ops.
    """
    for cpp, python in _CPP_IDIOMS.items():
        formula = formula.replace(cpp, python)
    parts = split_conditional(formula)
    if parts is None:
        return formula.strip()
    condition, if_true, if_false = (to_python(part) for part in parts)
    return f"({if_true}) if ({condition}) else ({if_false})"


def _compile(formula: str, where: str):
    try:
        return compile(to_python(formula), f"<derivatives.yaml: {where}>", "eval")
    except SyntaxError as error:
        raise FormulaError(
            f"{where}: formula '{formula}' is not a plain call that can be evaluated out of tree"
        ) from error


def _evaluate(code, variables: dict[str, Any]) -> Any:
    return eval(code, {"__builtins__": {}}, _Scope(variables))


def make_autograd_function(info) -> tuple[str, type[torch.autograd.Function]]:
    """Build the autograd.Function for one DifferentiabilityInfo."""
    schema = info.func.func
    op_name = str(schema.name)
    overload = schema.name.overload_name or "default"
    op = getattr(getattr(torch.ops.aten, str(schema.name.name)), overload)
    arguments = list(schema.arguments.flat_all)
    argument_names = [a.name for a in arguments]
    tensor_inputs = [a.name for a in arguments if a.type.is_tensor_like()]
    # torchgen's differentiable inputs: tensors not declared non_differentiable.
    differentiable_inputs = [n for n in tensor_inputs if n not in info.non_differentiable_arg_names]
    with_formula = {n for d in info.derivatives for n in d.var_names}
    # Inputs torchgen guards with check_no_requires_grad ("output" is exempt there).
    without_formula = [n for n in differentiable_inputs if n not in with_formula and n != "output"]
    return_names = [r.name or f"result{i}" for i, r in enumerate(schema.returns)]
    output_differentiability = info.output_differentiability or [True] * len(schema.returns)
    differentiable_outputs = [i for i, d in enumerate(output_differentiability) if d]
    backward_formulas = [
        (list(d.var_names), _compile(d.formula, f"{op_name} {', '.join(d.var_names)}"))
        for d in info.derivatives
    ]
    forward_formulas = [
        (list(d.var_names), _compile(d.formula, f"{op_name} {', '.join(d.var_names)} (forward)"))
        for d in info.forward_derivatives
    ]

    def bind(ctx, tensors) -> dict[str, Any]:
        variables = dict(ctx.scalars)
        for name, value in zip(ctx.tensor_names, tensors):
            variables[name] = value
        for index, name in enumerate(return_names):
            variables[f"result{index}"] = variables[name]
        if len(return_names) == 1:
            variables["result"] = variables[return_names[0]]
        return variables

    def forward(*args):
        # Function.apply turned grad and forward grad off for forward(); a
        # C++ VariableType kernel does not, and under functorch the call
        # below re-enters the dispatcher for the next transform level (a
        # jvp level under a grad level), which needs the modes the caller
        # had or its tangents are silently dropped.
        if _CALLER_MODES.stack:
            grad_mode, fwd_grad_mode = _CALLER_MODES.stack[-1]
        else:  # applied other than through the registered kernel
            grad_mode, fwd_grad_mode = torch.is_grad_enabled(), torch._C._is_fwd_grad_enabled()
        with torch.autograd.grad_mode.set_grad_enabled(grad_mode), _set_fwd_grad_enabled(fwd_grad_mode), \
                torch._C._AutoDispatchBelowAutograd():
            return op(*args)

    def setup_context(ctx, inputs, output):
        outputs = output if isinstance(output, tuple) else (output,)
        ctx.scalars = {}
        names: list[str] = []
        tensors: list[Any] = []
        for name, value in zip(argument_names, inputs):
            if name in tensor_inputs:
                names.append(name)
                tensors.append(value)
            else:
                ctx.scalars[name] = value
        names += return_names
        tensors += list(outputs)
        ctx.tensor_names = names
        ctx.save_for_backward(*tensors)
        ctx.save_for_forward(*tensors)
        ctx.set_materialize_grads(False)
        non_differentiable = [outputs[i] for i, d in enumerate(output_differentiability) if not d]
        if non_differentiable:
            ctx.mark_non_differentiable(*non_differentiable)

    def backward(ctx, *grads):
        if all(grad is None for grad in grads):
            return (None,) * len(argument_names)
        variables = bind(ctx, ctx.saved_tensors)
        variables["grads"] = list(grads)
        if len(differentiable_outputs) == 1:
            variables["grad"] = grads[differentiable_outputs[0]]
        result: list[Any] = [None] * len(argument_names)
        for var_names, code in backward_formulas:
            mask = [bool(ctx.needs_input_grad[argument_names.index(n)]) for n in var_names]
            if not any(mask):
                continue
            variables["grad_input_mask"] = mask
            value = _evaluate(code, variables)
            values = value if len(var_names) > 1 else (value,)
            for name, wanted, grad in zip(var_names, mask, values):
                if wanted:
                    result[argument_names.index(name)] = grad
        return tuple(result)

    def jvp(ctx, *tangents):
        has_tangent = {
            name for name, tangent in zip(argument_names, tangents)
            if name in differentiable_inputs and tangent is not None
        }
        if not forward_formulas:
            if has_tangent:
                raise NotImplementedError(FORWARD_AD_NOT_IMPLEMENTED.format(name=op_name))
            # Only non-differentiable inputs carry tangents: torchgen sets no
            # tangent; a Function must return one, so it is zero (see below).
            outputs = bind(ctx, ctx.saved_tensors)
            zeros = [
                torch.zeros_like(outputs[name])
                if differentiable and isinstance(outputs[name], torch.Tensor)
                and (outputs[name].is_floating_point() or outputs[name].is_complex()) else None
                for name, differentiable in zip(return_names, output_differentiability)
            ]
            return tuple(zeros) if len(zeros) > 1 else zeros[0]
        saved = ctx.saved_tensors
        variables = bind(ctx, saved)
        for name, tangent in zip(argument_names, tangents):
            if name not in tensor_inputs:
                continue
            primal = variables[name]
            variables[f"{name}_p"] = primal
            if primal is None:
                variables[f"{name}_t"] = None
            else:
                variables[f"{name}_t"] = tangent if tangent is not None else torch.zeros_like(primal)
        out: list[Any] = [None] * len(return_names)
        for var_names, code in forward_formulas:
            # torchgen skips a formula none of whose tangents is defined and
            # leaves the output without one; a Function's jvp must return a
            # tangent for every differentiable output (None trips an internal
            # assert in set_fw_grad), so the formula runs on zero tangents.
            value = _evaluate(code, variables)
            values = value if len(var_names) > 1 else (value,)
            for name, tangent in zip(var_names, values):
                index = return_names.index(name) if name in return_names else int(name[len("result"):] or 0)
                out[index] = tangent
        return tuple(out) if len(out) > 1 else out[0]

    # Built with type() so that the node class autograd derives from the
    # name reads "<op>_autogradBackward" in grad_fn.
    generated = type(
        f"{schema.name.name}_autograd",
        (torch.autograd.Function,),
        {
            "forward": staticmethod(forward),
            "setup_context": staticmethod(setup_context),
            "backward": staticmethod(backward),
            "jvp": staticmethod(jvp),
        },
    )
    generated.without_formula = [argument_names.index(n) for n in without_formula]
    generated.with_formula = [argument_names.index(n) for n in with_formula if n in argument_names]
    generated.argument_names = argument_names
    return op_name, generated


def _check_no_requires_grad(op_name: str, function, args: tuple) -> None:
    """torchgen's check: with grad mode on and a differentiable input requiring
    grad, an input without a formula must not require grad."""
    if not torch.is_grad_enabled():
        return
    def requires(value) -> bool:
        return isinstance(value, torch.Tensor) and value.requires_grad
    if not any(requires(args[i]) for i in function.with_formula if i < len(args)):
        return
    for index in function.without_formula:
        if index < len(args) and requires(args[index]):
            name = function.argument_names[index]
            raise RuntimeError(NO_REQUIRES_GRAD.format(name=op_name, arg=name))


def register(library: torch.library.Library, infos: dict) -> list[str]:
    """Register every generated Function as the Autograd kernel of its op."""
    registered = []
    for info in infos.values():
        op_name, function = make_autograd_function(info)

        def kernel(*args, _function=function, _name=op_name):
            _check_no_requires_grad(_name, _function, args)
            # The dispatcher already went through functorch's layers to get
            # here, so apply the Function at this level (autograd.Function's
            # own functorch detour would dispatch the call a second time).
            _CALLER_MODES.stack.append((torch.is_grad_enabled(), torch._C._is_fwd_grad_enabled()))
            try:
                with enable_single_level_autograd_function():
                    return super(torch.autograd.Function, _function).apply(*args)
            finally:
                _CALLER_MODES.stack.pop()

        library.impl(op_name, kernel, "Autograd")
        registered.append(op_name)
    return registered
