"""DINOv2 self-supervised pretraining (Oquab et al., 2023): DINO + iBOT + KoLeo, EMA teacher.

Reads top to bottom: the update step (`make_train_step`), then `run`: mesh, data, model and
optimizer, sharded init, checkpoint and resume, the evaluations, the loop, the export of the
teacher's backbone (official naming, for PyTorch). The pieces distillation shares (heads, schedules,
multi-crop data, masked patches, AdamW, EMA, targets, losses, state) are `student_teacher`'s.
Everything numeric comes from the config (`configs/dinov2_*.py`).
"""

import functools
import os

import jax
import optax
from absl import logging
from jax.sharding import NamedSharding, PartitionSpec as P

from dinojax import backbones, checkpoint, loop
from dinojax import student_teacher as st
from dinojax.data import masking
from dinojax.evaluators import base
from dinojax.losses import dino
from dinojax.models.vit import ViT


def make_train_step(config, backbone: ViT, heads: st.Heads, make_tx, mesh, rules):
  """`train_step(state, batch, schedule) -> (state, metrics)`: one DINOv2 step, pure (jit it with
  the state donated). `schedule` holds this step's scheduled scalars (`st.schedules`), an input so
  that runs of any length share one compiled step; `make_tx` is `st.make_optimizer`'s. The mask
  and loss groups follow `config` on `mesh` (`st.mask_group`, `st.loss_group`)."""
  crops, n_local = config.crops, config.crops.local_number
  num_patches = (crops.global_size // config.model.patch_size) ** 2
  # Masked patches are gathered per mask group into a static buffer (the official `upperbound`).
  group = st.mask_group(config, mesh, rules)
  mask_groups = config.batch_size // group
  group_max_masked = masking.mask_upper_bound(2 * group, num_patches, config.ibot.mask_ratio,
                                              config.ibot.mask_probability)
  images_per_loss_group = st.loss_group(config, mesh, rules)

  def train_step(state, batch, schedule):
    step = state["step"]
    b = batch["global_crops"].shape[0]
    # Sample-major layout (b·2, ...), so merging crops into the batch keeps its sharding.
    global_crops = batch["global_crops"].reshape(2 * b, *batch["global_crops"].shape[2:])
    local_crops = batch["local_crops"].reshape(b * n_local, *batch["local_crops"].shape[2:])
    masks = batch["masks"].reshape(2 * b, -1)

    # Gather masked patches into a fixed-size buffer; padded slots are invalid and weigh nothing.
    masked_idx, valid = st.masked_patch_index(masks, mask_groups, group_max_masked)
    valid = valid.reshape(-1)
    patch_weights = st.take_masked(dino.masked_patch_weights(masks), masked_idx) * valid
    patch_group = st.masked_patch_groups(masks, masked_idx, images_per_loss_group)

    # Teacher: global crops, no masks, no drop path, no gradient.
    t_out = backbone.apply({"params": state["teacher"]["backbone"]}, global_crops)
    t_patches = st.take_masked(t_out["x_norm_patchtokens"], masked_idx)
    t_cls_logits, t_patch_logits = heads(state["teacher"], t_out["x_norm_clstoken"], t_patches)
    t_cls, t_patch, center = st.teacher_targets(config, t_cls_logits, t_patch_logits, state["center"],
                                                schedule["teacher_temp"], valid, patch_group,
                                                b // images_per_loss_group)
    t_cls = t_cls.reshape(b, 2, -1)

    def loss_fn(params):
      rng = jax.random.fold_in(jax.random.key(config.seed + 1), step)
      rng_global, rng_local = jax.random.split(rng)
      s_global = backbone.apply({"params": params["backbone"]}, global_crops, masks, train=True,
                                rngs={"drop_path": rng_global})
      s_global_logits, s_patch_logits = heads(params, s_global["x_norm_clstoken"],
                                              st.take_masked(s_global["x_norm_patchtokens"], masked_idx))
      s_local = backbone.apply({"params": params["backbone"]}, local_crops, train=True,
                               rngs={"drop_path": rng_local})
      s_local_logits = heads.dino_logits(params, s_local["x_norm_clstoken"])
      terms = st.dino_koleo_losses(config, s_global_logits, s_local_logits, t_cls,
                                   s_global["x_norm_clstoken"], images_per_loss_group)
      # Official scaling: × 2 (global crops processed together) × 1/2 (per global crop).
      terms["loss_ibot"] = dino.ibot_loss(s_patch_logits, t_patch, patch_weights, 2 * b,
                                          config.dino.student_temp)
      return st.combine_losses(config, terms)

    (loss, logged), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"])
    params, opt, grad_norms = st.update(config, make_tx, schedule, state["params"], state["opt"], grads)
    teacher = st.ema_update(state["teacher"], params, schedule["momentum"])
    metrics = {"loss": loss, **logged, **schedule, "masked_patches": valid.sum(),
               "teacher_entropy": st.target_entropy(t_cls), **st.center_norms(config, center),
               "param_norm": optax.tree.norm(params),
               **{f"grad_norm_{k}": v for k, v in grad_norms.items()}}
    new_state = {"params": params, "teacher": teacher, "opt": opt, "center": center, "step": step + 1}
    return new_state, metrics

  return train_step


def run(config, workdir: str) -> dict:
  os.makedirs(workdir, exist_ok=True)
  num_steps = st.total_steps(config)

  # ------------------------------------------------------------------------------------------------
  # Mesh
  # ------------------------------------------------------------------------------------------------
  mesh, rules = loop.make_mesh(config)

  # ------------------------------------------------------------------------------------------------
  # Data
  # ------------------------------------------------------------------------------------------------
  dataset, skipped, batch_shardings = st.multi_crop_data(config, mesh, rules)

  # ------------------------------------------------------------------------------------------------
  # Model and optimizer
  # ------------------------------------------------------------------------------------------------
  backbone = backbones.build_vit(config.model)
  heads = st.build_heads(config.dino.head, config.ibot.head, config.ibot.separate_head, backbone.dtype)
  # The teacher starts as the student.
  state, state_shardings, make_tx = st.init_student(config, backbone, heads, mesh, rules, ema_key="teacher")

  # ------------------------------------------------------------------------------------------------
  # The update step, and its schedules computed on the devices from the state's step
  # ------------------------------------------------------------------------------------------------
  train_step = jax.jit(make_train_step(config, backbone, heads, make_tx, mesh, rules),
                       in_shardings=(state_shardings, batch_shardings, NamedSharding(mesh, P())),
                       out_shardings=(state_shardings, None), donate_argnums=0)
  schedule = jax.jit(functools.partial(st.schedules, config))

  # ------------------------------------------------------------------------------------------------
  # Checkpoint and resume (or a new phase of an earlier run, e.g. the high-resolution adaptation:
  # its weights, teacher and centres with a fresh optimizer and schedule)
  # ------------------------------------------------------------------------------------------------
  ckpt = checkpoint.manager(os.path.join(workdir, "checkpoints"), config.checkpoint.keep,
                            config.checkpoint.every)
  context = loop.Run(config=config, workdir=workdir, mesh=mesh, rules=rules, data_iter=iter(dataset),
                     batch_shardings=batch_shardings, ckpt=ckpt, skipped=skipped)
  state, start = loop.restore(context, state, state_shardings, init_from=config.init_from,
                              init_keys=("params", "teacher", "center"))

  # ------------------------------------------------------------------------------------------------
  # Evaluations of the teacher's backbone (`config.evals`: k-NN of its CLS features, pictures)
  # ------------------------------------------------------------------------------------------------
  evaluations = base.from_config(config, backbone=backbone, image_size=config.crops.global_size,
                                 mesh=mesh, rules=rules)

  # ------------------------------------------------------------------------------------------------
  # The loop, then the export of the EMA teacher's backbone
  # ------------------------------------------------------------------------------------------------
  state, summary = loop.train(context, state, train_step, start=start, num_steps=num_steps,
                              step_args=lambda state: (schedule(state["step"]),), evaluations=evaluations,
                              eval_params=lambda state: state["teacher"]["backbone"])
  # The model a run produces, as the official `teacher_checkpoint.pth`'s backbone, for PyTorch.
  loop.export_backbone(state["teacher"]["backbone"], os.path.join(workdir, "teacher_backbone.safetensors"))
  if skipped.count:
    logging.warning("%d unreadable images were skipped.", skipped.count)
  return {**summary, "steps": num_steps, "skipped_images": skipped.count}
