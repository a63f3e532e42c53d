"""DINOv2 ViT-L/14 pretraining (`dinov2/configs/train/vitl14.yaml`): SwiGLU, separate iBOT head,
131072 prototypes, Sinkhorn-Knopp centering, 500 epochs of 1250 steps at batch 1024 (32 per GPU).

  python -m dinojax.main --config configs/dinov2_vitl14.py --workdir gs://bucket/vitl14
"""

from dinojax.config_defaults import dinov2_ssl


def get_config(arg=None):
  del arg
  c = dinov2_ssl()
  c.model.update(variant="vit_large", patch_size=14, img_size=224, drop_path_rate=0.4, ffn="swiglu")
  c.dino.head.update(prototypes=131072, bottleneck_dim=384)
  c.ibot.update(separate_head=True)
  c.ibot.head.update(prototypes=131072)
  c.centering = "sinkhorn_knopp"
  c.teacher.momentum = 0.994
  c.optim.update(epochs=500, weight_decay_end=0.2, base_lr=2e-4, warmup_epochs=80, layerwise_decay=1.0)
  c.crops.local_size = 98
  c.data.source = "tfds:imagenet2012"  # the official run used ImageNet-22k
  return c
