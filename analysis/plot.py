"""`python analysis/plot.py runs=DIR out=DIR`: figures and the headline table from run outputs.

DIR is a run directory or a sweep directory (e.g. runs/goodput_vs_rate/<timestamp>_sim, as
written by `runners/simulate.py -m experiment=...` or `runners/experiment.py -m ...`). Writes
one PNG per figure the runs hold data for, and `headline.md`. Reads JSON files only: never
imports the engine, torch or flowprefill.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

from analysis.figures import FIGURES  # noqa: E402
from analysis.runs import load_runs  # noqa: E402
from analysis.table import headline  # noqa: E402


def make_all(runs_dir: str | Path, out: str | Path) -> list[Path]:
    """Every figure the runs support, plus headline.md; returns the files written."""
    runs = load_runs(runs_dir)
    if not runs:
        raise FileNotFoundError(f"no summary.json under {runs_dir}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = [p for fig in FIGURES if (p := fig(runs, out)) is not None]
    table = out / "headline.md"
    table.write_text(f"# {Path(runs_dir).resolve().name}: {len(runs)} runs\n\n"
                     + headline(runs))
    return [*written, table]


def _args(argv: list[str]) -> dict[str, str]:
    args = dict(a.split("=", 1) for a in argv if "=" in a)
    unknown = set(args) - {"runs", "out"} or {a for a in argv if "=" not in a}
    if unknown or "runs" not in args:
        raise SystemExit(f"usage: python analysis/plot.py runs=DIR [out=DIR] (got {argv})")
    return args


def main(argv: list[str]) -> None:
    args = _args(argv)
    out = args.get("out", str(Path(args["runs"]) / "figures"))
    for path in make_all(args["runs"], out):
        print(path)


if __name__ == "__main__":
    main(sys.argv[1:])
