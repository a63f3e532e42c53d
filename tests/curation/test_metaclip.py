"""MetaCLIP's balancing of captions by metadata (`curation/metaclip.py`): its substring matching, a
hand-computed balance sampling, and the errors for a missing metadata file or matcher. The pairs'
pipeline with it (split over processes, head entries capped) is in `test_pairs.py`."""

import json
import sys

import numpy as np
import pytest

import jobs
from dinojax import config_args, config_check
from dinojax.curation import metaclip, pairs

ENTRIES = ["cat", "New York", "York", "hot dog", "dog", "t-shirt", "St. Louis", "3", "a b"]


@pytest.mark.parametrize("caption,expected", [
    ("A cat, a dog.", ["cat", "dog"]),  # punctuation is spaced apart
    ("Cats in New York", ["New York", "York"]),  # whole words only; overlapping entries both match
    ("new york hotdog", []),  # case-sensitive; no match inside a word
    ("my hot dog\tand t-shirt", ["hot dog", "dog", "t-shirt"]),  # tabs are spaces; "-" is not spaced
    ("St. Louis", []),  # its "." is spaced apart in the caption, not in the entry
    ("room 3:", ["3"]),
    ("a  b", []), ("a\nb", ["a b"]),  # a double space is not the entry's single one; a line break is
    ("cat cat cat", ["cat"]),  # once per caption
])
def test_matching_is_metaclips(caption, expected):
  matcher = metaclip.Matcher(ENTRIES)
  assert [ENTRIES[i] for i in matcher(caption)] == expected
  # MetaCLIP's pure-Python matcher: each spaced entry searched in the spaced caption.
  spaced = metaclip.spacing(caption)
  assert matcher(caption) == [i for i, entry in enumerate(ENTRIES) if f" {entry} " in spaced]


def test_balance_sampling_by_hand():
  entries = ["cat", "dog", "red car", "tree"]
  captions = [("a cat and a dog",), ("Cat? no: a cat.",), ("a red car",), ("cat",), ("cat, cat, cat",),
              ("a Dog", "untitled")]
  entry, pair = metaclip.Matcher(entries).pairs(captions, np.arange(6))
  np.testing.assert_array_equal(entry, [0, 1, 0, 2, 0, 0])
  np.testing.assert_array_equal(pair, [0, 0, 1, 2, 3, 4])  # pair 5 matches nothing
  entry_count = np.bincount(entry, minlength=len(entries))
  np.testing.assert_array_equal(entry_count, [4, 1, 1, 0])
  # t = 2: "cat" keeps each match with probability 2/4, the rest (counts under t) with 1.
  probabilities = metaclip.entry_probabilities(entry_count, t=2)
  np.testing.assert_allclose(probabilities, [0.5, 1, 1, 1])
  # default_rng(0)'s uniforms, one per row: 0.637 0.270 0.041 0.017 0.813 0.913. Pair 0 fails its
  # "cat" draw (0.637 >= 0.5) but its "dog" one keeps it; pair 1's "cat" draw 0.041 keeps it; pair 2
  # by "red car"; pairs 3 and 4 fail theirs (0.813, 0.913); pair 5 had no match.
  kept = metaclip.balance_sampling(entry, pair, probabilities, np.random.default_rng(0))
  np.testing.assert_array_equal(kept, [0, 1, 2])


def test_metadata_formats_and_errors(tmp_path, monkeypatch):
  listed = tmp_path / "metadata.json"
  listed.write_text(json.dumps(["cat", "red car"]))
  lines = tmp_path / "entries.txt"
  lines.write_text("cat\nred car\n\n")
  assert metaclip.read_metadata(str(listed)) == metaclip.read_metadata(str(lines)) == ["cat", "red car"]
  with pytest.raises(ValueError, match="--config.text.metadata=<file>, facebookresearch/MetaCLIP"):
    metaclip.read_metadata(None)
  with pytest.raises(FileNotFoundError, match="MetaCLIP metadata not found"):
    metaclip.read_metadata(str(tmp_path / "missing.json"))
  for bad, problem in ((["cat", "cat", "dog"], "entries repeat"), (["cat", ""], "entry 1 is empty"),
                       ({"cat": 1}, "JSON list of strings")):
    listed.write_text(json.dumps(bad))
    with pytest.raises(ValueError, match=problem):
      metaclip.read_metadata(str(listed))
  # The pairs' pipeline stops at its first step, before embedding anything.
  config = config_args.load_config(jobs.REPO / "configs/curate_dinotxt_tiny.py")
  config.text.method = "metaclip"
  with pytest.raises(ValueError, match="needs MetaCLIP's metadata entries"):
    pairs.embed_step(config, str(tmp_path / "work"))
  config.text.update(method="wordnet", t=0, metadata=str(tmp_path / "missing.json"))
  assert sorted(p.split("=")[0] for p in config_check.problems(config)) == [
      "--config.text.metadata", "--config.text.method", "--config.text.t"]
  monkeypatch.setitem(sys.modules, "ahocorasick", None)  # as if pyahocorasick were not installed
  with pytest.raises(ImportError, match=r"dinojax\[metaclip\]"):
    metaclip.Matcher(["cat"])
