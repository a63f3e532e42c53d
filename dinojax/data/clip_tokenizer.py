"""CLIP's byte-level BPE tokenizer, built on Hugging Face `tokenizers` from the merge list that ships
with this package (`bpe_simple_vocab_16e6.txt.gz`, OpenAI CLIP, MIT): 49,408 tokens,
<|startoftext|> = 49406, <|endoftext|> = 49407, sequences padded with 0 to the context length."""

import functools
import gzip
import os

import numpy as np
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

VOCAB_FILE = os.path.join(os.path.dirname(__file__), "bpe_simple_vocab_16e6.txt.gz")
START, END = "<|startoftext|>", "<|endoftext|>"
NUM_MERGES = 49152 - 256 - 2  # CLIP keeps this many merges of the file
# CLIP's word split: contractions, letter runs, single digits, other non-space runs.
_WORDS = r"""'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""


def _byte_alphabet() -> list[str]:
  """The 256 printable characters standing for bytes, in GPT-2/CLIP vocabulary order: bytes that are
  printable themselves first, then the others, shifted to code points 256 and up."""
  printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
  others = [b for b in range(256) if b not in printable]
  return [chr(b) for b in printable] + [chr(256 + i) for i in range(len(others))]


@functools.lru_cache(maxsize=None)
def clip_tokenizer(context_length: int = 77) -> Tokenizer:
  with gzip.open(VOCAB_FILE, "rt", encoding="utf-8") as f:
    merges = [tuple(line.split()) for line in f.read().split("\n")[1:NUM_MERGES + 1]]
  alphabet = _byte_alphabet()
  tokens = alphabet + [c + "</w>" for c in alphabet] + ["".join(m) for m in merges] + [START, END]
  tokenizer = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges,
                                   end_of_word_suffix="</w>", continuing_subword_prefix="",
                                   unk_token=END, fuse_unk=False))
  tokenizer.normalizer = normalizers.Sequence(
      [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()])
  tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
      [pre_tokenizers.Split(Regex(_WORDS), behavior="removed", invert=True),
       pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
  tokenizer.decoder = decoders.ByteLevel()
  tokenizer.post_processor = processors.TemplateProcessing(
      single=f"{START} $A {END}", special_tokens=[(START, len(tokens) - 2), (END, len(tokens) - 1)])
  tokenizer.enable_truncation(context_length)
  tokenizer.enable_padding(length=context_length, pad_id=0, pad_token="!")
  return tokenizer


def tokenize(texts: list[str] | str, context_length: int = 77) -> np.ndarray:
  """(len(texts), context_length) int32 token ids, as `clip.tokenize(texts, truncate=True)`."""
  if isinstance(texts, str):
    texts = [texts]
  if not texts:
    raise ValueError("tokenize needs at least one text; got an empty list.")
  encodings = clip_tokenizer(context_length).encode_batch(list(texts))
  return np.array([e.ids for e in encodings], np.int32)
