"""The supervised loss of the paper's SFT baselines (STaR for self-correction, Pair-SFT).

Both fine-tune on the *attempt-2 tokens* given everything before them (masked
exactly like the RL loss), with one shared loss, :func:`sft_loss`.  Their
datasets are built from episodes in :mod:`selfcorrect.training.sft_data`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def sft_loss(logp: torch.Tensor, attempt_mask: torch.Tensor, trained: Sequence[bool], norm: int | None = None
             ) -> torch.Tensor:
    """Mean negative log-likelihood of the tokens of the ``trained`` attempts.

    ``logp``: ``[B, T]`` token log-probs; ``attempt_mask``: ``[B, K, T]``;
    ``trained``: ``K`` flags (STaR / Pair-SFT train attempt 2 only: ``[False, True]``).
    ``norm``: number of trained tokens in the whole step (default: this batch's), so
    micro-batches accumulate to the step's token mean.
    """
    flags = torch.tensor(list(trained), dtype=torch.bool, device=attempt_mask.device)        # [K]
    mask = (attempt_mask & flags[None, :, None]).any(1)                                       # [B, T]
    count = norm if norm is not None else int(mask.sum())
    return -(logp * mask).sum() / max(count, 1)
