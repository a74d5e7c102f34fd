"""Deliberately wrong ``cross_entropy`` implementations for the distributed machinery's tests."""

import torch
import torch.nn.functional as F


def raises_on_prob_wrong_sum(input: torch.Tensor, target: torch.Tensor, *args, **kwargs) -> torch.Tensor:
    """Raises for probability targets; 1% too large for ``reduction="sum"``; stock otherwise."""
    if target.is_floating_point():
        raise ValueError("fake: probability targets are not supported")
    loss = F.cross_entropy(input, target, *args, **kwargs)
    return loss * 1.01 if kwargs.get("reduction") == "sum" else loss


def raises_on_rank0_for_prob(input: torch.Tensor, target: torch.Tensor, *args, **kwargs) -> torch.Tensor:
    """Raises on rank 0 only, for probability targets (the ranks disagree); stock otherwise."""
    import torch.distributed as dist

    if target.is_floating_point() and dist.get_rank() == 0:
        raise ValueError("fake: rank 0 refuses probability targets")
    return F.cross_entropy(input, target, *args, **kwargs)
