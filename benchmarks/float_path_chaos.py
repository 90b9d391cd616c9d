"""How much a float path (another CPU's kernels) moves a trained run: the chaos behind notebook figures.

    python benchmarks/float_path_chaos.py [--preset cifar10_cpu] [--lr 0.4 0.1] [--dtype float32 float64]

For each recipe variant the preset's run is trained twice, in two fresh processes: on this machine's default path
and on "avx2-all" (the math library, PyTorch's vector kernels and oneDNN limited to AVX2, as on a CPU without
AVX-512). Printed: the relative difference of the final parameters, of the query measurements, and the running
variance of the first BatchNorm layer (notebook 05's figure) on both paths. A run whose relative difference is
near 1 is chaotic: its printed figures are a draw, not a property of the method.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
PATHS = {"default": {}, "avx2-all": {"MKL_CBWR": "AVX2", "ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}}


def train_once(preset_name: str, lr: float, dtype: str, out: str) -> None:
    """Runs in a child process: train the preset with peak rate ``lr`` in ``dtype``; save what is compared."""
    import tdakit
    from tdakit.grads import measurements

    setting = tdakit.preset(preset_name)
    setting = dataclasses.replace(setting, recipe=dataclasses.replace(setting.recipe, lr=lr))
    data = setting.data(progress=False)
    query = (tdakit.datasets.balanced_subset(data.query, 20) if data.kind == "classification"
             else data.query.subset(slice(0, 20)))
    run = setting.train(data, progress=False, cache=False, dtype=getattr(torch, dtype))
    f = measurements(run.model, run.task, run.final, query.to(run.final.dtype))
    first_var = run.model.slices[run.model.state_names[1]] if run.model.state_names else slice(0, 0)
    torch.save({"final": run.final.double(), "measurements": f.double(),
                "first_var": float(run.final[first_var].mean()) if run.model.state_names else float("nan"),
                "accuracy": float((run.model(run.final, data.test.x.to(run.final.dtype)).argmax(1) ==
                                   data.test.y).double().mean()) if data.kind == "classification" else float("nan")},
               out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="cifar10_cpu")
    parser.add_argument("--lr", type=float, nargs="+", default=None, help="peak rates (default: the preset's)")
    parser.add_argument("--dtype", nargs="+", default=["float32", "float64"])
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        name, lr, dtype, out = args.child
        train_once(name, float(lr), dtype, out)
        return
    import tdakit

    rates = args.lr or [tdakit.preset(args.preset).recipe.lr]
    rows = []
    for lr in rates:
        for dtype in args.dtype:
            got = {}
            for path, env in PATHS.items():
                with tempfile.TemporaryDirectory() as tmp:
                    out = str(Path(tmp) / "run.pt")
                    subprocess.run([sys.executable, __file__, "--child", args.preset, str(lr), dtype, out],
                                   env={**os.environ, **env}, check=True, cwd=ROOT)
                    got[path] = torch.load(out)
            a, b = got["default"], got["avx2-all"]
            row = {"preset": args.preset, "lr": lr, "dtype": dtype,
                   "params": float((a["final"] - b["final"]).norm() / a["final"].norm()),
                   "measurements": float((a["measurements"] - b["measurements"]).norm() / a["measurements"].norm()),
                   "first_var": (a["first_var"], b["first_var"]), "accuracy": (a["accuracy"], b["accuracy"])}
            rows.append(row)
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
