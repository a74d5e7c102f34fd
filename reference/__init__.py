"""The Python reference for ``torch.nn.functional.cross_entropy``.

A readable transcription of ``docs/semantics.md``: every step cites the rule it
implements.  It uses plain, differentiable tensor ops only (no ``F.cross_entropy``,
``F.nll_loss`` or ``torch._C`` loss ops), so autograd gives its gradients of any order
and it runs on any device.
"""

from reference.cross_entropy import cross_entropy

__all__ = ["cross_entropy"]
