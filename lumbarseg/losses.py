"""Losses for partially annotated targets.

A target here is a boolean ``allowed`` map ``(B, K, *spatial)``: which classes each pixel may
belong to (see :func:`lumbarseg.datasets.allowed_classes`). Fully annotated pixels allow one
class; a pixel whose set does not annotate some classes allows those too. Cross-entropy
becomes the *marginal* likelihood of the allowed classes (Shi et al., "Marginal loss and
exclusion loss for partially supervised multi-organ segmentation", MedIA 2021), so a structure
that a set leaves unlabelled is never taught as background.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


def marginal_cross_entropy(logits: torch.Tensor, allowed: torch.Tensor, class_weights: torch.Tensor | None = None) -> torch.Tensor:
    """Mean over pixels of ``-log sum_{k allowed} softmax(logits)_k``; with ``class_weights``
    (K,), a pixel surely of class k counts ``class_weights[k]`` times (others once), so a rare
    tissue that looks like a common one is not given up for it."""
    log_total = torch.logsumexp(logits, dim=1)
    log_allowed = torch.logsumexp(logits.masked_fill(~allowed, float("-inf")), dim=1)
    loss = log_total - log_allowed
    if class_weights is not None:
        sure = allowed & (allowed.sum(dim=1, keepdim=True) == 1)
        shape = (1, -1) + (1,) * (logits.ndim - 2)
        weight = (sure * class_weights.to(logits.dtype).view(shape)).sum(dim=1)
        loss = loss * torch.where(sure.any(dim=1), weight, torch.ones_like(weight))
    return loss.mean()


def known_dice_loss(logits: torch.Tensor, allowed: torch.Tensor, smooth: float = 1.0,
                    groups: Sequence[Sequence[int]] = ()) -> torch.Tensor:
    """1 - soft Dice per foreground class, counted only where that class's truth is known
    (the pixel is surely it, or surely not it), averaged over classes present in the batch.

    ``groups``: class sets a partial label names (SPIDER's whole vertebra: body, articular or
    spinous process). Each adds the Dice of its summed probability, known where a pixel is surely
    in the group or surely out of it, present when a pixel is only known to be in the group:
    without it such a label teaches through the cross-entropy alone, too weakly to be learnt
    from a few studies that label no bone surely (issue 15)."""
    softmax = logits.softmax(dim=1)
    fg = allowed[:, 1:]
    sure = fg & (fg.sum(dim=1, keepdim=True) == 1)
    probs, truth, known = [softmax[:, 1:]], [sure], [~fg | sure]
    shape = (1, -1) + (1,) * (logits.ndim - 2)
    for group in groups:
        member = torch.zeros(logits.shape[1], dtype=torch.bool, device=logits.device)
        member[list(group)] = True
        inside = allowed.any(dim=1) & ~(allowed & ~member.view(shape)).any(dim=1)  # allows members only
        if (inside & (allowed.sum(dim=1) > 1)).any():  # a partial pixel of this group
            outside = ~(allowed & member.view(shape)).any(dim=1)
            probs.append(softmax[:, list(group)].sum(dim=1, keepdim=True))
            truth.append(inside[:, None])
            known.append((inside | outside)[:, None])
    probs, truth, known = torch.cat(probs, 1), torch.cat(truth, 1).float(), torch.cat(known, 1).float()
    dims = (0, *range(2, logits.ndim))  # batch and every spatial axis: 2D slices or 3D patches
    intersection = (probs * truth).sum(dims)
    denominator = (probs * known).sum(dims) + truth.sum(dims)
    dice = (2 * intersection + smooth) / (denominator + smooth)
    counted = truth.sum(dims) > 0
    if not counted.any():
        return logits.sum() * 0.0
    return 1.0 - dice[counted].mean()


class PartialDiceCELoss(nn.Module):
    """Marginal cross-entropy plus known-region Dice, MONAI DiceCELoss's shape for partial labels
    (``groups``: see :func:`known_dice_loss`)."""

    def __init__(self, *, dice_weight: float = 1.0, ce_weight: float = 1.0, class_weights: torch.Tensor | None = None,
                 groups: Sequence[Sequence[int]] = ()):
        super().__init__()
        self.dice_weight = dice_weight
        self.ce_weight = ce_weight
        self.class_weights = class_weights
        self.groups = tuple(tuple(g) for g in groups)

    def forward(self, logits: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        return (self.ce_weight * marginal_cross_entropy(logits, allowed, self.class_weights)
                + self.dice_weight * known_dice_loss(logits, allowed, groups=self.groups))
