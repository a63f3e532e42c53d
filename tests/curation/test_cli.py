"""`python -m dinojax.curate <step>` end to end on the tiny config, each step reading the previous
one's files, and the errors for a step run too early or an unknown step."""

import json
import pathlib
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]
STEPS = ("embed", "dedup", "retrieve", "cluster", "sample")


def _curate(step, workdir, *overrides):
  cmd = [sys.executable, "-m", "dinojax.curate", step, "--config", str(REPO / "configs/curate_tiny.py"),
         "--workdir", str(workdir), "--config.data.pool=digits:train[0:600]", *overrides]
  return subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=600)


@pytest.mark.slow
def test_curate_cli_end_to_end(tmp_path):
  early = _curate("dedup", tmp_path)
  assert early.returncode != 0 and "run the `embed` step first" in early.stderr, early.stderr[-2000:]
  for step in STEPS:
    result = _curate(step, tmp_path)
    assert result.returncode == 0, f"{step}:\n{result.stderr[-4000:]}"
  read = lambda path: json.loads((tmp_path / path).read_text())  # noqa: E731
  assert read("embeddings/pool/summary.json")["embedded"] == 600
  assert read("embeddings/queries/summary.json")["embedded"] == 180
  dedup = read("dedup/summary.json")
  assert dedup["kept"] == 600 - dedup["removed_self"] - dedup["removed_evaluation"] > 500
  assert 180 <= read("retrieve/summary.json")["selected"] <= 4 * 180
  sample = read("sample/summary.json")
  assert sample["selected"] == 400 == len((tmp_path / "sample/selected.txt").read_text().split())
  assert sum(sample["per_top_level_cluster"]) == 400


def test_unknown_step_is_a_usage_error(tmp_path):
  result = _curate("rebalance", tmp_path)
  assert result.returncode != 0 and "Name one step: embed | dedup | retrieve | cluster | sample" in result.stderr
