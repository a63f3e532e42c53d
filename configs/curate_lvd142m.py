"""LVD-142M-style curation at the papers' settings (DINOv2 §3 and App. A.3; Vo et al., 2024): all
numbers in `dinojax.config_defaults.curation()`. Point the collections at your data:

  python -m dinojax.curate embed --config configs/curate_lvd142m.py --workdir /data/curation \
      --config.model.checkpoint=dinov2_vitg14_pretrain.pth \
      --config.data.pool=list:/data/web_images.txt --config.data.queries=folder:/data/curated \
      --config.data.evaluation=list:/data/benchmark_images.txt \
      --process_index=$i --process_count=$N

then `dedup`, `retrieve`, `cluster`, `sample` the same way (docs/curation.md).
"""

from dinojax.config_args import parse_arg
from dinojax.config_defaults import curation


def get_config(arg=None):
  parse_arg(arg)  # no variants; a stray argument is an error
  c = curation()
  c.data.update(pool="list:uncurated_pool.txt", queries="folder:curated_queries",
                evaluation="list:evaluation_images.txt")
  return c
