"""CLIP's byte-level BPE tokenizer (Radford et al., 2021), the text side of the released dino.txt
model and of Talk2DINO, with the merge list that ships with this package (`bpe_simple_vocab_16e6.txt.gz`,
OpenAI CLIP, MIT): 49,408 tokens, <|startoftext|> = 49406, <|endoftext|> = 49407, sequences padded
with 0 to the context length.

The text is cleaned and split into words as CLIP does it: `ftfy.fix_text`, HTML entities unescaped twice,
runs of whitespace made one space, lower case, then CLIP's word pattern (with the `regex` module, whose
letter, digit and space classes are the ones CLIP's own split uses). Hugging Face `tokenizers` does the
byte encoding and the merges of those words."""

import functools
import gzip
import html
import os

import ftfy
import numpy as np
import regex
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors

VOCAB_FILE = os.path.join(os.path.dirname(__file__), "bpe_simple_vocab_16e6.txt.gz")
START, END = "<|startoftext|>", "<|endoftext|>"
NUM_MERGES = 49152 - 256 - 2  # CLIP keeps this many merges of the file
# CLIP's word split: its two special tokens whole, contractions, letter runs, single digits, other
# non-space runs. Case-insensitive as CLIP's, which matters after lower-casing only where case folding
# and `str.lower` differ (`'ſ` is the contraction `'s`).
_WORDS = regex.compile(
    r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
    regex.IGNORECASE)
_SPACES = regex.compile(r"\s+")


def _byte_alphabet() -> list[str]:
  """The 256 printable characters standing for bytes, in GPT-2/CLIP vocabulary order: bytes that are
  printable themselves first, then the others, shifted to code points 256 and up."""
  printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
  others = [b for b in range(256) if b not in printable]
  return [chr(b) for b in printable] + [chr(256 + i) for i in range(len(others))]


def clean(text: str) -> str:
  """CLIP's text cleaning: mojibake and other damage repaired by ftfy, HTML entities unescaped twice
  (`&amp;amp;` is `&`), whitespace runs made one space, ends stripped, lower case."""
  text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
  return _SPACES.sub(" ", text).strip().lower()


def words(text: str) -> list[str]:
  """The words CLIP's BPE encodes one by one: `clean(text)` split by CLIP's word pattern."""
  if not isinstance(text, str):
    raise TypeError(f"CLIP's tokenizer encodes str; got {type(text).__name__}: {text!r}.")
  return _WORDS.findall(clean(text))


@functools.lru_cache(maxsize=None)
def clip_tokenizer(context_length: int = 77) -> Tokenizer:
  """CLIP's byte encoding and merges as a Hugging Face tokenizer on words already split by `words`
  (`encode(words(text), is_pretokenized=True)`): <|startoftext|> and <|endoftext|> around them, cut to
  `context_length` with <|endoftext|> kept last, padded with 0."""
  if context_length < 2:
    raise ValueError(f"context_length must leave room for <|startoftext|> and <|endoftext|>; got {context_length}.")
  with gzip.open(VOCAB_FILE, "rt", encoding="utf-8") as f:
    merges = [tuple(line.split()) for line in f.read().split("\n")[1:NUM_MERGES + 1]]
  alphabet = _byte_alphabet()
  tokens = alphabet + [c + "</w>" for c in alphabet] + ["".join(m) for m in merges] + [START, END]
  tokenizer = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges,
                                   end_of_word_suffix="</w>", continuing_subword_prefix="",
                                   unk_token=END, fuse_unk=False))
  tokenizer.add_special_tokens([START, END])  # a word that is a special token is that token, not its bytes
  tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
  tokenizer.decoder = decoders.Sequence([decoders.ByteLevel(), decoders.Replace("</w>", " ")])
  tokenizer.post_processor = processors.TemplateProcessing(
      single=f"{START} $A {END}", special_tokens=[(START, len(tokens) - 2), (END, len(tokens) - 1)])
  tokenizer.enable_truncation(context_length)
  tokenizer.enable_padding(length=context_length, pad_id=0, pad_token="!")
  return tokenizer


def tokenize(texts: list[str] | str, context_length: int = 77) -> np.ndarray:
  """(len(texts), context_length) int32 token ids, as `clip.tokenize(texts, truncate=True)` and the
  dino.txt tokenizer: a text too long keeps its first context_length - 2 tokens between
  <|startoftext|> and <|endoftext|>."""
  if isinstance(texts, str):
    texts = [texts]
  if not texts:
    raise ValueError("tokenize needs at least one text; got an empty list.")
  encodings = clip_tokenizer(context_length).encode_batch([words(t) for t in texts], is_pretokenized=True)
  return np.array([e.ids for e in encodings], np.int32)
