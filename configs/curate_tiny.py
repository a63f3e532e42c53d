"""Automatic data curation in seconds on a CPU, offline: the 1,797 scikit-learn digits (1,437 as the
uncurated pool, 180 held-out ones as curated queries, 180 as evaluation images), a tiny random ViT.

  for step in embed dedup retrieve cluster sample; do
    python -m dinojax.curate $step --config configs/curate_tiny.py --workdir /tmp/curate
  done

Random weights make every embedding nearly the same direction, so the similarity thresholds here are
set for them (near 1); with a real checkpoint (`--config.model.checkpoint=...pth`, and the size
overrides removed) use the paper's values of configs/curate_lvd142m.py.
"""

import ml_collections

from dinojax import parallel
from dinojax.config_args import parse_arg


def get_config(arg=None):
  parse_arg(arg)  # no variants; a stray argument is an error
  config = ml_collections.ConfigDict()
  config.job = "curate"
  config.seed = 0

  config.data = ml_collections.ConfigDict()
  config.data.pool = "digits:train"
  config.data.queries = "digits:heldout[0:180]"
  config.data.evaluation = "digits:heldout[180:]"
  config.data.image_size = 32

  config.model = ml_collections.ConfigDict()
  config.model.name = "vits14"
  config.model.overrides = ml_collections.ConfigDict(
      {"embed_dim": 64, "depth": 2, "num_heads": 2, "patch_size": 4, "img_size": 32})
  config.model.checkpoint = ml_collections.FieldReference(None, field_type=str)
  config.model.attention = "xla"

  config.embed = ml_collections.ConfigDict()
  config.embed.shard_size = 256
  config.embed.batch_size = 64
  config.embed.num_threads = 2
  config.embed.num_devices = 0       # 0: all of this process's devices

  config.search = search_config()
  config.search.shards_per_block = 2

  config.dedup = ml_collections.ConfigDict()
  config.dedup.k = 64
  config.dedup.threshold = 0.99997
  config.dedup.evaluation_threshold = 0.99997

  config.retrieve = ml_collections.ConfigDict()
  config.retrieve.mode = "knn"
  config.retrieve.k = 4
  config.retrieve.clusters = 20             # sample mode: k-means of the pool
  config.retrieve.samples_per_query = 5     # sample mode: M
  config.retrieve.kmeans_batch_size = 256
  config.retrieve.kmeans_epochs = 3

  config.cluster = ml_collections.ConfigDict()
  config.cluster.input = "dedup"
  config.cluster.n_clusters = [60, 12, 4]
  config.cluster.resampling_steps = [0, 10, 10]
  config.cluster.sample_sizes = [1, 3, 2]
  config.cluster.batch_size = 256
  config.cluster.epochs = 5
  config.cluster.iterations = 50

  config.sample = ml_collections.ConfigDict()
  config.sample.target_size = 400
  config.sample.strategy = "r"
  config.sample.seed = 0

  config.mesh = ml_collections.ConfigDict({"data": -1, "fsdp": 1, "model": 1})
  config.sharding_rules = parallel.DEFAULT_RULES
  return config


def search_config():
  """ScaNN settings (tree + anisotropic hashing + exact re-ranking), measured in bench/curation.py."""
  c = ml_collections.ConfigDict()
  c.method = "auto"                # exact below `exact_below` database points, ScaNN above
  c.exact_below = 20_000
  c.num_leaves = 0                 # 0: √n leaves
  c.num_leaves_to_search = 32
  c.training_sample_size = 100_000
  c.dims_per_block = 2
  c.anisotropic_threshold = 0.2
  c.reorder = 100
  return c
