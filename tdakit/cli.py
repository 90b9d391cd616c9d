"""The ``tdakit`` command. ``tdakit demo`` runs the whole triangle on the embedded Concrete data."""

from __future__ import annotations

import argparse
import sys

from . import __version__
from .demo import run_demo


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tdakit", description="training data attribution you can see")
    parser.add_argument("--version", action="version", version=f"tdakit {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="exact unrolling, influence and SOURCE on UCI Concrete, judged by LDS")
    demo.add_argument("--out", default="tdakit-report", help="report folder (default: %(default)s)")
    demo.add_argument("--model", choices=["paper", "narrow"], default="paper",
                      help="paper: 3 x 128 MLP with exact Gauss-Newton curvature; narrow: 2 x 32 with the full "
                           "Hessian, negative eigenvalues clipped")
    demo.add_argument("--subsets", type=int, default=100, help="random half subsets M (default 100)")
    demo.add_argument("--seeds", type=int, default=5, help="retraining seeds R per subset (default 5)")
    demo.add_argument("--epochs", type=int, default=None, help="training epochs (default: the paper's 20)")
    demo.add_argument("--queries", type=int, default=None, help="use only the first Q queries")
    demo.add_argument("--train", type=int, default=None, help="use only the first N training points (a quick look)")
    demo.add_argument("--no-cache", action="store_true", help="recompute runs and ground truth")
    demo.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    try:
        run_demo(out=args.out, model=args.model, subsets=args.subsets, seeds=args.seeds, epochs=args.epochs,
                 queries=args.queries, train_points=args.train, cache=not args.no_cache, progress=not args.quiet)
    except ValueError as err:
        print(f"tdakit: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
