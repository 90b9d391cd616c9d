"""Multi-stage training: pretraining then fine-tuning, or continual learning over a sequence of tasks.

A pipeline is a list of ``Stage``s, each with its own data, recipe and (optionally) task. Stage s starts
from the final parameters of stage s-1 (the momentum buffer restarts at zero, as with a new optimiser)
and is recorded as an ordinary ``Run``; ``StagedRun`` keeps them in order. Training weights are per
stage: w^(s)_i weights point i of stage s. ``attribute(pipeline, query, method)`` scores the points of
every stage (``attribution.staged``); ``evaluation.stages`` retrains pipelines for the ground truth.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from . import deprecation
from .datasets import Split
from .errors import InputError, ModelError, SettingError
from .models import FlatModel
from .recipe import CheckpointSpec, Recipe, as_checkpoints, seed_of
from .task import Task
from .training import Run, as_flat, train


@dataclass(frozen=True)
class Stage:
    """One stage of a pipeline: its training data, recipe and (default: the pipeline's) task."""

    data: Split
    recipe: Recipe
    task: Task | None = None
    name: str = ""
    model: nn.Module | FlatModel | None = field(default=None, compare=False)


@dataclass
class StagedRun:
    """The recorded runs of every stage, in order; ``runs[s].init`` is ``runs[s-1].final``."""

    runs: list[Run]
    names: list[str]

    @property
    def final(self) -> Tensor:
        return self.runs[-1].final

    @property
    def model(self) -> FlatModel:
        return self.runs[-1].model

    @property
    def task(self) -> Task:
        return self.runs[-1].task

    @property
    def stages(self) -> list[Run]:
        """The runs of every stage, in order (a ``Run`` is a pipeline of one stage: ``Run.stages``)."""
        return self.runs

    def per_stage(self, results: list):
        """What a method gives for a pipeline: one result per stage, as they are."""
        return results

    def stage(self, name_or_index: str | int) -> int:
        """The index of a stage given its name or index."""
        if isinstance(name_or_index, int):
            if not 0 <= name_or_index < len(self.runs):
                raise SettingError(f"stage {name_or_index} out of range: the pipeline has {len(self.runs)} stages")
            return name_or_index
        if name_or_index not in self.names:
            raise SettingError(f"no stage named {name_or_index!r}; stages: {self.names}")
        return self.names.index(name_or_index)


def _check_stages(model: nn.Module | FlatModel, stages: Sequence[Stage]) -> FlatModel:
    if not stages:
        raise SettingError("a pipeline needs at least one stage")
    flat = as_flat(model)
    for s, stage in enumerate(stages):
        label = f"stage {s}" + (f" ({stage.name})" if stage.name else "")
        if len(stage.data) == 0:
            raise InputError(f"{label} has no training data; remove the stage or give it data")
        if stage.model is not None:
            other = as_flat(stage.model)
            if other.shapes != flat.shapes or other.names != flat.names:
                raise ModelError(f"{label}'s model does not match the pipeline's: parameters "
                                 f"{list(zip(other.names, other.shapes, strict=False))} vs "
                                 f"{list(zip(flat.names, flat.shapes, strict=False))}; every stage trains the same "
                                 "parameters (build heads of every stage into one model)")
    return flat


def train_stages(model: nn.Module | FlatModel, stages: Sequence[Stage], task: Task | None = None,
                 checkpoints: CheckpointSpec = 6, dtype: torch.dtype = torch.float32,
                 progress: bool = True, cache=True, placement: str | None = None) -> StagedRun:
    """Train the stages in order, each from the previous stage's final parameters; stage 0 starts from
    the model's initialisation seeded by its recipe's seed. checkpoints: per stage (``recipe.Checkpoints``, or
    its count, "all" or steps; ``placement=`` is tdakit 0.2's separate argument, still accepted)."""
    if placement is not None:
        deprecation.warn("train_stages(placement=...)",
                         f"train_stages(checkpoints=tdakit.Checkpoints(C, {placement!r}))")
    checkpoints = as_checkpoints(checkpoints, placement)
    flat = _check_stages(model, stages)
    runs, theta = [], None
    for s, stage in enumerate(stages):
        stage_task = stage.task or task
        if stage_task is None:
            raise SettingError(f"stage {s} has no task; pass task= to train_stages or Stage(task=...)")
        run = train(flat, stage.data, stage.recipe, stage_task, checkpoints=checkpoints, dtype=dtype,
                    progress=progress, cache=cache, init=theta)
        runs.append(run)
        theta = run.final
    return StagedRun(runs, [st.name or f"stage {s}" for s, st in enumerate(stages)])


def reseeded(stages: Sequence[Stage], seed: int) -> list[Stage]:
    """The same pipeline with every stage's recipe seed (so the initialisation and every batch order)
    derived from ``seed``: one independently trained member of a pipeline ensemble."""
    return [dataclasses.replace(st, recipe=dataclasses.replace(st.recipe,
                                                               seed=seed_of("pipeline", seed, st.recipe.seed)))
            for st in stages]


def train_stages_ensemble(model: nn.Module | FlatModel, stages: Sequence[Stage], task: Task | None = None,
                          members: int = 4, first_seed: int = 1, checkpoints: CheckpointSpec = 6,
                          dtype: torch.dtype = torch.float32, progress: bool = True, cache=True,
                          placement: str | None = None) -> list[StagedRun]:
    """``members`` independently trained pipelines, seeded first_seed, first_seed + 1, ...
    (``reseeded(stages, seed)``): list of ``StagedRun``."""
    seeds = range(first_seed, first_seed + members)
    if placement is not None:
        deprecation.warn("train_stages_ensemble(placement=...)",
                         f"train_stages_ensemble(checkpoints=tdakit.Checkpoints(C, {placement!r}))")
    checkpoints = as_checkpoints(checkpoints, placement)
    return [train_stages(model, reseeded(stages, seed), task, checkpoints, dtype, progress=False, cache=cache)
            for seed in tqdm(seeds, desc="pipeline ensemble", disable=not progress)]


