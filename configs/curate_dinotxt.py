"""dino.txt's curation of image–caption pairs on both modalities (Jose et al., 2025) at scale:
MetaCLIP's balancing by metadata on the text side (t = 170k, MetaCLIP's for 2.5B pairs: the paper
gives none), Vo et al.'s settings on the image side, the selection the intersection of the two sides'
(as the paper), the sizes ours (`dinojax.config_defaults.curation_pairs()`, docs/curation.md). Point
it at your pairs, weights and MetaCLIP's metadata.json (facebookresearch/MetaCLIP, not shipped here;
`pip install -e '.[metaclip]'` for its matcher):

  for step in embed dedup cluster sample; do
    python -m dinojax.curate $step --config configs/curate_dinotxt.py --workdir /data/pairs \
        --config.data.pairs=jsonl:/data/web_pairs.jsonl \
        --config.model.checkpoint=dinov2_vitl14_reg4_pretrain.pth \
        --config.text_model.checkpoint=clip_vit_l14.pt \
        --config.text.metadata=metadata.json \
        --process_index=$i --process_count=$N
  done

then train on the selection: `python -m dinojax.main --config configs/dinotxt_vitl14.py
--config.data.source=curated:/data/pairs/sample`. The images are embedded with dino.txt's own frozen
backbone (ViT-L/14 with registers), the captions (for their deduplication) with CLIP ViT-L/14's text
tower (our choice: the paper names no caption encoder for curation).
"""

from dinojax.config_args import parse_arg
from dinojax.config_defaults import curation_pairs


def get_config(arg=None):
  parse_arg(arg)  # no variants; a stray argument is an error
  c = curation_pairs()
  c.data.pairs = "jsonl:pairs.jsonl"
  c.model.name = "vitl14_reg"
  return c
