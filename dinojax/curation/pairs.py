"""Curation of image–caption pairs on both sides, for dino.txt (Jose et al., 2025, "curating data using
both text and image modalities"): the text side balances captions by MetaCLIP's metadata (Xu et al.,
2024; `metaclip.py`, `text.method="metaclip"`) or by Vo et al. (2024) on caption embeddings
(`"kmeans"`), the image side by Vo et al. on DINOv2 embeddings, and the curated set is the
intersection of the two sides' selections, as the paper combines them (docs/curation.md says what the
paper specifies and which choices are ours).

Steps, as the image curation's and sharing its code, each side in its own folder of the workdir
(`image/`, `text/`, laid out as `embed`, `dedup` and `cluster` write them):

- `embed`: the frozen DINOv2's CLS token of every image (`embed.embed_collection`) and a CLIP text
  tower's embedding of every pair's captions (the normalised mean of its captions' embeddings).
- `dedup`: near-duplicates on each side (`dedup.run`); with `pair_dedup="either"` a pair survives
  when both its image and its caption do, with "both" unless the two repeat the same other pair
  -> `dedup/keep.npy`.
- `cluster`: the image side's hierarchical k-means (`cluster.run`) of the deduplicated pairs; the text
  side's MetaCLIP entry counts of their captions (`metaclip.run`) or its hierarchical k-means.
- `sample`: the text side's selection (MetaCLIP's balance sampling at `text.t`, or `sample.text_size`
  pairs by balanced sampling of the text hierarchy), then `sample.target_size` of them by balanced
  sampling of the image hierarchy -> `sample/selected.npy` and `selection.json`, which the dino.txt
  trainer reads as `--config.data.source=curated:<workdir>/sample`.

Processes split the work as the image steps do (`--process_index/--process_count`, a shared workdir).
"""

import functools
import math
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from tqdm import tqdm

from dinojax import convert, parallel
from dinojax.curation import cluster, dedup, embed, metaclip, sampling, store
from dinojax.data import captions, clip_tokenizer
from dinojax.models.text import CLIP_VARIANTS, TextTransformer
from dinojax.ops.numerics import l2_normalize

SIDES = ("image", "text")
# Which pairs `dedup` drops: "either" side's near-duplicates (a pair goes when its image or its
# caption repeats another's), or only pairs whose image and caption "both" repeat the same pair's.
PAIR_DEDUP = ("either", "both")
# How the text side balances captions: MetaCLIP's substring matching against metadata entries (the
# paper's), or Vo et al.'s hierarchical k-means of caption embeddings.
TEXT_METHODS = ("metaclip", "kmeans")


def side_dir(workdir: str, side: str) -> str:
  return os.path.join(workdir, side)


def side_config(config, side: str, workdir: str) -> ml_collections.ConfigDict:
  """The image curation's config for one side: its `dedup` and `cluster` settings (clustering the
  pairs `dedup` keeps on both sides), and evaluation images on the image side only."""
  c = ml_collections.ConfigDict()
  c.seed = config.seed
  c.data = ml_collections.ConfigDict(dict(evaluation=config.data.evaluation if side == "image" else ""))
  c.search = config.search
  c.dedup = ml_collections.ConfigDict({"evaluation_threshold": None, **config[side].dedup.to_dict()})
  c.cluster = ml_collections.ConfigDict({**config[side].cluster.to_dict(),
                                         "input": os.path.join(workdir, "dedup", "keep.npy")})
  c.mesh, c.sharding_rules = config.mesh, config.sharding_rules
  return c


def pair_source(config):
  return captions.make_caption_source(config.data.pairs, config.data.split)


# ---------------------------------------------------------------------------------------------------
# Caption embeddings
# ---------------------------------------------------------------------------------------------------
def build_text_tower(config) -> tuple[TextTransformer, dict]:
  """(model, params): CLIP text weights if `config.text_model.checkpoint`, else `variant` (with
  `overrides`) with random weights, announced: such embeddings only exercise the pipeline."""
  t = config.text_model
  if t.checkpoint:
    return convert.clip_text_from_state_dict(convert.load_state_dict(t.checkpoint))
  logging.warning("No config.text_model.checkpoint: caption embeddings come from a randomly "
                  "initialised %s text tower; similarities between them say little.", t.variant)
  model = TextTransformer(**{**CLIP_VARIANTS[t.variant], **dict(t.overrides)})
  init = lambda key: nn.unbox(model.init(key, jnp.zeros((1, model.context_length), jnp.int32)))  # noqa: E731
  return model, jax.jit(init)(jax.random.key(config.seed))


@functools.partial(jax.jit, static_argnums=0)
def _text_embedding(model, params, tokens):
  return l2_normalize(model.apply(params, tokens)["text_embeds"].astype(jnp.float32))


class TextEmbedder:
  """Jitted captions -> L2-normalised CLIP text embeddings, batch-sharded over this process's devices."""

  def __init__(self, config):
    devices = jax.local_devices()[:config.embed.num_devices or None]
    self.mesh = parallel.make_mesh(config.mesh, devices=devices)
    self.rules = tuple(tuple(r) for r in config.sharding_rules)
    self.batch_size = config.text_model.batch_size
    data_devices = self.mesh.shape["data"] * self.mesh.shape["fsdp"]
    if self.batch_size % data_devices:
      raise ValueError(f"text_model.batch_size {self.batch_size} does not split over {data_devices} devices.")
    self.model, params = build_text_tower(config)
    self.tokenizer = clip_tokenizer.clip_tokenizer(self.model.context_length)
    sample = jnp.zeros((1, self.model.context_length), jnp.int32)
    abstract = jax.eval_shape(self.model.init, jax.random.key(0), sample)
    self.params = parallel.to_device(params, parallel.logical_to_shardings(abstract, self.mesh, self.rules))
    self.in_sharding = parallel.batch_sharding(self.mesh, self.rules, ndim=2)

  def captions(self, texts: list[str]) -> np.ndarray:
    """(n, D) float32 embeddings of n captions, in fixed-size batches (the last one padded)."""
    tokens = np.array([e.ids for e in self.tokenizer.encode_batch(
        [clip_tokenizer.words(t) for t in texts], is_pretokenized=True)], np.int32)
    out, b = [], self.batch_size
    with parallel.activation_sharding(self.mesh, self.rules):
      for start in range(0, len(tokens), b):
        chunk = tokens[start:start + b]
        padded = np.concatenate([chunk, np.zeros((b - len(chunk), chunk.shape[1]), np.int32)])
        batch = jax.device_put(padded, self.in_sharding)
        out.append(np.asarray(_text_embedding(self.model, self.params, batch))[:len(chunk)])
    return np.concatenate(out)

  def pairs(self, pair_captions: list[tuple[str, ...]]) -> np.ndarray:
    """(n, D) float32: each pair's normalised mean of its captions' embeddings."""
    counts = np.array([len(c) for c in pair_captions])
    vectors = self.captions([c for cs in pair_captions for c in cs])
    sums = np.zeros((len(counts), vectors.shape[1]), np.float32)
    np.add.at(sums, np.repeat(np.arange(len(counts)), counts), vectors)
    return sums / np.linalg.norm(sums, axis=1, keepdims=True)


def embed_captions(config, source, spec: str, workdir: str, process_index: int,
                   process_count: int) -> store.EmbeddingShards:
  """This process's unfinished shards of caption embeddings, in the image shards' layout (so
  `dedup` and `cluster` read them unchanged); pair i is row i of shard i // shard_size."""
  shards = store.EmbeddingShards(embed.collection_dir(workdir, "pool"))
  t, n, size = config.text_model, len(source), config.embed.shard_size
  manifest = {"source": spec, "num_images": n, "shard_size": size, "num_shards": math.ceil(n / size),
              "text_model": t.variant, "checkpoint": t.checkpoint, "overrides": dict(t.overrides),
              "seed": config.seed}
  embed.check_or_write_manifest(shards, manifest)
  todo = [s for s in store.owned(manifest["num_shards"], process_index, process_count) if not shards.done(s)]
  if not todo:
    return shards
  embedder = TextEmbedder(config)
  for s in tqdm(todo, unit="shard", desc=f"embed captions (process {process_index}/{process_count})",
                dynamic_ncols=True, mininterval=1.0):
    ids = np.arange(s * size, min((s + 1) * size, n), dtype=np.int64)
    embed.write_shard(shards, s, ids, embedder.pairs([source[int(i)]["captions"] for i in ids]), [])
  return shards


# ---------------------------------------------------------------------------------------------------
# The steps
# ---------------------------------------------------------------------------------------------------
def embed_step(config, workdir: str, process_index: int = 0, process_count: int = 1) -> dict:
  """Both sides' embeddings (and the evaluation images', when named); {name: summary or None while
  other processes' shards are missing}. Captions are embedded for the text side's deduplication, with
  either `text.method`."""
  if _text_method(config) == "metaclip":
    metaclip.check_inputs(config.text.metadata)
  source = pair_source(config)
  spec = f"{config.data.pairs}:{config.data.split}"
  image_dir = side_dir(workdir, "image")
  embedder = None

  def get_embedder():
    nonlocal embedder
    embedder = embedder or embed.Embedder(config)
    return embedder

  out = {"image": embed.summarize(embed.embed_collection(
      config, "pool", spec, image_dir, get_embedder, process_index, process_count, source=source))}
  if config.data.evaluation:
    out["evaluation"] = embed.summarize(embed.embed_collection(
        config, "evaluation", config.data.evaluation, image_dir, get_embedder, process_index, process_count))
  out["text"] = embed.summarize(embed_captions(config, source, spec, side_dir(workdir, "text"),
                                               process_index, process_count))
  return out


def dedup_step(config, workdir: str, process_index: int = 0, process_count: int = 1) -> dict | None:
  """Each side's deduplication, then the pairs both keep -> `dedup/keep.npy`; None while parts of
  other processes are missing."""
  sides = {side: dedup.run(side_config(config, side, workdir), side_dir(workdir, side), process_index,
                           process_count) for side in SIDES}
  if any(s is None for s in sides.values()):
    return None
  if config.pair_dedup == "either":
    keep = np.intersect1d(*(dedup.load_keep(side_dir(workdir, side)) for side in SIDES))
  elif config.pair_dedup == "both":
    keep = _keep_unless_both_repeat(config, workdir)
  else:
    raise ValueError(f"Unknown pair_dedup {config.pair_dedup!r}; choose one of {PAIR_DEDUP}.")
  out_dir = os.path.join(workdir, "dedup")
  os.makedirs(out_dir, exist_ok=True)
  store.atomic_save(os.path.join(out_dir, "keep.npy"), keep)
  summary = {"kept": int(len(keep)), **sides}
  store.write_json(os.path.join(out_dir, "summary.json"), summary)
  logging.info("dedup: %d pairs kept (image side %d, text side %d).", len(keep), sides["image"]["kept"],
               sides["text"]["kept"])
  return summary


def _keep_unless_both_repeat(config, workdir: str) -> np.ndarray:
  """Pairs with a readable image, less all but the lowest id of each component of the graph whose
  edges are duplicates on both sides, less the image side's near-evaluation ones."""
  image, text = (dedup.found_edges(side_config(config, side, workdir), side_dir(workdir, side))
                 for side in SIDES)
  span = int(max(image.max(initial=0), text.max(initial=0))) + 1
  common = image[np.isin(image[:, 0] * span + image[:, 1], text[:, 0] * span + text[:, 1])]
  removed, _ = dedup.components_to_remove(common)
  image_dir = side_dir(workdir, "image")
  ids = np.sort(store.EmbeddingShards(embed.collection_dir(image_dir, "pool")).all_ids())
  near_evaluation = np.load(os.path.join(image_dir, "dedup", "removed_evaluation.npy"))
  return ids[~store.is_in(ids, removed) & ~store.is_in(ids, near_evaluation)]


def _text_method(config) -> str:
  if config.text.method not in TEXT_METHODS:
    raise ValueError(f"Unknown text.method {config.text.method!r}; choose one of {TEXT_METHODS}.")
  return config.text.method


def cluster_step(config, workdir: str, process_index: int = 0, process_count: int = 1) -> dict | None:
  """The image side's hierarchical k-means and the text side's MetaCLIP entry counts or k-means; None
  while either waits for other processes."""
  sides = {"image": cluster.run(side_config(config, "image", workdir), side_dir(workdir, "image"),
                                process_index, process_count)}
  if _text_method(config) == "metaclip":
    sides["text"] = metaclip.run(metadata=config.text.metadata, source=pair_source(config),
                                 keep=dedup.load_keep(workdir), directory=side_dir(workdir, "text"),
                                 shard_size=config.embed.shard_size, process_index=process_index,
                                 process_count=process_count)
  else:
    sides["text"] = cluster.run(side_config(config, "text", workdir), side_dir(workdir, "text"),
                                process_index, process_count)
  return None if any(s is None for s in sides.values()) else sides


def count_entropy(counts: np.ndarray) -> float:
  """Entropy (nats) of a histogram: log(#concepts) when balanced, lower when skewed."""
  p = counts[counts > 0] / counts.sum()
  return float(-(p * np.log(p)).sum())


def concept_entropy(labels: np.ndarray) -> float:
  """Entropy (nats) of the histogram of `labels`."""
  return count_entropy(np.bincount(labels))


def balanced_sample(hierarchy: dict, allowed: np.ndarray, target: int, strategy: str,
                    rng: np.random.Generator) -> np.ndarray:
  """Vo et al.'s hierarchical sampling of `target` ids among the sorted `allowed` ones."""
  members = [m[store.is_in(m, allowed)] for m in hierarchy["members"]]
  return sampling.hierarchical_sampling(members, hierarchy["parents"], target, strategy, rng)


def sample_step(config, workdir: str, process_index: int = 0, process_count: int = 1) -> dict:
  """`sample/selected.npy` (sorted pair ids), `text_selected.npy` (the text side's selection they were
  drawn from), `selection.json` (what they index) and `summary.json` (the text selection's size, and
  each side's concept entropy before and after: the image side's top-level clusters, the text side's
  MetaCLIP entries or top-level clusters).

  The intersection of the two sides' curations: the image side's balanced sample is drawn among the
  pairs the text side's selection keeps (MetaCLIP's balance sampling at `text.t`, or a balanced
  sample of `sample.text_size` from the text hierarchy), so every selected pair is chosen by both."""
  del process_index, process_count  # one cheap pass over ids; any process may run it
  s, method = config.sample, _text_method(config)
  keep = np.load(store.require(os.path.join(workdir, "dedup", "keep.npy"), "The deduplicated pairs", "dedup"))
  sides = ("image",) if method == "metaclip" else SIDES
  hierarchies = {side: cluster.load(side_dir(workdir, side)) for side in sides}
  rng = np.random.default_rng(s.seed)
  text_dir = side_dir(workdir, "text")
  if method == "metaclip":
    text_selected = metaclip.balanced_pairs(text_dir, t=config.text.t, seed=s.seed)
    if len(text_selected) < s.target_size:
      raise ValueError(f"MetaCLIP's balancing at text.t={config.text.t} keeps {len(text_selected)} pairs, "
                       f"fewer than sample.target_size={s.target_size}: raise text.t or lower the target.")
  else:
    if s.text_size < s.target_size:
      raise ValueError(f"sample.text_size={s.text_size} is below sample.target_size={s.target_size}: the "
                       "image side samples its target among the text side's selection.")
    text_selected = balanced_sample(hierarchies["text"], keep, s.text_size, s.strategy, rng)
  selected = balanced_sample(hierarchies["image"], text_selected, s.target_size, s.strategy, rng)
  out_dir = os.path.join(workdir, "sample")
  os.makedirs(out_dir, exist_ok=True)
  store.atomic_save(os.path.join(out_dir, "selected.npy"), selected)
  store.atomic_save(os.path.join(out_dir, "text_selected.npy"), text_selected)
  store.write_json(os.path.join(out_dir, "selection.json"),
                   {"pairs": config.data.pairs, "split": config.data.split, "count": int(len(selected))})
  summary = {"selected": int(len(selected)), "target_size": s.target_size,
             "text_selected": int(len(text_selected)), "text_method": method}
  for side, h in hierarchies.items():
    top = cluster.top_level_labels(h)
    summary[f"{side}_entropy"] = {
        "kept": concept_entropy(top[store.is_in(h["ids"], keep)]),
        "selected": concept_entropy(top[store.is_in(h["ids"], selected)])}
  if method == "metaclip":
    summary["text_entropy"] = {"kept": count_entropy(metaclip.load_entry_count(text_dir)),
                               "selected": count_entropy(metaclip.entry_histogram(text_dir, selected))}
    summary["text_t"] = config.text.t
  store.write_json(os.path.join(out_dir, "summary.json"), summary)
  logging.info("sample: %s", summary)
  return summary


STEPS = {"embed": embed_step, "dedup": dedup_step, "cluster": cluster_step, "sample": sample_step}


def run(config, workdir: str, process_index: int = 0, process_count: int = 1) -> dict:
  """Every step in order (`job = "curate_pairs"` in `dinojax.main`); stops where a step still waits
  for other processes."""
  out = {}
  for name, step in STEPS.items():
    out[name] = step(config, workdir, process_index, process_count)
    if out[name] is None or (name == "embed" and any(v is None for v in out[name].values())):
      logging.info("%s waits for other processes' parts; run the next steps once they finish.", name)
      break
  return out
