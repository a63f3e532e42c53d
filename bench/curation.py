"""Nearest-neighbour search for curation: queries/s and recall@k of ScaNN (as `dinojax.curation.search`
builds it) against exact search (NumPy matmul + partial sort, and the JAX blocked top-k that
`search.exact_knn` runs), and faiss-cpu if it is installed, in one run on one synthetic set.

  python bench/curation.py                      # 200k × 384 float32, 2,000 queries
  python bench/curation.py --n 1000000          # the issue's 1M × 384 (1.5 GB of vectors)
  python bench/curation.py --leaves_to_search 8,16,32,64 --reorder 100,200

The data are L2-normalised points around `--clusters` random centres (embedding pools are clustered),
and the queries are held-out points of the same distribution. Recall@k is measured against the
exact top k. The ScaNN index is built once per `--reorder` value (build s) and searched with each
`--leaves_to_search`. Prints a table; "× exact" is queries/s over the faster exact search's.
"""

import argparse
import math
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from dinojax.curation import search  # noqa: E402


def clustered(n: int, d: int, clusters: int, seed: int) -> np.ndarray:
  rng = np.random.default_rng(seed)
  centres = rng.normal(size=(clusters, d)).astype(np.float32)
  x = np.empty((n, d), np.float32)
  for start in range(0, n, 100_000):  # in chunks: no float64 temporaries of the whole set
    m = min(100_000, n - start)
    chunk = centres[rng.integers(0, clusters, m)] + 0.5 * rng.normal(size=(m, d)).astype(np.float32)
    x[start:start + m] = chunk / np.linalg.norm(chunk, axis=1, keepdims=True)
  return x


def recall(found: np.ndarray, exact: np.ndarray) -> float:
  k = exact.shape[1]
  return float(np.mean([len(set(a) & set(e)) / k for a, e in zip(found, exact)]))


def timed(fn, repeats: int, warmup=None):
  """(result, best seconds of `repeats` runs), after `warmup()` (compilation, caches) if given."""
  if warmup is not None:
    warmup()
  result, best = None, math.inf
  for _ in range(repeats):
    start = time.perf_counter()
    result = fn()
    best = min(best, time.perf_counter() - start)
  return result, best


def numpy_exact(queries, database, k, block=256):
  out = []
  for start in range(0, len(queries), block):
    scores = queries[start:start + block] @ database.T
    top = np.argpartition(-scores, k, axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(scores, top, 1), axis=1)
    out.append(np.take_along_axis(top, order, 1))
  return np.concatenate(out)


class ScannConfig(dict):
  __getattr__ = dict.__getitem__


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--n", type=int, default=200_000)
  parser.add_argument("--dim", type=int, default=384)
  parser.add_argument("--queries", type=int, default=2000)
  parser.add_argument("--clusters", type=int, default=1000)
  parser.add_argument("--k", type=int, default=10)
  parser.add_argument("--leaves", type=int, default=0, help="ScaNN tree leaves (0: √n)")
  parser.add_argument("--leaves_to_search", default="8,16,32")
  parser.add_argument("--reorder", default="300")
  parser.add_argument("--training_sample_size", type=int, default=100_000)
  parser.add_argument("--repeats", type=int, default=3)
  args = parser.parse_args()

  points = clustered(args.n + args.queries, args.dim, args.clusters, seed=0)
  database, queries = points[:args.n], points[args.n:]
  rows = []
  print(f"{args.n} × {args.dim} float32 database, {args.queries} queries, k = {args.k}", flush=True)

  exact_np, t = timed(lambda: numpy_exact(queries, database, args.k), 1)
  rows.append(("exact (NumPy matmul + argpartition)", "", 0.0, args.queries / t, 1.0))
  (_, exact), t = timed(lambda: search.exact_knn(queries, database, args.k), 1,
                        warmup=lambda: search.exact_knn(queries[:8], database, args.k))
  rows.append(("exact (JAX blocked top-k)", "", 0.0, args.queries / t, recall(exact_np, exact)))
  baseline = max(r[3] for r in rows)

  leaves = args.leaves or round(math.sqrt(args.n))
  searched = list(map(int, args.leaves_to_search.split(",")))
  for reorder in map(int, args.reorder.split(",")):
    config = ScannConfig(num_leaves=leaves, num_leaves_to_search=searched[0], dims_per_block=2,
                         anisotropic_threshold=0.2, reorder=reorder,
                         training_sample_size=args.training_sample_size)
    start = time.perf_counter()
    searcher = search.scann_searcher(database, args.k, config)
    build_s = time.perf_counter() - start
    for to_search in searched:
      (_, found), t = timed(lambda: search.scann_knn(queries, searcher, args.k, to_search), args.repeats,
                            warmup=lambda: search.scann_knn(queries, searcher, args.k, to_search))
      rows.append(("ScaNN tree + AH + reorder",
                   f"leaves {leaves}, search {to_search}, reorder {reorder}", build_s,
                   args.queries / t, recall(found, exact)))
      print(rows[-1], flush=True)

  try:
    import faiss
  except ImportError:
    faiss = None
    print("faiss-cpu is not installed: no faiss rows (pip install faiss-cpu).")
  if faiss is not None:
    nlist = leaves
    start = time.perf_counter()
    quantizer = faiss.IndexFlatIP(args.dim)
    index = faiss.IndexIVFFlat(quantizer, args.dim, nlist, faiss.METRIC_INNER_PRODUCT)
    index.train(database[np.random.default_rng(0).choice(args.n, min(args.n, 100_000), replace=False)])
    index.add(database)
    build_s = time.perf_counter() - start
    for nprobe in searched:
      index.nprobe = nprobe
      (_, found), t = timed(lambda: index.search(queries, args.k), args.repeats,
                            warmup=lambda: index.search(queries, args.k))
      rows.append(("faiss IVF-Flat", f"nlist {nlist}, nprobe {nprobe}", build_s, args.queries / t,
                   recall(found, exact)))

  print(f"\n| method | settings | build s | queries/s | recall@{args.k} | × exact |")
  print("|---|---|---|---|---|---|")
  for name, settings, build_s, qps, rec in rows:
    print(f"| {name} | {settings} | {build_s:.1f} | {qps:,.0f} | {rec:.3f} | {qps / baseline:.1f} |")


if __name__ == "__main__":
  main()
