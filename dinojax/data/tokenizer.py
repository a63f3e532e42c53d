"""The text tokenizer a dino.txt config names (`config.tokenizer`): CLIP's BPE, a SentencePiece model
file, or a SentencePiece model trained on the training captions; with the ids the text tower pools and
pads by."""

import os

import jax
import numpy as np
from absl import logging

from dinojax.data import clip_tokenizer
from dinojax.data import sentencepiece_tokenizer as spt

CLIP_VOCAB_SIZE, CLIP_EOT_ID, CLIP_PAD_ID = 49408, 49407, 0


class Tokenizer:
  """Captions -> fixed-length int32 ids, with the ids the text tower pools and pads by."""

  def __init__(self, encode, vocab_size: int, eot_id: int, pad_id: int, description: str):
    self.encode, self.vocab_size, self.eot_id, self.pad_id = encode, vocab_size, eot_id, pad_id
    self.description = description

  def __call__(self, text: str) -> np.ndarray:
    return self.encode([text])[0]


def build_tokenizer(config, workdir: str, train_source) -> Tokenizer:
  """CLIP's BPE, a SentencePiece `.model`, or a SentencePiece model trained on the training captions
  (kept in the workdir, so a resumed run reads the same one)."""
  t, length = config.tokenizer, config.text.context_length
  if t.kind == "clip":
    return Tokenizer(lambda texts: clip_tokenizer.tokenize(list(texts), length), CLIP_VOCAB_SIZE,
                     CLIP_EOT_ID, CLIP_PAD_ID, "clip")
  if t.kind != "sentencepiece":
    raise ValueError(f"Unknown tokenizer.kind {t.kind!r}; choose 'clip' or 'sentencepiece'.")
  path = t.model or os.path.join(workdir, "tokenizer.model")
  if os.path.exists(path) or t.model:
    model = spt.SentencePieceTokenizer(path, length)
  elif train_source is None:
    raise FileNotFoundError(f"No SentencePiece model at {path}, and no captions to train one on.")
  else:
    count = min(len(train_source), t.train_examples)
    corpus = [c for i in range(count) for c in train_source[i]["captions"]]
    model = spt.SentencePieceTokenizer(spt.train(corpus, t.vocab_size, t.model_type), length)
    if jax.process_index() == 0:
      with open(path, "wb") as f:
        f.write(model.serialized())
    logging.info("Trained a %d-piece SentencePiece tokenizer on %d captions -> %s", model.vocab_size,
                 len(corpus), path)
  return Tokenizer(model.encode, model.vocab_size, model.eos_id, model.pad_id, f"sentencepiece:{path}")
