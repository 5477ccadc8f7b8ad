"""IJB-B / IJB-C evaluation with InsightFace's numbers exactly, and the standard open-set 1:N metric.

``evaluate(root, features)`` scores per-face features (:mod:`.protocol`); :mod:`.extract` computes
them from the pictures; :mod:`.synthetic` writes IJB-format sets for tests and benchmarks.
"""
from __future__ import annotations

from fresnet.eval.ijb.protocol import IJBResult, evaluate

__all__ = ["IJBResult", "evaluate"]
