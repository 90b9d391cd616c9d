"""Judging attributions against retraining: ground truth, LDS, reliability, LOO, subset removal."""

from .ground_truth import GroundTruth, groundtruth, random_subsets
from .metrics import (
    Interval,
    Reliability,
    bootstrap,
    lds,
    paired_difference,
    predictions,
    rankdata,
    reliability,
    spearman,
)
from .removal import Removal, leave_one_out, random_removal, retrained_measurements, subset_removal
from .retrain import retrain, retrain_reweighted
from .stages import groundtruth_stages, retrain_stages

__all__ = ["GroundTruth", "groundtruth", "groundtruth_stages", "random_subsets", "Interval", "Reliability",
           "bootstrap", "lds", "paired_difference", "predictions", "rankdata", "reliability", "spearman", "Removal",
           "leave_one_out", "random_removal", "retrained_measurements", "subset_removal", "retrain",
           "retrain_reweighted", "retrain_stages"]
