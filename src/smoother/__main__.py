"""Command line entry: ``python -m smoother demo`` (the only module of the package that prints)."""

from __future__ import annotations

import argparse
import sys


def _version() -> str:
    from . import __version__

    return __version__


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="smoother", description="smoother command line.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser(
        "demo",
        help="Run the showcase on simulated data and write results to a folder.",
        description=(
            "Simulate a Visium-like slide with a known truth, build the spatial graph, smooth it with the "
            "data-chosen strength (lambda='auto'), compute and plot the decay diagnostics, deconvolve a "
            "simulated cell-type mixture without and with the spatial loss, then write an .h5ad per dataset and "
            "PNG figures to the output folder and print errors against the truth and timings."
        ),
    )
    demo.add_argument("--n-spots", type=int, default=3000, help="spots per simulated dataset (default 3000, >= 200)")
    demo.add_argument("--out", default="demo_out", help="output folder (default demo_out/)")
    demo.add_argument("--seed", type=int, default=0, help="random seed of the simulations (default 0)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "demo":
        import matplotlib

        matplotlib.use("Agg")
        from ._demo import format_report, run_demo
        from ._settings import settings

        settings.progress_bar = False

        try:
            report = run_demo(n_spots=args.n_spots, out=args.out, seed=args.seed)
        except ValueError as err:
            print(f"smoother demo: {err}", file=sys.stderr)
            return 2
        print(format_report(report))
        return 0
    return 1  # pragma: no cover


if __name__ == "__main__":
    sys.exit(main())
