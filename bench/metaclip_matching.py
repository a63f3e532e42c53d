"""MetaCLIP's substring matching (`dinojax.curation.metaclip.Matcher`) at the scale of its metadata:
seconds to build the automaton over `--entries` entries and captions matched per second, one process.

Synthetic text (MetaCLIP's metadata.json is not shipped): a vocabulary of random lower-case words,
entries its most frequent words then two- and three-word phrases of them, captions of `--words`
Zipf-drawn words with a comma and a full stop.

  python bench/metaclip_matching.py [--entries 500000 --captions 100000 --words 12]
"""

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from dinojax.curation import metaclip  # noqa: E402


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--entries", type=int, default=500_000)
  parser.add_argument("--captions", type=int, default=100_000)
  parser.add_argument("--words", type=int, default=12, help="Words per caption.")
  args = parser.parse_args()
  rng = np.random.default_rng(0)
  letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
  vocabulary = list(dict.fromkeys("".join(rng.choice(letters, rng.integers(3, 10)))
                                  for _ in range(args.entries)))
  zipf = lambda n: np.minimum(rng.zipf(1.3, n), len(vocabulary)) - 1  # noqa: E731
  entries = dict.fromkeys(vocabulary[:args.entries // 2])
  while len(entries) < args.entries:
    entries[" ".join(vocabulary[i] for i in zipf(rng.integers(2, 4)))] = None
  entries = list(entries)
  captions = []
  for _ in range(args.captions):
    words = [vocabulary[i] for i in zipf(args.words)]
    captions.append(" ".join(words[:4]) + ", " + " ".join(words[4:]) + ".")

  start = time.perf_counter()
  matcher = metaclip.Matcher(entries)
  built = time.perf_counter() - start
  start = time.perf_counter()
  entry, _ = matcher.pairs([(c,) for c in captions], np.arange(len(captions)))
  matched = time.perf_counter() - start
  print(f"{len(entries):,} entries: automaton built in {built:.1f} s; {len(captions):,} captions of "
        f"{args.words} words matched in {matched:.1f} s: {len(captions) / matched:,.0f} captions/s, "
        f"{len(entry) / len(captions):.1f} matches per caption")


if __name__ == "__main__":
  main()
