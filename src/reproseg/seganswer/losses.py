"""Stage-1 loss: next-token cross-entropy + SAM-2.1-style segmentation losses (paper Sec. 3.1).

SAM 2.1's loss configuration: sigmoid focal loss and dice loss on the mask logits, a
mean-absolute-error (L1) loss between the predicted IoU and the IoU the predicted mask
actually has, and a binary cross-entropy on the object-presence logit. The SAM 2 rules
carried over (public facts of SAM 2's training code, written anew here):
- focal: alpha 0.25, gamma 2, averaged over pixels per mask, then over masks;
- dice: 1 - (2 * sum(p*t) + 1) / (sum(p) + sum(t) + 1) with p = sigmoid(logits);
- the actual IoU uses the mask thresholded at logit 0;
- mask, dice and IoU terms count only masks whose target has an object; the object
  term counts all (target = "the GT mask is non-empty").
Default weights are SAM 2.1's (mask focal 20, dice 1, IoU 1, object 1); the paper gives
none, so they are arguments; the cross-entropy weight defaults to 1 (LISA's choice).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100


def sigmoid_focal_loss(logits: torch.Tensor, targets: torch.Tensor, alpha: float = 0.25, gamma: float = 2.0
                       ) -> torch.Tensor:
    """Per-mask focal loss (mean over pixels): logits/targets (S, ...) -> (S,)."""
    logits = logits.flatten(1).float()
    targets = targets.flatten(1).float()
    p = torch.sigmoid(logits)
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = p * targets + (1 - p) * (1 - targets)
    loss = ce * (1 - p_t) ** gamma
    if alpha >= 0:
        loss = (alpha * targets + (1 - alpha) * (1 - targets)) * loss
    return loss.mean(dim=1)


def dice_loss(logits: torch.Tensor, targets: torch.Tensor, smooth: float = 1.0) -> torch.Tensor:
    """Per-mask dice loss on sigmoid probabilities: (S, ...) -> (S,)."""
    p = torch.sigmoid(logits.flatten(1).float())
    t = targets.flatten(1).float()
    num = 2 * (p * t).sum(1)
    den = p.sum(1) + t.sum(1)
    return 1 - (num + smooth) / (den + smooth)


def actual_iou(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """IoU of (logits > 0) with the target, per mask; 1.0 when both are empty. No gradient."""
    pred = logits.flatten(1) > 0
    t = targets.flatten(1) > 0.5
    inter = (pred & t).sum(1).float()
    union = (pred | t).sum(1).float()
    return torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))


def iou_mae_loss(iou_pred: torch.Tensor, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """|predicted IoU - actual IoU| per mask: (S,)."""
    return (iou_pred.reshape(-1).float() - actual_iou(logits, targets).detach()).abs()


def object_bce_loss(object_logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """BCE of the object-presence logit against "the target mask is non-empty": (S,)."""
    has_obj = (targets.flatten(1) > 0.5).any(1).float()
    return F.binary_cross_entropy_with_logits(object_logits.reshape(-1).float(), has_obj, reduction="none")


def next_token_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of logits[:, t] predicting labels[:, t+1]; IGNORE_INDEX skipped."""
    shift_logits = logits[:, :-1].reshape(-1, logits.shape[-1]).float()
    shift_labels = labels[:, 1:].reshape(-1)
    if (shift_labels != IGNORE_INDEX).sum() == 0:
        return logits.sum() * 0.0
    return F.cross_entropy(shift_logits, shift_labels, ignore_index=IGNORE_INDEX)


@dataclass
class Stage1LossWeights:
    ce: float = 1.0
    focal: float = 20.0
    dice: float = 1.0
    iou: float = 1.0
    obj: float = 1.0
    focal_alpha: float = 0.25
    focal_gamma: float = 2.0


def segmentation_losses(mask_logits: torch.Tensor, targets: torch.Tensor, iou_pred: torch.Tensor,
                        object_logits: torch.Tensor, w: Stage1LossWeights) -> dict[str, torch.Tensor]:
    """The four SAM terms, each averaged over masks (mask terms over masks with an object)."""
    has_obj = (targets.flatten(1) > 0.5).any(1).float()
    n_obj = has_obj.sum().clamp(min=1.0)
    focal = (sigmoid_focal_loss(mask_logits, targets, w.focal_alpha, w.focal_gamma) * has_obj).sum() / n_obj
    dice = (dice_loss(mask_logits, targets) * has_obj).sum() / n_obj
    iou = (iou_mae_loss(iou_pred, mask_logits, targets) * has_obj).sum() / n_obj
    obj = object_bce_loss(object_logits, targets).mean()
    return {"focal": focal, "dice": dice, "iou": iou, "obj": obj}


def stage1_loss(logits: torch.Tensor, labels: torch.Tensor, mask_logits: torch.Tensor | None,
                targets: torch.Tensor | None, iou_pred: torch.Tensor | None, object_logits: torch.Tensor | None,
                weights: Stage1LossWeights | None = None) -> dict[str, torch.Tensor]:
    """{"loss": total, "ce", "focal", "dice", "iou", "obj"} (the terms unweighted).

    mask_logits and targets (S, 1, H, W) at the same resolution.
    """
    w = weights or Stage1LossWeights()
    ce = next_token_loss(logits, labels)
    out = {"ce": ce}
    total = w.ce * ce
    if mask_logits is not None and mask_logits.shape[0] > 0:
        seg = segmentation_losses(mask_logits, targets, iou_pred, object_logits, w)
        out.update(seg)
        total = total + w.focal * seg["focal"] + w.dice * seg["dice"] + w.iou * seg["iou"] + w.obj * seg["obj"]
    else:
        zero = ce * 0.0
        out.update(focal=zero, dice=zero, iou=zero, obj=zero)
    out["loss"] = total
    return out
