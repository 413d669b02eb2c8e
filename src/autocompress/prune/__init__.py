"""Pruning: unstructured (masks made permanent), structured (physical removal), sensitivity.

    prune_(model, PruneConfig(sparsity=0.92, schedule="polynomial", steps=4), data, finetune=...)
    prune_channels_(model, StructuredPruneConfig(target="macs", amount=0.8), example_input)
    sens = sensitivity(model, val_loader, kind="unstructured"); allocate_ratios(sens, 0.92)
    prune_channels_(model, StructuredPruneConfig(head_ratio=0.5), x)   # whole attention heads too
    register_criterion("mine", lambda w, taylor=None: w.abs())   # importance="mine" in both verbs

Fine-tuning stays the user's: every verb accepts ``finetune(model) -> model`` or a ``loss_fn``
(see :func:`make_finetune`); masks stay enforced meanwhile and are made permanent at the end.
"""

from autocompress.prune.heads import PrunedMultiheadAttention, head_scores, prune_heads_
from autocompress.prune.importance import (CRITERIA, IMPORTANCE, Criterion, Importance, Magnitude, Random,
                                           Taylor, channel_importance, channel_scores, get_criterion,
                                           get_importance, register_criterion, taylor_stats)
from autocompress.prune.masks import (MaskHook, apply_masks, get_mask, global_sparsity, has_masks,
                                      make_permanent, remove_masks, set_mask, sparsity_report)
from autocompress.prune.recover import Finetune, TrainStep, as_loader, finetune, make_finetune
from autocompress.prune.schedule import linear_schedule, polynomial_schedule
from autocompress.prune.sensitivity import SensitivityResult, allocate_ratios, sensitivity
from autocompress.prune.structured import (StructuredPruneConfig, StructuredPruneError, channel_counts,
                                           classifier_name, frozen_layers, model_cost, prune_channels_,
                                           prunable_layers, removal_fn)
from autocompress.prune.targets import Target, find_targets
from autocompress.prune.unstructured import PruneConfig, compute_masks, prune_

__all__ = [
    "PrunedMultiheadAttention", "head_scores", "prune_heads_",
    "CRITERIA", "Criterion", "get_criterion", "register_criterion", "IMPORTANCE", "Importance", "Magnitude", "Random", "Taylor", "channel_importance", "channel_scores",
    "get_importance", "taylor_stats", "MaskHook", "apply_masks", "get_mask", "global_sparsity", "has_masks",
    "make_permanent", "remove_masks", "set_mask", "sparsity_report", "Finetune", "TrainStep", "as_loader",
    "finetune", "make_finetune", "linear_schedule", "polynomial_schedule", "SensitivityResult",
    "allocate_ratios", "sensitivity", "StructuredPruneConfig", "StructuredPruneError", "channel_counts",
    "classifier_name", "frozen_layers", "model_cost", "prune_channels_", "prunable_layers", "removal_fn", "Target",
    "find_targets", "PruneConfig", "compute_masks", "prune_",
]
