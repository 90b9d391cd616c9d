"""Ground truth for the linear datamodeling score: retrain on random subsets, measure the queries.

M random subsets, each keeping round(fraction * N) points (fraction=0.5: halves; 0.99: 1% removed). Two
protocols say how each subset is retrained (docs/evaluation.md):

- "fresh" (the default): R seeds on each subset (seed r gives model r its initialisation on every subset, a
  common random number that makes subsets comparable; each (subset, seed) gets its own batch order). It asks
  what the recipe does without the points, whatever the seed: the question a practitioner retraining asks.
- "same": the run's own trajectory rerun once per subset (its initialisation and batch order, the removed
  points weighted 0). It asks what *this* run would have done without them: the question exact unrolling
  answers exactly, to first order. Retraining is deterministic, so R = 1 and reliability is 1 by construction.
  Three more reruns with nothing removed, two of them with every weight moved by one part in a million
  (``JITTER``, random signs, then the opposite signs), measure the ``jitter``: how far such a change moves the
  outcome, and whether opposite changes move it oppositely. On a stable run the outcome responds in proportion,
  by a millionth of a removal's effect; on a chaotic one (a rate at the edge of stability, where a change of
  1e-4 in one point's weight can move the outcome as much as removing it) the response is large and unrelated
  to the change's sign, and the same-trajectory question has no stable answer: ``jitter_share`` and
  ``jitter_asymmetry`` say how far, and a warning above CHAOTIC_SHARE.

values[m, r, q] = f_q after retraining. Work is chunked and each chunk is cached atomically, so an interrupted
computation resumes where it stopped.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor
from tqdm.auto import tqdm

from .. import deprecation, display, distributed, store
from ..attribution.methods import check_query
from ..datasets import Split
from ..errors import SettingError, check_choice
from ..grads import measurements
from ..recipe import seed_of
from ..stacking import even_chunks, retraining_chunk
from ..training import Run
from .removal import Protocol
from .retrain import retrain, retrain_reweighted


@dataclass
class GroundTruth:
    """masks: bool [M, N] (kept points); values: [M, R, Q] measurements after retraining."""

    masks: Tensor
    values: Tensor
    protocol: str = "fresh"  # "fresh" (new seeds) or "same" (the run's own trajectory); see the module docstring
    jitter: Tensor | None = None  # "same": [2, Q] f_q after moving the weights by +-JITTER minus the plain rerun's

    @property
    def mean(self) -> Tensor:
        """Seed-averaged measurement per subset and query: [M, Q]."""
        return self.values.mean(1)

    @property
    def num_seeds(self) -> int:
        return self.values.shape[1]

    @property
    def jitter_share(self) -> float | None:
        """A same-trajectory ground truth's mean |jitter| against the spread (standard deviation) of each query's
        measurement across the subsets, median over queries: about 1e-6 on a stable run, 0.1 to 1 where the
        training is chaotic and a millionth of a change moves it as far as the removals do. None if not measured."""
        if self.jitter is None:
            return None
        spread = self.mean.double().std(0)
        size = self.jitter.double().abs().mean(0)
        return float((size / spread.clamp(min=torch.finfo(torch.float64).tiny)).median())

    @property
    def jitter_asymmetry(self) -> float | None:
        """|f(+) + f(-) - 2 f(0)| / |f(+) - f(-)| of the two jittered reruns, median over queries: about 1e-6 where
        the outcome responds in proportion (opposite changes, opposite moves), about 1 where it does not."""
        if self.jitter is None:
            return None
        plus, minus = self.jitter.double()
        return float(((plus + minus).abs() / (plus - minus).abs().clamp(min=torch.finfo(torch.float64).tiny))
                     .median())

    def _facts(self) -> dict[str, object]:
        m, r, q = self.values.shape
        kept = float(self.masks.double().mean()) if self.masks.numel() else 0.0
        return {"protocol": describe_protocol(self.protocol),
                "subsets": f"{m} subsets of {self.masks.shape[1]} training points, each keeping {kept:.0%}",
                "seeds": f"{r} retrainings per subset", "queries": q,
                "values": f"measurements {display.shape_of(self.values)} [subsets, seeds, queries]",
                **({"jitter": jitter_text(self.jitter_share, self.jitter_asymmetry)} if self.jitter is not None
                   else {}),
                "warning": too_few(m, q, r if self.protocol == "fresh" else None)
                or chaotic(self.jitter_share, self.jitter_asymmetry)}

    def __repr__(self) -> str:
        return display.text_block("GroundTruth", self._facts())

    def _repr_html_(self) -> str:
        return display.html_block("GroundTruth", self._facts())


def describe_protocol(protocol: str) -> str:
    """One line naming a ground truth's protocol, for tables and plots."""
    return {"fresh": "fresh (each subset retrained with new seeds)",
            "same": "same trajectory (the run's initialisation and batch order, removed points weighted 0)"}[protocol]


JITTER = 1e-6  # the relative change of every weight in the jittered reruns
CHAOTIC_SHARE = 0.2  # jitter above a fifth of the spread across subsets (100,000 times a smooth run's) ...
CHAOTIC_ASYMMETRY = 0.5  # ... that does not follow the change's sign: chaotic training


def jitter_text(share: float, asymmetry: float) -> str:
    return (f"moving every weight by one part in a million moves the rerun {share:.2g} x the spread of the "
            f"measurements across subsets, {'not ' if asymmetry > CHAOTIC_ASYMMETRY else ''}in proportion "
            f"(asymmetry {asymmetry:.2g})")


def chaotic(share: float | None, asymmetry: float | None) -> str | None:
    """A warning when a same-trajectory ground truth's jitter is large and does not follow the sign of the change
    (None when it does, or was not measured)."""
    if share is None or asymmetry is None or share <= CHAOTIC_SHARE or asymmetry <= CHAOTIC_ASYMMETRY:
        return None
    return (f"{jitter_text(share, asymmetry)}: this training is chaotic (a negligible change to the data moves its "
            "outcome a good part of what removing points does), so the same-trajectory ground truth is partly "
            "amplified accident and exact unrolling's derivative, exact for tiny changes, may describe it poorly; "
            "compare with protocol='fresh'")


def too_few(subsets: int, queries: int, seeds: int | None = None) -> str | None:
    """A warning when a ground truth is too small for its LDS interval to mean much (None when it is not): the
    Spearman correlation over fewer than 10 subsets, or a bootstrap over fewer than 5 queries, is mostly noise,
    and reliability needs at least 2 seeds."""
    problems = []
    if subsets < 10:
        problems.append(f"{subsets} subsets (a rank correlation needs about 10 or more)")
    if queries < 5:
        problems.append(f"{queries} queries (the interval is a bootstrap over queries)")
    if seeds is not None and seeds < 2:
        problems.append("1 seed per subset (reliability and the LDS ceiling need 2 or more)")
    if not problems:
        return None
    return "too small for the LDS interval to mean much: " + "; ".join(problems)


def random_subsets(n: int, subsets: int, fraction: float, seed: int) -> Tensor:
    """bool [subsets, n], each row keeping round(fraction * n) points."""
    if not 0.0 < fraction < 1.0:
        raise SettingError(f"fraction must lie in (0, 1), got {fraction}")
    g = torch.Generator().manual_seed(seed_of("subsets", seed))
    keep = max(1, round(fraction * n))
    masks = torch.zeros(subsets, n, dtype=torch.bool)
    for m in range(subsets):
        masks[m, torch.randperm(n, generator=g)[:keep]] = True
    return masks


def retraining_key(run: Run) -> tuple:
    """What retraining a run's recipe depends on (model, task, recipe without its seed, data, dtype): not the
    run's identity (``Run.fingerprint``), since retrained models draw their own initialisations and batch
    orders, so runs that differ only in seed share a ground truth."""
    return (run.model.describe(), run.task, dataclasses.replace(run.recipe, seed=0), run.train.fingerprint(),
            str(run.final.dtype))


def groundtruth(run: Run, query: Split, subsets: int = 100, fraction: float = 0.5, seeds: int | None = None,
                seed: int = 0, models_per_chunk: int | None = None, cache: store.CacheSpec = True,
                progress: bool = True, chunk: int | None = None, protocol: Protocol = "fresh") -> GroundTruth:
    """Retrain ``subsets`` x ``seeds`` models with the run's recipe; see the module docstring.

    fraction: the share of training points each subset keeps (0.5: halves; 0.99 and 0.95 remove 1% and 5%).
    protocol: "fresh" (new seeds; ``seeds`` default 5) or "same" (the run's own trajectory; one retraining per
    subset, so ``seeds`` is 1). models_per_chunk: retrainings per cached piece, trained together (default: one vmap
    batch, ``stacking.retraining_chunk``, so an interruption loses at most one batch). cache: True ($TDAKIT_CACHE
    or ~/.cache/tdakit), a folder, or False. chunk: tdakit 0.2's name of models_per_chunk."""
    models_per_chunk = renamed_chunk(models_per_chunk, chunk, "groundtruth")
    check_choice("protocol", protocol, Protocol)
    seeds = check_protocol_seeds(protocol, seeds)
    check_query(run, query)
    check_counts(subsets, seeds)
    masks = random_subsets(run.num_train, subsets, fraction, seed)

    def retrain_jobs(keep: Tensor, init_seeds: list[int], order_seeds: list[int], on_step) -> Tensor:
        if protocol == "same":
            weights = run.weights.to(run.final.device, run.final.dtype) * keep.to(run.final.device, run.final.dtype)
            return retrain_reweighted(run, weights, progress=False, on_step=on_step)
        return retrain(run, keep, init_seeds=init_seeds, order_seeds=order_seeds, progress=False, on_step=on_step)

    def measurements_of(theta: Tensor) -> Tensor:
        return measurements(run.model, run.task, theta, query.to(device=theta.device))

    # a fresh ground truth depends on the recipe, not on which run it judges; the same-trajectory one on the run
    origin = retraining_key(run) if protocol == "fresh" else ("same trajectory", run.fingerprint())
    key = store.key_of("groundtruth", origin, query.fingerprint(), subsets, fraction, seed)
    chunk = models_per_chunk or retraining_chunk(run.model, run.task, run.train, run.recipe.batch_size,
                                                 run.final.dtype, run.final.device)
    truth = collect(masks, seeds, len(query), run.final.dtype, seed, retrain_jobs, measurements_of, key, chunk,
                    cache, progress, "ground truth (models)")
    if protocol == "fresh":
        return truth
    jitter = store.cached(cache, "groundtruth", store.key_of(key, "jitter, both signs", JITTER),
                          lambda: {"values": jittered(run, measurements_of, seed)})["values"]
    truth = dataclasses.replace(truth, protocol=protocol, jitter=jitter)
    warning = chaotic(truth.jitter_share, truth.jitter_asymmetry)
    if warning:
        warnings.warn(f"groundtruth: {warning}", UserWarning, stacklevel=2)
    return truth


def jittered(run: Run, measurements_of: Callable[[Tensor], Tensor], seed: int) -> Tensor:
    """f_q after rerunning the run's trajectory with every weight moved by +JITTER sign_i, and by -JITTER sign_i,
    minus f_q after rerunning it as it is, the three trained together: [2, Q]."""
    signs = jitter_signs(run.num_train, seed).to(run.final)
    weights = run.weights.to(run.final)
    f = measurements_of(retrain_reweighted(run, torch.stack([weights, weights * (1 + JITTER * signs),
                                                             weights * (1 - JITTER * signs)]), progress=False))
    return (f[1:] - f[0]).cpu()


def jitter_signs(n: int, seed: int = 0) -> Tensor:
    """The random signs [n] (+-1, float64) of the jittered rerun's weight changes, w_i (1 + JITTER sign_i)."""
    g = torch.Generator().manual_seed(seed_of("jitter", seed))
    return torch.randint(0, 2, (n,), generator=g).double() * 2 - 1


def check_protocol_seeds(protocol: str, seeds: int | None) -> int:
    """The seeds a protocol retrains each subset with: ``seeds`` (default 5) for "fresh", 1 for "same"."""
    if protocol == "same":
        if seeds not in (None, 1):
            raise SettingError(f"protocol='same' reruns the run's own trajectory, which is deterministic: one "
                               f"retraining per subset. Leave seeds out (or pass seeds=1), got seeds={seeds!r}")
        return 1
    return 5 if seeds is None else seeds


def renamed_chunk(models_per_chunk: int | None, chunk: int | None, caller: str) -> int | None:
    """``models_per_chunk``, or tdakit 0.2's ``chunk=`` for it with a warning."""
    if chunk is None:
        return models_per_chunk
    deprecation.warn(f"{caller}(chunk=...)", f"{caller}(models_per_chunk=...)")
    return chunk


def check_counts(subsets: int, seeds: int) -> None:
    """Raise a clear error for a ground truth that would be empty or unjudgeable (the queries are
    ``check_query``'s)."""
    for name, value, least in (("subsets", subsets, 2), ("seeds", seeds, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise SettingError(f"{name} must be a whole number >= {least}, got {value!r}")


def collect(masks: Tensor, seeds: int, queries: int, dtype: torch.dtype, seed: int,
            retrain_jobs: Callable[..., Tensor], measurements_of: Callable[[Tensor], Tensor], key: str, chunk: int,
            cache: store.CacheSpec, progress: bool, desc: str) -> GroundTruth:
    """Run every (subset m, seed r) job through ``retrain_jobs(keep [J, N], init_seeds, order_seeds,
    on_step) -> theta [J, P]`` in chunks, measure them (``measurements_of(theta) -> [J, queries]`` in ``dtype``) and
    cache each chunk atomically under ``key`` and the jobs it holds. Jobs run seed by seed, so asking again
    with more seeds reuses every chunk already computed. The progress bar counts models and moves with every
    training step.

    Under torch.distributed the chunks are dealt out to the processes (all of them cut the jobs the same way)
    and the measurements summed; a process left without a chunk contributes zeros."""
    subsets = len(masks)
    jobs = [(m, r) for r in range(seeds) for m in range(subsets)]
    bar = tqdm(total=len(jobs), desc=desc, disable=not progress, unit="model",
               bar_format="{l_bar}{bar}| {n:.0f}/{total_fmt} [{elapsed}<{remaining}]")
    if distributed.active():  # smaller chunks, so that each process gets work when there is enough of it
        chunk = min(chunk, -(-len(jobs) // distributed.world_size()))
    chunk = distributed.agreed_size(even_chunks(len(jobs), chunk))
    starts = range(0, len(jobs), chunk)
    ours = set(distributed.mine(len(starts)))  # under torch.distributed each process retrains its chunks
    values = torch.zeros(subsets, seeds, queries, dtype=dtype)
    reused = 0
    for index, start in enumerate(starts):
        part = jobs[start:start + chunk]
        if index not in ours:
            continue
        done_before = bar.n

        def advance(models: float, part=part, done_before=done_before) -> None:
            # a training step moves the bar by its share of a model; float sums of those shares can pass the
            # chunk's end (tqdm then warns), so the bar stops at the chunk's end and is set exactly below
            bar.update(max(0.0, min(models, done_before + len(part) - bar.n)))

        def compute(part=part, advance=advance) -> dict:
            theta = retrain_jobs(masks[[m for m, _ in part]], [seed_of("init", seed, r) for _, r in part],
                                 [seed_of("order", seed, m, r) for m, r in part], advance)
            return {"values": measurements_of(theta).cpu()}

        chunk_key = store.key_of(key, part)
        hit = store.load(cache, "groundtruth", chunk_key)
        reused += len(part) if hit is not None else 0
        got = (hit if hit is not None else store.cached(cache, "groundtruth", chunk_key, compute))["values"]
        for (m, r), row in zip(part, got, strict=True):
            values[m, r] = row
        bar.update(done_before + len(part) - bar.n)  # exact count (a cached chunk arrives at once)
    bar.close()
    if reused and progress:
        store.notice(f"{desc.split(' (')[0]}: {reused} of {len(jobs)} models read from the cache "
               f"({store.folder(cache)}), {len(jobs) - reused} retrained")
    if distributed.active():  # the other processes' chunks: sum the measurements (each filled only its own)
        values = distributed.sum_over_ranks(values)
    return GroundTruth(masks, values)
