"""The text GPU check: a larger causal language model on WikiText-2's valid split, EK-FAC influence and SOURCE
for query passages from test.txt, and a reduced LDS, with seconds, tokens per second and peak memory per phase.

    python benchmarks/gpu_text.py --archive wikitext2-valid-test.tar.xz          # one GPU (a few minutes)
    python benchmarks/gpu_text.py --archive wikitext2-valid-test.tar.xz --tiny   # a CPU: tiny sizes

GPU sizes: every passage of 64 tokens in valid.txt (about 3,400), a 10,000-word vocabulary, 4 blocks of width
256 with 4 heads (about 8M parameters), 3 epochs; 50 queries; LDS with M = 10 half subsets x R = 1. --tiny: 200
passages of 16 tokens, width 16, one block, 5 queries, M = 4. The data is a WikiText-2 folder (--root, default
$TDAKIT_DATA or ~/.cache/tdakit/data) or a tar archive of one (--archive, unpacked into a temporary folder).
Prints one line per phase and writes a JSON summary to benchmarks/results/gpu_text_<device>.json (atomically,
after every phase).
Nothing is cached: every phase is measured from scratch.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import tempfile
from datetime import date
from pathlib import Path

import torch
from gpu_cifar10 import save, timed

import tdakit
from tdakit import hardware
from tdakit.datasets import text
from tdakit.evaluation import groundtruth, lds
from tdakit.presets import preset

SIZES = {  # (passages, length, vocabulary, width, heads, depth, epochs, queries, subsets)
    "gpu": (None, 64, 10000, 256, 4, 4, 3, 50, 10),
    "tiny": (200, 16, 500, 16, 2, 1, 2, 5, 4),
}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default=None, help="data folder holding wikitext-2/ (default: the data folder)")
    parser.add_argument("--archive", default=None, help="a tar archive holding valid.txt and test.txt")
    parser.add_argument("--tiny", action="store_true", help="tiny sizes for a CPU")
    parser.add_argument("--out", default=None, help="JSON path (default benchmarks/results/gpu_text_<device>.json)")
    args = parser.parse_args(argv)
    device = hardware.default_device()
    out = Path(args.out) if args.out else Path("benchmarks/results") / f"gpu_text_{device.type}.json"
    passages, length, vocab, width, heads, depth, epochs, queries, subsets = SIZES["tiny" if args.tiny else "gpu"]
    with tempfile.TemporaryDirectory() as tmp:
        root = args.root
        if args.archive:
            root = tmp
            text.install(args.archive, root, text.WIKITEXT_FOLDER)
        base = preset("wikitext2")
        setting = dataclasses.replace(base, n_train=passages, length=length, vocab_size=vocab, width=width,
                                      heads=heads, depth=depth, n_query=queries,
                                      recipe=dataclasses.replace(base.recipe, epochs=epochs, lr=0.5))
        report: dict = {"device": device.type, "name": torch.cuda.get_device_name(device) if device.type == "cuda"
                        else platform.processor(), "date": str(date.today()), "phases": {}}
        data = timed("data", lambda: setting.data(root=root), device, report, out)
        data = dataclasses.replace(data, train=data.train.to(device=device), query=data.query.to(device=device))
        tokens = data.train.x.numel()
        run = timed("train", lambda: setting.train(data, progress=False, cache=False), device, report, out)
        report.update(passages=len(data.train), tokens=tokens, parameters=run.model.num_params,
                      steps=run.num_steps, length=length)
        with torch.no_grad():
            loss = float(run.task.loss(run.model(run.final, data.query.x), data.query.y).mean())
        print(f"{len(data.train)} passages, {tokens:,} tokens, {run.model.num_params:,} parameters, {run.num_steps} "
              f"steps; query loss {loss:.3f} nats/token", flush=True)
        fit = timed("EK-FAC fit (sampled Fisher)", lambda: tdakit.curvature.fit(
            setting.curvature, run.model, run.task, run.final[None], run.train, run.recipe.weight_decay,
            progress=False), device, report, out)
        del fit
        report["phases"]["EK-FAC fit (sampled Fisher)"]["tokens_per_second"] = round(
            tokens / report["phases"]["EK-FAC fit (sampled Fisher)"]["seconds"])
        influence = timed("influence", lambda: tdakit.attribute(run, data.query, "influence",
                                                                curvature=setting.curvature, progress=False),
                          device, report, out)
        source = timed("SOURCE (L=3)", lambda: tdakit.attribute(run, data.query, "source", segments=3,
                                                                curvature=setting.curvature, progress=False),
                       device, report, out)
        truth = timed(f"ground truth M={subsets} R=1", lambda: groundtruth(
            run, data.query, subsets=subsets, fraction=0.5, seeds=1, progress=False, cache=False),
            device, report, out)
        report["lds"] = {"influence": lds(influence, truth).value, "SOURCE": lds(source, truth).value}
        report["query_loss"] = loss
        print(json.dumps(report, indent=1), flush=True)
    save(report, out)
    return report


if __name__ == "__main__":
    torch.manual_seed(0)
    main()
