"""The suite's own machinery: the registry, the divergence table, and that it can fail."""

import os
import pathlib
import re
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from conformance import divergences
from conformance.cases import Case
from conformance.impls import get_impl, known_impls
from conformance.samples import all_samples
from conformance.tests import test_backward as backward_family
from conformance.tests import test_forward as forward_family

ROOT = pathlib.Path(__file__).resolve().parents[1]
RULE = re.compile(r"\bCE-[A-Z0-9]+(?:-[A-Z0-9]+)*\b")


def spec_rules() -> set:
    return set(RULE.findall((ROOT / "docs" / "semantics.md").read_text()))


def test_unknown_impl_lists_known_ones():
    with pytest.raises(ValueError, match="known implementations: compile, patch, reference, torch"):
        get_impl("nope")
    assert known_impls() == ("compile", "patch", "reference", "torch")


def test_divergences_cite_rules_of_the_spec():
    for entry in divergences.DIVERGENCES:
        assert entry.rule in spec_rules(), entry
        assert entry.impl in known_impls(), entry
        assert entry.reason.strip(), entry


def test_every_cited_rule_exists_in_the_spec():
    rules = spec_rules()
    cited = set()
    for folder in ("reference", "conformance", "tests"):
        for path in (ROOT / folder).rglob("*.py"):
            cited |= {r for r in RULE.findall(path.read_text()) if not r.endswith(("-ERR", "-GRAD", "-INDEX", "-PROB"))}
    assert sorted(cited - rules) == []


def _spec(kind, **match):
    return next(s for s in all_samples() if s.kind == kind and all(getattr(s, k) == v for k, v in match.items()))


def _ignoring_smoothing(input, target, weight=None, size_average=None, ignore_index=-100, reduce=None,
                        reduction="mean", label_smoothing=0.0):
    return F.cross_entropy(input, target, weight, size_average, ignore_index, reduce, reduction)


def test_forward_family_catches_a_wrong_loss():
    spec = _spec("prob", label_smoothing=0.1, reduction="mean", weight=False, shape=(4, 5))
    forward_family.test_forward(Case("forward", torch.float64, spec), F.cross_entropy, "cpu")
    with pytest.raises(AssertionError, match="loss differs from the reference"):
        forward_family.test_forward(Case("forward", torch.float64, spec), _ignoring_smoothing, "cpu")


def _no_target_gradient(input, target, *args, **kwargs):
    return F.cross_entropy(input, target.detach(), *args, **kwargs) + 0 * target.sum()


def test_backward_family_catches_a_missing_target_gradient():
    spec = _spec("prob", reduction="sum", shape=(4, 5), weight=True, label_smoothing=0.0)
    backward_family.test_backward(Case("backward", torch.float32, spec), F.cross_entropy, "cpu")
    with pytest.raises(AssertionError, match="differs from the reference"):
        backward_family.test_backward(Case("backward", torch.float32, spec), _no_target_gradient, "cpu")


def test_cli_prints_what_it_graded_and_the_closing_line():
    child = subprocess.run([sys.executable, "-m", "conformance", "--impl", "reference", "--family", "errors", "-q"],
                           capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert child.returncode == 0, child.stdout[-3000:] + child.stderr[-3000:]
    lines = child.stdout.strip().splitlines()
    assert re.fullmatch(r"\d+ passed, 0 failed", lines[-1]), lines[-1]
    assert f"implementation=reference torch={torch.__version__}" in child.stdout
    assert "device=cpu" in child.stdout


def test_samples_are_the_same_every_time():
    """Every implementation must be graded on identical numbers."""
    for spec in all_samples():
        first, second = spec.build("cpu", torch.float32), spec.build("cpu", torch.float32)
        for a, b in ((first.input, second.input), (first.target, second.target)):
            torch.testing.assert_close(a, b, rtol=0, atol=0, equal_nan=True)


def test_every_family_module_is_run_by_the_cli():
    """A family file that ``python -m conformance`` does not list would never run in CI."""
    from conformance.__main__ import FAMILIES

    modules = sorted(p.stem.removeprefix("test_") for p in (ROOT / "conformance" / "tests").glob("test_*.py"))
    assert modules == sorted(FAMILIES)


def test_an_implementation_that_cannot_be_made_stops_the_run_once(tmp_path):
    """A missing build dependency is reported once, naming the package, not once per test."""
    # A None entry in sys.modules is how Python spells "this module cannot be imported".
    (tmp_path / "sitecustomize.py").write_text("import sys\nsys.modules['yaml'] = None\n")
    env = dict(os.environ, PYTHONPATH=f"{tmp_path}{os.pathsep}{ROOT}")
    child = subprocess.run([sys.executable, "-m", "conformance", "--impl", "patch", "--family", "forward", "-q"],
                           capture_output=True, text=True, cwd=ROOT, env=env, timeout=600)
    output = child.stdout + child.stderr
    assert child.returncode != 0, output[-3000:]
    # pytest reports the stop once on stdout (and repeats it on stderr); no test ran.
    assert child.stdout.count("implementation 'patch' is unavailable") == 1, output[-3000:]
    assert "pip install pyyaml" in child.stdout, output[-3000:]
    assert child.stdout.strip().splitlines()[-1] == "0 passed, 0 failed", output[-3000:]
