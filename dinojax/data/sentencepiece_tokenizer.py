"""SentencePiece tokenizers for text towers trained from scratch (dino.txt): train one on a caption
corpus, or load an existing `.model`, and encode captions to fixed-length int32 rows
[BOS, pieces..., EOS, PAD...].

  python -m dinojax.data.sentencepiece_tokenizer --corpus captions.txt --vocab_size 8000 --out tok.model

Ids: PAD 0, UNK 1, BOS 2, EOS 3 (the trained models' layout; a loaded model keeps its own ids and
must define BOS and EOS). Captions longer than the context are truncated and still end with EOS.
"""

import argparse
import io
import os
from typing import Iterable, Sequence

import numpy as np
import sentencepiece as spm

PAD_ID, UNK_ID, BOS_ID, EOS_ID = 0, 1, 2, 3


class SentencePieceTokenizer:
  """Fixed-length encoding with a SentencePiece model (a `.model` path or its serialized bytes).

  `tokenizer(text)` -> (context_length,) int32, the per-caption function the caption pipelines take;
  `tokenizer.encode(texts)` -> (len(texts), context_length).
  """

  def __init__(self, model: str | os.PathLike | bytes, context_length: int = 77):
    if context_length < 2:
      raise ValueError(f"context_length={context_length} leaves no room for BOS and EOS.")
    if isinstance(model, bytes):
      self.processor = spm.SentencePieceProcessor(model_proto=model)
    else:
      if not os.path.isfile(model):
        raise FileNotFoundError(f"SentencePiece model not found: {model}")
      self.processor = spm.SentencePieceProcessor(model_file=os.fspath(model))
    self.context_length = context_length
    self.bos_id, self.eos_id = self.processor.bos_id(), self.processor.eos_id()
    if self.bos_id < 0 or self.eos_id < 0:
      raise ValueError("The SentencePiece model defines no BOS/EOS pieces; train it with "
                       "bos_id and eos_id set (as `train` does).")
    pad = self.processor.pad_id()
    self.pad_id = pad if pad >= 0 else PAD_ID

  @property
  def vocab_size(self) -> int:
    return self.processor.get_piece_size()

  def serialized(self) -> bytes:
    return self.processor.serialized_model_proto()

  def encode(self, texts: Sequence[str] | str) -> np.ndarray:
    if isinstance(texts, str):
      texts = [texts]
    texts = list(texts)
    if not texts:
      raise ValueError("encode needs at least one text; got an empty list.")
    out = np.full((len(texts), self.context_length), self.pad_id, np.int32)
    for row, pieces in zip(out, self.processor.encode(texts, out_type=int)):
      ids = [self.bos_id, *pieces[:self.context_length - 2], self.eos_id]
      row[:len(ids)] = ids
    return out

  def __call__(self, text: str) -> np.ndarray:
    return self.encode([text])[0]

  def decode(self, ids: np.ndarray) -> list[str]:
    """Rows of ids back to text (special and padding ids dropped)."""
    special = {self.bos_id, self.eos_id, self.pad_id}
    return [self.processor.decode([int(i) for i in row if int(i) not in special])
            for row in np.atleast_2d(ids)]


def train(sentences: Iterable[str], vocab_size: int, model_type: str = "bpe",
          character_coverage: float = 1.0) -> bytes:
  """Trains a SentencePiece model on `sentences` and returns it serialized (write it to a `.model`
  file, or pass it to `SentencePieceTokenizer`). Deterministic for a given corpus. BPE by default,
  the kind of vocabulary the released dino.txt text encoder uses (CLIP's); "unigram" needs a large
  corpus to learn whole words."""
  sentences = [s for s in sentences if s.strip()]
  if not sentences:
    raise ValueError("Cannot train a tokenizer on an empty corpus.")
  model = io.BytesIO()
  spm.SentencePieceTrainer.train(
      sentence_iterator=iter(sentences), model_writer=model, vocab_size=vocab_size,
      model_type=model_type, character_coverage=character_coverage, pad_id=PAD_ID, unk_id=UNK_ID,
      bos_id=BOS_ID, eos_id=EOS_ID, num_threads=1, minloglevel=2,
      # Small corpora (the tiny configs) cannot always reach the requested size; accept fewer pieces.
      hard_vocab_limit=False)
  return model.getvalue()


def read_corpus(path: str | os.PathLike) -> list[str]:
  if not os.path.isfile(path):
    raise FileNotFoundError(f"Caption corpus not found: {path}")
  with open(path, encoding="utf-8") as f:
    return [line.rstrip("\n") for line in f]


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description="Train a SentencePiece tokenizer on a caption corpus "
                                               "(one caption a line).")
  parser.add_argument("--corpus", required=True, help="text file, one caption a line")
  parser.add_argument("--vocab_size", type=int, required=True)
  parser.add_argument("--out", required=True, help="where to write the .model file")
  parser.add_argument("--model_type", default="bpe", choices=("unigram", "bpe", "char", "word"))
  args = parser.parse_args(argv)
  model = train(read_corpus(args.corpus), args.vocab_size, args.model_type)
  os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
  with open(args.out, "wb") as f:
    f.write(model)
  print(f"Wrote {args.out} ({SentencePieceTokenizer(model).vocab_size} pieces).")


if __name__ == "__main__":
  main()
