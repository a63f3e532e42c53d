"""MetaCLIP's balancing of captions by metadata (Xu et al., 2024, "Demystifying CLIP Data", Algorithm 1):
the text side of dino.txt's curation of image–caption pairs (`pairs.py`, docs/curation.md).

Every caption is matched against a list of metadata entries (MetaCLIP's 500k WordNet and Wikipedia
terms, which the user supplies: dinojax does not ship them), each entry's matches are counted over the
deduplicated pool, and a pair is kept when a draw for any of its matches falls under its entry's
probability min(1, t / count): a head entry keeps about t pairs, a tail entry all of its pairs. Pairs
matching no entry are dropped.

As facebookresearch/MetaCLIP's `metaclip1` code: an entry matches where it occurs in the caption with a
space on each side, after the caption is wrapped in spaces, the marks , . ; : ? ! ` are spaced apart and
tabs and line breaks become spaces; matching is case-sensitive; a caption counts an entry once however
often it occurs; counts are summed over all captions; there is one uniform draw per (caption, entry)
match (their numpy `balance_sampling`). A pair with several captions has each counted and drawn as
MetaCLIP does each of its image–text pairs, and is kept when any caption is (ours).

In `<side dir>/metaclip/`, as the pairs' `cluster` step runs it for the text side:
- each process matches its shards of the deduplicated pairs (pair i in shard i // shard_size) ->
  `parts/match-%05d.npz` (one row per match: `entry`, `pair`) and counts them ->
  `parts/count-%05d-of-%05d.npz`;
- wherever every process's count exists, their sum -> `entry_count.npy` and `summary.json`.
The `sample` step then draws shard by shard (`balanced_pairs`), each shard with its own generator, so
the selection does not depend on the number of processes.
"""

import collections
import hashlib
import json
import math
import os
from collections.abc import Sequence

import numpy as np
from absl import logging
from tqdm import tqdm

from dinojax.curation import store

# MetaCLIP's `spacing`: these marks get a space on each side and these characters become spaces, so an
# entry wrapped in spaces matches whole words only.
PUNCTUATION = (",", ".", ";", ":", "?", "!", "`")
WHITESPACE = ("\t", "\n", "\r")


# ---------------------------------------------------------------------------------------------------
# Metadata and substring matching
# ---------------------------------------------------------------------------------------------------
def read_metadata(path: str | None) -> list[str]:
  """The entries, in file order (an entry's id is its position): MetaCLIP's `metadata.json` (a JSON list
  of strings) or, for any other file name, a text file with one entry a line (blank lines skipped)."""
  if not path:
    raise ValueError("text.method='metaclip' needs MetaCLIP's metadata entries: pass "
                     "--config.text.metadata=<file>, facebookresearch/MetaCLIP's "
                     "metaclip/metaclip1/metadata.json (not shipped with dinojax) or a text file with one "
                     "entry a line.")
  if not os.path.isfile(path):
    raise FileNotFoundError(f"MetaCLIP metadata not found at {path} (--config.text.metadata).")
  with open(path, encoding="utf-8") as f:
    text = f.read()
  if path.endswith(".json"):
    try:
      entries = json.loads(text)
    except json.JSONDecodeError as e:
      raise ValueError(f"{path}: not valid JSON ({e}).") from e
    if not isinstance(entries, list) or not all(isinstance(e, str) for e in entries):
      raise ValueError(f"{path}: must be a JSON list of strings, as MetaCLIP's metadata.json.")
  else:
    entries = [line for line in text.splitlines() if line]
  if not entries:
    raise ValueError(f"{path}: no metadata entries.")
  if "" in entries:
    raise ValueError(f"{path}: entry {entries.index('')} is empty (it would match every double space).")
  if len(set(entries)) < len(entries):
    repeated = sorted(e for e, n in collections.Counter(entries).items() if n > 1)
    raise ValueError(f"{path}: entries repeat ({len(repeated)}, e.g. {repeated[:3]}); each entry is one "
                     "concept to balance.")
  return entries


def digest(entries: Sequence[str]) -> str:
  return hashlib.sha256("\n".join(entries).encode()).hexdigest()


def _ahocorasick():
  try:
    import ahocorasick
  except ImportError as e:
    raise ImportError("text.method='metaclip' matches captions with pyahocorasick (as MetaCLIP): "
                      "pip install 'dinojax[metaclip]'.") from e
  return ahocorasick


def check_inputs(metadata: str | None) -> None:
  """Fails now, not after hours of embedding, when the metadata or the matcher is missing."""
  read_metadata(metadata)
  _ahocorasick()


def spacing(caption: str) -> str:
  """MetaCLIP's normalisation of a caption before matching."""
  spaced = f" {caption} "
  for mark in PUNCTUATION:
    spaced = spaced.replace(mark, f" {mark} ")
  for char in WHITESPACE:
    spaced = spaced.replace(char, " ")
  return spaced


class Matcher:
  """Every entry, wrapped in spaces, in one Aho–Corasick automaton: all entries a caption contains in
  one pass over it (MetaCLIP's `substr_matching_ahocorasick`)."""

  def __init__(self, entries: Sequence[str]):
    self.automaton = _ahocorasick().Automaton()
    for entry_id, entry in enumerate(entries):
      self.automaton.add_word(f" {entry} ", entry_id)
    self.automaton.make_automaton()

  def __call__(self, caption: str) -> list[int]:
    """Sorted ids of the entries `caption` matches."""
    return sorted({entry_id for _, entry_id in self.automaton.iter(spacing(caption))})

  def pairs(self, pair_captions: Sequence[Sequence[str]], pair_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(entry, pair) int32/int64 rows, one per caption and entry it matches, by pair, caption, entry."""
    entry, pair = [], []
    for pair_id, captions in zip(pair_ids, pair_captions):
      for caption in captions:
        matched = self(caption)
        entry.extend(matched)
        pair.extend([pair_id] * len(matched))
    return np.array(entry, np.int32), np.array(pair, np.int64)


# ---------------------------------------------------------------------------------------------------
# Balance sampling
# ---------------------------------------------------------------------------------------------------
def entry_probabilities(entry_count: np.ndarray, t: int) -> np.ndarray:
  """min(1, t / count) per entry (MetaCLIP raises counts below t to t)."""
  return t / np.maximum(np.asarray(entry_count, np.float64), t)


def balance_sampling(entry: np.ndarray, pair: np.ndarray, probabilities: np.ndarray,
                     rng: np.random.Generator) -> np.ndarray:
  """Sorted ids of the pairs kept: one uniform per (entry, pair) row, in row order, drawn under its
  entry's probability; a pair stays when any of its rows is drawn."""
  drawn = rng.random(len(entry)) < probabilities[entry]
  return np.unique(pair[drawn])


# ---------------------------------------------------------------------------------------------------
# The counting (the pairs' `cluster` step, text side) and the draw (their `sample` step)
# ---------------------------------------------------------------------------------------------------
def _dirs(directory: str) -> tuple[str, str]:
  out = os.path.join(directory, "metaclip")
  return out, os.path.join(out, "parts")


def _match_part(parts_dir: str, shard: int) -> str:
  return os.path.join(parts_dir, f"match-{shard:05d}.npz")


def _count_part(parts_dir: str, process_index: int, process_count: int) -> str:
  return os.path.join(parts_dir, f"count-{process_index:05d}-of-{process_count:05d}.npz")


def _check_or_write_manifest(out_dir: str, manifest: dict) -> None:
  path = os.path.join(out_dir, store.MANIFEST)
  if os.path.exists(path):
    changed = {k: (v, manifest[k]) for k, v in store.read_json(path).items() if manifest.get(k) != v}
    if changed:
      raise ValueError(f"{out_dir} holds MetaCLIP matches made with other inputs {changed} (old, new): "
                       "use a fresh --workdir or delete that folder.")
    return
  os.makedirs(out_dir, exist_ok=True)
  store.write_json(path, manifest)


def _shard_ids(keep: np.ndarray, shard: int, shard_size: int) -> np.ndarray:
  return keep[np.searchsorted(keep, shard * shard_size):np.searchsorted(keep, (shard + 1) * shard_size)]


def run(*, metadata: str | None, source, keep: np.ndarray, directory: str, shard_size: int,
        process_index: int = 0, process_count: int = 1) -> dict | None:
  """Matches and counts this process's shards of the sorted pair ids `keep` (their captions read from
  `source`), then sums every process's counts -> `entry_count.npy`; the summary, or None while other
  processes' counts are missing."""
  entries = read_metadata(metadata)
  out_dir, parts_dir = _dirs(directory)
  num_shards = max(1, math.ceil(len(source) / shard_size))
  _check_or_write_manifest(out_dir, {"entries": len(entries), "digest": digest(entries),
                                     "pairs": len(source), "kept": int(len(keep)), "shard_size": shard_size,
                                     "num_shards": num_shards})
  os.makedirs(parts_dir, exist_ok=True)
  mine = store.owned(num_shards, process_index, process_count)
  count_part = _count_part(parts_dir, process_index, process_count)
  if not os.path.exists(count_part):
    todo = [s for s in mine if not os.path.exists(_match_part(parts_dir, s))]
    matcher = Matcher(entries) if todo else None
    for s in tqdm(todo, unit="shard", desc=f"MetaCLIP matching (process {process_index}/{process_count})",
                  dynamic_ncols=True, mininterval=1.0):
      ids = _shard_ids(keep, s, shard_size)
      entry, pair = matcher.pairs([source[int(i)]["captions"] for i in ids], ids)
      store.atomic_savez(_match_part(parts_dir, s), entry=entry, pair=pair)
    entry_count, matched = np.zeros(len(entries), np.int64), 0
    for s in mine:
      part = np.load(_match_part(parts_dir, s))
      entry_count += np.bincount(part["entry"], minlength=len(entries))
      matched += len(np.unique(part["pair"]))
    store.atomic_savez(count_part, entry_count=entry_count, matched_pairs=matched)
  return reduce_phase(directory, len(keep), process_count)


def reduce_phase(directory: str, kept: int, process_count: int) -> dict | None:
  """Every process's counts summed -> `entry_count.npy` and `summary.json`; None while some are missing."""
  out_dir, parts_dir = _dirs(directory)
  parts = [_count_part(parts_dir, p, process_count) for p in range(process_count)]
  missing = store.missing_parts(parts)
  if missing:
    logging.info("MetaCLIP counts: waiting for %d parts of other processes (%s ...).", len(missing), missing[0])
    return None
  loaded = [np.load(p) for p in parts]
  entry_count = sum(p["entry_count"] for p in loaded)
  store.atomic_save(os.path.join(out_dir, "entry_count.npy"), entry_count)
  summary = {"pairs": int(kept), "matched_pairs": int(sum(p["matched_pairs"] for p in loaded)),
             "matches": int(entry_count.sum()), "entries": int(len(entry_count)),
             "entries_matched": int((entry_count > 0).sum()), "max_count": int(entry_count.max())}
  store.write_json(os.path.join(out_dir, "summary.json"), summary)
  logging.info("MetaCLIP counts: %s", summary)
  return summary


def load_entry_count(directory: str) -> np.ndarray:
  out_dir, _ = _dirs(directory)
  return np.load(store.require(os.path.join(out_dir, "entry_count.npy"), "MetaCLIP's entry counts", "cluster"))


def _match_parts(directory: str):
  out_dir, parts_dir = _dirs(directory)
  for s in range(store.read_json(os.path.join(out_dir, store.MANIFEST))["num_shards"]):
    yield s, np.load(store.require(_match_part(parts_dir, s), "A MetaCLIP match part", "cluster"))


def balanced_pairs(directory: str, *, t: int, seed: int) -> np.ndarray:
  """Sorted ids of the pairs MetaCLIP's balance sampling keeps at threshold `t`; shard s draws with
  the generator of (seed, s)."""
  probabilities = entry_probabilities(load_entry_count(directory), t)
  kept = [balance_sampling(part["entry"], part["pair"], probabilities, np.random.default_rng([seed, s]))
          for s, part in _match_parts(directory)]
  return np.concatenate(kept)  # shards hold consecutive id ranges: already sorted


def entry_histogram(directory: str, pairs: np.ndarray) -> np.ndarray:
  """Per entry, the matches of the captions of the sorted pair ids `pairs`."""
  counts = np.zeros(len(load_entry_count(directory)), np.int64)
  for _, part in _match_parts(directory):
    counts += np.bincount(part["entry"][store.is_in(part["pair"], pairs)], minlength=len(counts))
  return counts
