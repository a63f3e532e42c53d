"""DINOv2 self-supervised pretraining (Oquab et al., 2023): DINO + iBOT + KoLeo, EMA teacher.

Reads top to bottom: mesh, data, model and optimizer, sharded init, the update step, checkpoint and
resume, k-NN evaluation, the loop. Everything numeric comes from the config (`configs/dinov2_*.py`).
"""

import functools
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging
from jax.experimental import multihost_utils

from dinojax import checkpoint, optim, parallel
from dinojax.data import masking, pipeline, sources
from dinojax.data.multi_crop import MultiCrop
from dinojax.evaluators import knn
from dinojax.losses import dino, koleo
from dinojax.models.heads import DINOHead
from dinojax.models.vit import ViT, vit
from dinojax.trainers import loop


def build_backbone(model_config) -> ViT:
  kwargs = dict(model_config)
  variant = kwargs.pop("variant", None)
  kwargs["dtype"] = jnp.dtype(kwargs.get("dtype", "float32"))
  return vit(variant, **kwargs) if variant is not None else ViT(**kwargs)


def build_head(head_config, dtype) -> DINOHead:
  return DINOHead(out_dim=head_config.prototypes, nlayers=head_config.nlayers,
                  hidden_dim=head_config.hidden_dim, bottleneck_dim=head_config.bottleneck_dim,
                  dtype=dtype)


def total_steps(config) -> int:
  return config.total_steps or config.optim.epochs * config.steps_per_epoch


def peak_lr(config) -> float:
  """base_lr · sqrt(batch / 1024), the official `sqrt_wrt_1024` scaling rule."""
  return config.optim.base_lr * math.sqrt(config.batch_size / 1024)


def schedules(config, step: jax.Array) -> dict:
  """Every scheduled scalar of the official recipe at `step`."""
  total, per_epoch = total_steps(config), config.steps_per_epoch
  o = config.optim
  lr = optim.cosine_schedule(step, peak_lr(config), o.min_lr, total,
                             warmup_steps=o.warmup_epochs * per_epoch)
  return {
      "lr": lr,
      # Same schedule, zero while the last layer is frozen (official `last_layer_lr_schedule`).
      "last_layer_lr": jnp.where(step < o.freeze_last_layer_epochs * per_epoch, 0.0, lr),
      "weight_decay": optim.cosine_schedule(step, o.weight_decay, o.weight_decay_end, total),
      "momentum": optim.cosine_schedule(step, config.teacher.momentum, config.teacher.final_momentum, total),
      "teacher_temp": optim.cosine_schedule(
          step, config.teacher.temp, config.teacher.temp, total,
          warmup_steps=config.teacher.warmup_temp_epochs * per_epoch,
          warmup_start=config.teacher.warmup_temp),
  }


def run(config, workdir: str) -> dict:
  os.makedirs(workdir, exist_ok=True)
  num_steps = total_steps(config)

  # ------------------------------------------------------------------------------------------------
  # Mesh
  # ------------------------------------------------------------------------------------------------
  mesh = parallel.make_mesh(config.mesh, dcn_axes=config.get("mesh_dcn"))
  rules = tuple(tuple(r) for r in config.sharding_rules)
  data_devices = mesh.shape["data"] * mesh.shape["fsdp"]
  for name, size in (("batch_size", config.batch_size), ("eval.batch_size", config.eval.batch_size)):
    if size % data_devices:
      raise ValueError(f"{name}={size} is not divisible by the data×fsdp mesh size {data_devices}.")

  # ------------------------------------------------------------------------------------------------
  # Data
  # ------------------------------------------------------------------------------------------------
  crops = config.crops
  for name in ("global_size", "local_size"):
    if crops[name] % config.model.patch_size:
      raise ValueError(f"crops.{name}={crops[name]} is not a multiple of model.patch_size="
                       f"{config.model.patch_size}.")
  multi_crop = MultiCrop(crops.global_size, tuple(crops.global_scale), crops.local_size,
                         tuple(crops.local_scale), crops.local_number)
  train_source = sources.make_source(config.data.source, config.data.split)
  dataset, skipped = pipeline.ssl_dataset(
      train_source, config.batch_size, multi_crop, config.model.patch_size, config.seed,
      tuple(config.ibot.mask_ratio), config.ibot.mask_probability, config.ibot.mask_group,
      jax.process_index(), jax.process_count(), config.data.threads)
  num_patches = (crops.global_size // config.model.patch_size) ** 2
  # Static size of the buffer of masked patches (the official `upperbound`) for the global batch.
  mask_group = config.ibot.mask_group or config.batch_size // jax.process_count()
  max_masked = config.batch_size // mask_group * masking.mask_upper_bound(
      2 * mask_group, num_patches, config.ibot.mask_ratio, config.ibot.mask_probability)
  batch_shardings = {
      "global_crops": parallel.batch_sharding(mesh, rules, 5),
      "local_crops": parallel.batch_sharding(mesh, rules, 5),
      "masks": parallel.batch_sharding(mesh, rules, 3),
  }

  # ------------------------------------------------------------------------------------------------
  # Model and optimizer
  # ------------------------------------------------------------------------------------------------
  backbone = build_backbone(config.model)
  dino_head = build_head(config.dino.head, backbone.dtype)
  ibot_head = build_head(config.ibot.head, backbone.dtype) if config.ibot.separate_head else dino_head
  ibot_key = "ibot_head" if config.ibot.separate_head else "dino_head"

  def init(rng):
    k_backbone, k_dino, k_ibot = jax.random.split(rng, 3)
    images = jnp.zeros((1, crops.global_size, crops.global_size, 3))
    tokens = jnp.zeros((1, backbone.embed_dim))
    params = {"backbone": backbone.init(k_backbone, images)["params"],
              "dino_head": dino_head.init(k_dino, tokens)["params"]}
    if config.ibot.separate_head:
      params["ibot_head"] = ibot_head.init(k_ibot, tokens)["params"]
    return params

  params, _ = parallel.init_sharded(init, mesh, rules, jax.random.key(config.seed))
  lr_mult = optim.lr_multipliers(params, backbone.depth, config.optim.layerwise_decay,
                                 config.optim.patch_embed_lr_mult)
  wd_mult = optim.wd_multipliers(params, tuple(config.optim.no_weight_decay))
  last_layer = optim.last_layer_mask(params)
  make_tx = functools.partial(optim.adamw, lr_mult=lr_mult, wd_mult=wd_mult, is_last_layer=last_layer,
                              b1=config.optim.adamw_beta1, b2=config.optim.adamw_beta2)

  # ------------------------------------------------------------------------------------------------
  # Sharded init of the whole state
  # ------------------------------------------------------------------------------------------------
  def init_state(params):
    return {
        "params": params,
        "teacher": jax.tree.map(jnp.copy, params),  # The teacher starts as the student.
        "opt": make_tx(0.0, 0.0, 0.0).init(params),
        "center": {"dino": jnp.zeros((1, config.dino.head.prototypes)),
                   "ibot": jnp.zeros((1, config.ibot.head.prototypes))},
        "step": jnp.zeros((), jnp.int32),
    }

  state = jax.jit(init_state)(params)
  state_shardings = jax.tree.map(lambda x: x.sharding, state)
  logging.info("Params: %.2fM (student), %.1f%% of bytes on one device",
               sum(x.size for x in jax.tree.leaves(params)) / 1e6,
               100 * parallel.sharded_fraction(params))

  # ------------------------------------------------------------------------------------------------
  # The update step
  # ------------------------------------------------------------------------------------------------
  n_local = crops.local_number
  n_loss_terms = 2 * n_local + 2  # global×local pairs + the two cross-view global pairs

  def heads(params, cls_tokens, patch_tokens):
    """DINO head on CLS tokens, iBOT head (maybe the same one) on masked patch tokens."""
    if not config.ibot.separate_head:  # One call over both, as the official shared head.
      out = dino_head.apply({"params": params["dino_head"]},
                            jnp.concatenate([cls_tokens, patch_tokens]))
      return out[:cls_tokens.shape[0]], out[cls_tokens.shape[0]:]
    return (dino_head.apply({"params": params["dino_head"]}, cls_tokens),
            ibot_head.apply({"params": params[ibot_key]}, patch_tokens))

  def train_step(state, batch):
    step = state["step"]
    s = schedules(config, step)
    b = batch["global_crops"].shape[0]
    # Sample-major layout (b·2, ...), so merging crops into the batch keeps its sharding.
    global_crops = batch["global_crops"].reshape(2 * b, *batch["global_crops"].shape[2:])
    local_crops = batch["local_crops"].reshape(b * n_local, *batch["local_crops"].shape[2:])
    masks = batch["masks"].reshape(2 * b, -1)

    # Gather masked patches into a fixed-size buffer; padded slots are invalid and weigh nothing.
    flat_masks = masks.reshape(-1)
    masked_idx = jnp.nonzero(flat_masks, size=max_masked, fill_value=0)[0]
    valid = jnp.arange(max_masked) < flat_masks.sum()
    patch_weights = dino.masked_patch_weights(masks).reshape(-1)[masked_idx] * valid

    # Teacher: global crops, no masks, no drop path, no gradient.
    t_out = backbone.apply({"params": state["teacher"]["backbone"]}, global_crops)
    t_patches = t_out["x_norm_patchtokens"].reshape(-1, backbone.embed_dim)[masked_idx]
    t_cls_logits, t_patch_logits = heads(state["teacher"], t_out["x_norm_clstoken"], t_patches)
    temp = s["teacher_temp"]
    center = state["center"]
    if config.centering == "sinkhorn_knopp":
      t_cls = dino.sinkhorn_knopp(t_cls_logits, temp, config.sinkhorn_iterations)
      t_patch = dino.sinkhorn_knopp(t_patch_logits, temp, config.sinkhorn_iterations, valid=valid)
    else:
      t_cls = dino.softmax_center(t_cls_logits, center["dino"], temp)
      t_patch = dino.softmax_center(t_patch_logits, center["ibot"], temp)
      center = {"dino": dino.update_center(center["dino"], t_cls_logits, config.center_momentum),
                "ibot": dino.update_center(center["ibot"], t_patch_logits, config.center_momentum,
                                           valid=valid)}
    t_cls, t_patch = jax.lax.stop_gradient((t_cls, t_patch))
    t_cls = t_cls.reshape(b, 2, -1)
    t_cls_swapped = t_cls[:, ::-1].reshape(2 * b, -1)  # view A's student learns from view B's teacher

    def loss_fn(params):
      rng = jax.random.fold_in(jax.random.key(config.seed + 1), step)
      rng_global, rng_local = jax.random.split(rng)
      s_global = backbone.apply({"params": params["backbone"]}, global_crops, masks, train=True,
                                rngs={"drop_path": rng_global})
      s_cls = s_global["x_norm_clstoken"]
      if n_local:
        s_local = backbone.apply({"params": params["backbone"]}, local_crops, train=True,
                                 rngs={"drop_path": rng_local})
        s_cls = jnp.concatenate([s_cls, s_local["x_norm_clstoken"]])
      s_patches = s_global["x_norm_patchtokens"].reshape(-1, backbone.embed_dim)[masked_idx]
      s_cls_logits, s_patch_logits = heads(params, s_cls, s_patches)
      s_global_logits, s_local_logits = s_cls_logits[:2 * b], s_cls_logits[2 * b:]

      st = config.dino.student_temp
      parts = {"loss_dino_global": dino.dino_loss([s_global_logits], [t_cls_swapped], st) * 2 / n_loss_terms}
      if n_local:
        s_local_logits = s_local_logits.reshape(b, n_local, -1)
        parts["loss_dino_local"] = dino.dino_loss(
            [s_local_logits[:, i] for i in range(n_local)], [t_cls[:, 0], t_cls[:, 1]], st) / n_loss_terms
      global_cls = s_global["x_norm_clstoken"].reshape(b, 2, -1)
      # KoLeo within each global view only (never between two crops of the same image).
      parts["loss_koleo"] = config.dino.koleo_weight * sum(
          koleo.koleo_loss(global_cls[:, i]) for i in range(2))
      # Official scaling: × 2 (global crops processed together) × 1/2 (per global crop).
      parts["loss_ibot"] = dino.ibot_loss(s_patch_logits, t_patch, patch_weights, 2 * b, st)
      total = (config.dino.loss_weight * (parts["loss_dino_global"] + parts.get("loss_dino_local", 0.0))
               + parts["loss_koleo"] + config.ibot.loss_weight * parts["loss_ibot"])
      return total, parts

    (loss, parts), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"])
    grads, grad_norms = optim.clip_by_module_norm(grads, config.optim.clip_grad)
    tx = make_tx(s["lr"], s["weight_decay"], s["last_layer_lr"])
    updates, opt = tx.update(grads, state["opt"], state["params"])
    params = optax.apply_updates(state["params"], updates)
    m = s["momentum"]
    teacher = jax.tree.map(lambda t, p: m * t + (1 - m) * p, state["teacher"], params)
    # Entropy of the teacher's targets: ≈ log(prototypes) means collapse to uniform, ≈ 0 to one-hot.
    teacher_entropy = -jnp.sum(t_cls * jnp.log(t_cls + 1e-12), axis=-1).mean()
    metrics = {"loss": loss, **parts, **s, "masked_patches": valid.sum(),
               "teacher_entropy": teacher_entropy,
               "param_norm": optax.tree.norm(params),
               **{f"grad_norm_{k}": v for k, v in grad_norms.items()}}
    new_state = {"params": params, "teacher": teacher, "opt": opt, "center": center, "step": step + 1}
    return new_state, metrics

  train_step = jax.jit(train_step, in_shardings=(state_shardings, batch_shardings),
                       out_shardings=(state_shardings, None), donate_argnums=0)

  # ------------------------------------------------------------------------------------------------
  # Checkpoint and resume
  # ------------------------------------------------------------------------------------------------
  ckpt = checkpoint.manager(os.path.join(workdir, "checkpoints"), config.checkpoint.keep,
                            config.checkpoint.every)
  data_iter = iter(dataset)
  start = 0
  if checkpoint.latest_step(ckpt) is not None:
    state, meta = checkpoint.restore(ckpt, checkpoint.abstract_like(state, state_shardings),
                                     with_meta=True)
    data_iter.set_state(meta["data"])
    skipped.count = meta.get("skipped_images", 0)
    start = int(state["step"])
    logging.info("Resumed from step %d.", start)

  elif config.init_from:
    # A new phase of an earlier run (e.g. the high-resolution adaptation): its weights, teacher and
    # centres; a fresh optimizer and schedule.
    source = checkpoint.manager(os.path.join(config.init_from, "checkpoints"), None)
    previous = checkpoint.restore(source, checkpoint.abstract_like(state, state_shardings))
    state = {**state, **{k: previous[k] for k in ("params", "teacher", "center")}}
    logging.info("Initialised from %s (step %d).", config.init_from, int(previous["step"]))

  def save(step, force=False):
    meta = {"data": data_iter.get_state(), "skipped_images": skipped.count, "step": step}
    checkpoint.save(ckpt, step, state, meta, force=force)

  # ------------------------------------------------------------------------------------------------
  # k-NN evaluation of the teacher's CLS features
  # ------------------------------------------------------------------------------------------------
  extract = jax.jit(lambda p, x: backbone.apply({"params": p}, x)["x_norm_clstoken"])

  eval_shardings = {"image": parallel.batch_sharding(mesh, rules, 4),
                    "label": parallel.batch_sharding(mesh, rules, 1),
                    "valid": parallel.batch_sharding(mesh, rules, 1)}

  def features(params, source):
    """Every host embeds its slice; all hosts end with the whole set (in the same order)."""
    feats, labels = [], []
    for local in pipeline.eval_dataset(source, config.eval.batch_size // jax.process_count(),
                                       crops.global_size, jax.process_index(), jax.process_count()):
      batch = loop.global_batch(local, eval_shardings)
      out, label, valid = (multihost_utils.process_allgather(x, tiled=True) for x in
                           (extract(params, batch["image"]), batch["label"], batch["valid"]))
      feats.append(np.asarray(out, np.float32)[valid])
      labels.append(label[valid])
    return np.concatenate(feats), np.concatenate(labels)

  eval_sources = None

  def knn_eval(params):
    nonlocal eval_sources
    if eval_sources is None:
      eval_sources = (sources.make_source(config.eval.source, config.eval.train_split),
                      sources.make_source(config.eval.source, config.eval.heldout_split))
    train_feats, train_labels = features(params, eval_sources[0])
    test_feats, test_labels = features(params, eval_sources[1])
    return knn.knn_accuracy(train_feats, train_labels, test_feats, test_labels,
                            eval_sources[0].num_classes, config.eval.knn_k, config.eval.knn_temperature)

  # ------------------------------------------------------------------------------------------------
  # The loop
  # ------------------------------------------------------------------------------------------------
  writer = loop.MetricWriter(workdir)
  throughput = loop.Throughput(config.batch_size)
  bar = loop.progress_bar(num_steps, start, config.batch_size)
  last_saved = checkpoint.latest_step(ckpt)
  summary = {}
  try:
    with parallel.activation_sharding(mesh, rules):
      for step in range(start + 1, num_steps + 1):
        batch = loop.global_batch(next(data_iter), batch_shardings)
        state, metrics = train_step(state, batch)
        bar.update(1)
        is_last = step == num_steps
        if step % config.log_every == 0 or is_last:
          metrics = jax.device_get(metrics)
          loop.check_finite(metrics, step, last_saved)
          metrics.update(throughput.update(step), skipped_images=skipped.count)
          writer.write(step, metrics)
          bar.set_postfix(loss=f"{metrics['loss']:.4f}",
                          **{"img/s": f"{metrics.get('images_per_s', 0):.1f}"})
          summary.update(loss=float(metrics["loss"]))
        if step % config.checkpoint.every == 0 or is_last:
          loop.check_finite(jax.device_get(metrics), step, last_saved)
          save(step, force=is_last)
          last_saved = step
        if config.eval.every and (step % config.eval.every == 0 or is_last):
          accuracy = knn_eval(state["teacher"]["backbone"])
          writer.write(step, {"knn_top1": accuracy})
          logging.info("step %d: k-NN top-1 %.2f%%", step, 100 * accuracy)
          summary["knn_top1"] = accuracy
  finally:  # A failing run still finishes the checkpoint it was writing.
    bar.close()
    ckpt.wait_until_finished()
  if skipped.count:
    logging.warning("%d unreadable images were skipped.", skipped.count)
  return {**summary, "steps": num_steps, "skipped_images": skipped.count}
