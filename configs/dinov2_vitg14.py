"""DINOv2 ViT-g/14 pretraining (`dinov2/configs/train/vitg14.yaml`): as ViT-L/14 with the giant2
backbone (1536 wide, 40 blocks, SwiGLU), batch 12 per GPU in the original; rematerialised blocks."""

from dinojax.config_defaults import dinov2_ssl


def get_config(arg=None):
  del arg
  c = dinov2_ssl()
  c.model.update(variant="vit_giant2", patch_size=14, img_size=224, drop_path_rate=0.4, ffn="swiglu",
                 remat=True)
  c.dino.head.update(prototypes=131072, bottleneck_dim=384)
  c.ibot.update(separate_head=True)
  c.ibot.head.update(prototypes=131072)
  c.centering = "sinkhorn_knopp"
  c.teacher.momentum = 0.994
  c.optim.update(epochs=500, weight_decay_end=0.2, base_lr=2e-4, warmup_epochs=80, layerwise_decay=1.0)
  c.crops.local_size = 98
  c.mesh.update(fsdp=-1, model=1)
  return c
