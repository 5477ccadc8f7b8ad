"""Margin losses for training: the contract :func:`build_margin` (one module per loss, selected by
name) and the original ``train.py``'s presets (:mod:`.classic`).

Modules: ``functional`` (shared formulas), ``columns`` (class columns here or split over ranks),
``base`` (the call contract, cross-entropy, batch statistics), ``margins`` (the stateless losses),
``adaface``, ``curricularface``, ``biased`` (SphereFace2 and UniFace with their learned bias),
``registry`` (names, defaults, references) and ``classic``.
"""
from fresnet.train.losses.base import MarginLoss
from fresnet.train.losses.classic import (
    ACOS_EPS,
    LOSS_PRESETS,
    FullFCLoss,
    MarginSoftmaxLoss,
    MarginSpec,
    margin_logits,
    margin_spec,
    target_logit,
    triplet_loss,
)
from fresnet.train.losses.columns import LOCAL, LocalColumns, ShardedColumns
from fresnet.train.losses.registry import (
    MARGIN_LOSSES,
    MarginEntry,
    build_margin,
    describe_margins,
)

__all__ = [
    "ACOS_EPS", "LOCAL", "LOSS_PRESETS", "MARGIN_LOSSES", "FullFCLoss", "LocalColumns", "MarginEntry", "MarginLoss",
    "MarginSoftmaxLoss", "MarginSpec", "ShardedColumns", "build_margin", "describe_margins", "margin_logits",
    "margin_spec", "target_logit", "triplet_loss",
]
