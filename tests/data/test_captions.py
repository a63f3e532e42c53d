import json

import numpy as np
import pytest
from PIL import Image

from dinojax.data import captions
from dinojax.data.clip_tokenizer import tokenize as clip_tokenize


def tokenize(text):
  return clip_tokenize([text], 16)[0]


def test_digit_captions_name_their_digit():
  source = captions.make_caption_source("digits", "heldout")
  item = source[0]
  name = captions.DIGIT_NAMES[item["label"]]
  assert item["image"].shape == (32, 32, 3) and item["image"].dtype == np.uint8
  assert len(item["captions"]) > 1
  assert all(name in c or str(item["label"]) in c for c in item["captions"])
  assert source.class_names[item["label"]] == name


def test_caption_batches_shapes_determinism_and_resume():
  source = captions.DigitCaptions("heldout")
  ds, _ = captions.caption_dataset(source, 8, 32, seed=0, tokenize=tokenize, crop_scale=(0.5, 1.0))
  it = iter(ds)
  first = next(it)
  assert first["image"].shape == (8, 32, 32, 3) and first["image"].dtype == np.float32
  assert first["tokens"].shape == (8, 16) and first["tokens"].dtype == np.int32
  assert (first["tokens"][:, 0] == 49406).all()  # <|startoftext|>
  state = it.get_state()
  expected = [next(it) for _ in range(2)]
  again, _ = captions.caption_dataset(source, 8, 32, seed=0, tokenize=tokenize, crop_scale=(0.5, 1.0))
  np.testing.assert_array_equal(next(iter(again))["image"], first["image"])
  resumed = iter(ds)
  resumed.set_state(state)
  for want in expected:
    got = next(resumed)
    for k in want:
      np.testing.assert_array_equal(got[k], want[k])


def test_hosts_split_the_global_batch():
  source = captions.DigitCaptions("heldout")
  whole = next(iter(captions.caption_dataset(source, 8, 32, 0, tokenize)[0]))
  parts = [next(iter(captions.caption_dataset(source, 8, 32, 0, tokenize, process_index=i,
                                              process_count=2)[0])) for i in range(2)]
  for k in whole:
    np.testing.assert_array_equal(np.concatenate([p[k] for p in parts]), whole[k])
  one = next(iter(captions.caption_dataset(source, 2, 32, 0, tokenize, process_index=1,
                                           process_count=2)[0]))  # one pair per host
  np.testing.assert_array_equal(one["tokens"], whole["tokens"][1:2])


def test_jsonl_pairs_with_a_corrupt_image(tmp_path):
  rows = []
  for i in range(4):
    Image.fromarray(np.full((20, 30, 3), 50 * i, np.uint8)).save(tmp_path / f"{i}.png")
    rows.append({"image": f"{i}.png", "captions": [f"grey level {i}", f"shade {i}"]})
  (tmp_path / "broken.jpg").write_bytes(b"not an image")
  rows.append({"image": "broken.jpg", "caption": "nothing"})
  (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
  source = captions.make_caption_source(f"jsonl:{tmp_path}", "train")
  assert len(source) == 5 and source[4]["captions"] == ("nothing",)
  ds, skipped = captions.caption_dataset(source, 4, 14, seed=1, tokenize=tokenize, num_threads=1)
  it = iter(ds)
  batches = [next(it) for _ in range(3)]
  assert all(b["image"].shape == (4, 14, 14, 3) for b in batches)
  assert skipped.count >= 1


def test_caption_eval_dataset_adds_first_caption_tokens():
  source = captions.DigitCaptions("heldout")
  batch = next(iter(captions.caption_eval_dataset(source, 16, 28, tokenize)))
  assert batch["image"].shape == (16, 28, 28, 3) and batch["valid"].all()
  np.testing.assert_array_equal(batch["tokens"][0], tokenize(source[0]["captions"][0]))


def test_caption_source_errors(tmp_path):
  with pytest.raises(FileNotFoundError, match="Caption file not found"):
    captions.make_caption_source(f"jsonl:{tmp_path / 'none.jsonl'}", "train")
  bad = tmp_path / "bad.jsonl"
  bad.write_text('{"image": "a.png", "caption": "ok"}\n{"image": "b.png"}\n')
  with pytest.raises(ValueError, match="bad.jsonl:2"):
    captions.make_caption_source(f"jsonl:{bad}", "train")
  with pytest.raises(ValueError, match="Unknown caption source"):
    captions.make_caption_source("coco", "train")
