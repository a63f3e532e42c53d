"""The whole image–caption curation (`dinojax.curation.pairs`: embed, dedup, cluster, sample) on the
tiny config's 1,437 digit pairs: seconds per step and pairs per second, compiles included (a fresh
process pays them once, as a fresh curation job does).

  python bench/curation_pairs.py [--workdir /tmp/bench_pairs]
"""

import argparse
import os
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from dinojax import config_args  # noqa: E402
from dinojax.curation import pairs  # noqa: E402


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--workdir", default=None, help="Emptied first; a temporary folder by default.")
  args = parser.parse_args()
  workdir = args.workdir or tempfile.mkdtemp(prefix="bench-pairs-")
  shutil.rmtree(workdir, ignore_errors=True)
  config = config_args.load_config(os.path.join(os.path.dirname(__file__),
                                                "../configs/curate_dinotxt_tiny.py"))
  num_pairs = len(pairs.pair_source(config))
  seconds = {}
  for name, step in pairs.STEPS.items():
    start = time.perf_counter()
    step(config, workdir)
    seconds[name] = time.perf_counter() - start
  total = sum(seconds.values())
  print(", ".join(f"{k} {v:.1f} s" for k, v in seconds.items()) +
        f"; {num_pairs} pairs in {total:.1f} s: {num_pairs / total:.0f} pairs/s")


if __name__ == "__main__":
  main()
