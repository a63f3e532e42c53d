import subprocess
import sys

import numpy as np
import pytest

from dinojax.data import sentencepiece_tokenizer as spt

CORPUS = [f"a photo of {n} {thing}." for n in ("one", "two", "three", "many")
          for thing in ("cats", "dogs", "red cars", "small birds", "green trees")] * 4


@pytest.fixture(scope="module")
def model():
  return spt.train(CORPUS, vocab_size=60)


def test_round_trip_with_bos_eos_and_padding(model):
  tok = spt.SentencePieceTokenizer(model, context_length=24)
  texts = ["a photo of two dogs.", "many small birds."]
  ids = tok.encode(texts)
  assert ids.shape == (2, 24) and ids.dtype == np.int32
  for row in ids:
    real = row[row != spt.PAD_ID]
    assert real[0] == spt.BOS_ID and real[-1] == spt.EOS_ID
    assert (row[len(real):] == spt.PAD_ID).all()  # padding only at the end
    assert spt.UNK_ID not in real
  assert tok.decode(ids) == texts
  np.testing.assert_array_equal(tok(texts[0]), ids[0])


def test_truncation_keeps_eos(model):
  tok = spt.SentencePieceTokenizer(model, context_length=6)
  ids = tok.encode(["a photo of many small birds and green trees."])[0]
  assert ids[0] == spt.BOS_ID and ids[-1] == spt.EOS_ID and spt.PAD_ID not in ids


def test_training_is_deterministic_and_the_cli_writes_a_loadable_model(model, tmp_path):
  assert spt.train(CORPUS, vocab_size=60) == model
  corpus = tmp_path / "captions.txt"
  corpus.write_text("\n".join(CORPUS))
  out = tmp_path / "tok" / "tok.model"
  subprocess.run([sys.executable, "-m", "dinojax.data.sentencepiece_tokenizer", "--corpus", str(corpus),
                  "--vocab_size", "60", "--out", str(out)], check=True, capture_output=True)
  loaded = spt.SentencePieceTokenizer(str(out), context_length=16)
  np.testing.assert_array_equal(loaded.encode(CORPUS[:3]),
                                spt.SentencePieceTokenizer(model, 16).encode(CORPUS[:3]))


def test_bad_inputs_are_named(model, tmp_path):
  tok = spt.SentencePieceTokenizer(model)
  with pytest.raises(ValueError, match="empty list"):
    tok.encode([])
  with pytest.raises(ValueError, match="empty corpus"):
    spt.train(["", "  "], vocab_size=60)
  with pytest.raises(FileNotFoundError, match="not found"):
    spt.SentencePieceTokenizer(str(tmp_path / "missing.model"))
  with pytest.raises(ValueError, match="context_length"):
    spt.SentencePieceTokenizer(model, context_length=1)
