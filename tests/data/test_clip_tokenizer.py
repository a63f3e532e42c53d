"""Our CLIP tokenizer vs transformers' CLIPTokenizer (its own construction) on the real vocabulary, and
CLIP's text cleaning (ftfy, HTML entities, whitespace, lower case), which transformers leaves out, against
ids worked out from CLIP's rules."""

import gzip
import html
import pathlib
import re

import ftfy
import numpy as np
import pytest
from transformers import CLIPTokenizer
from transformers.convert_slow_tokenizer import bytes_to_unicode

from dinojax.data import clip_tokenizer
from dinojax.data.clip_tokenizer import tokenize

SHARED_VOCAB = pathlib.Path(__file__).resolve().parents[3] / "shared" / "clip" / "bpe_simple_vocab_16e6.txt.gz"

# Text the cleaning leaves as it is (up to lower case): transformers must give our ids.
PLAIN = ["a photo of a cat", "A PHOTO   of the Eiffel Tower!", "it's a dog's life, isn't it?",
         "don't WON'T they'll I'd we've you're I'm", "naïve café — déjà vu", "3 apples and 12 pears",
         "emoji 🐱👍🏽 and symbols #@$%^*()[]{}", "", "x", "...!!!???", "a_b-c.d/e\\f", "e-mail: a.b@c.org",
         "https://example.com/path?q=1&r=2", "1,234,567.89 km²", "Привет, мир", "東京タワーの写真", "한국어 문장",
         "مرحبا بالعالم", "नमस्ते दुनिया", "Ελληνικά κείμενα", "ÜBER STRAẞE", "l'été à Paris", "mid'word'quote",
         "tabs\tand\nnewlines", "'s 't 're 've 'm 'll 'd", "a " * 75, "a " * 76, "a " + "very " * 100 + "long"]

# Text the cleaning changes, by kind: curly quotes, HTML entities (also escaped twice), mojibake,
# ligatures, full-width forms, control characters, byte-order marks, special tokens in any case,
# other whitespace, Greek capitals (str.lower's final sigma).
CLEANED = ["“quoted” text", "it’s ‘single’ quotes", "„low“ and «guillemets»", "fish &amp; chips",
           "AT&amp;amp;T", "&lt;b&gt;bold&lt;/b&gt;", "&quot;hi&quot; &#39;x&#39; &#x263A; &eacute;",
           "&amp;lt;tag&amp;gt;", "cafÃ© dÃ©jÃ  vu", "â€œquotedâ€\x9d", "Ã¡ Ã© Ã­ Ã³ Ãº Ã±",
           "ÐŸÑ€Ð¸Ð²ÐµÑ‚ Ð¼Ð¸Ñ€", "doesnÃ¢â‚¬â„¢t", "ﬁne ﬂower", "ﬀ ﬃ ﬄ oﬃce", "ﬅ ﬆ",
           "ＦＵＬＬ　ｗｉｄｔｈ", "１２３ ＡＢＣ！？", "Ｉ’ｍ ｈｅｒｅ", "ctrl\x00\x01 chars\x7f end",
           "a\x1c\x1d\x1e\x1fb", "bell\x07 and \x1b[31mred\x1b[0m", "\ufeffbom", "mid\ufeffdle", "\ufeff\ufeff",
           "<|StartOfText|> hi", "a <|ENDOFTEXT|> b", "x<|EndOfText|>y", "<|startoftext|><|endoftext|>",
           "\u00a0nbsp\u2003em\u3000ideographic\u2028line", "  padded \r\n ", "ΟΔΟΣ ΣΟΦΟΣ"]

# Unicode's White_Space property (CLIP's \s, from the `regex` module), written out: Python's `re` \s
# also counts U+001C..U+001F.
_WHITE_SPACE = re.compile("[\t\n\x0b\x0c\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]+")


def clip_clean(text):
  """CLIP's cleaning, restated: ftfy, HTML entities unescaped twice, whitespace runs one space, lower."""
  text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
  return _WHITE_SPACE.sub(" ", text).strip().lower()


@pytest.fixture(scope="module")
def reference():
  """transformers' CLIPTokenizer, its vocabulary built from the same merge list with transformers' own
  byte-to-unicode table."""
  with gzip.open(clip_tokenizer.VOCAB_FILE, "rt", encoding="utf-8") as f:
    merges = f.read().split("\n")[1:clip_tokenizer.NUM_MERGES + 1]
  alphabet = list(bytes_to_unicode().values())
  vocab = alphabet + [c + "</w>" for c in alphabet] + ["".join(m.split()) for m in merges]
  vocab += ["<|startoftext|>", "<|endoftext|>"]
  return CLIPTokenizer(vocab={t: i for i, t in enumerate(vocab)}, merges=[tuple(m.split()) for m in merges])


def _assert_rows(rows, texts, reference, context_length):
  for text, row in zip(texts, rows):
    want = reference(text, max_length=context_length, truncation=True)["input_ids"]
    np.testing.assert_array_equal(row[:len(want)], want, err_msg=repr(text))
    assert (row[len(want):] == 0).all(), repr(text)  # CLIP pads with 0 (transformers with <|endoftext|>)


@pytest.mark.parametrize("context_length", [77, 16])
def test_matches_transformers(reference, context_length):
  ours = tokenize(PLAIN, context_length)
  assert ours.shape == (len(PLAIN), context_length) and ours.dtype == np.int32
  _assert_rows(ours, PLAIN, reference, context_length)


def test_cleaning_as_clip(reference):
  """CLIP's cleaning first, then transformers: an independent composition of the official rules."""
  _assert_rows(tokenize(CLEANED), [clip_clean(t) for t in CLEANED], reference, 77)


@pytest.mark.parametrize("text,ids", [
    ("fish &amp;amp; chips", [2759, 261, 8855]),  # fish</w> &</w> chips</w>
    ("cafÃ© dÃ©jÃ  vu", [15304, 25466, 73, 21259, 13230]),  # café</w> dé j à</w> vu</w>
    ("\ufeffthe ﬁsh", [518, 2759]),  # the</w> fish</w>
    ("ＣＡＴ\u3000１２", [2368, 272, 273]),  # cat</w> 1</w> 2</w>
    ("a\x00b\x1fc", [5334]),  # abc</w>
    ("<|StartOfText|> hi <|ENDOFTEXT|>", [49406, 1883, 49407]),
    ("it'ſ ok", [585, 6, 129, 379, 2481]),  # it</w> ' ſ(2 bytes)</w> ok</w>: 'ſ folds to the contraction 's
    # ftfy leaves entities in text with tags; e + U+0301 then stays uncomposed, the mark starting a word.
    ("<i>e&#769;</i>", [283, 328, 285, 324, 136, 223, 34308, 328, 285]),
])
def test_hand_checked_ids(text, ids):
  row = tokenize(text)[0]
  np.testing.assert_array_equal(row[:len(ids) + 2], [49406, *ids, 49407])
  assert (row[len(ids) + 2:] == 0).all()


def test_known_ids_special_tokens_and_decoding():
  ids = tokenize("a photo of a cat")[0]
  np.testing.assert_array_equal(ids[:7], [49406, 320, 1125, 539, 320, 2368, 49407])
  assert (ids[7:] == 0).all()
  long = tokenize("word " * 200)[0]
  assert long[0] == 49406 and long[-1] == 49407  # truncated, end-of-text kept
  tokenizer = clip_tokenizer.clip_tokenizer()
  assert tokenizer.get_vocab_size() == 49408
  ids = tokenize("A photo of a cat, naïve!")[0]
  assert tokenizer.decode(ids[ids != 0].tolist()) == "a photo of a cat , naïve ! "


def test_bad_input_is_an_error():
  with pytest.raises(ValueError, match="empty list"):
    tokenize([])
  with pytest.raises(TypeError, match="got int"):
    tokenize(["a cat", 3])
  with pytest.raises(ValueError, match="context_length"):
    tokenize("a cat", context_length=1)


@pytest.mark.skipif(not SHARED_VOCAB.exists(), reason=f"CLIP's vocabulary not found at {SHARED_VOCAB}")
def test_shipped_vocabulary_is_clips():
  assert pathlib.Path(clip_tokenizer.VOCAB_FILE).read_bytes() == SHARED_VOCAB.read_bytes()
