"""The ``tdakit`` command. ``tdakit demo`` runs the whole triangle on the embedded Concrete data."""

from __future__ import annotations

import argparse
import sys

from . import __version__
from .demo import run_demo
from .errors import TdakitError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tdakit", description="training data attribution you can see")
    parser.add_argument("--version", action="version", version=f"tdakit {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="exact unrolling, influence and SOURCE on UCI Concrete, judged by LDS")
    demo.add_argument("--out", default=None, help="report folder (default: tdakit-report for the full demo, "
                                                  "tdakit-report-train100 and so on for a smaller one)")
    demo.add_argument("--force", action="store_true", help="overwrite a folder holding another configuration's "
                                                          "report")
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
    cifar = sub.add_parser("cifar10", help="put CIFAR-10 where the presets look for it (see docs/data.md)")
    cifar.add_argument("--archive", help="a tar archive of an image folder (train/<class>/, test/<class>/) or of "
                                         "cifar-10-batches-py to unpack")
    cifar.add_argument("--download", action="store_true", help="download the official archive (needs a network)")
    cifar.add_argument("--root", default=None, help="data folder (default: $TDAKIT_DATA or ~/.cache/tdakit/data)")
    for name, folder in (("sst2", "SST-2 (GLUE's train.tsv and dev.tsv)"),
                         ("wikitext2", "WikiText-2 (raw tokens: valid.txt and test.txt)")):
        text = sub.add_parser(name, help=f"put {folder} where the text presets look for it (see docs/data.md)")
        text.add_argument("--archive", help="a tar archive holding a folder with those files, to unpack")
        text.add_argument("--download", action="store_true", help="download the official archive (needs a network)")
        text.add_argument("--root", default=None, help="data folder (default: $TDAKIT_DATA or ~/.cache/tdakit/data)")
    args = parser.parse_args(argv)
    if args.command == "cifar10":
        return _cifar10(args)
    if args.command in ("sst2", "wikitext2"):
        return _text(args)
    try:
        run_demo(out=args.out, model=args.model, subsets=args.subsets, seeds=args.seeds, epochs=args.epochs,
                 queries=args.queries, train_points=args.train, cache=not args.no_cache, progress=not args.quiet,
                 force=args.force)
    except TdakitError as err:
        print(f"tdakit: {as_flags(str(err))}", file=sys.stderr)
        return 2
    return 0


# Python arguments a message may name, and the command-line flag that does the same
FLAGS = {"download=True": "--download", "force=True": "--force", "out=FOLDER": "--out FOLDER",
         "train_points": "--train"}


def as_flags(message: str) -> str:
    """A library message in the command line's words: Python arguments it names become their flags."""
    for argument, flag in FLAGS.items():
        message = message.replace(argument, flag)
    return message


def _cifar10(args) -> int:
    from .datasets import cifar, data_root

    root = args.root or data_root()
    try:
        folder = cifar.unpack(args.archive, root) if args.archive else cifar.find(root, download=args.download)
    except (OSError, TdakitError) as err:
        print(f"tdakit: {as_flags(str(err))}", file=sys.stderr)
        return 2
    print(f"CIFAR-10 is in {folder}")
    return 0


def _text(args) -> int:
    from .datasets import text

    name = {"sst2": text.SST2_FOLDER, "wikitext2": text.WIKITEXT_FOLDER}[args.command]
    try:
        folder = (text.install(args.archive, args.root, name) if args.archive
                  else text.find(args.root, name, download=args.download))
    except (OSError, TdakitError) as err:
        print(f"tdakit: {as_flags(str(err))}", file=sys.stderr)
        return 2
    print(f"{args.command} is in {folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
