"""Every method on the text presets, judged by retraining, and what text costs (issue 22).

    tdakit sst2 --archive ../shared/data/sst2-tsv.tar.xz              # once: into the data folder
    tdakit wikitext2 --archive ../shared/data/wikitext2-valid-test.tar.xz
    python benchmarks/text_lds.py sst2 --subsets 50 --seeds 2
    python benchmarks/text_lds.py wikitext2 --subsets 50 --seeds 2
    python benchmarks/text_lds.py sst2 --speed-only                   # tokens per second against length
    python benchmarks/text_lds.py sst2 --epochs 2 --no-unrolling      # not converged
    python benchmarks/text_lds.py sst2 --stages --subsets 30 --seeds 1  # two stages: fine-tuning on new phrases
    python benchmarks/text_lds.py sst2 --embeddings --no-unrolling    # also with the embeddings left out
    python benchmarks/text_lds.py wikitext2 --subsets 40 --queries 10  # exact unrolling too, on 10 queries

The preset's run (accuracy or test loss printed), every method of the preset plus exact unrolling, gradient
similarities and representation similarity, judged against a fresh-seed ground truth (M half subsets x R seeds,
cached in TDAKIT_CACHE) with influence as the baseline of the paired differences. Then tokens per second: the
EK-FAC fit (the training tokens over its seconds) and the score products (grad dot: every training token
against every query) at sequence lengths 8, 16 and 32 (the same sentences cut). ``--embeddings`` adds influence,
SOURCE and TRAK with the token and position embeddings left out (the presets factor them). Writes
benchmarks/results/text_<preset>.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import torch

import tdakit
from tdakit import curvature as curv
from tdakit.evaluation import GroundTruth, reliability
from tdakit.experiment import Method, run_experiment
from tdakit.presets import TEXT_EMBEDDINGS, preset

OUT = Path("benchmarks/results")


def quality(run, data) -> str:
    """Query-side accuracy (classification) or mean test loss per token (language model)."""
    with torch.no_grad():
        outputs = run.model(run.final, data.test.x[:500])
        if isinstance(run.task, tdakit.LanguageModeling):
            return f"test loss {float(run.task.loss(outputs, data.test.y[:500]).mean()):.3f} nats/token"
        return f"dev accuracy {float((outputs.argmax(1) == data.test.y[:500]).float().mean()):.3f}"


def speed(setting, data, lengths=(8, 16, 32)) -> list[dict]:
    """Seconds of the EK-FAC fit and of the grad-dot products at each sequence length, on the same sentences
    cut (a model trained briefly at that length: the cost, not the quality, is measured)."""
    rows = []
    for length in lengths:
        short = dataclasses.replace(setting, length=length,
                                    recipe=dataclasses.replace(setting.recipe, epochs=1))
        cut = dataclasses.replace(data, train=tdakit.Split(data.train.x[:, :length], data.train.y[:, :length]
                                                           if data.train.y.dim() == 2 else data.train.y),
                                  query=tdakit.Split(data.query.x[:, :length], data.query.y[:, :length]
                                                     if data.query.y.dim() == 2 else data.query.y))
        run = short.train(cut, progress=False, cache=False)
        tokens = int((cut.train.x != 0).sum())
        start = time.perf_counter()
        curv.fit(setting.curvature, run.model, run.task, run.final[None], run.train, run.recipe.weight_decay,
                 progress=False)
        fit = time.perf_counter() - start
        start = time.perf_counter()
        tdakit.attribute(run, cut.query, "grad_dot", progress=False)
        products = time.perf_counter() - start
        rows.append({"length": length, "tokens": tokens, "fit_seconds": fit, "fit_tokens_per_second": tokens / fit,
                     "product_seconds": products, "product_tokens_per_second": tokens * len(cut.query) / products})
        print(f"| {length} | {tokens:,} | {fit:.1f} | {tokens / fit:,.0f} | {products:.1f} | "
              f"{tokens * len(cut.query) / products:,.0f} |", flush=True)
    return rows


def two_stages(setting, data, subsets: int, seeds: int) -> dict:
    """A pipeline on text: the training phrases in two disjoint class-balanced halves, the second trained from the
    first's final parameters (a fine-tuning stage at a tenth of the rate). Judged on the first stage's phrases,
    whose effect the second stage partly overwrites (the setting where SOURCE should beat the final-parameter
    influence function)."""
    half = len(data.train) // 2
    first, second = tdakit.datasets.balanced_parts(data.train, (half, half))
    fine = dataclasses.replace(setting.recipe, lr=setting.recipe.lr / 10, seed=1)
    stages = [tdakit.Stage(first, setting.recipe, name="first half"), tdakit.Stage(second, fine, name="fine-tuning")]
    staged = tdakit.train_stages(setting.model(len(data.vocabulary)), stages, setting.task, progress=False)
    start = time.perf_counter()
    truth = tdakit.groundtruth_stages(staged, data.query, 0, subsets=subsets, fraction=0.5, seeds=seeds,
                                      progress=False)
    judged = reliability(truth) if seeds > 1 else "one seed: reliability not measured"
    print(f"two stages: ground truth of the first stage's phrases M = {subsets}, R = {seeds}: {judged} "
          f"({time.perf_counter() - start:.0f} s)", flush=True)
    methods = {"SOURCE (L=3 per stage)": Method("source", segments=3, curvature=setting.curvature),
               "influence (final parameters, pooled data)": Method("influence", curvature=setting.curvature),
               "TracIn": Method("tracin")}
    table = run_experiment(staged, data.query, methods, truth, stage=0,
                           baseline="influence (final parameters, pooled data)",
                           title="two stages, the first stage's phrases", progress=False)
    print(table, flush=True)
    return table.as_dict()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("setting", choices=["sst2", "wikitext2"])
    parser.add_argument("--subsets", type=int, default=50)
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--speed-only", action="store_true")
    parser.add_argument("--epochs", type=int, default=None, help="train this many epochs instead (not converged)")
    parser.add_argument("--no-unrolling", action="store_true", help="leave exact unrolling out (long runs)")
    parser.add_argument("--stages", action="store_true", help="the two-stage pipeline instead (two_stages)")
    parser.add_argument("--embeddings", action="store_true", help="also the Kronecker methods without embeddings")
    parser.add_argument("--queries", type=int, default=None, help="the first Q queries only (the same ground truth)")
    args = parser.parse_args()
    torch.manual_seed(0)
    setting = preset(args.setting)
    if args.epochs is not None:
        setting = dataclasses.replace(setting, recipe=dataclasses.replace(setting.recipe, epochs=args.epochs))
    data = setting.data()
    out: dict = {"setting": args.setting, "description": setting.description, "epochs": setting.recipe.epochs}
    if args.stages:
        out["two_stages"] = two_stages(setting, data, args.subsets, args.seeds)
        OUT.mkdir(exist_ok=True)
        (OUT / f"text_{args.setting}_stages.json").write_text(json.dumps(out, indent=1, default=str))
        return
    if not args.speed_only:
        start = time.perf_counter()
        run = setting.train(data, progress=False)
        print(f"{args.setting}: {setting.description}; {run.model.num_params:,} parameters; {quality(run, data)} "
              f"({time.perf_counter() - start:.0f} s)", flush=True)
        start = time.perf_counter()
        truth = tdakit.groundtruth(run, data.query, subsets=args.subsets, fraction=0.5, seeds=args.seeds,
                                   progress=False)
        print(f"ground truth M = {args.subsets}, R = {args.seeds}: {reliability(truth)} "
              f"({time.perf_counter() - start:.0f} s)", flush=True)
        query = data.query
        if args.queries is not None:  # the same ground truth, its first Q queries
            truth = GroundTruth(truth.masks, truth.values[:, :, :args.queries])
            query = query.subset(slice(0, args.queries))
        methods = {**({} if args.no_unrolling else {"exact unrolling": Method("unrolled")}), **setting.methods(),
                   "grad dot": Method("grad_dot"), "grad cos": Method("grad_cos"),
                   "representation": Method("representation")}
        if args.embeddings:
            left_out = dataclasses.replace(setting.curvature, exclude=TEXT_EMBEDDINGS)
            methods.update({"influence, embeddings left out": Method("influence", curvature=left_out),
                            "SOURCE (L=3), embeddings left out": Method("source", segments=3, curvature=left_out),
                            "TRAK, embeddings left out": Method("trak", exclude=TEXT_EMBEDDINGS)})
        table = run_experiment(run, query, methods, truth, baseline="influence",
                               title=f"{args.setting}, fresh seeds, halves", progress=False)
        print(table, flush=True)
        out.update(parameters=run.model.num_params, quality=quality(run, data), table=table.as_dict())
    if args.queries is None:  # the cost on every query
        print("\n| length | training tokens | EK-FAC fit s | fit tokens/s | grad-dot products s | "
              "token-query products/s |\n|---|---|---|---|---|---|", flush=True)
        out["speed"] = speed(setting, data)
    OUT.mkdir(exist_ok=True)
    suffix = (f"_epochs{args.epochs}" if args.epochs is not None else "") + ("_embeddings" if args.embeddings else "") \
        + (f"_queries{args.queries}" if args.queries is not None else "")
    (OUT / f"text_{args.setting}{suffix}.json").write_text(json.dumps(out, indent=1, default=str))


if __name__ == "__main__":
    main()
