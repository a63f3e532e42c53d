"""dino.txt's two-sided curation of image–caption pairs (`curation/pairs.py`).

A synthetic pool of pairs with known concepts on each side, 100× more frequent at the head than at
the tail: on the image side, on the text side (ordered the other way), and on both (half the pairs
share their concept across sides). Embeddings are written directly (as `test_sampling.py` does: a
random backbone cannot tell concepts apart). After dedup, cluster and sample, each side's concept
histogram is flatter by its entropy, planted duplicates are gone, the selection lies within the text
side's (the intersection), and a tiny dino.txt run trains on the curated list. The same pool with
captions naming its text concepts is balanced by MetaCLIP's metadata on the text side. The embed step
itself runs on a few digit pairs.
"""

import functools
import json
import os
import shutil
import sys

import numpy as np
import pytest

import jobs
from dinojax import config_args, config_check
from dinojax.curation import embed, metaclip, pairs, store
from dinojax.data import captions
from dinojax.trainers import dinotxt

sys.path.insert(0, os.path.dirname(__file__))
from test_search import normalized  # noqa: E402

CONFIG = jobs.REPO / "configs/curate_dinotxt_tiny.py"
CONCEPTS = 6
SIZES = np.round(600 * 100.0 ** -np.linspace(0, 1, CONCEPTS)).astype(int)  # 600 ... 6: 100x
PAIR_COPIES, IMAGE_COPIES = 20, 10  # pairs repeated on both sides; images repeated with a new caption
TARGET = 240
TEXT_SIZE = 3 * TARGET  # the text side's selection, among which the image side draws TARGET
# Each side's concept entropy must close this part of its gap to a flat histogram (log 6 nats).
GAP_CLOSED = 0.5


def tiny_config():
  return config_args.load_config(CONFIG)


def synthetic_config():
  """The tiny config, at the synthetic pool's scale."""
  config = tiny_config()
  for side in pairs.SIDES:
    config[side].dedup.threshold = 0.999
    config[side].cluster.update(n_clusters=[40, CONCEPTS], n_splits=[1, 1], resampling_steps=[1, 10],
                                sample_sizes=[1, 3], iterations=10)
  config.sample.update(target_size=TARGET, text_size=TEXT_SIZE)
  return config


def synthetic_pool(seed=0, dim=16):
  """(image vectors, text vectors, image concepts, text concepts, groups of planted copies)."""
  rng = np.random.default_rng(seed)
  image_concept = rng.permutation(np.repeat(np.arange(CONCEPTS), SIZES))
  text_concept = np.where(rng.random(len(image_concept)) < 0.5, image_concept,
                          CONCEPTS - 1 - rng.permutation(image_concept))
  centres = rng.normal(size=(2, CONCEPTS, dim))
  image = centres[0][image_concept] + 0.3 * rng.normal(size=(len(image_concept), dim))
  text = centres[1][text_concept] + 0.3 * rng.normal(size=(len(text_concept), dim))
  originals = rng.choice(len(image), PAIR_COPIES + IMAGE_COPIES, replace=False)
  copies = np.arange(len(image), len(image) + len(originals))
  jitter = lambda x: x + 1e-4 * rng.normal(size=x.shape)  # noqa: E731
  fresh_text = (centres[1][text_concept[originals[PAIR_COPIES:]]]
                + 0.3 * rng.normal(size=(IMAGE_COPIES, dim)))
  image = np.concatenate([image, jitter(image[originals])])
  text = np.concatenate([text, jitter(text[originals[:PAIR_COPIES]]), fresh_text])
  return (normalized(image), normalized(text), np.concatenate([image_concept, image_concept[originals]]),
          np.concatenate([text_concept, text_concept[originals]]), np.stack([originals, copies], 1))


@pytest.fixture(scope="module")
def curated(tmp_path_factory):
  """The pool curated by dedup, cluster and sample, each step split over two processes."""
  workdir = str(tmp_path_factory.mktemp("pairs"))
  image, text, image_concept, text_concept, planted = synthetic_pool()
  for side, vectors in (("image", image), ("text", text)):
    store.write_embeddings(embed.collection_dir(pairs.side_dir(workdir, side), "pool"), vectors,
                           shard_size=400)
  config = synthetic_config()
  config.pair_dedup = "both"
  assert pairs.dedup_step(config, workdir, 0, 2) is None  # waits for process 1's blocks
  assert pairs.dedup_step(config, workdir, 1, 2) is not None
  only_both = np.load(os.path.join(workdir, "dedup/keep.npy"))
  config.pair_dedup = "either"
  dedup_summary = pairs.dedup_step(config, workdir, 1, 2)
  assert pairs.cluster_step(config, workdir, 0, 2) is None
  assert pairs.cluster_step(config, workdir, 1, 2) is not None
  summary = pairs.sample_step(config, workdir)
  return dict(workdir=workdir, image_concept=image_concept, text_concept=text_concept, planted=planted,
              only_both=only_both, dedup=dedup_summary, summary=summary,
              keep=np.load(os.path.join(workdir, "dedup/keep.npy")),
              selected=np.load(os.path.join(workdir, "sample/selected.npy")))


def test_curation_flattens_both_sides_and_removes_duplicates(curated):
  keep, selected, planted = curated["keep"], curated["selected"], curated["planted"]
  assert len(selected) == TARGET == len(np.unique(selected)) and store.is_in(selected, keep).all()
  # Duplicates: "either" keeps one pair of every planted group; "both" drops only the pairs repeated
  # on both sides and keeps an image repeated with another caption.
  survivors = store.is_in(planted.ravel(), keep).reshape(planted.shape).sum(1)
  assert (survivors == 1).all(), survivors
  both = store.is_in(planted.ravel(), curated["only_both"]).reshape(planted.shape).sum(1)
  assert (both[:PAIR_COPIES] == 1).all() and (both[PAIR_COPIES:] == 2).all(), both
  assert curated["dedup"]["kept"] == len(keep) == len(curated["image_concept"]) - len(planted)
  # Balance: each side's concept histogram gains entropy, and the summary's cluster entropies agree.
  for side in pairs.SIDES:
    concepts = curated[f"{side}_concept"]
    before, after = pairs.concept_entropy(concepts[keep]), pairs.concept_entropy(concepts[selected])
    assert after - before >= GAP_CLOSED * (np.log(CONCEPTS) - before), (side, before, after)
    stated = curated["summary"][f"{side}_entropy"]
    assert stated["selected"] > stated["kept"]
  text_selected = np.load(os.path.join(curated["workdir"], "sample/text_selected.npy"))
  assert len(text_selected) == curated["summary"]["text_selected"] == TEXT_SIZE
  assert store.is_in(selected, text_selected).all()


WORDS = ("cat", "red car", "New York", "dog", "tree", "bird")  # the metadata: text concept c is entry c
T = 80  # MetaCLIP's t: the four head entries (the text concepts' histogram is U-shaped) are capped


def pool_captions(text_concept):
  """(captions of each pair, (pair, entry) of every entry a caption names): a caption names its pair's
  text concept, every 10th none (it is dropped unless every 50th's second caption names the next one)."""
  captions, named = [], []
  for i, c in enumerate(text_concept):
    texts = ["an untitled picture"] if i % 10 == 0 else [f"A photo of a {WORDS[c]}."]
    named += [] if i % 10 == 0 else [(i, c)]
    if i % 50 == 0:
      texts.append(f"{WORDS[(c + 1) % CONCEPTS]} at night")
      named.append((i, (c + 1) % CONCEPTS))
    captions.append(texts)
  return captions, np.array(named)


@pytest.fixture(scope="module")
def metaclip_curated(curated, tmp_path_factory):
  """The curated pool's workdir again, its text side now MetaCLIP's: counted by two processes, and by
  one in a folder of its own."""
  root = tmp_path_factory.mktemp("metaclip")
  workdir = str(root / "work")
  shutil.copytree(curated["workdir"], workdir)
  captions, named = pool_captions(curated["text_concept"])
  with open(root / "pairs.jsonl", "w") as f:
    f.writelines(json.dumps({"image": f"{i}.png", "captions": c}) + "\n" for i, c in enumerate(captions))
  (root / "metadata.json").write_text(json.dumps(WORDS))
  config = synthetic_config()
  config.text.update(method="metaclip", metadata=str(root / "metadata.json"), t=T)
  config.data.pairs = f"jsonl:{root / 'pairs.jsonl'}"
  assert config_check.problems(config) == []
  assert pairs.cluster_step(config, workdir, 0, 2) is None  # waits for process 1's counts
  counted = pairs.cluster_step(config, workdir, 1, 2)["text"]
  assert pairs.cluster_step(config, workdir, 0, 2)["text"] == counted  # resumed: every part is there
  run = functools.partial(metaclip.run, source=pairs.pair_source(config), keep=curated["keep"],
                          directory=str(root / "single"), shard_size=config.embed.shard_size)
  single = run(metadata=config.text.metadata)
  (root / "other.txt").write_text("cat\n")
  with pytest.raises(ValueError, match="MetaCLIP matches made with other inputs"):
    run(metadata=str(root / "other.txt"))
  summary = pairs.sample_step(config, workdir)
  text_dir = pairs.side_dir(workdir, "text")
  return dict(named=named, counted=counted, single=single, summary=summary, text_dir=text_dir,
              entry_count=metaclip.load_entry_count(text_dir),
              single_count=metaclip.load_entry_count(str(root / "single")),
              text_selected=np.load(os.path.join(workdir, "sample/text_selected.npy")),
              selected=np.load(os.path.join(workdir, "sample/selected.npy")))


def test_metaclip_text_side_caps_head_entries_and_keeps_tail_ones(curated, metaclip_curated):
  m, keep = metaclip_curated, curated["keep"]
  named = m["named"][store.is_in(m["named"][:, 0], keep)]
  before = np.bincount(named[:, 1], minlength=CONCEPTS)
  np.testing.assert_array_equal(m["entry_count"], before)
  np.testing.assert_array_equal(m["single_count"], before)  # two processes count as one
  assert m["counted"] == m["single"] and m["counted"]["matched_pairs"] == len(np.unique(named[:, 0]))
  after = np.bincount(named[store.is_in(named[:, 0], m["text_selected"]), 1], minlength=CONCEPTS)
  head = before > T
  assert head.sum() == 4 and (abs(after[head] - T) < 0.25 * T).all(), (before, after)
  np.testing.assert_array_equal(after[~head], before[~head])
  # Pairs matching no entry are gone; the image side samples within MetaCLIP's selection.
  assert store.is_in(m["text_selected"], keep).all() and store.is_in(m["text_selected"], named[:, 0]).all()
  assert len(m["selected"]) == TARGET and store.is_in(m["selected"], m["text_selected"]).all()
  stated = m["summary"]
  assert stated["text_method"] == "metaclip" and stated["text_selected"] == len(m["text_selected"])
  assert stated["text_entropy"]["selected"] > stated["text_entropy"]["kept"]
  assert stated["image_entropy"]["selected"] > stated["image_entropy"]["kept"]


@pytest.mark.slow
def test_tiny_dinotxt_run_trains_on_the_curated_pairs(curated, tmp_path):
  folder = os.path.join(curated["workdir"], "sample")
  source = captions.make_caption_source(f"curated:{folder}", "ignored")
  assert len(source) == TARGET and source[0]["captions"]
  # In process: the trainer's programs compile once per session (its own tests share them).
  config = config_args.load_config(f"{jobs.REPO / 'configs/dinotxt_vitl14.py'}:tiny")
  config_args.override(config, config_args.parse_overrides([
      f"data.source=curated:{folder}", "data.threads=1", "backbone.model.depth=2", "text.depth=1",
      "batch_size=32", "total_steps=2", "eval.every=0", "checkpoint.every=2", "log_every=1"]))
  dinotxt.run(config, str(tmp_path))
  losses = jobs.losses(tmp_path)
  assert sorted(losses) == [1, 2] and all(np.isfinite(list(losses.values())))


@pytest.mark.slow
def test_embed_step_gives_both_sides_and_the_config_is_checked(tmp_path):
  config = tiny_config()
  assert config_check.problems(config) == []
  config.sample.text_size = 399  # below target_size: nothing left for the image side to choose
  config.pair_dedup = "neither"
  config.text.cluster.n_splits = [1, 2, 1]
  assert sorted(p.split(":")[0] for p in config_check.problems(config)) == [
      "--config.pair_dedup='neither'", "--config.sample.text_size=399",
      "--config.text.cluster.n_splits=[1, 2, 1]"]
  config = tiny_config()
  config.data.split = "train[0:40]"
  config.embed.shard_size = 16
  config.text_model.batch_size = 64
  out = pairs.embed_step(config, str(tmp_path))
  assert out["image"]["embedded"] == out["text"]["embedded"] == 40 and out["text"]["num_shards"] == 3
  shards = store.EmbeddingShards(embed.collection_dir(pairs.side_dir(str(tmp_path), "text"), "pool"))
  ids, vectors = shards.load_many(range(3))
  np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-5)
  # A digit's captions are written from its label: same label, same text embedding.
  labels = np.array([captions.DigitCaptions("train")[int(i)]["label"] for i in ids])
  same = labels[:, None] == labels[None]
  similarity = vectors @ vectors.T
  assert similarity[same].min() > 1 - 1e-5 and similarity[~same].max() < 1 - 1e-4
  with pytest.raises(FileNotFoundError, match="run the curation's `sample` step"):
    captions.make_caption_source(f"curated:{tmp_path}", "train")
