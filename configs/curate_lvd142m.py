"""LVD-142M-style curation at the papers' settings (DINOv2 §3 and App. A.3; Vo et al., 2024): all
numbers in `dinojax.config_defaults.curation()`. Point the collections at your data:

  python -m dinojax.curate embed --config configs/curate_lvd142m.py --workdir /data/curation \
      --config.model.checkpoint=dinov2_vitg14_pretrain.pth \
      --config.data.pool=list:/data/web_images.txt --config.data.queries=folder:/data/curated \
      --config.data.evaluation=list:/data/benchmark_images.txt \
      --process_index=$i --process_count=$N

then `dedup`, `retrieve`, `cluster`, `sample` the same way (docs/curation.md), `cluster` with
`--coordinator=HOST0:PORT` as well, so that its level-1 k-means spans every host. The first level is
the official's: 100k k-means clusters over the whole pool, each split 100 ways (10M). A dry run
prints the memory and FLOPs per host of the `cluster` step for `config.plan` (the official ran its
level 1 on 16 nodes of 8 GPUs; the pool is the papers' 1.2B images, ViT-g/14 embeddings):

  python -m dinojax.curate plan --config configs/curate_lvd142m.py --config.plan.hosts=32
"""

import ml_collections


from dinojax.config_args import parse_arg
from dinojax.config_defaults import curation


def get_config(arg=None):
  parse_arg(arg)  # no variants; a stray argument is an error
  c = curation()
  c.data.update(pool="list:uncurated_pool.txt", queries="folder:curated_queries",
                evaluation="list:evaluation_images.txt")
  c.plan = ml_collections.ConfigDict(dict(pool_size=1_200_000_000, dim=1536, hosts=16, devices_per_host=8))
  return c
