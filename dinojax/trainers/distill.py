"""DINOv2 distillation of smaller models (Oquab et al., 2023, §5): a student trained with the DINOv2
losses against the head outputs of a larger, frozen teacher.

SSL's training (`ssl.py`, with the pieces both share in `student_teacher`) with the paper's exceptions:
- the teacher is a larger pretrained model, frozen: never updated, no optimizer state, not part of
  the checkpoints (it is read again from its source on resume, which must not have changed);
- a spare EMA of the student (momentum schedule `config.ema`, as SSL's teacher) is kept in the state
  and is the final model (k-NN evaluated, exported to `student_ema.safetensors`);
- no masking and no stochastic depth for the student;
- the iBOT loss on the two global crops. Without masks it compares every patch: each patch token of
  the student's two global crops against the teacher's token at the same position of the same crop
  (cross-entropy to the teacher's centred distribution, as iBOT's masked-patch term), averaged over
  the patches of an image and then over the 2B images, i.e. the official iBOT loss with every patch
  selected (`iBOTPatchLoss.forward` with an all-ones mask). Teacher and student must therefore see
  the same patch grid.
The DINO loss (student global and local CLS tokens against the teacher's global CLS targets, each
global view against the other view, Sinkhorn-Knopp or softmax centering) and KoLeo are SSL's (`student_teacher`'s).

Reads top to bottom: loading and checking the teacher, the update step (`make_train_step`), then
`run`: mesh, data, the frozen teacher, student and optimizer, sharded init, checkpoint and resume,
the evaluations of the student's EMA, the loop, export.
"""

import functools
import os

import jax
import jax.numpy as jnp
import optax
from absl import logging

from jax.sharding import NamedSharding, PartitionSpec as P

from dinojax import backbones, checkpoint, convert, loop, parallel
from dinojax import student_teacher as st
from dinojax.evaluators import base
from dinojax.losses import dino
from dinojax.models.vit import ViT


def load_teacher(config, mesh, rules):
  """The frozen teacher, placed on the mesh: (backbone, heads, params, source).

  From `config.teacher.workdir`, a dinojax SSL run (the EMA teacher of its checkpoint at
  `teacher.step`, 0: the latest; architecture from `teacher.model` and the teacher's head configs);
  or `config.teacher.checkpoint`, an official DINOv2 training checkpoint (architecture read from its
  shapes, with `teacher.model`'s attention, remat, scan_blocks, dtype and, if set, num_heads); or, with
  `teacher.random_init` only, a random init (for tests and CPU demos). `source` says which, and is
  saved with every checkpoint so a resume cannot switch teachers silently.
  """
  t = config.teacher
  size = config.crops.global_size
  # What a checkpoint's shapes cannot tell (heads: 64-dim unless `teacher.model.num_heads` is set).
  model_overrides = {k: t.model[k] for k in ("attention", "remat", "scan_blocks", "num_heads")
                     if k in t.model}
  model_overrides["dtype"] = jnp.dtype(t.model.get("dtype", "float32"))

  if t.checkpoint:
    backbone, head_modules, params = convert.teacher_from_checkpoint(t.checkpoint, **model_overrides)
    heads = st.Heads(head_modules["dino_head"], head_modules.get("ibot_head"))
    shardings = parallel.logical_to_shardings(
        jax.eval_shape(st.model_init(backbone, heads, size), jax.random.key(0)), mesh, rules)
    source = f"checkpoint:{os.path.abspath(t.checkpoint)}"
    return backbone, heads, parallel.to_device(params, shardings), source

  backbone = backbones.build_vit(t.model)
  heads = st.build_heads(t.dino_head, t.ibot_head, t.separate_head, backbone.dtype)
  init = st.model_init(backbone, heads, size)
  if t.workdir:
    params, source = backbones.restore_from_run(t.workdir, init, entry=("teacher",), mesh=mesh,
                                                rules=rules, step=t.step, flag="teacher.workdir")
    return backbone, heads, params, source

  logging.warning("Distilling from a RANDOMLY INITIALISED teacher (teacher.random_init): a test or CPU "
                  "demo of the mechanics only. Set teacher.workdir or teacher.checkpoint for a real one.")
  params, _ = parallel.init_sharded(init, mesh, rules, jax.random.key(config.seed + 2))
  return backbone, heads, params, f"random_init:seed={config.seed + 2}"


def check_config(config):
  """Before anything is loaded: exactly one teacher source, and a student without stochastic depth."""
  t = config.teacher
  if t.workdir and t.checkpoint:
    raise ValueError("Set one of teacher.workdir and teacher.checkpoint, not both.")
  if not (t.workdir or t.checkpoint or t.random_init):
    raise ValueError("No teacher: set --config.teacher.workdir (a dinojax SSL run) or "
                     "--config.teacher.checkpoint (an official DINOv2 training checkpoint .pth).")
  if config.model.get("drop_path_rate", 0.0):
    raise ValueError(f"model.drop_path_rate={config.model.drop_path_rate}: distillation trains the student "
                     "without stochastic depth (DINOv2 §5); set it to 0.")


def check_compatible(config, student, student_heads: st.Heads, teacher, teacher_heads: st.Heads):
  """The student must see the teacher's patch grid (iBOT compares patch by patch) and predict the
  teacher's prototypes."""
  size = config.crops.global_size
  if size % teacher.patch_size or size // teacher.patch_size != size // student.patch_size:
    raise ValueError(f"Global crops of {size} px give the teacher (patch {teacher.patch_size}) and the "
                     f"student (patch {student.patch_size}) different patch grids; the iBOT loss compares "
                     "them patch by patch.")
  for name, s_head, t_head in (("dino", student_heads.dino, teacher_heads.dino),
                               ("ibot", student_heads.ibot, teacher_heads.ibot)):
    if s_head.out_dim != t_head.out_dim:
      raise ValueError(f"{name}.head.prototypes={s_head.out_dim} but the teacher's {name} head has "
                       f"{t_head.out_dim} prototypes; the student predicts the teacher's.")


def make_train_step(config, backbone: ViT, heads: st.Heads, make_tx, t_backbone: ViT,
                    t_heads: st.Heads, mesh, rules):
  """`train_step(state, batch, schedule, teacher) -> (state, metrics)`: one distillation step, pure
  (jit it with the state donated; the teacher's params are an argument, neither donated nor
  returned). `schedule` holds this step's scheduled scalars (`st.schedules` with `config.ema`), an
  input so that runs of any length share one compiled step; `make_tx` is `st.make_optimizer`'s."""
  n_local = config.crops.local_number
  num_patches = (config.crops.global_size // config.model.patch_size) ** 2
  images_per_loss_group = st.loss_group(config, mesh, rules)

  def train_step(state, batch, schedule, teacher):
    step = state["step"]
    b = batch["global_crops"].shape[0]
    # Sample-major layout (b·2, ...), so merging crops into the batch keeps its sharding.
    global_crops = batch["global_crops"].reshape(2 * b, *batch["global_crops"].shape[2:])
    local_crops = batch["local_crops"].reshape(b * n_local, *batch["local_crops"].shape[2:])

    # Teacher: global crops, every patch token, no gradient.
    t_out = t_backbone.apply({"params": teacher["backbone"]}, global_crops)
    t_cls_logits, t_patch_logits = t_heads(
        teacher, t_out["x_norm_clstoken"], t_out["x_norm_patchtokens"].reshape(-1, t_backbone.embed_dim))
    t_cls, t_patch, center = st.teacher_targets(config, t_cls_logits, t_patch_logits, state["center"],
                                                schedule["teacher_temp"])
    t_cls = t_cls.reshape(b, 2, -1)
    t_patch = t_patch.reshape(2 * b, num_patches, -1)

    def loss_fn(params):
      # No masks, and no stochastic depth (drop_path_rate is 0), so no randomness.
      s_global = backbone.apply({"params": params["backbone"]}, global_crops)
      s_global_logits, s_patch_logits = heads(
          params, s_global["x_norm_clstoken"], s_global["x_norm_patchtokens"].reshape(-1, backbone.embed_dim))
      s_local = backbone.apply({"params": params["backbone"]}, local_crops)
      s_local_logits = heads.dino_logits(params, s_local["x_norm_clstoken"])
      terms = st.dino_koleo_losses(config, s_global_logits, s_local_logits, t_cls,
                                   s_global["x_norm_clstoken"], images_per_loss_group)
      # Every patch selected: weight 1/patches per patch, so each of the 2b images counts once.
      patch_weights = jnp.full((2 * b, num_patches), 1.0 / num_patches)
      terms["loss_ibot"] = dino.ibot_loss(s_patch_logits.reshape(2 * b, num_patches, -1), t_patch,
                                          patch_weights, 2 * b, config.dino.student_temp)
      return st.combine_losses(config, terms)

    (loss, logged), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"])
    params, opt, grad_norms = st.update(config, make_tx, schedule, state["params"], state["opt"], grads)
    ema = st.ema_update(state["ema"], params, schedule["momentum"])
    metrics = {"loss": loss, **logged, **schedule, "teacher_entropy": st.target_entropy(t_cls),
               "param_norm": optax.tree.norm(params),
               **{f"grad_norm_{k}": v for k, v in grad_norms.items()}}
    new_state = {"params": params, "ema": ema, "opt": opt, "center": center, "step": step + 1}
    return new_state, metrics

  return train_step


def run(config, workdir: str) -> dict:
  check_config(config)
  os.makedirs(workdir, exist_ok=True)
  num_steps = st.total_steps(config)

  # ------------------------------------------------------------------------------------------------
  # Mesh
  # ------------------------------------------------------------------------------------------------
  mesh, rules = loop.make_mesh(config)

  # ------------------------------------------------------------------------------------------------
  # Data: multi-crop, no masks
  # ------------------------------------------------------------------------------------------------
  crops = config.crops
  dataset, skipped, batch_shardings = st.multi_crop_data(config, mesh, rules, masks=False)

  # ------------------------------------------------------------------------------------------------
  # The frozen teacher
  # ------------------------------------------------------------------------------------------------
  t_backbone, t_heads, teacher, teacher_source = load_teacher(config, mesh, rules)
  logging.info("Teacher (%s): %.2fM params, %.1f%% of bytes on one device", teacher_source,
               sum(x.size for x in jax.tree.leaves(teacher)) / 1e6, 100 * parallel.sharded_fraction(teacher))

  # ------------------------------------------------------------------------------------------------
  # Student and optimizer
  # ------------------------------------------------------------------------------------------------
  backbone = backbones.build_vit(config.model)
  heads = st.build_heads(config.dino.head, config.ibot.head, config.ibot.separate_head, backbone.dtype)
  check_compatible(config, backbone, heads, t_backbone, t_heads)
  # The spare EMA starts as the student; the teacher is not part of the state.
  state, state_shardings, make_tx = st.init_student(config, backbone, heads, mesh, rules, ema_key="ema")
  teacher_shardings = jax.tree.map(lambda x: x.sharding, teacher)

  # ------------------------------------------------------------------------------------------------
  # The update step, and its schedules computed on the devices from the state's step
  # ------------------------------------------------------------------------------------------------
  replicated = NamedSharding(mesh, P())
  train_step = jax.jit(make_train_step(config, backbone, heads, make_tx, t_backbone, t_heads, mesh, rules),
                       in_shardings=(state_shardings, batch_shardings, replicated, teacher_shardings),
                       out_shardings=(state_shardings, None), donate_argnums=0)
  schedule = jax.jit(functools.partial(st.schedules, config, ema=config.ema))

  # ------------------------------------------------------------------------------------------------
  # Checkpoint and resume (or a new phase of an earlier distillation run: its student, EMA and
  # centres with a fresh optimizer and schedule)
  # ------------------------------------------------------------------------------------------------
  ckpt = checkpoint.manager(os.path.join(workdir, "checkpoints"), config.checkpoint.keep,
                            config.checkpoint.every)
  context = loop.Run(config=config, workdir=workdir, mesh=mesh, rules=rules, data_iter=iter(dataset),
                     batch_shardings=batch_shardings, ckpt=ckpt, skipped=skipped,
                     run_meta={"teacher": teacher_source})
  state, start = loop.restore(context, state, state_shardings, init_from=config.init_from,
                              init_keys=("params", "ema", "center"))

  # ------------------------------------------------------------------------------------------------
  # Evaluations of the student's EMA, the final model (`config.evals`: k-NN, pictures)
  # ------------------------------------------------------------------------------------------------
  evaluations = base.from_config(config, backbone=backbone, image_size=crops.global_size, mesh=mesh,
                                 rules=rules)

  # ------------------------------------------------------------------------------------------------
  # The loop, then the export of the final model
  # ------------------------------------------------------------------------------------------------
  state, summary = loop.train(context, state, train_step, start=start, num_steps=num_steps,
                              step_args=lambda state: (schedule(state["step"]), teacher),
                              evaluations=evaluations, eval_params=lambda state: state["ema"]["backbone"])
  loop.export_backbone(state["ema"]["backbone"], os.path.join(workdir, "student_ema.safetensors"))
  if skipped.count:
    logging.warning("%d unreadable images were skipped.", skipped.count)
  return {**summary, "steps": num_steps, "skipped_images": skipped.count, "teacher": teacher_source}
