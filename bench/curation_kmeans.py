"""One Lloyd iteration of the level-1 k-means (`dinojax.curation.lloyd`) on this machine's devices:
seconds per million vectors and the FLOP rate, and what the paper-scale `cluster` step (the dry run
of configs/curate_lvd142m.py) would take at that rate.

  python bench/curation_kmeans.py --n 100000 --dim 1536 --clusters 1000
"""

import argparse
import os
import sys
import time

import jax
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from dinojax import config_args  # noqa: E402
from dinojax.curation import lloyd  # noqa: E402


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--n", type=int, default=100_000)
  parser.add_argument("--dim", type=int, default=1536)
  parser.add_argument("--clusters", type=int, default=1000)
  parser.add_argument("--repeats", type=int, default=3)
  args = parser.parse_args()
  x = np.random.default_rng(0).normal(size=(args.n, args.dim)).astype(np.float32)
  mesh = jax.make_mesh((jax.device_count(),), ("rows",))
  rows = lloyd.shard_rows(x, mesh, lloyd.chunk_rows(args.clusters))
  _, _, iterate = lloyd._programs(rows.mesh, rows.chunk)
  centroids = jax.numpy.asarray(x[:args.clusters])
  iterate(rows.x, rows.valid, centroids).block_until_ready()  # compile
  best = min(timed(iterate, rows, centroids) for _ in range(args.repeats))
  flops = 2 * args.n * args.dim * args.clusters
  rate = flops / best
  print(f"{args.n} × {args.dim}, k={args.clusters}, {jax.device_count()} {jax.devices()[0].platform} device(s): "
        f"{best:.3f} s per iteration, {best * 1e6 / args.n:.2f} s per million vectors, {rate / 1e9:.1f} GFLOP/s")
  config = config_args.load_config(os.path.join(os.path.dirname(__file__), "../configs/curate_lvd142m.py"))
  k, p = config.cluster.n_clusters[0], config.plan
  level1 = 2 * p.pool_size * p.dim * k * (config.cluster.iterations + lloyd.local_trials(k))
  print(f"paper level 1 ({p.pool_size:,} × {p.dim}, k={k:,}, seeding + {config.cluster.iterations} iterations): "
        f"{level1:.2e} FLOPs, {level1 / rate / 3600:,.0f} hours on this machine at this rate")


def timed(iterate, rows, centroids):
  start = time.perf_counter()
  iterate(rows.x, rows.valid, centroids).block_until_ready()
  return time.perf_counter() - start


if __name__ == "__main__":
  main()
