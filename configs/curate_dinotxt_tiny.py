"""dino.txt's two-sided curation of image–caption pairs in seconds on a CPU, offline: the 1,437
scikit-learn digits with their written captions (`data/captions.py`), a tiny random ViT for the images
and a tiny random CLIP text tower for the captions.

  for step in embed dedup cluster sample; do
    python -m dinojax.curate $step --config configs/curate_dinotxt_tiny.py --workdir /tmp/pairs
  done
  python -m dinojax.main --config configs/dinotxt_vitl14.py:tiny --workdir /tmp/dinotxt \
      --config.data.source=curated:/tmp/pairs/sample

`config_defaults.curation_pairs()` (as configs/curate_dinotxt.py) scaled down, its text side Vo et al.
on caption embeddings (MetaCLIP's, the default, needs a metadata file dinojax does not ship). Random
weights make every embedding nearly the same direction, so the similarity thresholds sit near 1 (as
configs/curate_tiny.py); the output shows the pipeline working, not a meaningful curation.
"""

import ml_collections

from dinojax.config_args import parse_arg
from dinojax.config_defaults import curation_pairs


def get_config(arg=None):
  parse_arg(arg)  # no variants; a stray argument is an error
  c = curation_pairs()
  c.data.update(pairs="digits", split="train", image_size=32)
  c.model.name = "vits14"
  c.model.overrides = ml_collections.ConfigDict(
      {"embed_dim": 64, "depth": 2, "num_heads": 2, "patch_size": 4, "img_size": 32})
  c.text_model.update(variant="ViT-B/16", batch_size=256)
  c.text_model.overrides = ml_collections.ConfigDict(
      {"width": 32, "depth": 1, "num_heads": 2, "embed_dim": 32, "context_length": 16})
  c.embed.update(shard_size=256, batch_size=64, num_threads=2)
  c.search.shards_per_block = 2
  for side in ("image", "text"):
    c[side].dedup.threshold = 0.99997
    c[side].cluster.update(n_clusters=[60, 12, 4], n_splits=[1, 1, 1], resampling_steps=[1, 10, 10],
                           sample_sizes=[1, 3, 2], checkpoint_period=20)
  # The digits' captions are written from their labels: every "one" has the same ones, so only
  # pairs repeated on both sides count as duplicates.
  c.pair_dedup = "both"
  c.text.method = "kmeans"
  c.sample.update(target_size=400, text_size=1200, strategy="r")
  return c
