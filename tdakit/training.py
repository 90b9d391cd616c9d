"""Functional minibatch SGD that records its trajectory.

One step k with batch B_k, per-example weights w and learning rate eta_k (PyTorch's heavy-ball SGD):

    g_k     = (1/|B_k|) sum_{i in B_k} w_i grad L(z_i, theta_k) + weight_decay * theta_k
    buf_k+1 = momentum * buf_k + g_k
    theta_k+1 = theta_k - eta_k * buf_k+1

``train`` runs one model and returns a ``Run`` (initial and final parameters, checkpoints, the rate of
every step and the batch order): everything an attribution method needs. ``train_many`` trains M models
together with torch.func.vmap over stacked parameters, each with its own init, batch order and weights.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from torch.func import grad, vmap
from torch.utils.flop_counter import FlopCounterMode
from tqdm.auto import tqdm

from . import store
from .datasets import Split
from .errors import InputError, SettingError, TrainingError
from .models import FlatModel
from .schedules import learning_rates
from .task import Task

PLACEMENTS = ("end", "middle", "start")


@dataclass(frozen=True)
class Recipe:
    """How to train. ``lr`` is the peak rate; ``warmup`` a fraction of the steps (see schedules)."""

    lr: float = 3e-2
    epochs: int = 20
    batch_size: int = 32
    momentum: float = 0.9
    weight_decay: float = 1e-5
    schedule: str = "constant"
    warmup: float = 0.0
    seed: int = 0

    def __post_init__(self):
        if self.lr <= 0 or self.epochs < 1 or self.batch_size < 1:
            raise SettingError(f"recipe needs lr > 0, epochs >= 1, batch_size >= 1; got {self}")
        if not 0.0 <= self.momentum < 1.0:
            raise SettingError(f"momentum must lie in [0, 1), got {self.momentum}")
        if self.weight_decay < 0:
            raise SettingError(f"weight_decay must be >= 0, got {self.weight_decay}")

    def steps_per_epoch(self, n: int) -> int:
        return -(-n // self.batch_size)

    def learning_rates(self, n: int) -> Tensor:
        """eta_k for every step of training on n points: float64 [T]."""
        return learning_rates(self.schedule, self.lr, self.epochs * self.steps_per_epoch(n), self.warmup)


@dataclass
class Run:
    """A recorded training run.

    theta tensors are flat [P]; ``checkpoints`` [C, P] are the parameters after ``checkpoint_steps[c]``
    updates (sorted, non-decreasing); ``lrs`` [T] float64; ``batches`` [T, B] indices into ``train`` (-1
    pads a short last batch); ``weights`` [N] the per-example weights trained with; ``losses`` [T] the
    batch losses. ``checkpoint_placement`` says which updates a checkpoint stands for (SOURCE's segment
    averages and TracIn's weights follow it): "middle" (the default) -- the updates nearer to it than to
    any other checkpoint; "end" -- the updates since the previous checkpoint (the last checkpoint is the
    final parameters); "start" -- the updates up to the next one (``checkpoints="all"``: the parameters
    each update starts from). docs/conventions.md says why the midpoints are the default.
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
    checkpoint_placement: str = "middle"

    def __post_init__(self):
        if self.checkpoint_placement not in PLACEMENTS:
            raise SettingError(f"checkpoint_placement must be one of {PLACEMENTS}, got {self.checkpoint_placement!r}")
        steps = torch.as_tensor(self.checkpoint_steps)
        if steps.dim() != 1 or len(steps) != len(self.checkpoints):
            raise InputError(f"{len(self.checkpoints)} checkpoints but checkpoint_steps has shape "
                             f"{tuple(steps.shape)}")
        if len(steps) > 1 and (steps[1:] < steps[:-1]).any():
            raise SettingError(f"checkpoint_steps must be sorted, got {steps.tolist()}; order the checkpoints by step "
                             "(train() does this for you)")
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


def seed_of(*parts) -> int:
    """A deterministic 63-bit seed from any parts (stable across processes, unlike hash())."""
    digest = hashlib.sha256(repr(parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def batch_order(indices: Tensor, batch_size: int, epochs: int, seed: int) -> Tensor:
    """Shuffled batches over ``indices`` for every epoch: LongTensor [T, batch_size], -1 padding."""
    g = torch.Generator().manual_seed(seed)
    n = len(indices)
    per_epoch = -(-n // batch_size)
    out = torch.full((epochs * per_epoch, batch_size), -1, dtype=torch.long)
    for e in range(epochs):
        perm = indices[torch.randperm(n, generator=g)]
        padded = torch.cat([perm, perm.new_full((per_epoch * batch_size - n,), -1)])
        out[e * per_epoch:(e + 1) * per_epoch] = padded.view(per_epoch, batch_size)
    return out


def batch_coefficients(batch: Tensor, weights: Tensor) -> Tensor:
    """The factor of each batch slot in the batch loss, w_i / |B_k|: [..., B] (0 for padding)."""
    valid = (batch >= 0).to(weights.dtype)
    picked = torch.gather(weights, -1, batch.clamp(min=0)) * valid
    return picked / valid.sum(-1, keepdim=True)


def make_batch_gradient(model: FlatModel, task: Task):
    """(theta, x_b, y_b, c_b) -> (gradient of the batch loss sum_j c_j L(z_j, theta), (that loss, updated
    running statistics [num_state])).

    c_b [B] are the batch coefficients w_i/|B_k| (weight decay is not included); the statistics are
    empty [0] for a model without BatchNorm. The model runs in training mode (``FlatModel.train_forward``):
    BatchNorm uses the batch's statistics, weighted by c_b."""
    def batch_loss(theta, xb, yb, cb):
        outputs, state = model.train_forward(theta, xb, cb)
        loss = (cb * task.loss(outputs, yb)).sum()
        return loss, (loss, theta[..., :0].detach() if state is None else state)  # aux must be tensors

    return grad(batch_loss, has_aux=True)


def decayed(model: FlatModel, theta: Tensor) -> Tensor:
    """The part of theta that weight decay acts on: theta with the running statistics zeroed ([..., P])."""
    if not model.num_state:
        return theta
    return torch.cat([theta[..., :model.num_trainable], torch.zeros_like(theta[..., model.state_slice])], -1)


def with_state(model: FlatModel, theta: Tensor, state: Tensor) -> Tensor:
    """theta [..., P] with its running statistics replaced by ``state`` [..., num_state]."""
    if not model.num_state:
        return theta
    return torch.cat([theta[..., :model.num_trainable], state.to(theta.dtype)], -1)


def make_update(model: FlatModel, task: Task, recipe: Recipe):
    """The pure SGD step (theta, buf, x_b, y_b, c_b, lr) -> (theta', buf', batch loss); lr is 0-d.

    Running statistics (BatchNorm) are not trained: their gradient is 0, weight decay skips them, and they
    are replaced by the step's updated statistics."""
    batch_gradient = make_batch_gradient(model, task)

    def update(theta, buf, xb, yb, cb, lr):
        g, (loss, state) = batch_gradient(theta, xb, yb, cb)
        buf = recipe.momentum * buf + g + recipe.weight_decay * decayed(model, theta)
        return with_state(model, theta - lr * buf, state), buf, loss

    return update


def as_flat(model: nn.Module | FlatModel) -> FlatModel:
    return model if isinstance(model, FlatModel) else FlatModel(model)


def checkpoint_steps(checkpoints: int | str | Sequence[int], steps: int,
                     placement: str = "middle") -> tuple[Tensor, str]:
    """Where to record checkpoints in a run of ``steps`` updates: (sorted steps [C], placement).

    checkpoints: C (C equal pieces of training, a checkpoint at each piece's midpoint, or with
    placement="end" at the end of each -- the last one the final parameters), "all" (the parameters every
    update starts from, placement "start") or explicit step numbers (sorted here; placement says which
    updates each one stands for, see ``Run``)."""
    if placement not in PLACEMENTS:
        raise SettingError(f"placement must be one of {PLACEMENTS}, got {placement!r}")
    if isinstance(checkpoints, str):
        if checkpoints != "all":
            raise SettingError(f"checkpoints must be a count, 'all' or a list of steps, got {checkpoints!r}")
        return torch.arange(steps), "start"
    if isinstance(checkpoints, bool) or not isinstance(checkpoints, int | Sequence | Tensor):
        raise SettingError(f"checkpoints must be a count, 'all' or a list of steps, got {checkpoints!r}")
    if isinstance(checkpoints, int):
        if checkpoints < 0:
            raise SettingError(f"checkpoints must be >= 0, got {checkpoints}")
        if placement == "start":
            raise SettingError("placement='start' needs explicit steps or checkpoints='all'")
        offset = 1.0 if placement == "end" else 0.5
        return torch.tensor([round((j + offset) * steps / checkpoints) for j in range(checkpoints)],
                            dtype=torch.long), placement
    chosen = torch.as_tensor(list(checkpoints), dtype=torch.long).sort().values
    if len(chosen) and (chosen.min() < 0 or chosen.max() > steps):
        raise SettingError(f"checkpoint steps must lie in 0..{steps}, got {chosen.tolist()}")
    return chosen, placement


def _check_data(data: Split, model: FlatModel, task: Task, theta: Tensor) -> None:
    if not torch.isfinite(data.x).all() or (data.y.is_floating_point() and not torch.isfinite(data.y).all()):
        raise InputError("training data contains NaN or inf; clean or impute it before training")
    try:
        out = model(theta, data.x[:2])
    except RuntimeError as err:
        raise InputError(f"the model cannot take inputs of shape {tuple(data.x.shape[1:])}: {err}") from err
    task.check_targets(out, data.y[:2])


def _diverged(step: int, recipe: Recipe, steps_per_epoch: int, loss: float, which: str = "") -> TrainingError:
    return TrainingError(
        f"training diverged{which} at step {step} (epoch {step // steps_per_epoch}): batch loss is "
        f"{loss:.3g}; lower the learning rate (now {recipe.lr}) or check the data and targets")


def train(model: nn.Module | FlatModel, data: Split, recipe: Recipe, task: Task,
          checkpoints: int | str | Sequence[int] = 6, weights: Tensor | None = None,
          dtype: torch.dtype = torch.float32, progress: bool = True, cache: store.CacheSpec = True,
          init: Tensor | None = None, placement: str = "middle") -> Run:
    """Train one model with ``recipe`` and record its trajectory.

    checkpoints: C evenly spaced checkpoints (at the midpoints of C equal pieces of training;
    placement="end" puts them at the pieces' ends, the last one the final parameters), "all" (the
    parameters at the start of every step), or explicit step numbers (see ``checkpoint_steps``). weights: [N],
    default ones. cache: True (the default folder, $TDAKIT_CACHE or ~/.cache/tdakit), a folder, or
    False; runs are keyed by model, task, recipe, data, weights and checkpoints. init: starting
    parameters [P] (default: the model's initialisation seeded by recipe.seed), e.g. the final
    parameters of a previous stage; the momentum buffer always starts at zero.
    """
    flat = as_flat(model)
    data = data.to(dtype)
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
    steps, placement = checkpoint_steps(checkpoints, len(lrs), placement)
    key = store.key_of("run", flat.describe(), task, recipe, data.fingerprint(), str(dtype), steps.tolist(),
                       store.key_of(weights.tolist()), *([Split(init[None], init[:1]).fingerprint()] if given else []))
    saved = store.cached(store.folder(cache), "run", key, lambda: _trajectory(
        flat, data, recipe, task, init, batches, lrs, weights, steps, progress))
    return Run(flat, task, recipe, data, init, saved["final"], saved["checkpoints"], steps, lrs, batches,
               weights, saved["losses"], placement)


def _trajectory(model: FlatModel, data: Split, recipe: Recipe, task: Task, theta: Tensor, batches: Tensor,
                lrs: Tensor, weights: Tensor, steps: Tensor, progress: bool) -> dict[str, Tensor]:
    """The training loop of ``train``: final parameters, checkpoints [C, P] and batch losses [T]."""
    update = make_update(model, task, recipe)
    buf = torch.zeros_like(theta)
    saved, losses = {}, torch.empty(len(lrs), dtype=torch.float64)
    wanted = set(steps.tolist())
    for k in tqdm(range(len(lrs)), desc="train", disable=not progress, leave=False):
        if k in wanted:
            saved[k] = theta
        idx = batches[k].to(theta.device)
        theta, buf, loss = update(theta, buf, data.x[idx.clamp(min=0)], data.y[idx.clamp(min=0)],
                                  batch_coefficients(idx, weights), lrs[k].to(theta.dtype))
        losses[k] = loss = float(loss)
        if not (abs(loss) < 1e6 * (abs(float(losses[0])) + 1.0)) or not torch.isfinite(theta).all():
            raise _diverged(k, recipe, recipe.steps_per_epoch(len(data)), loss)
    saved[len(lrs)] = theta
    ckpts = torch.stack([saved[int(s)] for s in steps]) if len(steps) else theta.new_zeros(0, len(theta))
    return {"final": theta, "checkpoints": ckpts, "losses": losses}


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
    m, steps = batches.shape[:2]
    weights = (torch.ones(m, len(data), dtype=inits.dtype, device=inits.device) if weights is None
               else weights.to(inits.device, inits.dtype))
    if inits.shape[0] != m or weights.shape != (m, len(data)):
        raise InputError(f"inits {tuple(inits.shape)}, batches {tuple(batches.shape)} and weights "
                         f"{tuple(weights.shape)} must agree on the number of models and points")
    lrs = learning_rates(recipe.schedule, recipe.lr, steps, recipe.warmup).tolist()
    batch_gradients = vmap(make_batch_gradient(flat, task)) if m > 1 else _one_model(make_batch_gradient(flat, task))
    theta, buf = inits.clone(), torch.zeros_like(inits)
    wanted = [] if checkpoint_steps is None else [int(c) for c in checkpoint_steps]
    saved, losses = {}, torch.empty(m, steps, dtype=torch.float64)
    for k in tqdm(range(steps), desc=desc, disable=not progress, leave=False):
        if k in wanted:
            saved[k] = theta.clone()
        idx = batches[:, k].to(inits.device)
        g, (loss, state) = batch_gradients(theta, data.x[idx.clamp(min=0)], data.y[idx.clamp(min=0)],
                                           batch_coefficients(idx, weights))
        # the same update as make_update, in place: M x P tensors are large, fresh ones cost page faults
        buf.mul_(recipe.momentum).add_(g).add_(decayed(flat, theta), alpha=recipe.weight_decay)
        theta.sub_(buf, alpha=lrs[k])
        if flat.num_state:
            theta[:, flat.state_slice] = state
        if not torch.isfinite(loss).all():
            bad = int((~torch.isfinite(loss)).nonzero()[0])
            raise _diverged(k, recipe, max(steps // recipe.epochs, 1), float(loss[bad]), f" (model {bad})")
        losses[:, k] = loss.detach().double().cpu()
        if on_step is not None:
            on_step(m / steps)
    if checkpoint_steps is None:
        return theta
    saved[steps] = theta
    ckpts = torch.stack([saved[c] for c in wanted], 1) if wanted else theta.new_zeros(m, 0, theta.shape[1])
    return theta, ckpts, losses


def _one_model(batch_gradient):
    """The stacked batch gradient for M = 1 without vmap (same results, less per-step overhead)."""
    def gradient(theta, xb, yb, cb):
        g, (loss, state) = batch_gradient(theta[0], xb[0], yb[0], cb[0])
        return g[None], (loss[None], state[None])

    return gradient


def train_ensemble(model: nn.Module | FlatModel, data: Split, recipe: Recipe, task: Task, members: int = 4,
                   first_seed: int = 1, checkpoints: int | str | Sequence[int] = 6, dtype: torch.dtype = torch.float32,
                   progress: bool = True, placement: str = "middle") -> list[Run]:
    """``members`` independently trained runs with recipe seeds first_seed, first_seed + 1, ... (each its
    init and batch order, as ``train`` with ``Recipe(seed=s)`` would make them), trained together with
    vmap: list of ``Run``. The default (4 runs seeded 1..4) completes a run trained with seed 0 to 5."""
    if isinstance(members, bool) or not isinstance(members, int) or members < 1:
        raise SettingError(f"members must be a whole number >= 1, got {members!r}")
    seeds = range(first_seed, first_seed + members)
    flat = as_flat(model)
    data = data.to(dtype)
    n, device = len(data), data.x.device
    lrs = recipe.learning_rates(n)
    steps, placement = checkpoint_steps(checkpoints, len(lrs), placement)
    recipes = [dataclasses.replace(recipe, seed=int(s)) for s in seeds]
    inits = torch.stack([flat.init(r.seed, dtype) for r in recipes]).to(device)
    _check_data(data, flat, task, inits[0])
    orders = torch.stack([batch_order(torch.arange(n), r.batch_size, r.epochs, seed_of("order", r.seed))
                          for r in recipes])
    weights = torch.ones(n, dtype=dtype, device=device)
    runs = []
    chunk = retraining_chunk(flat, task, data, recipe.batch_size, dtype, device)
    for s in range(0, len(recipes), chunk):
        part = slice(s, s + chunk)
        final, ckpts, losses = train_many(flat, data, recipe, task, inits[part], orders[part], progress=progress,
                                          desc="train ensemble", checkpoint_steps=steps)
        for j, r in enumerate(recipes[part]):
            runs.append(Run(flat, task, r, data, inits[s + j], final[j], ckpts[j], steps, lrs, orders[s + j],
                            weights, losses[j], placement))
    return runs


def models_per_chunk(num_params: int, dtype: torch.dtype, device: torch.device | str | None = None,
                     budget_bytes: int | None = None) -> int:
    """How many models to train together when stacking them pays (``stack_models``): on a CPU each stacked
    [M, P] tensor stays under ~24 MiB, where allocators still reuse memory instead of mapping fresh pages on
    every step; on a GPU under 256 MiB (the models' activations, which grow with M too, take the rest)."""
    on_gpu = torch.device(device or "cpu").type == "cuda"
    if budget_bytes is None:
        budget_bytes = 256 * 2**20 if on_gpu else 24 * 2**20
    return max(1, min(256, budget_bytes // (num_params * torch.finfo(dtype).bits // 8)))


# Stacking models under vmap removes the per-step overhead of a loop (Python, dispatch, small kernels) but
# makes every tensor M times larger, and turns convolutions into grouped ones. On a CPU it pays while one
# model's step is small: benchmarks/retrain_paths.py (BENCHMARKS.md, issue 12) measured MLPs stacked 4-6x
# faster below 15 MFLOP a step, 1.5x at 166 MFLOP (the paper's MNIST MLP), 0.9x at 612 MFLOP; a small
# CNN (104 MFLOP, nearly all convolution) about even (1.07x) and a ResNet-9 of width 8 slower. A convolution
# FLOP therefore counts CONV_WEIGHT matrix-product FLOPs.
CPU_STACKING_MFLOP = 400.0
CONV_WEIGHT = 4.0
_step_flops_seen: dict[tuple, tuple[int, int]] = {}


def step_flops(model: FlatModel, task: Task, x: Tensor, y: Tensor) -> tuple[int, int]:
    """(matrix-product FLOPs, convolution FLOPs) of one model's training step on the batch (x [B, ...],
    y [B]): the forward and backward of the weighted batch loss, counted by torch.utils.flop_counter on meta
    tensors (no work is done; the counts are exact for those operations, elementwise work is not counted)."""
    key = (model.describe(), tuple(x.shape), tuple(y.shape), x.dtype, y.dtype)
    if key not in _step_flops_seen:
        meta = torch.device("meta")
        theta = torch.zeros(model.num_params, device=meta)
        c = torch.ones(len(x), device=meta)
        with FlopCounterMode(display=False) as counter:
            make_batch_gradient(model, task)(theta, x.to(meta, torch.float32 if x.is_floating_point() else x.dtype),
                                             y.to(meta), c)
        counts = counter.get_flop_counts().get("Global", {})
        conv = sum(int(n) for op, n in counts.items() if "conv" in str(op))
        _step_flops_seen[key] = (int(counter.get_total_flops()) - conv, conv)
    return _step_flops_seen[key]


def stack_models(model: FlatModel, task: Task, x: Tensor, y: Tensor, device: torch.device | str | None = None) -> bool:
    """Whether to train several models together under vmap (True) or one at a time (False), for training
    batches like (x [B, ...], y [B]). On a GPU: always (kernels there are launch-bound at these sizes; not
    yet measured). On a CPU: while one model's step costs under ``CPU_STACKING_MFLOP`` million matrix-product
    FLOPs, a convolution FLOP counting ``CONV_WEIGHT`` (``step_flops``). The choice is a pure function of the
    model, batch shape and device, so reruns take the same path; pass ``chunk=`` to retraining to override."""
    if torch.device(device or "cpu").type == "cuda":
        return True
    matmul, conv = step_flops(model, task, x, y)
    return matmul + CONV_WEIGHT * conv < CPU_STACKING_MFLOP * 1e6


def even_chunks(count: int, chunk: int) -> int:
    """The chunk size that splits ``count`` jobs into as many chunks as ``chunk`` would, but evenly (256 jobs
    at most 183 a chunk: two chunks of 128, not 183 + 73, so no chunk runs nearly empty)."""
    pieces = max(1, -(-count // max(chunk, 1)))
    return -(-count // pieces)


def retraining_chunk(model: FlatModel, task: Task, data: Split, batch_size: int, dtype: torch.dtype,
                     device: torch.device | str | None = None) -> int:
    """Models per ``train_many`` call: ``models_per_chunk`` if ``stack_models`` says stacking pays, else 1."""
    n = min(batch_size, len(data))
    if not stack_models(model, task, data.x[:n], data.y[:n], device):
        return 1
    return models_per_chunk(model.num_params, dtype, device)
