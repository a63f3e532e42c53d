"""The DINOv2 student–teacher machinery (Oquab et al., 2023) that SSL pretraining
(`trainers/ssl.py`) and distillation (`trainers/distill.py`) share: the DINO/iBOT heads, the
scheduled scalars, multi-crop data, the masked-patch gather, the official AdamW step, the EMA, the
teacher's targets and the combined DINO + iBOT + KoLeo loss, and the training state."""

import functools
import math

import jax
import jax.numpy as jnp
import optax
from absl import logging

from dinojax import optim, parallel
from dinojax.data import pipeline, sources
from dinojax.data.multi_crop import MultiCrop
from dinojax.losses import dino, koleo
from dinojax.models.heads import DINOHead
from dinojax.models.vit import ViT


def build_head(head_config, dtype) -> DINOHead:
  return DINOHead(out_dim=head_config.prototypes, nlayers=head_config.nlayers,
                  hidden_dim=head_config.hidden_dim, bottleneck_dim=head_config.bottleneck_dim,
                  dtype=dtype)


class Heads:
  """The DINO head on CLS tokens and the iBOT head on patch tokens: two modules, or one shared when
  `ibot` is None (the official `ibot.separate_head`). Params are {"dino_head", ["ibot_head"]}."""

  def __init__(self, dino_head: DINOHead, ibot_head: DINOHead | None = None):
    self.separate = ibot_head is not None
    self.dino = dino_head
    self.ibot = ibot_head if self.separate else dino_head

  def init(self, k_dino: jax.Array, k_ibot: jax.Array, embed_dim: int) -> dict:
    tokens = jnp.zeros((1, embed_dim))
    params = {"dino_head": self.dino.init(k_dino, tokens)["params"]}
    if self.separate:
      params["ibot_head"] = self.ibot.init(k_ibot, tokens)["params"]
    return params

  def dino_logits(self, params: dict, cls_tokens: jax.Array) -> jax.Array:
    return self.dino.apply({"params": params["dino_head"]}, cls_tokens)

  def ibot_logits(self, params: dict, patch_tokens: jax.Array) -> jax.Array:
    return self.ibot.apply({"params": params["ibot_head" if self.separate else "dino_head"]}, patch_tokens)

  def __call__(self, params: dict, cls_tokens: jax.Array, patch_tokens: jax.Array):
    """(CLS logits, patch logits). A shared head runs once per token set: the official code
    concatenates them, which here would reshuffle a sharded batch across devices for nothing."""
    return self.dino_logits(params, cls_tokens), self.ibot_logits(params, patch_tokens)


def build_heads(dino_config, ibot_config, separate: bool, dtype) -> Heads:
  return Heads(build_head(dino_config, dtype), build_head(ibot_config, dtype) if separate else None)


def model_init(backbone: ViT, heads: Heads, image_size: int):
  """`init(rng) -> {"backbone", "dino_head", ["ibot_head"]}`: a DINOv2 model's params (logically
  annotated, for `parallel.init_sharded`)."""

  def init(rng):
    k_backbone, k_dino, k_ibot = jax.random.split(rng, 3)
    images = jnp.zeros((1, image_size, image_size, 3))
    return {"backbone": backbone.init(k_backbone, images)["params"],
            **heads.init(k_dino, k_ibot, backbone.embed_dim)}

  return init


def total_steps(config) -> int:
  return config.total_steps or config.optim.epochs * config.steps_per_epoch


def peak_lr(config) -> float:
  """base_lr · sqrt(batch / 1024), the official `sqrt_wrt_1024` scaling rule."""
  return config.optim.base_lr * math.sqrt(config.batch_size / 1024)


def schedules(config, step: jax.Array, ema=None) -> dict:
  """Every scheduled scalar of the official recipe at `step`. `ema` holds the EMA's `momentum` and
  `final_momentum` (default `config.teacher`: in SSL the EMA is the teacher)."""
  total, per_epoch = total_steps(config), config.steps_per_epoch
  ema = config.teacher if ema is None else ema
  o = config.optim
  lr = optim.cosine_schedule(step, peak_lr(config), o.min_lr, total,
                             warmup_steps=o.warmup_epochs * per_epoch)
  return {
      "lr": lr,
      # Same schedule, zero while the last layer is frozen (official `last_layer_lr_schedule`).
      "last_layer_lr": jnp.where(step < o.freeze_last_layer_epochs * per_epoch, 0.0, lr),
      "weight_decay": optim.cosine_schedule(step, o.weight_decay, o.weight_decay_end, total),
      "momentum": optim.cosine_schedule(step, ema.momentum, ema.final_momentum, total),
      "teacher_temp": optim.cosine_schedule(
          step, config.teacher.temp, config.teacher.temp, total,
          warmup_steps=config.teacher.warmup_temp_epochs * per_epoch,
          warmup_start=config.teacher.warmup_temp),
  }


def device_batch(config, mesh, rules) -> int:
  """Each device's share of the batch, what one GPU holds in the official code (this host's batch
  when the batch does not split evenly over the devices)."""
  shards = parallel.batch_shards(mesh, rules)
  local_batch = config.batch_size // jax.process_count()
  if config.batch_size % shards or local_batch % (config.batch_size // shards):
    return local_batch
  return config.batch_size // shards


def mask_group(config, mesh, rules) -> int:
  """Images whose iBOT mask ratios are stratified together and whose masked patches share one
  buffer: `ibot.mask_group`, by default each device's share of the batch (the official collate runs
  per GPU), so gathering masked patches never crosses devices."""
  return config.ibot.mask_group or device_batch(config, mesh, rules)


def loss_group(config, mesh, rules) -> int:
  """Images that the official code's per-GPU loss terms see together: KoLeo searches nearest
  neighbours, and the iBOT centre update averages masked patches, within each group. `loss_group`
  (the official `batch_size_per_gpu`, so any mesh gives the official regulariser), by default each
  device's share of the batch."""
  group = config.loss_group or device_batch(config, mesh, rules)
  if config.batch_size % group:
    raise ValueError(f"loss_group={group} does not divide batch_size={config.batch_size}; set "
                     "--config.loss_group to the official per-GPU batch, or 0 for each device's batch.")
  return group


def masked_patch_index(masks: jax.Array, groups: int, size: int) -> tuple[jax.Array, jax.Array]:
  """Where the masked patches of (2b, P) `masks` are within each of `groups` contiguous slices of the
  batch, padded to `size` per slice (the official `upperbound`): (index, valid), both (groups, size)."""
  masks = masks.reshape(groups, -1)
  index = jax.vmap(lambda m: jnp.nonzero(m, size=size, fill_value=0)[0])(masks)
  return index, jnp.arange(size) < masks.sum(-1, keepdims=True)


def take_masked(patches: jax.Array, index: jax.Array) -> jax.Array:
  """The masked rows of (2b, P, ...) `patches` at `masked_patch_index`'s index: (groups·size, ...).
  Group by group, so a batch sharded by groups keeps every row on its device."""
  groups = index.shape[0]
  grouped = patches.reshape(groups, -1, *patches.shape[2:])
  return jax.vmap(lambda p, i: p[i])(grouped, index).reshape(-1, *patches.shape[2:])


def masked_patch_groups(masks: jax.Array, index: jax.Array, loss_group: int) -> jax.Array:
  """The loss group of the image each masked patch at `masked_patch_index`'s `index` comes from, for
  the iBOT centre's per-group means ((2b, P) sample-major `masks`, two crops per image)."""
  crop_group = jnp.arange(masks.shape[0]) // (2 * loss_group)
  return take_masked(jnp.broadcast_to(crop_group[:, None], masks.shape), index)


def multi_crop_data(config, mesh, rules, masks: bool = True):
  """This host's multi-crop batches (with iBOT masks unless `masks=False`), the skipped-image
  counter and the batch shardings."""
  crops = config.crops
  if crops.local_number < 1:
    raise ValueError(f"crops.local_number={crops.local_number}: the official DINOv2 code cannot train "
                     "without local crops (its collate stacks an empty list), so there is no official "
                     "loss to follow; use at least 1 (the recipes use 8).")
  for name in ("global_size", "local_size"):
    if crops[name] % config.model.patch_size:
      raise ValueError(f"crops.{name}={crops[name]} is not a multiple of model.patch_size="
                       f"{config.model.patch_size}.")
  multi_crop = MultiCrop(crops.global_size, tuple(crops.global_scale), crops.local_size,
                         tuple(crops.local_scale), crops.local_number)
  train_source = sources.make_source(config.data.source, config.data.split)
  mask_args = {}
  if masks:
    mask_args = dict(mask_ratio=tuple(config.ibot.mask_ratio), mask_probability=config.ibot.mask_probability,
                     mask_group=mask_group(config, mesh, rules))
  dataset, skipped = pipeline.ssl_dataset(
      train_source, config.batch_size, multi_crop, config.model.patch_size, config.seed,
      process_index=jax.process_index(), process_count=jax.process_count(),
      num_threads=config.data.threads, masks=masks, **mask_args)
  batch_shardings = {"global_crops": parallel.batch_sharding(mesh, rules, 5),
                     "local_crops": parallel.batch_sharding(mesh, rules, 5)}
  if masks:
    batch_shardings["masks"] = parallel.batch_sharding(mesh, rules, 3)
  return dataset, skipped, batch_shardings


def make_optimizer(config, params, num_blocks: int):
  """`make_tx(lr, weight_decay, last_layer_lr)`: the official AdamW over `params` (layer-wise lr
  decay over `num_blocks`, patch-embed lr ×, decay exemptions, the last layers frozen early)."""
  lr_mult = optim.lr_multipliers(params, num_blocks, config.optim.layerwise_decay,
                                 config.optim.patch_embed_lr_mult)
  wd_mult = optim.wd_multipliers(params, tuple(config.optim.no_weight_decay))
  last_layer = optim.last_layer_mask(params)
  return functools.partial(optim.adamw, lr_mult=lr_mult, wd_mult=wd_mult, is_last_layer=last_layer,
                           b1=config.optim.adamw_beta1, b2=config.optim.adamw_beta2)


def update(config, make_tx, s: dict, params, opt, grads):
  """One optimizer step of the official recipe: gradient clipping per module, then AdamW at this
  step's schedules `s`. Returns (params, opt, per-module grad norms)."""
  grads, grad_norms = optim.clip_by_module_norm(grads, config.optim.clip_grad)
  tx = make_tx(s["lr"], s["weight_decay"], s["last_layer_lr"])
  updates, opt = tx.update(grads, opt, params)
  return optax.apply_updates(params, updates), opt, grad_norms


def ema_update(ema, params, momentum: jax.Array):
  return jax.tree.map(lambda t, p: momentum * t + (1 - momentum) * p, ema, params)


def teacher_targets(config, t_cls_logits, t_patch_logits, center: dict, temp: jax.Array,
                    valid: jax.Array | None = None, patch_group: jax.Array | None = None,
                    num_groups: int = 1):
  """The teacher's target distributions for CLS and patch tokens, centred as configured (Sinkhorn-
  Knopp, or softmax centering with the centres' EMA updated); `valid` marks real patch rows and
  `patch_group` their loss group (of `num_groups`: the iBOT centre averages per-group means).
  Returns (t_cls, t_patch, center), with no gradient."""
  if config.centering == "sinkhorn_knopp":
    t_cls = dino.sinkhorn_knopp(t_cls_logits, temp, config.sinkhorn_iterations)
    t_patch = dino.sinkhorn_knopp(t_patch_logits, temp, config.sinkhorn_iterations, valid=valid)
  else:
    t_cls = dino.softmax_center(t_cls_logits, center["dino"], temp)
    t_patch = dino.softmax_center(t_patch_logits, center["ibot"], temp)
    center = {"dino": dino.update_center(center["dino"], t_cls_logits, config.center_momentum),
              "ibot": dino.update_center(center["ibot"], t_patch_logits, config.center_momentum,
                                         valid=valid, group=patch_group, num_groups=num_groups)}
  t_cls, t_patch = jax.lax.stop_gradient((t_cls, t_patch))
  return t_cls, t_patch, center


def dino_koleo_losses(config, s_global_logits, s_local_logits, t_cls, s_global_cls,
                      loss_group: int) -> dict:
  """DINO loss on CLS tokens (each global view's student against the other view's teacher, every
  local view against both, normalised by the number of pairs as the official `DINOLoss`) and KoLeo
  within each global view of the student, per `loss_group` images. s_global_logits: (2b, K) and
  s_local_logits (b·n_local, K), sample-major; t_cls: (b, 2, K) targets; s_global_cls: (2b, D)
  student CLS tokens. The terms as they enter the loss (see `combine_losses`)."""
  b, n_local = t_cls.shape[0], config.crops.local_number
  n_loss_terms = 2 * n_local + 2  # global×local pairs + the two cross-view global pairs
  t_cls_swapped = t_cls[:, ::-1].reshape(2 * b, -1)  # view A's student learns from view B's teacher
  st = config.dino.student_temp
  s_local_logits = s_local_logits.reshape(b, n_local, -1)
  global_cls = s_global_cls.reshape(b, 2, -1)
  # KoLeo within each global view only (never between two crops of the same image).
  koleo_views = sum(koleo.koleo_loss(global_cls[:, i], group_size=loss_group) for i in range(2))
  return {
      "loss_dino_global": dino.dino_loss([s_global_logits], [t_cls_swapped], st) * 2 / n_loss_terms,
      "loss_dino_local": dino.dino_loss([s_local_logits[:, i] for i in range(n_local)],
                                        [t_cls[:, 0], t_cls[:, 1]], st) / n_loss_terms,
      "loss_koleo": config.dino.koleo_weight * koleo_views,
  }


def combine_losses(config, terms: dict) -> tuple[jax.Array, dict]:
  """(the loss minimised, what the log shows). `terms`: DINO's and iBOT's before their weights,
  KoLeo's after. The log shows them as the official training log does (`loss_dict`, then the sum
  of its values as `total_loss`): KoLeo and iBOT at half their value in the loss."""
  loss = (config.dino.loss_weight * (terms["loss_dino_global"] + terms["loss_dino_local"])
          + terms["loss_koleo"] + config.ibot.loss_weight * terms["loss_ibot"])
  logged = {**terms, "loss_koleo": terms["loss_koleo"] / 2, "loss_ibot": terms["loss_ibot"] / 2}
  return loss, {**logged, "total_loss": sum(logged.values())}


def target_entropy(t_cls: jax.Array) -> jax.Array:
  """Mean entropy of the teacher's CLS targets: ≈ log(prototypes) means collapse to uniform, ≈ 0 to
  one-hot."""
  return -jnp.sum(t_cls * jnp.log(t_cls + 1e-12), axis=-1).mean()


def center_norms(config, center: dict) -> dict:
  """The norms of the softmax centres (DINO's and iBOT's; Sinkhorn-Knopp keeps none): with the
  targets' entropy, what tells a collapsing run (one prototype dominating the centre) from a
  learning one."""
  if config.centering != "softmax":
    return {}
  return {f"center_norm_{k}": jnp.linalg.norm(v) for k, v in center.items()}


def init_student(config, backbone: ViT, heads: Heads, mesh, rules, ema_key: str):
  """The student's params initialised sharded over the mesh (`config.seed`), its optimizer, and the
  whole training state (`init_state`) on the mesh: (state, state shardings, make_tx)."""
  init = model_init(backbone, heads, config.crops.global_size)
  params, param_shardings = parallel.init_sharded(init, mesh, rules, jax.random.key(config.seed),
                                                  tolerance=config.sharding_tolerance)
  make_tx = make_optimizer(config, params, backbone.depth)
  state = jax.jit(functools.partial(init_state, config, make_tx, param_shardings=param_shardings,
                                    ema_key=ema_key))(params)
  logging.info("Params: %.2fM (student), %.1f%% of bytes on one device",
               sum(x.size for x in jax.tree.leaves(params)) / 1e6, 100 * parallel.sharded_fraction(params))
  return state, jax.tree.map(lambda x: x.sharding, state), make_tx


def init_state(config, make_tx, params, param_shardings, ema_key: str) -> dict:
  """The training state: params, their EMA under `ema_key` (SSL's teacher, distillation's spare
  student EMA) starting as a copy, AdamW state sharded as the params, the centres and the step."""
  return {
      "params": params,
      ema_key: jax.tree.map(jnp.copy, params),
      "opt": optim.sharded_init(make_tx(0.0, 0.0, 0.0), params, param_shardings),
      "center": {"dino": jnp.zeros((1, config.dino.head.prototypes)),
                 "ibot": jnp.zeros((1, config.ibot.head.prototypes))},
      "step": jnp.zeros((), jnp.int32),
  }
