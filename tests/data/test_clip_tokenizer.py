"""Our CLIP tokenizer vs transformers' CLIPTokenizer (its own construction) on the real vocabulary."""

import gzip

import numpy as np
import pytest
from transformers import CLIPTokenizer
from transformers.convert_slow_tokenizer import bytes_to_unicode

from dinojax.data import clip_tokenizer
from dinojax.data.clip_tokenizer import tokenize

TEXTS = ["a photo of a cat", "A PHOTO   of the Eiffel Tower!", "it's a dog's life, isn't it?",
         "naïve café — déjà vu", "3 apples and 12 pears", "emoji 🐱 and symbols #@$%", "",
         "a " + "very " * 100 + "long caption"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  """transformers' CLIPTokenizer, its vocabulary built from the same merge list with transformers' own
  byte-to-unicode table."""
  with gzip.open(clip_tokenizer.VOCAB_FILE, "rt", encoding="utf-8") as f:
    merges = f.read().split("\n")[1:clip_tokenizer.NUM_MERGES + 1]
  alphabet = list(bytes_to_unicode().values())
  vocab = alphabet + [c + "</w>" for c in alphabet] + ["".join(m.split()) for m in merges]
  vocab += ["<|startoftext|>", "<|endoftext|>"]
  return CLIPTokenizer(vocab={t: i for i, t in enumerate(vocab)}, merges=[tuple(m.split()) for m in merges])


def test_matches_transformers(reference):
  ours = tokenize(TEXTS)
  assert ours.shape == (len(TEXTS), 77) and ours.dtype == np.int32
  for text, row in zip(TEXTS, ours):
    want = reference(text, max_length=77, truncation=True)["input_ids"]
    np.testing.assert_array_equal(row[:len(want)], want, err_msg=text)
    assert (row[len(want):] == 0).all()  # CLIP pads with 0 (transformers with <|endoftext|>)


def test_known_ids_and_special_tokens():
  ids = tokenize("a photo of a cat")[0]
  np.testing.assert_array_equal(ids[:7], [49406, 320, 1125, 539, 320, 2368, 49407])
  assert (ids[7:] == 0).all()
  long = tokenize("word " * 200)[0]
  assert long[0] == 49406 and long[-1] == 49407  # truncated, end-of-text kept
  assert clip_tokenizer.clip_tokenizer().get_vocab_size() == 49408


def test_empty_text_list_is_an_error():
  with pytest.raises(ValueError, match="empty list"):
    tokenize([])
