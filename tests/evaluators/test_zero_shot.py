"""Zero-shot accuracy and retrieval recall against NumPy sort-based references."""

import jax
import numpy as np
import pytest

from dinojax import parallel
from dinojax.evaluators import zero_shot


def _unit(rng, shape):
  x = rng.normal(size=shape)
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


def test_zero_shot_accuracy_matches_numpy_argsort():
  rng = np.random.default_rng(0)
  images, classes = _unit(rng, (300, 16)), _unit(rng, (12, 16))
  labels = rng.integers(0, 12, 300)
  order = np.argsort(-(images @ classes.T), axis=1)
  for k in (1, 5):
    want = np.mean([labels[i] in order[i, :k] for i in range(300)])
    got = zero_shot.zero_shot_accuracy(images * 3.0, labels, classes, ks=(k,), chunk=64)[f"top{k}"]
    assert got == pytest.approx(want)
  # k beyond the number of classes: everything is "in the top k".
  assert zero_shot.zero_shot_accuracy(images, labels % 3, classes[:3], ks=(5,))["top5"] == 1.0


def test_retrieval_recall_matches_numpy_with_several_captions_per_image():
  rng = np.random.default_rng(1)
  images = _unit(rng, (40, 8))
  owner = np.repeat(np.arange(40), 3)  # three captions per image, COCO-style
  texts = _unit(rng, (120, 8)) + 0.8 * images[owner]
  got = zero_shot.retrieval_recall(images, texts, owner, ks=(1, 5), chunk=16)
  unit_texts = texts / np.linalg.norm(texts, axis=-1, keepdims=True)
  sims = images @ unit_texts.T
  i2t_order, t2i_order = np.argsort(-sims, axis=1), np.argsort(-sims.T, axis=1)
  for k in (1, 5):
    want_i2t = np.mean([np.isin(np.flatnonzero(owner == i), i2t_order[i, :k]).any() for i in range(40)])
    want_t2i = np.mean([owner[t] in t2i_order[t, :k] for t in range(120)])
    assert got[f"image_to_text_r{k}"] == pytest.approx(want_i2t)
    assert got[f"text_to_image_r{k}"] == pytest.approx(want_t2i)
  assert 0 < got["image_to_text_r1"] <= got["image_to_text_r5"] <= 1


def test_class_embeddings_average_the_normalised_templates():
  table = {"a {}.": np.array([3.0, 0.0]), "the {}.": np.array([0.0, 1.0])}

  def encode(prompts):
    return np.stack([table[p.replace("cat", "{}").replace("dog", "{}")] * (2 if "dog" in p else 1)
                     for p in prompts])

  out = zero_shot.class_embeddings(encode, ["cat", "dog"], ["a {}.", "the {}."])
  np.testing.assert_allclose(out, np.full((2, 2), 2 ** -0.5), rtol=1e-6)


def test_bad_inputs_are_named():
  with pytest.raises(ValueError, match="at least one class"):
    zero_shot.class_embeddings(lambda p: np.zeros((len(p), 2)), [], ["a {}."])
  with pytest.raises(ValueError, match="templates"):
    zero_shot.class_embeddings(lambda p: np.zeros((len(p), 2)), ["cat"], ["a photo."])
  with pytest.raises(ValueError, match="Labels must lie"):
    zero_shot.zero_shot_accuracy(np.ones((2, 2)), np.array([0, 3]), np.eye(2))
  with pytest.raises(ValueError, match="at least one text"):
    zero_shot.retrieval_recall(np.eye(3), np.eye(3)[:2], np.array([0, 1]))


def test_ties_break_by_index_so_collapsed_embeddings_score_chance():
  same = np.ones((6, 4))
  assert zero_shot.zero_shot_accuracy(same, np.arange(6) % 3, np.ones((3, 4)), ks=(1,))["top1"] == 2 / 6
  recall = zero_shot.retrieval_recall(same, same, ks=(1,))
  assert recall["image_to_text_r1"] == recall["text_to_image_r1"] == 1 / 6
  # Duplicate captions (the same text for two images) rank like a stable sort does.
  images = np.eye(3)
  texts = np.stack([images[0], images[0], images[2]])
  recall = zero_shot.retrieval_recall(images, texts, ks=(1,))
  assert recall["text_to_image_r1"] == 2 / 3 and recall["image_to_text_r1"] == 2 / 3


def test_prompts_are_embedded_over_the_mesh_and_come_back_whole_in_order():
  class Tokenizer:  # prompt "p<i>" -> the ids (i, i + 1)
    encode = staticmethod(lambda prompts: np.array([[int(p[1:]), int(p[1:]) + 1] for p in prompts], np.int32))

  mesh = parallel.make_mesh({"data": 8, "fsdp": 1, "model": 1})  # 3 prompts padded to 8 rows
  embed = jax.jit(lambda params, ids: params * ids.sum(-1, keepdims=True).astype(np.float32))
  got = zero_shot.encode_prompts(embed, np.float32(0.5), Tokenizer, ["p4", "p0", "p7"], mesh,
                                 parallel.DEFAULT_RULES)
  assert got.dtype == np.float32 and got.tolist() == [[4.5], [0.5], [7.5]]
