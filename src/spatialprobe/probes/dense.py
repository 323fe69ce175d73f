"""`dense` probe: a per-token linear model of object coverage, painted back into a mask and a box.

Everything chosen on the training images is chosen from leave-one-image-out (LOIO) predictions,
exact in closed form from the ridge's decomposition: tokens of one image are left out together,
since per-token leave-one-out lets an image's other tokens vouch for the left-out one. The ridge's
alpha and the coverage threshold that turns painted coverage into a mask both come from them.

mAP needs a confidence per box. A score head, as the box probes have, predicts each image's box IoU
from the shape of its painted coverage (`coverage_features`, from the full fit as on the test
images), trained on the box IoUs of the training images' LOIO masks. It is used only if its own
leave-one-out predictions rank the training images better than a constant does (Spearman > 0,
one-sided p < 0.05); otherwise every box gets the same score. The returned kind says which.
"""
from __future__ import annotations

import numpy as np
import torch
from scipy.stats import spearmanr

from ..metrics import iou_of, paired_box_iou
from .footprints import mask_boxes, paint, token_coverage
from .ridge import RidgeFit, fit_ridge

THRESHOLDS = torch.linspace(0.1, 0.9, 17)
#: painted coverage this close to the threshold counts as undecided (a feature of the score head)
UNDECIDED_BAND = 0.1
#: the learned score is used when its held-out Spearman is positive at this one-sided significance:
#: a positive correlation by chance alone must not replace the constant
SCORE_EVIDENCE = 0.05


def best_threshold(painted: torch.Tensor, masks: torch.Tensor) -> float:
    """The threshold on painted coverage with the best mean IoU over these images."""
    flat, truth = painted.flatten(1), masks.flatten(1).float()
    ious = []
    for threshold in THRESHOLDS:
        predicted = (flat >= threshold).float()
        inter = (predicted * truth).sum(1)
        union = predicted.sum(1) + truth.sum(1) - inter
        ious.append(iou_of(inter, union).mean())  # scored as the metric scores it
    return float(THRESHOLDS[int(torch.stack(ious).argmax())])


def fit_coverage(train) -> tuple[RidgeFit, torch.Tensor]:
    """The per-token coverage ridge, and its LOIO coverage painted on the training images [n, H, W]."""
    n, tokens, channels = train.tokens.shape
    coverage = token_coverage(train.masks, train.footprints)
    fit = fit_ridge(train.tokens.reshape(-1, channels), coverage.reshape(-1, 1), group_size=tokens)
    loio = fit.loo_predictions.float().reshape(n, tokens)
    return fit, paint(loio, train.footprints, *train.masks.shape[1:])


def coverage_features(painted: torch.Tensor, threshold: float) -> torch.Tensor:
    """Per-image summaries [n, 5] of painted coverage that say how clean its mask is.

    Read from the prediction itself, so they mean the same at every stage of every model, and five
    numbers cannot overfit a few hundred images: coverage inside and outside the mask (contrast),
    the mask's area, the share of pixels left undecided near the threshold, and how much of its
    box the mask fills (stray pixels far from the object stretch the box and lower the fill)."""
    flat = painted.flatten(1).double()
    masks = painted >= threshold
    inside_n = masks.flatten(1).sum(1).double()
    outside_n = flat.shape[1] - inside_n
    inside = (flat * masks.flatten(1)).sum(1) / inside_n.clamp(min=1)
    outside = (flat * ~masks.flatten(1)).sum(1) / outside_n.clamp(min=1)
    undecided = ((flat - threshold).abs() < UNDECIDED_BAND).double().mean(1)
    boxes = mask_boxes(masks).double()
    box_area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]) * flat.shape[1]
    fill = inside_n / box_area.clamp(min=1)
    return torch.stack([inside, outside, inside_n / flat.shape[1], undecided, fill], 1)


def score_head(train_features: torch.Tensor, train_iou: torch.Tensor,
               test_features: torch.Tensor) -> tuple[torch.Tensor, str]:
    """Test scores [m] and their kind: "learned" if the head ranks held-out images, else "constant".

    Held out = the head's own exact leave-one-out predictions on the training images, whose Spearman
    with the IoUs must be positive at one-sided p < SCORE_EVIDENCE. A head with nothing to learn
    predicts about the others' mean, anti-correlated with the left-out value, so noise rarely passes;
    the constant (the mean training IoU) then ranks nothing, rather than ranking by chance."""
    center, spread = train_features.mean(0), train_features.std(0).clamp(min=1e-12)
    head = fit_ridge((train_features - center) / spread, train_iou)
    held_out = head.loo_predictions.flatten().numpy()
    varies = np.ptp(held_out) > 0 and np.ptp(train_iou.numpy()) > 0  # Spearman is undefined otherwise
    if not varies or spearmanr(held_out, train_iou.numpy(), alternative="greater").pvalue >= SCORE_EVIDENCE:
        return torch.full((len(test_features),), float(train_iou.mean())), "constant"
    return head.predict((test_features - center) / spread).flatten(), "learned"


def painted_predictions(fit: RidgeFit, split) -> torch.Tensor:
    """The fitted ridge's coverage on a split's tokens, painted through its footprints [n, H, W]."""
    predicted = fit.predict(split.tokens.reshape(-1, split.tokens.shape[-1])).reshape(split.tokens.shape[:2])
    return paint(predicted, split.footprints, *split.masks.shape[1:])


def dense_probe(train, test) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, str]:
    """Predicted masks [n, H, W], their boxes [n, 4], scores [n] and the score's kind ("learned" or "constant")."""
    fit, loio = fit_coverage(train)
    return masks_and_scores(loio, painted_predictions(fit, train), painted_predictions(fit, test), train)


def dense_probe_streaming(train, test) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, str]:
    """`dense_probe` from the K-fold fit of `dense_stream` (out-of-fold coverage where the exact fit has LOIO),
    reading the tokens shard by shard: for splits above `dense_stream.EXACT_NUMBERS`."""
    from .dense_stream import fit_streaming

    held_out, train_painted, test_painted, _ = fit_streaming(train, test)
    return masks_and_scores(held_out, train_painted, test_painted, train)


def dense_probe_exact_streaming(train, test) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, str]:
    """`dense_probe`, the same exact LOIO fit, reading the tokens shard by shard (`dense_exact`): for splits
    with more token rows than channels (the solver's primal form), so memory does not grow with n."""
    from .dense_exact import fit_exact_streaming

    loio, train_painted, test_painted, _ = fit_exact_streaming(train, test)
    return masks_and_scores(loio, train_painted, test_painted, train)


def masks_and_scores(held_out: torch.Tensor, train_painted: torch.Tensor, test_painted: torch.Tensor,
                     train) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, str]:
    """Test masks, boxes, scores and the score's kind from painted coverage: held out (LOIO or out-of-fold)
    and full-fit on the training images, full-fit on the test images."""
    threshold = best_threshold(held_out, train.masks)
    held_out_iou = torch.from_numpy(paired_box_iou(mask_boxes(held_out >= threshold), train.boxes))
    masks = test_painted >= threshold
    # the head's inputs come from the full fit on both sides, as the test's must; LOIO coverage would
    # carry each image's own absence (the others' mean), which ranks training images and nothing else
    train_features = coverage_features(train_painted, threshold)
    scores, kind = score_head(train_features, held_out_iou, coverage_features(test_painted, threshold))
    return masks, mask_boxes(masks), scores, kind
