"""Functional minibatch SGD that records its trajectory.

``train`` runs one model with a recipe and returns a ``Run`` (initial and final parameters, checkpoints, the rate
of every step and the batch order): everything an attribution method needs. ``train_many`` trains M models
together with torch.func.vmap over stacked parameters, each with its own init, batch order and weights. Both
take the one step of ``sgd.Step`` (and so does exact unrolling's replay), through the one loop ``steps``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from . import deprecation, display, store
from .datasets import Split
from .datasets.core import check_split
from .errors import InputError, ModelError, SettingError, TrainingError, check_choice
from .models import FlatModel
from .recipe import Checkpoints, CheckpointSpec, Placement, Recipe, as_checkpoints, batch_order, seed_of
from .schedules import learning_rates
from .sgd import Step, batch_coefficients
from .stacking import retraining_chunk
from .task import Task

# names that moved in 0.3 (recipe.py, sgd.py, stacking.py); they keep working here for one release
__getattr__ = deprecation.moved(__name__, {
    "seed_of": "tdakit.recipe:seed_of", "batch_order": "tdakit.recipe:batch_order",
    "checkpoint_steps": "tdakit.recipe:checkpoint_steps", "PLACEMENTS": "tdakit.recipe:PLACEMENTS",
    "batch_coefficients": "tdakit.sgd:batch_coefficients", "make_batch_gradient": "tdakit.sgd:make_batch_gradient",
    "decayed": "tdakit.sgd:decayed", "with_state": "tdakit.sgd:with_state",
    "models_per_chunk": "tdakit.stacking:models_per_chunk", "step_flops": "tdakit.stacking:step_flops",
    "stack_models": "tdakit.stacking:stack_models", "even_chunks": "tdakit.stacking:even_chunks",
    "retraining_chunk": "tdakit.stacking:retraining_chunk", "CPU_STACKING_MFLOP": "tdakit.stacking:CPU_STACKING_MFLOP",
    "CONV_WEIGHT": "tdakit.stacking:CONV_WEIGHT"})


@dataclass
class Run:
    """A recorded training run.

    theta tensors are flat [P]; ``checkpoints`` [C, P] are the parameters after ``checkpoint_steps[c]``
    updates (sorted, non-decreasing); ``lrs`` [T] float64; ``batches`` [T, B] indices into ``train`` (-1
    pads a short last batch); ``weights`` [N] the per-example weights trained with; ``losses`` [T] the
    batch losses. ``checkpoint_placement`` says which updates a checkpoint stands for (SOURCE's segment
    averages and TracIn's weights follow it; ``recipe.Checkpoints``): "middle" (the default) -- the updates
    nearer to it than to any other checkpoint; "end" -- the updates since the previous checkpoint (the last
    checkpoint is the final parameters); "start" -- the updates up to the next one.
    """

    model: FlatModel
    task: Task
    recipe: Recipe
    train: Split
    init: Tensor
    final: Tensor
    checkpoints: Tensor
    checkpoint_steps: Tensor
    lrs: Tensor
    batches: Tensor
    weights: Tensor
    losses: Tensor = field(repr=False)
    checkpoint_placement: Placement = "middle"

    def __post_init__(self):
        check_choice("checkpoint_placement", self.checkpoint_placement, Placement)
        steps = torch.as_tensor(self.checkpoint_steps)
        if steps.dim() != 1 or len(steps) != len(self.checkpoints):
            raise InputError(f"{len(self.checkpoints)} checkpoints but checkpoint_steps has shape "
                             f"{tuple(steps.shape)}")
        if len(steps) > 1 and (steps[1:] < steps[:-1]).any():
            raise SettingError(f"checkpoint_steps must be sorted, got {steps.tolist()}; order the checkpoints by "
                               "step (train() does this for you)")
        if len(steps) and (steps.min() < 0 or steps.max() > self.num_steps):
            raise SettingError(f"checkpoint steps must lie in 0..{self.num_steps}, got {steps.tolist()}")

    @property
    def num_steps(self) -> int:
        return self.batches.shape[0]

    @property
    def num_train(self) -> int:
        return len(self.train)

    @property
    def effective_lrs(self) -> Tensor:
        """eta_k / (1 - momentum): the rate a heavy-ball run moves at in a stationary valley."""
        return self.lrs / (1.0 - self.recipe.momentum)

    # A run is a pipeline of one stage (``stages.StagedRun`` has several): methods, ground truth and the
    # experiment runner take one path for both through ``stages`` / ``runs`` and ``per_stage``.
    @property
    def stages(self) -> list[Run]:
        return [self]

    runs = stages

    @property
    def names(self) -> list[str]:
        return ["run"]

    def per_stage(self, results: list):
        """What a method gives for a run: the one stage's result (a pipeline gives the list)."""
        return results[0]

    def _facts(self) -> dict[str, object]:
        r = self.recipe
        removed = int((self.weights == 0).sum())
        return {
            "model": f"{type(self.model.network).__name__}, {display.count(self.model.num_trainable)} parameters"
                     + (f" + {display.count(self.model.num_state)} BatchNorm statistics" if self.model.num_state
                        else ""),
            "task": repr(self.task),
            "data": f"{display.count(self.num_train)} training points, x {display.shape_of(self.train.x)}"
                    + (f", {removed} weighted 0" if removed else ""),
            "recipe": f"SGD lr {r.lr:g} ({r.schedule}), momentum {r.momentum:g}, weight decay {r.weight_decay:g}, "
                      f"batch {r.batch_size}, {r.epochs} epochs = {self.num_steps} steps, seed {r.seed}",
            "checkpoints": f"{len(self.checkpoint_steps)} ({self.checkpoint_placement})",
            "last batch loss": f"{float(self.losses[-1]):.4g}" if len(self.losses) else None,
            "parameters": f"{str(self.final.dtype).removeprefix('torch.')} on {self.final.device}",
            "dropout": f"off in {', '.join(self.model.dropout_layers)} (tdakit trains without it)"
                       if self.model.dropout_layers else None,
        }

    def __repr__(self) -> str:
        return display.text_block("Run", self._facts())

    def _repr_html_(self) -> str:
        return display.html_block("Run", self._facts())

    def fingerprint(self) -> str:
        """A content hash of everything a method reads from the run (model, task, recipe, data, recorded
        parameters, weights, checkpoint steps and placement): the key of cached scores."""
        return store.digest(self.model.describe(), self.task, self.recipe, self.train.x, self.train.y,
                            self.checkpoint_steps, self.checkpoint_placement, self.init, self.final,
                            self.checkpoints, self.weights)


def as_flat(model: nn.Module | FlatModel) -> FlatModel:
    """The model as a ``FlatModel`` (built once from an ``nn.Module``)."""
    if isinstance(model, FlatModel):
        return model
    if not isinstance(model, nn.Module):
        raise ModelError(f"model must be a torch nn.Module (or tdakit.FlatModel), got {type(model).__name__}")
    return FlatModel(model)


def steps(step, data: Split, theta: Tensor, batches: Tensor, lrs: Tensor, weights: Tensor,
          buf: Tensor | None = None, first: int = 0, last: int | None = None) -> Iterator[tuple[int, Tensor, Tensor]]:
    """The one training loop: yields (k, theta after update k, the batch loss) for updates first..last (default:
    every update).

    step: ``Step`` (theta [P], batches [T, B], weights [N]) or ``Step.stacked(M)`` (theta [M, P], batches
    [M, T, B], weights [M, N]); lrs [T]. buf: the momentum buffer to start from, updated in place (default: zeros,
    as training starts). theta is copied once and then updated in place: the tensor yielded is the same at every
    step, so clone what you keep."""
    theta = theta.clone()
    buf = torch.zeros_like(theta) if buf is None else buf
    for k in range(first, len(lrs) if last is None else last + 1):
        idx = batches.select(-2, k).to(theta.device)
        safe = idx.clamp(min=0)
        loss = step(theta, buf, data.x[safe], data.y[safe], batch_coefficients(idx, weights), lrs[k].to(theta.dtype))
        yield k, theta, loss


def _checkpoint_spec(checkpoints: CheckpointSpec, placement: str | None, caller: str) -> Checkpoints:
    """The checkpoints to record; the separate ``placement=`` of tdakit 0.2 still works, with a warning."""
    if placement is not None:
        deprecation.warn(f"{caller}(placement=...)", f"{caller}(checkpoints=tdakit.Checkpoints(C, {placement!r}))")
    return as_checkpoints(checkpoints, placement)


def _check_data(data: Split, model: FlatModel, task: Task, theta: Tensor) -> None:
    """Every training example and target, not a sample: finite features, targets that fit the model."""
    if len(data) == 0:
        raise InputError("the training split is empty")
    if data.x.is_floating_point() and not bool(torch.isfinite(data.x).all()):
        row = int((~torch.isfinite(data.x.reshape(len(data), -1))).any(1).nonzero()[0, 0])
        raise InputError(f"training data contains NaN or inf (first in data.x row {row}); clean or impute it "
                         "before training")
    try:
        out = model(theta, data.x[:2])
    except RuntimeError as err:
        raise InputError(f"the model cannot take inputs of shape {tuple(data.x.shape[1:])}: {err}") from err
    task.check_targets(out, data.y[:2], "training targets (data.y)")
    task.check_values(out.shape[-1], data.y, "training targets (data.y)")


def _diverged(step: int, recipe: Recipe, steps_per_epoch: int, loss: float, which: str = "") -> TrainingError:
    return TrainingError(
        f"training diverged{which} at step {step} (epoch {step // steps_per_epoch}): batch loss is "
        f"{loss:.3g}; lower the learning rate (now {recipe.lr}) or check the data and targets")


def train(model: nn.Module | FlatModel, data: Split, recipe: Recipe, task: Task, checkpoints: CheckpointSpec = 6,
          weights: Tensor | None = None, dtype: torch.dtype = torch.float32, progress: bool = True,
          cache: store.CacheSpec = True, init: Tensor | None = None, placement: str | None = None) -> Run:
    """Train one model with ``recipe`` and record its trajectory.

    checkpoints: ``recipe.Checkpoints(at, placement)``, or just ``at``: C evenly spaced checkpoints (at the
    midpoints of C equal pieces of training; ``Checkpoints(C, "end")`` puts them at the ends, the last one the
    final parameters), "all" (the parameters at the start of every step) or explicit step numbers. weights:
    [N], default ones. cache: True (the default folder, $TDAKIT_CACHE or ~/.cache/tdakit), a folder, or False;
    runs are keyed by model, task, recipe, data, weights and checkpoints. init: starting parameters [P]
    (default: the model's initialisation seeded by recipe.seed), e.g. the final parameters of a previous stage;
    the momentum buffer always starts at zero. placement: tdakit 0.2's separate placement argument (still
    accepted; ``Checkpoints`` holds it now).
    """
    flat = as_flat(model)
    data = check_split(data, "data").to(dtype)
    n = len(data)
    device = data.x.device  # everything follows the data
    weights = torch.ones(n, dtype=dtype, device=device) if weights is None else weights.to(device, dtype)
    if weights.shape != (n,):
        raise InputError(f"weights must have shape ({n},), got {tuple(weights.shape)}")
    given = init is not None
    init = flat.init(recipe.seed, dtype).to(device) if init is None else init.detach().to(device, dtype)
    if init.shape != (flat.num_params,):
        raise InputError(f"init must have shape ({flat.num_params},) for this model, got {tuple(init.shape)}")
    _check_data(data, flat, task, init)
    batches = batch_order(torch.arange(n), recipe.batch_size, recipe.epochs, seed_of("order", recipe.seed))
    lrs = recipe.learning_rates(n)
    spec = _checkpoint_spec(checkpoints, placement, "train")
    at = spec.steps(len(lrs))
    key = store.key_of("run", flat.describe(), task, recipe, data.fingerprint(), str(dtype), at.tolist(),
                       weights, *([init] if given else []))
    saved = store.load(cache, "run", key)
    if saved is None:
        saved = store.cached(cache, "run", key, lambda: _trajectory(
            flat, data, recipe, task, init, batches, lrs, weights, at, progress))
    elif progress:
        store.notice(f"train: the run ({len(lrs)} steps) read from the cache ({store.folder(cache)}); "
                     "cache=False trains it again")
    return Run(flat, task, recipe, data, init, saved["final"], saved["checkpoints"], at, lrs, batches,
               weights, saved["losses"], spec.placement)


def _trajectory(model: FlatModel, data: Split, recipe: Recipe, task: Task, theta: Tensor, batches: Tensor,
                lrs: Tensor, weights: Tensor, at: Tensor, progress: bool) -> dict[str, Tensor]:
    """The training loop of ``train``: final parameters, checkpoints [C, P] and batch losses [T]."""
    saved, losses = {}, torch.empty(len(lrs), dtype=torch.float64)
    wanted = set(at.tolist())
    if 0 in wanted:
        saved[0] = theta
    bar = tqdm(total=len(lrs), desc="train", disable=not progress, leave=False)
    final = theta
    for k, final, loss in steps(Step(model, task, recipe), data, theta, batches, lrs, weights):
        bar.update()
        losses[k] = loss = float(loss)
        if not (abs(loss) < 1e6 * (abs(float(losses[0])) + 1.0)) or not torch.isfinite(final).all():
            raise _diverged(k, recipe, recipe.steps_per_epoch(len(data)), loss)
        if k + 1 in wanted:
            saved[k + 1] = final.clone()
    bar.close()
    ckpts = torch.stack([saved[int(s)] for s in at]) if len(at) else final.new_zeros(0, len(final))
    return {"final": final, "checkpoints": ckpts, "losses": losses}


def train_many(model: nn.Module | FlatModel, data: Split, recipe: Recipe, task: Task, inits: Tensor,
               batches: Tensor, weights: Tensor | None = None, progress: bool = True,
               desc: str = "train many", checkpoint_steps: Tensor | None = None,
               on_step: Callable[[float], object] | None = None):
    """Train M models together with vmap; returns final parameters [M, P].

    inits [M, P]; batches [M, T, B] (each model's batch order, -1 padding, all with the same T);
    weights [M, N] (default ones). Learning rates follow ``recipe`` for T steps. With
    ``checkpoint_steps`` [C] it returns (final [M, P], checkpoints [M, C, P], batch losses [M, T]).
    on_step(M / T) is called after every step (an outer progress bar counting models uses it).
    """
    flat = as_flat(model)
    data = data.to(inits.dtype, inits.device)
    m, total = batches.shape[:2]
    weights = (torch.ones(m, len(data), dtype=inits.dtype, device=inits.device) if weights is None
               else weights.to(inits.device, inits.dtype))
    if inits.shape[0] != m or weights.shape != (m, len(data)):
        raise InputError(f"inits {tuple(inits.shape)}, batches {tuple(batches.shape)} and weights "
                         f"{tuple(weights.shape)} must agree on the number of models and points")
    lrs = learning_rates(recipe.schedule, recipe.lr, total, recipe.warmup)
    wanted = [] if checkpoint_steps is None else [int(c) for c in checkpoint_steps]
    saved, losses = {0: inits} if 0 in wanted else {}, torch.empty(m, total, dtype=torch.float64)
    theta = inits
    step = Step(flat, task, recipe).stacked(m)
    for k, theta, loss in tqdm(steps(step, data, inits, batches, lrs, weights), total=total, desc=desc,
                               disable=not progress, leave=False):
        if not torch.isfinite(loss).all():
            bad = int((~torch.isfinite(loss)).nonzero()[0])
            raise _diverged(k, recipe, max(total // recipe.epochs, 1), float(loss[bad]), f" (model {bad})")
        losses[:, k] = loss.detach().double().cpu()
        if k + 1 in wanted:
            saved[k + 1] = theta.clone()
        if on_step is not None:
            on_step(m / total)
    if checkpoint_steps is None:
        return theta
    ckpts = torch.stack([saved[c] for c in wanted], 1) if wanted else theta.new_zeros(m, 0, theta.shape[1])
    return theta, ckpts, losses


def train_ensemble(model: nn.Module | FlatModel, data: Split, recipe: Recipe, task: Task, members: int = 4,
                   first_seed: int = 1, checkpoints: CheckpointSpec = 6, dtype: torch.dtype = torch.float32,
                   progress: bool = True, placement: str | None = None, cache: store.CacheSpec = True) -> list[Run]:
    """``members`` independently trained runs with recipe seeds first_seed, first_seed + 1, ... (each its
    init and batch order, as ``train`` with ``Recipe(seed=s)`` would make them), trained together with
    vmap: list of ``Run``. The default (4 runs seeded 1..4) completes a run trained with seed 0 to 5.
    cache: as ``train`` (True: the default folder; a folder; False); each chunk of members trained together
    is one cached piece, keyed by model, task, recipe, data, seeds and checkpoints."""
    if isinstance(members, bool) or not isinstance(members, int) or members < 1:
        raise SettingError(f"members must be a whole number >= 1, got {members!r}")
    seeds = range(first_seed, first_seed + members)
    flat = as_flat(model)
    data = check_split(data, "data").to(dtype)
    n, device = len(data), data.x.device
    lrs = recipe.learning_rates(n)
    spec = _checkpoint_spec(checkpoints, placement, "train_ensemble")
    at = spec.steps(len(lrs))
    recipes = [dataclasses.replace(recipe, seed=int(s)) for s in seeds]
    inits = torch.stack([flat.init(r.seed, dtype) for r in recipes]).to(device)
    _check_data(data, flat, task, inits[0])
    orders = torch.stack([batch_order(torch.arange(n), r.batch_size, r.epochs, seed_of("order", r.seed))
                          for r in recipes])
    weights = torch.ones(n, dtype=dtype, device=device)
    runs = []
    chunk = retraining_chunk(flat, task, data, recipe.batch_size, dtype, device)
    reused = 0
    for s in range(0, len(recipes), chunk):
        part = slice(s, s + chunk)
        key = store.key_of("ensemble", flat.describe(), task, recipe, data.fingerprint(), str(dtype), at.tolist(),
                           [r.seed for r in recipes[part]])
        saved = store.load(cache, "ensemble", key)
        reused += 0 if saved is None else len(recipes[part])
        saved = saved or store.cached(cache, "ensemble", key, lambda part=part: dict(zip(
            ("final", "checkpoints", "losses"), train_many(flat, data, recipe, task, inits[part], orders[part],
                                                           progress=progress, desc="train ensemble",
                                                           checkpoint_steps=at), strict=True)))
        final, ckpts, losses = saved["final"], saved["checkpoints"], saved["losses"]
        for j, r in enumerate(recipes[part]):
            runs.append(Run(flat, task, r, data, inits[s + j], final[j], ckpts[j], at, lrs, orders[s + j],
                            weights, losses[j], spec.placement))
    if reused and progress:
        store.notice(f"train_ensemble: {reused} of {len(recipes)} members read from the cache "
                     f"({store.folder(cache)}), {len(recipes) - reused} trained; cache=False trains them all again")
    return runs

