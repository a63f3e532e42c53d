"""DINOv2 ViT-g/14 pretraining (`dinov2/configs/train/vitg14.yaml`): as ViT-L/14 with the giant2
backbone (1536 wide, 40 blocks, SwiGLU), batch 12 per GPU in the original; rematerialised blocks.
12 does not divide this batch of 1024, so KoLeo and the iBOT centre work per device (`loss_group`
0); set `--config.loss_group=12` with a batch that is a multiple of 12 for the original's."""

from dinojax.config_defaults import dinov2_lvd_recipe, dinov2_ssl


def get_config(arg=None):
  del arg
  c = dinov2_lvd_recipe(dinov2_ssl())
  c.model.update(variant="vit_giant2", remat=True)
  return c
