"""Evaluation: COCO mask AP, efficiency, reports."""
from sskd_ray.eval.coco_eval import evaluate_masks

__all__ = ["evaluate_masks"]
