"""Base configs the files in `configs/` start from. `dinov2_ssl()` is the official DINOv2 recipe's
defaults (`dinov2/configs/ssl_default_config.yaml`); each config file states its differences."""

import ml_collections

from dinojax import parallel

OFFICIAL_EPOCH_LENGTH = 1250


def dinov2_ssl() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.job = "ssl"
  c.seed = 0

  c.model = ml_collections.ConfigDict(dict(
      variant="vit_large", patch_size=16, img_size=224, drop_path_rate=0.3, drop_path_uniform=True,
      init_values=1e-5, ffn="mlp", qkv_bias=True, proj_bias=True, ffn_bias=True,
      num_register_tokens=0, interpolate_antialias=False, interpolate_offset=0.1,
      attention="xla", remat=False, dtype="bfloat16"))

  c.dino = ml_collections.ConfigDict(dict(loss_weight=1.0, koleo_weight=0.1, student_temp=0.1))
  c.dino.head = ml_collections.ConfigDict(dict(prototypes=65536, bottleneck_dim=256, nlayers=3,
                                               hidden_dim=2048))
  # mask_group: images whose mask ratios are stratified together (0: each host's batch).
  c.ibot = ml_collections.ConfigDict(dict(loss_weight=1.0, mask_probability=0.5,
                                          mask_ratio=(0.1, 0.5), mask_group=0, separate_head=False))
  c.ibot.head = ml_collections.ConfigDict(dict(prototypes=65536, bottleneck_dim=256, nlayers=3,
                                               hidden_dim=2048))
  c.centering = "softmax"  # or "sinkhorn_knopp"
  c.center_momentum = 0.9
  c.sinkhorn_iterations = 3

  c.teacher = ml_collections.ConfigDict(dict(momentum=0.992, final_momentum=1.0, warmup_temp=0.04,
                                             temp=0.07, warmup_temp_epochs=30))
  c.optim = ml_collections.ConfigDict(dict(
      epochs=100, weight_decay=0.04, weight_decay_end=0.4, base_lr=0.004, warmup_epochs=10,
      min_lr=1e-6, clip_grad=3.0, freeze_last_layer_epochs=1, patch_embed_lr_mult=0.2,
      layerwise_decay=0.9, adamw_beta1=0.9, adamw_beta2=0.999,
      no_weight_decay=("bias", "norm", "gamma")))
  c.crops = ml_collections.ConfigDict(dict(global_size=224, global_scale=(0.32, 1.0), local_number=8,
                                           local_size=96, local_scale=(0.05, 0.32)))

  c.batch_size = 1024  # global; the official 64 per GPU × 16 GPUs
  c.steps_per_epoch = OFFICIAL_EPOCH_LENGTH
  c.total_steps = 0  # 0: optim.epochs × steps_per_epoch
  c.data = ml_collections.ConfigDict(dict(source="tfds:imagenet2012", split="train", threads=16))
  c.eval = ml_collections.ConfigDict(dict(
      every=12500, source="tfds:imagenet2012", train_split="train", heldout_split="validation",
      batch_size=256, knn_k=20, knn_temperature=0.07))
  c.checkpoint = ml_collections.ConfigDict(dict(every=1250, keep=3))
  c.log_every = 50
  c.init_from = ""  # workdir of an earlier run to start from (weights, teacher, centres)

  c.mesh = ml_collections.ConfigDict({"data": 1, "fsdp": -1, "model": 1})
  # Multi-slice TPU: mesh sizes across slices (e.g. data=4); `mesh` is then the layout within one.
  c.mesh_dcn = ml_collections.ConfigDict({"data": 1, "fsdp": 1, "model": 1})
  c.sharding_rules = parallel.DEFAULT_RULES
  return c



def dinov2_lvd_recipe(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """What `vitl14.yaml` and `vitg14.yaml` change from the defaults: SwiGLU /14 backbones with drop
  path 0.4, separate 131072-prototype heads, Sinkhorn-Knopp, 500 epochs at lr 2e-4, 98-px locals."""
  c.model.update(patch_size=14, img_size=224, drop_path_rate=0.4, ffn="swiglu")
  c.dino.head.update(prototypes=131072, bottleneck_dim=384)
  c.ibot.update(separate_head=True)
  c.ibot.head.update(prototypes=131072)
  c.centering = "sinkhorn_knopp"
  c.teacher.momentum = 0.994
  c.optim.update(epochs=500, weight_decay_end=0.2, base_lr=2e-4, warmup_epochs=80, layerwise_decay=1.0)
  c.crops.local_size = 98
  return c
