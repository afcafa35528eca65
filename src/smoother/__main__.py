"""Command line entry: ``python -m smoother demo``."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="smoother", description="smoother command line.")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="Run the showcase on simulated data and write results to a folder.")
    demo.add_argument("--n-spots", type=int, default=3000, help="Number of simulated spots (default 3000).")
    demo.add_argument("--out", default="demo_out", help="Output folder (default demo_out/).")
    demo.add_argument("--seed", type=int, default=0, help="Random seed (default 0).")
    args = parser.parse_args(argv)
    if args.command == "demo":
        from ._demo import run_demo

        return run_demo(n_spots=args.n_spots, out=args.out, seed=args.seed)
    return 1  # pragma: no cover


if __name__ == "__main__":
    sys.exit(main())
