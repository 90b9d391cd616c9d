"""tdakit: training data attribution you can see.

Data flows one way: datasets -> train (Run) -> attribute (Scores) -> evaluation, plots, widgets.
Every score follows one convention (docs/conventions.md): score[q, i] = d f_q(theta_T(w)) / d w_i at
w = 1, the effect of up-weighting training point i on query q's measurement, in the measurement's
units; removing a set S is predicted to change f_q by -sum_{i in S} score[q, i].
"""

from . import (  # noqa: E402,F401  (tdakit 0.2's paths; they warn on use)
    attribution,
    curvature,
    datasets,
    evaluation,
    layers,
    presets,
    spectrum,
    stages,
    store,
    unroll,
    unroll_stack,
    whatif,
    zoo,
)
from .attribution import METHODS, Scores, attribute, attribute_many, ensemble, register_method
from .datasets import Split
from .errors import TdakitError
from .evaluation import groundtruth, groundtruth_stages, lds, leave_one_out, reliability, subset_removal
from .experiment import Experiment, Table, run_experiment
from .models import FlatModel
from .presets import preset
from .recipe import Checkpoints, Recipe
from .stages import Stage, StagedRun, train_stages, train_stages_ensemble
from .task import Classification, LanguageModeling, Regression, Task
from .training import Run, train, train_ensemble
from .zoo import mlp

__version__ = "0.2.0"

__all__ = [
    # data
    "Split",
    # what to attribute
    "Task", "Regression", "Classification", "LanguageModeling", "FlatModel", "mlp",
    # training that records its trajectory
    "Recipe", "Checkpoints", "Run", "train", "train_ensemble",
    "Stage", "StagedRun", "train_stages", "train_stages_ensemble",
    # attribution
    "METHODS", "Scores", "attribute", "attribute_many", "ensemble", "register_method",
    # judging against retraining
    "groundtruth", "groundtruth_stages", "lds", "reliability", "leave_one_out", "subset_removal",
    # experiments and the paper's settings
    "Experiment", "Table", "run_experiment", "preset",
    # errors a user can fix (a ValueError)
    "TdakitError",
    # submodules
    "attribution", "curvature", "datasets", "evaluation", "layers", "presets", "stages", "store", "zoo",
]
