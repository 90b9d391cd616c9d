"""tdakit: training data attribution you can see.

Data flows one way: datasets -> train (Run) -> attribute (Scores) -> evaluation, plots, widgets.
Every score follows one convention: score[q, i] = d f_q(theta_T(w)) / d w_i at w = 1, the effect of
up-weighting training point i on query q's measurement, in the measurement's units; removing a set S
is predicted to change f_q by -sum_{i in S} score[q, i].
"""

from . import attribution, curvature, datasets, evaluation, stages, store
from .attribution import METHODS, Scores, attribute, ensemble
from .evaluation import groundtruth, lds, leave_one_out, reliability, subset_removal
from .models import FlatModel, mlp
from .stages import Stage, StagedRun, staged_ensemble, staged_scores, train_stages, train_stages_ensemble
from .task import Classification, Regression, Task
from .training import Recipe, Run, train, train_ensemble, train_many

__version__ = "0.1.0"

__all__ = ["attribution", "curvature", "datasets", "evaluation", "stages", "store", "Stage", "StagedRun",
           "staged_scores", "staged_ensemble", "train_stages", "train_stages_ensemble", "METHODS", "Scores",
           "attribute", "ensemble",
           "groundtruth", "lds", "leave_one_out", "reliability", "subset_removal", "FlatModel", "mlp",
           "Classification", "Regression", "Task", "Recipe", "Run", "train", "train_many", "train_ensemble"]
