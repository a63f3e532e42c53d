"""Logistic-regression solve time: dinojax's L-BFGS (`evaluators.log_regression`, float64, the
official settings: memory 5, ≤ 50 line-search steps, tolerance 1e-12) against scikit-learn's
`LogisticRegression(solver="lbfgs")` on the same features in the same run, for a few C values of the
official sweep. Features are synthetic class blobs of the size of the paper's smaller benchmarks.

  python bench/log_regression.py                          # 10k × 384, 100 classes
  python bench/log_regression.py --rows 50000 --dims 1024 --classes 101 --max_iter 300

Prints per C: wall time of each solver (dinojax's first C includes compilation; the median of the
rest is the steady state), iterations, the final objective of both, and the top-1 agreement.
"""

import argparse
import time

import numpy as np
from sklearn.linear_model import LogisticRegression

from dinojax.evaluators import log_regression


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--rows", type=int, default=10_000)
  parser.add_argument("--dims", type=int, default=384)
  parser.add_argument("--classes", type=int, default=100)
  parser.add_argument("--max_iter", type=int, default=1000)
  parser.add_argument("--cs", default="1e-3,1e-1,10", help="comma-separated C values")
  args = parser.parse_args()
  rng = np.random.default_rng(0)
  labels = rng.integers(0, args.classes, args.rows)
  features = (rng.normal(size=(args.rows, args.dims)) +
              0.5 * rng.normal(size=(args.classes, args.dims))[labels]).astype(np.float32)
  x64 = features.astype(np.float64)

  def objective(w, b, c):
    logits = x64 @ w + b
    logits -= logits.max(1, keepdims=True)
    ce = np.log(np.exp(logits).sum(1)) - logits[np.arange(args.rows), labels]
    return ce.mean() + 0.5 / (c * args.rows) * (w ** 2).sum()

  print(f"{args.rows} × {args.dims} features, {args.classes} classes, max_iter {args.max_iter}, float64")
  print("C | dinojax s | iterations | sklearn s | iterations | speed-up | objective dinojax | objective sklearn | top-1 agreement")
  for c in (float(v) for v in args.cs.split(",")):
    start = time.perf_counter()
    head, iterations = log_regression.fit_logistic_regression(features, labels, args.classes, c,
                                                              max_iter=args.max_iter)
    ours = time.perf_counter() - start
    start = time.perf_counter()
    reference = LogisticRegression(C=c, tol=1e-12, max_iter=args.max_iter).fit(x64, labels)
    theirs = time.perf_counter() - start
    agree = np.mean(log_regression.class_scores(head, features).argmax(1) == reference.predict(x64))
    print(f"{c:g} | {ours:.2f} | {iterations} | {theirs:.2f} | {int(reference.n_iter_[0])} | {theirs / ours:.2f} | "
          f"{objective(head['w'], head['b'], c):.8f} | "
          f"{objective(reference.coef_.T, reference.intercept_, c):.8f} | {agree:.4f}")


if __name__ == "__main__":
  main()
