"""Runs side by side, without a notebook:

  python -m dinojax.report WORKDIR [WORKDIR ...] [--plot report.png]

prints, one column per run, the config values that differ between the runs (from each workdir's
config.json), the last and best training loss, and the last and best value of every evaluation
(the rows of metrics.jsonl without a loss: k-NN, linear, zero-shot, ...), each with its step; and
writes a PNG of the loss and evaluation curves.
"""

import argparse
import json
import os
import sys
from typing import Sequence

from matplotlib.figure import Figure

from dinojax import loop


class Run:
  """A workdir's config.json (flattened to dotted keys) and metrics.jsonl, split into training rows
  (with a loss) and evaluation rows."""

  def __init__(self, workdir: str):
    if not os.path.exists(os.path.join(workdir, "metrics.jsonl")):
      raise FileNotFoundError(f"{workdir} has no metrics.jsonl: not the workdir of a dinojax job "
                              "(or it has not logged a step yet).")
    self.workdir = workdir
    self.config = {}
    if os.path.exists(path := os.path.join(workdir, "config.json")):
      with open(path) as f:
        self.config = dict(_flatten(json.load(f)))
    rows = loop.read_metrics(workdir)
    self.train = [r for r in rows if "loss" in r]
    self.evals = [r for r in rows if "loss" not in r]

  def series(self, name: str, rows: list[dict]) -> list[tuple[int, float]]:
    return [(r["step"], r[name]) for r in rows if name in r]

  def eval_names(self) -> list[str]:
    return sorted({k for r in self.evals for k in r if k != "step"})


def _flatten(tree: dict, prefix: str = ""):
  for key, value in tree.items():
    if isinstance(value, dict):
      yield from _flatten(value, f"{prefix}{key}.")
    else:
      yield prefix + key, value


def names(workdirs: Sequence[str]) -> list[str]:
  """Column titles: each workdir's last part, or the whole path where two runs share it."""
  short = [os.path.basename(os.path.normpath(w)) for w in workdirs]
  return short if len(set(short)) == len(short) else [os.path.normpath(w) for w in workdirs]


def config_differences(runs: Sequence[Run]) -> dict[str, list]:
  """{dotted key: each run's value} for the keys whose values differ ("-" where a run has none)."""
  keys = sorted(set().union(*(r.config for r in runs)))
  values = {k: [r.config.get(k, "-") for r in runs] for k in keys}
  return {k: v for k, v in values.items() if any(x != v[0] for x in v)}


def _at(point: tuple[int, float] | None) -> str:
  return "-" if point is None else f"{point[1]:.4g} @{point[0]}"


def summary(runs: Sequence[Run]) -> list[tuple[str, list[str]]]:
  """(row title, one cell per run): the job, steps logged, loss last and lowest, each evaluation's
  last and highest (accuracies and recalls: higher is better)."""
  table = [("job", [str(r.config.get("job", "-")) for r in runs]),
           ("steps", [str(r.train[-1]["step"]) if r.train else "-" for r in runs])]
  table.extend((f"config {k}", [json.dumps(v) if not isinstance(v, str) else v for v in values])
               for k, values in config_differences(runs).items())
  losses = [r.series("loss", r.train) for r in runs]
  table.append(("loss (last)", [_at(s[-1] if s else None) for s in losses]))
  table.append(("loss (lowest)", [_at(min(s, key=lambda p: p[1]) if s else None) for s in losses]))
  for name in sorted(set().union(*(r.eval_names() for r in runs))):
    evals = [r.series(name, r.evals) for r in runs]
    table.append((f"{name} (last)", [_at(s[-1] if s else None) for s in evals]))
    table.append((f"{name} (best)", [_at(max(s, key=lambda p: p[1]) if s else None) for s in evals]))
  return table


def format_table(titles: Sequence[str], table: list[tuple[str, list[str]]]) -> str:
  rows = [("", list(titles)), *table]
  first = max(len(t) for t, _ in rows)
  widths = [max(len(cells[i]) for _, cells in rows) for i in range(len(titles))]
  return "\n".join(f"{t:<{first}}  " + "  ".join(f"{c:>{w}}" for c, w in zip(cells, widths))
                   for t, cells in rows)


def plot(runs: Sequence[Run], titles: Sequence[str], path: str) -> None:
  """Training loss (left) and the k-NN accuracy, else the runs' first evaluation (right), per step."""
  evals = sorted(set().union(*(r.eval_names() for r in runs)))
  metric = "knn_top1" if "knn_top1" in evals else (evals[0] if evals else None)
  fig = Figure(figsize=(11, 4))  # no pyplot: files only, whatever the display
  axes = fig.subplots(1, 2)
  for run, title in zip(runs, titles):
    if loss := run.series("loss", run.train):
      axes[0].plot(*zip(*loss), label=title)
    if metric and (values := run.series(metric, run.evals)):
      axes[1].plot(*zip(*values), marker="o", label=title)
  axes[0].set(title="training loss", xlabel="step")
  axes[1].set(title=metric or "no evaluation", xlabel="step")
  for ax in axes:
    if ax.get_legend_handles_labels()[0]:
      ax.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=100)


def main(argv: Sequence[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("workdirs", nargs="+", metavar="WORKDIR")
  parser.add_argument("--plot", default="report.png", help="where to write the curves ('' for none)")
  args = parser.parse_args(argv)
  try:
    runs = [Run(w) for w in args.workdirs]
  except FileNotFoundError as e:
    sys.exit(str(e))
  titles = names(args.workdirs)
  print(format_table(titles, summary(runs)))
  if args.plot:
    plot(runs, titles, args.plot)
    print(f"\nWrote {args.plot}.")


if __name__ == "__main__":
  main()
