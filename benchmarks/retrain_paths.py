"""Retraining many models: stacked under vmap or one at a time, as the model grows (CPU).

    python benchmarks/retrain_paths.py               # MLPs from 1k to 1.9M parameters, two CNNs
    python benchmarks/retrain_paths.py --steps 40 --models 8 --repeats 3

For each model: seconds per model-step training ``--models`` models stacked (one vmap over M models, the
chunk ``models_per_chunk`` would give) and one at a time (train_many with M = 1, so both pay the same
per-step bookkeeping), medians over repeats alternated in one process; and the FLOPs of one model's training
step (torch.utils.flop_counter, exact). tdakit's rule (``stacking.stack_models``) picks the path from those
FLOPs; the last column says what it chose. Writes benchmarks/results/retrain_paths.json.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from common import median_seconds
from torch import nn

import tdakit
from tdakit.recipe import batch_order
from tdakit.stacking import models_per_chunk, stack_models, step_flops
from tdakit.training import train_many


def settings():
    digits = tdakit.datasets.load("mnist5k")
    concrete = tdakit.datasets.load("concrete")
    flat_mnist = digits.train.subset(slice(0, 1024))
    image = tdakit.datasets.Split(flat_mnist.x.reshape(-1, 1, 28, 28), flat_mnist.y)
    g = torch.Generator().manual_seed(0)
    pictures = tdakit.datasets.Split(torch.randn(256, 3, 32, 32, generator=g),
                                     torch.randint(0, 10, (256,), generator=g))
    cnn = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(8, 16, 3, padding=1),
                        nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(16 * 7 * 7, 10))
    return [
        ("Concrete MLP 2 x 32", tdakit.zoo.mlp(8, (32, 32), 1), concrete.train, tdakit.Regression(), 32),
        ("Concrete MLP 3 x 128 (paper)", tdakit.zoo.mlp(8, (128, 128, 128), 1), concrete.train,
         tdakit.Regression(), 32),
        ("MNIST MLP 64", tdakit.zoo.mlp(784, (64,), 10), flat_mnist, tdakit.Classification(), 64),
        ("MNIST MLP 256 x 128", tdakit.zoo.mlp(784, (256, 128), 10), flat_mnist, tdakit.Classification(), 64),
        ("MNIST MLP 512-256-128 (paper)", tdakit.zoo.mlp(784, (512, 256, 128), 10), flat_mnist,
         tdakit.Classification(), 64),
        ("MNIST MLP 1024 x 1024", tdakit.zoo.mlp(784, (1024, 1024), 10), flat_mnist, tdakit.Classification(), 64),
        ("MNIST CNN 8-16", cnn, image, tdakit.Classification(), 64),
        ("ResNet-9 width 8 (cifar10_cpu), 32 x 32 images", tdakit.zoo.resnet9(10, 3, 8), pictures,
         tdakit.Classification(), 64),
    ]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=20, help="training steps timed per model")
    p.add_argument("--models", type=int, default=8, help="models per measurement")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", default="benchmarks/results")
    args = p.parse_args()
    torch.manual_seed(0)
    rows = []
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; {args.models} models x {args.steps} steps")
    print("| model | parameters | step MFLOP (one model) | stacked ms / model-step | one at a time ms / model-step "
          "| stacked speed-up | rule |")
    print("|---|---|---|---|---|---|---|")
    for name, module, split, task, batch in settings():
        flat = tdakit.FlatModel(module)
        recipe = tdakit.Recipe(lr=1e-2, epochs=1, batch_size=batch, momentum=0.9, weight_decay=1e-4)
        m = min(args.models, models_per_chunk(flat.num_params, torch.float32))
        inits = flat.init_many(range(m))
        orders = torch.stack([batch_order(torch.arange(len(split)), batch, 50, seed)[:args.steps]
                              for seed in range(m)])

        def stacked(inits=inits, orders=orders, flat=flat, split=split, recipe=recipe, task=task):
            return train_many(flat, split, recipe, task, inits, orders, progress=False)

        def alone(inits=inits, orders=orders, flat=flat, split=split, recipe=recipe, task=task):
            return torch.cat([train_many(flat, split, recipe, task, inits[j:j + 1], orders[j:j + 1], progress=False)
                              for j in range(len(inits))])

        stacked()
        alone()  # warm-up
        times = {"stacked": [], "alone": []}
        for _ in range(args.repeats):
            for key, fn in (("stacked", stacked), ("alone", alone)):
                times[key].append(median_seconds(fn, 1)[1])
        per = {k: float(torch.tensor(v).median()) / (m * args.steps) * 1e3 for k, v in times.items()}
        matmul, conv = step_flops(flat, task, split.x[:batch], split.y[:batch])
        flops = matmul + conv
        chose = "stacked" if stack_models(flat, task, split.x[:batch], split.y[:batch]) else "one at a time"
        row = {"model": name, "parameters": flat.num_params, "step_mflop": flops / 1e6, "conv_mflop": conv / 1e6,
               "models": m,
               "stacked_ms": per["stacked"], "alone_ms": per["alone"], "speedup": per["alone"] / per["stacked"],
               "rule": chose}
        rows.append(row)
        print(f"| {name} | {flat.num_params:,} | {flops / 1e6:.1f} | {per['stacked']:.2f} | {per['alone']:.2f} "
              f"| {row['speedup']:.2f}x | {chose} |", flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "retrain_paths.json").write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
