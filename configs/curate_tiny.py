"""Automatic data curation in seconds on a CPU, offline: the 1,797 scikit-learn digits (1,437 as the
uncurated pool, 180 held-out ones as curated queries, 180 as evaluation images), a tiny random ViT.

  for step in embed dedup retrieve cluster sample; do
    python -m dinojax.curate $step --config configs/curate_tiny.py --workdir /tmp/curate
  done

The papers' settings (`config_defaults.curation()`, as configs/curate_lvd142m.py) scaled down.
Random weights make every embedding nearly the same direction, so the similarity thresholds are set
for them (near 1); with a real checkpoint (`--config.model.checkpoint=...pth` and no size
overrides) use the papers' 0.6 and 0.45.
"""

import ml_collections

from dinojax.config_args import parse_arg
from dinojax.config_defaults import curation


def get_config(arg=None):
  parse_arg(arg)  # no variants; a stray argument is an error
  c = curation()
  c.data.update(pool="digits:train", queries="digits:heldout[0:180]", evaluation="digits:heldout[180:]",
                image_size=32)
  c.model.name = "vits14"
  c.model.overrides = ml_collections.ConfigDict(
      {"embed_dim": 64, "depth": 2, "num_heads": 2, "patch_size": 4, "img_size": 32})
  c.embed.update(shard_size=256, batch_size=64, num_threads=2)
  c.search.shards_per_block = 2
  c.dedup.update(threshold=0.99997, evaluation_threshold=0.99997)
  c.retrieve.update(clusters=20, samples_per_query=5, kmeans_batch_size=256, kmeans_epochs=3)
  c.cluster.update(n_clusters=[60, 12, 4], n_splits=[1, 1, 1], resampling_steps=[1, 10, 10],
                   sample_sizes=[1, 3, 2], checkpoint_period=20)
  c.sample.update(target_size=400, strategy="r")
  return c
