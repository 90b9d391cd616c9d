"""tdakit's EK-FAC influence against kronfluence 1.0.1 on the same model, data and damping (CPU).

    make bench-extra                      # installs kronfluence 1.0.1 into .venv (benchmark only)
    python benchmarks/kronfluence_compare.py --setting concrete
    python benchmarks/kronfluence_compare.py --setting mnist

Both use the empirical Fisher (observed labels: no sampling noise, so the numbers must agree) and the
same total damping: tdakit's curvature includes weight decay, kronfluence's does not, so kronfluence
gets damping + weight decay. kronfluence scores grad f_q^T (F + damping)^{-1} grad L_i for a summed
training loss; tdakit's convention is -(1/N) times that. Prints correlations and median seconds, and
writes benchmarks/results/kronfluence_<setting>.json.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import tempfile
import warnings
from pathlib import Path

import torch
from common import median_seconds, setup

import tdakit
from tdakit.evaluation import spearman


def kronfluence_scores(run, query, damping: float | None, empirical: bool, workdir: str, strategy: str = "ekfac"):
    """Pairwise scores [Q, N] from kronfluence, converted to tdakit's convention (damping None: its
    heuristic, 0.1 x the mean eigenvalue per layer)."""
    from kronfluence.analyzer import Analyzer, prepare_model
    from kronfluence.arguments import FactorArguments, ScoreArguments
    from kronfluence.task import Task

    task = run.task

    class KTask(Task):
        def compute_train_loss(self, batch, model, sample=False):
            x, y = batch
            out = model(x)
            if sample:
                with torch.no_grad():
                    y = task.sample_targets(out)
            return task.loss(out, y).sum()

        def compute_measurement(self, batch, model):
            x, y = batch
            return task.measurement(model(x), y).sum()

    module = copy.deepcopy(run.model.network)
    module.load_state_dict(run.model.unflatten(run.final.detach().clone()))
    module.eval()
    ktask = KTask()
    module = prepare_model(module, ktask)
    analyzer = Analyzer("tdakit-compare", module, ktask, cpu=True, disable_tqdm=True, output_dir=workdir)
    train = torch.utils.data.TensorDataset(run.train.x, run.train.y)
    queries = torch.utils.data.TensorDataset(query.x, query.y)
    analyzer.fit_all_factors("factors", train, per_device_batch_size=512, overwrite_output_dir=True,
                             factor_args=FactorArguments(strategy=strategy, use_empirical_fisher=empirical))
    analyzer.compute_pairwise_scores("scores", "factors", queries, train, per_device_query_batch_size=len(query),
                                     per_device_train_batch_size=512, overwrite_output_dir=True,
                                     score_args=ScoreArguments(damping_factor=damping))
    scores = analyzer.load_pairwise_scores("scores")["all_modules"]
    return -scores.double() / run.num_train


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--setting", choices=["concrete", "mnist"], default="concrete")
    p.add_argument("--queries", type=int, default=100)
    p.add_argument("--damping", type=float, default=None, help="default: the run's implied damping")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", default="benchmarks/results")
    args = p.parse_args()
    logging.disable(logging.WARNING)
    warnings.simplefilter("ignore", FutureWarning)
    torch.manual_seed(0)
    data, run = setup(args.setting)
    recipe = run.recipe
    query = data.query.subset(slice(0, args.queries))
    damping = tdakit.attribution.implied_damping(run) if args.damping is None else args.damping
    print(f"{args.setting}: {run.model.num_params} parameters, {run.num_train} train, {len(query)} queries, "
          f"damping {damping:.3g} (+ weight decay {recipe.weight_decay:g})")
    curvature = tdakit.curvature.Kronecker(fisher="empirical")
    ours, ours_s = median_seconds(lambda: tdakit.attribute(run, query, "influence", curvature=curvature, progress=False,
                                                           damping=damping).values.double(), args.repeats)
    with tempfile.TemporaryDirectory() as workdir:
        theirs, theirs_s = median_seconds(lambda: kronfluence_scores(
            run, query, damping + recipe.weight_decay, True, workdir), args.repeats)
    per_query = torch.stack([torch.corrcoef(torch.stack([a, b]))[0, 1] for a, b in zip(ours, theirs, strict=True)])
    overall = float(torch.corrcoef(torch.stack([ours.flatten(), theirs.flatten()]))[0, 1])
    rank = float(spearman(ours, theirs).mean())
    result = {"setting": args.setting, "parameters": run.model.num_params, "train": run.num_train,
              "queries": len(query), "damping": damping, "weight_decay": recipe.weight_decay,
              "pearson_overall": overall, "pearson_per_query_min": float(per_query.min()),
              "pearson_per_query_mean": float(per_query.mean()), "spearman_per_query_mean": rank,
              "relative_difference": float((ours - theirs).norm() / theirs.norm()),
              "tdakit_seconds": ours_s, "kronfluence_seconds": theirs_s, "repeats": args.repeats}
    for k, v in result.items():
        print(f"{k}: {v:.4g}" if isinstance(v, float) else f"{k}: {v}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"kronfluence_{args.setting}.json").write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
