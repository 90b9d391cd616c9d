"""nn.Conv1d factored by the Kronecker methods, against leaving it out: a convolutional language model on
WikiText-2 judged by retraining.

    tdakit wikitext2 --archive ../shared/data/wikitext2-valid-test.tar.xz     # once: into the data folder
    python benchmarks/conv1d_lds.py --subsets 40 --seeds 2 --unrolling
    python benchmarks/conv1d_lds.py --subsets 40 --unrolling --protocol same
    python benchmarks/conv1d_lds.py --subsets 40 --unrolling --protocol same --kept 0.99    # 1% removed

The `wikitext2` preset's data (1,000 passages of 32 tokens, 2,000 words, 50 query passages) and recipe, with a
causal convolutional model in place of the Transformer: token embeddings, two nn.Conv1d layers of kernel 3 over
the positions (each padded on the left only, so that position t sees tokens up to t), ReLU, and a Linear head
to the vocabulary. Influence, SOURCE and TRAK with the convolutions factored (the default now) and with them
left out (what the Kronecker methods needed before: their parameters then contribute 0), influence from the
output layer alone and at the heuristic damping, beside TracIn, the gradient similarities and (--unrolling)
exact unrolling, against a fresh-seed ground truth of half subsets (cached in TDAKIT_CACHE). With a
block-diagonal curvature the influence scores are a sum over layers, so these rows show what each part adds.
--protocol same judges them against the run's own trajectory retrained without each half instead. Writes
benchmarks/results/conv1d_wikitext2_<protocol>.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import tdakit
from tdakit.curvature import Kronecker
from tdakit.evaluation import reliability
from tdakit.experiment import Method, run_experiment
from tdakit.presets import preset

OUT = Path("benchmarks/results")
CONVOLUTIONS = ("first", "second")


class ConvLM(nn.Module):
    """ids [n, L] -> next-token logits [n, L, vocabulary] through two causal convolutions of ``kernel``."""

    def __init__(self, vocabulary: int, width: int = 32, kernel: int = 3):
        super().__init__()
        self.tokens = nn.Embedding(vocabulary, width)
        self.first = nn.Conv1d(width, width, kernel)
        self.second = nn.Conv1d(width, width, kernel)
        self.head = nn.Linear(width, vocabulary)
        self.kernel = kernel

    def causal(self, conv: nn.Conv1d, h: Tensor) -> Tensor:
        return torch.relu(conv(F.pad(h, (self.kernel - 1, 0))))  # [n, C, L]: position t sees t - k + 1 .. t

    def forward(self, ids: Tensor) -> Tensor:
        h = self.tokens(ids).transpose(1, 2)
        h = self.causal(self.second, self.causal(self.first, h))
        return self.head(h.transpose(1, 2))


def train_convlm(setting, data) -> tdakit.Run:
    """ConvLM trained with the setting's recipe and checkpoints on data.train (seeded: the same run every time)."""
    torch.manual_seed(0)
    return tdakit.train(ConvLM(len(data.vocabulary)), data.train, setting.recipe, setting.task,
                        checkpoints=setting.checkpoints, progress=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--subsets", type=int, default=40)
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--unrolling", action="store_true", help="exact unrolling too (about 10 minutes)")
    parser.add_argument("--protocol", choices=["fresh", "same"], default="fresh",
                        help="retrain with fresh seeds, or along the run's own trajectory (one retraining per subset)")
    parser.add_argument("--kept", type=float, default=0.5, help="the share of the training passages each subset keeps")
    args = parser.parse_args()
    setting = preset("wikitext2")
    data = setting.data()
    start = time.perf_counter()
    run = train_convlm(setting, data)
    with torch.no_grad():
        loss = float(run.task.loss(run.model(run.final, data.test.x[:500]), data.test.y[:500]).mean())
    print(f"ConvLM on {len(data.train)} WikiText-2 passages: {run.model.num_params:,} parameters, {run.num_steps} "
          f"steps, test loss {loss:.3f} nats/token ({time.perf_counter() - start:.0f} s)", flush=True)
    start = time.perf_counter()
    seeds = args.seeds if args.protocol == "fresh" else 1
    truth = tdakit.groundtruth(run, data.query, subsets=args.subsets, fraction=args.kept, seeds=seeds,
                               protocol=args.protocol, progress=False)
    print(f"ground truth ({args.protocol}, {args.kept:.0%} kept) M = {args.subsets}, R = {seeds}: {reliability(truth)} "
          f"({time.perf_counter() - start:.0f} s)", flush=True)
    factored = setting.curvature  # the sampled Fisher of a language model; every layer factored
    left_out = dataclasses.replace(factored, exclude=CONVOLUTIONS)
    assert isinstance(left_out, Kronecker)
    head_alone = dataclasses.replace(factored, exclude=("tokens", *CONVOLUTIONS))
    methods = {**({"exact unrolling": Method("unrolled")} if args.unrolling else {}),
               "influence": Method("influence", curvature=factored),
               "influence, convolutions left out": Method("influence", curvature=left_out),
               "influence, the head alone": Method("influence", curvature=head_alone),
               "influence, heuristic damping": Method("influence", curvature=factored, damping="heuristic"),
               "influence, heuristic damping, convolutions left out": Method("influence", curvature=left_out,
                                                                             damping="heuristic"),
               "SOURCE (L=3)": Method("source", segments=3, curvature=factored),
               "SOURCE (L=3), convolutions left out": Method("source", segments=3, curvature=left_out),
               "TRAK": Method("trak"), "TRAK, convolutions left out": Method("trak", exclude=CONVOLUTIONS),
               "TracIn": Method("tracin"), "grad dot": Method("grad_dot"), "grad cos": Method("grad_cos")}
    table = run_experiment(run, data.query, methods, truth, baseline="influence, convolutions left out",
                           title=f"ConvLM on WikiText-2, {args.protocol} protocol, {args.kept:.0%} kept",
                           progress=False)
    print(table, flush=True)
    OUT.mkdir(exist_ok=True)
    out = {"parameters": run.model.num_params, "steps": run.num_steps, "test_loss": loss,
           "convolution_parameters": sum(part.stop - part.start for name, part in run.model.slices.items()
                                         if name.split(".")[0] in CONVOLUTIONS),
           "table": table.as_dict()}
    kept = "" if args.kept == 0.5 else f"_kept{args.kept:g}"
    (OUT / f"conv1d_wikitext2_{args.protocol}{kept}.json").write_text(json.dumps(out, indent=1, default=str))


if __name__ == "__main__":
    main()
