"""dino.txt (Jose et al., "DINOv2 Meets Text", 2025): a text tower trained from scratch and a few vision
blocks trained on top of a frozen DINOv2, aligned by a contrastive loss over the global batch.

Reads top to bottom: the optimizer and the update step (`make_train_step`), then `run`: mesh,
tokenizer, data, models, frozen backbone, sharded init, checkpoint and resume, zero-shot and
retrieval evaluation, the loop, and the export of the trained head and text tower in the released
files' layout. Everything numeric comes from the config
(`configs/dinotxt_vitl14.py`). The frozen backbone is never part of `params`: it gets no
gradient, no optimizer state and no checkpoint (it is re-read from its source on resume);
`backbone.freeze=False` trains it too (a full CLIP-style step, for comparison).
"""

import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding, PartitionSpec as P

from dinojax import backbones, checkpoint, convert, loop, optim, parallel
from dinojax.data import captions
from dinojax.data.tokenizer import build_tokenizer
from dinojax.evaluators import base
from dinojax.losses import contrastive
from dinojax.models.dinotxt import build_towers, encode_image
from dinojax.ops.numerics import l2_normalize


def export_towers(params: dict, workdir: str) -> None:
  """The trained head and text tower in the layout of the released files (`vision_head.safetensors`,
  `text_encoder.safetensors`: what `hub.dinotxt` and the official `DinoTxt` load), gathered from the
  mesh; process 0 writes."""
  towers = jax.tree.map(lambda x: np.asarray(multihost_utils.process_allgather(x, tiled=True)),
                        {"vision_head": params["vision_head"], "text": params["text"]})
  if jax.process_index() == 0:
    convert.save_state_dict(convert.dinotxt_vision_head_to_state_dict(towers["vision_head"]),
                            os.path.join(workdir, "vision_head.safetensors"))
    convert.save_state_dict(convert.dinotxt_text_encoder_to_state_dict(towers["text"]),
                            os.path.join(workdir, "text_encoder.safetensors"))


def schedules(config, step: jax.Array) -> dict:
  """Linear warmup then cosine decay of the learning rate (the official `linear_warmup_cosine_decay`)."""
  o = config.optim
  return {"lr": optim.cosine_schedule(step, o.lr, o.min_lr, config.total_steps, o.warmup_steps)}


def make_optimizer(config, params):
  """`make_tx(lr, weight_decay)`: AdamW over `params`, the config's decay exemptions, no per-layer
  lr and no frozen last layer."""
  ones = jax.tree.map(lambda _: 1.0, params)
  wd_mult = optim.wd_multipliers(params, tuple(config.optim.no_weight_decay))
  not_last = jax.tree.map(lambda _: False, params)

  def make_tx(lr, weight_decay):
    return optim.adamw(lr, weight_decay, 0.0, ones, wd_mult, not_last, config.optim.adamw_beta1,
                       config.optim.adamw_beta2)

  return make_tx


def image_embeddings(backbone, head, params, images, train=False, rng=None):
  """Unit image embeddings (B, embed_dim): [CLS ; mean of patches] of the head. `params` holds the
  backbone's too (`{**frozen, **params}`)."""
  image = encode_image(backbone, params["backbone"], head, params["vision_head"], images, train, rng)
  return l2_normalize(image["image_embeds"])


def text_embeddings(text, params, token_ids):
  """Unit caption embeddings (B, embed_dim) of the text tower."""
  return l2_normalize(text.apply({"params": params["text"]}, token_ids)["text_embeds"])


def make_train_step(config, backbone, head, text, make_tx, mesh, rules):
  """`train_step(state, batch, schedule, frozen) -> (state, metrics)`: one contrastive step, pure
  (jit it with the state donated). `schedule` holds this step's lr (`schedules`), an input so that
  runs of any length share one compiled step; `frozen` the params that get no gradient (the
  backbone's, unless `backbone.freeze=False` put them in the state)."""
  kind = config.loss.kind
  batch_axes = dict(rules)["batch"]

  def train_step(state, batch, schedule, frozen):
    step = state["step"]

    def loss_fn(params):
      rng = jax.random.fold_in(jax.random.key(config.seed + 1), step)
      image = image_embeddings(backbone, head, {**frozen, **params}, batch["image"], True, rng)
      txt = text_embeddings(text, params, batch["tokens"])
      loss = contrastive.contrastive_loss(image, txt, params["logit_scale"], params.get("logit_bias"),
                                          kind, mesh=mesh, batch_axes=batch_axes)
      # Accuracy of matching each image to its own caption within the global batch.
      matches = (jnp.argmax(image @ txt.T, axis=-1) == jnp.arange(image.shape[0])).mean()
      return loss, matches

    (loss, matches), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"])
    updates, opt = make_tx(schedule["lr"], config.optim.weight_decay).update(grads, state["opt"],
                                                                              state["params"])
    params = optax.apply_updates(state["params"], updates)
    if kind == "softmax":
      params["logit_scale"] = contrastive.clip_logit_scale(params["logit_scale"])
    metrics = {"loss": loss, **schedule, "batch_match_accuracy": matches,
               "temperature": jnp.exp(-params["logit_scale"]),
               "grad_norm": optax.tree.norm(grads), "param_norm": optax.tree.norm(params)}
    if kind == "sigmoid":
      metrics["logit_bias"] = params["logit_bias"]
    return {"params": params, "opt": opt, "step": step + 1}, metrics

  return train_step


def run(config, workdir: str) -> dict:
  os.makedirs(workdir, exist_ok=True)
  num_steps = config.total_steps
  kind = config.loss.kind
  if kind not in contrastive.LOSSES:
    raise ValueError(f"Unknown loss.kind {kind!r}; choose one of {contrastive.LOSSES}.")

  # ------------------------------------------------------------------------------------------------
  # Mesh
  # ------------------------------------------------------------------------------------------------
  mesh, rules = loop.make_mesh(config)

  # ------------------------------------------------------------------------------------------------
  # Tokenizer and data
  # ------------------------------------------------------------------------------------------------
  train_source = captions.make_caption_source(config.data.source, config.data.split)
  tokenizer = build_tokenizer(config, workdir, train_source)
  crop_scale = tuple(config.data.crop_scale) if config.data.crop_scale else None
  dataset, skipped = captions.caption_dataset(
      train_source, config.batch_size, config.image_size, config.seed, tokenizer,
      jax.process_index(), jax.process_count(), config.data.threads, crop_scale)
  batch_shardings = {"image": parallel.batch_sharding(mesh, rules, 4),
                     "tokens": parallel.batch_sharding(mesh, rules, 2),
                     "label": parallel.batch_sharding(mesh, rules, 1)}

  # ------------------------------------------------------------------------------------------------
  # Models, the frozen backbone, and the optimizer
  # ------------------------------------------------------------------------------------------------
  backbone = backbones.build_backbone(config)
  if config.image_size % backbone.patch_size:
    raise ValueError(f"image_size={config.image_size} is not a multiple of the backbone's patch size "
                     f"{backbone.patch_size}.")
  head, text = build_towers(config, backbone, tokenizer)
  backbone_params, backbone_source = backbones.init_backbone(config, backbone, mesh, rules)
  freeze = config.backbone.freeze
  num_tokens = 1 + backbone.num_register_tokens + (config.image_size // backbone.patch_size) ** 2

  def init(rng):
    k_head, k_text = jax.random.split(rng)
    tokens = jnp.zeros((1, num_tokens, backbone.embed_dim))
    params = {"vision_head": head.init(k_head, tokens, 1 + backbone.num_register_tokens)["params"],
              "text": text.init(k_text, jnp.zeros((1, config.text.context_length), jnp.int32))["params"],
              "logit_scale": jnp.full((), contrastive.INIT_LOGIT_SCALE[kind], jnp.float32)}
    if kind == "sigmoid":
      params["logit_bias"] = jnp.full((), contrastive.INIT_LOGIT_BIAS, jnp.float32)
    return params

  params, _ = parallel.init_sharded(init, mesh, rules, jax.random.key(config.seed),
                                    tolerance=config.sharding_tolerance)
  if freeze:
    frozen = {"backbone": backbone_params}
  else:
    frozen, params = {}, {**params, "backbone": backbone_params}
  make_tx = make_optimizer(config, params)

  # ------------------------------------------------------------------------------------------------
  # Sharded init of the whole state (the frozen backbone stays outside it)
  # ------------------------------------------------------------------------------------------------
  param_shardings = jax.tree.map(lambda x: x.sharding, params)
  state = jax.jit(lambda p: {"params": p,
                             "opt": optim.sharded_init(make_tx(0.0, 0.0), p, param_shardings),
                             "step": jnp.zeros((), jnp.int32)})(params)
  state_shardings = jax.tree.map(lambda x: x.sharding, state)
  frozen_shardings = jax.tree.map(lambda x: x.sharding, frozen)
  count = lambda tree: sum(x.size for x in jax.tree.leaves(tree)) / 1e6
  logging.info("Params: %.2fM trained, %.2fM frozen (backbone %s)", count(params), count(frozen),
               backbone_source)

  # ------------------------------------------------------------------------------------------------
  # The update step, and its schedule computed on the devices from the state's step
  # ------------------------------------------------------------------------------------------------
  train_step = jax.jit(make_train_step(config, backbone, head, text, make_tx, mesh, rules),
                       in_shardings=(state_shardings, batch_shardings, NamedSharding(mesh, P()),
                                     frozen_shardings),
                       out_shardings=(state_shardings, None), donate_argnums=0)
  schedule = jax.jit(functools.partial(schedules, config))

  # ------------------------------------------------------------------------------------------------
  # Checkpoint and resume
  # ------------------------------------------------------------------------------------------------
  ckpt = checkpoint.manager(os.path.join(workdir, "checkpoints"), config.checkpoint.keep,
                            config.checkpoint.every)
  if config.eval_only and checkpoint.latest_step(ckpt) is None:
    raise FileNotFoundError(f"eval_only: no checkpoint to evaluate in {workdir}/checkpoints.")
  # The frozen parts are not checkpointed: resuming must read the same ones.
  context = loop.Run(config=config, workdir=workdir, mesh=mesh, rules=rules, data_iter=iter(dataset),
                     batch_shardings=batch_shardings, ckpt=ckpt, skipped=skipped,
                     run_meta={"backbone": backbone_source, "tokenizer": tokenizer.description})
  state, start = loop.restore(context, state, state_shardings)

  # ------------------------------------------------------------------------------------------------
  # Evaluations (`config.evals`: zero-shot classification, image↔text retrieval, pictures of the head)
  # ------------------------------------------------------------------------------------------------
  evaluations = base.from_config(
      config, image_size=config.image_size, tokenizer=tokenizer,
      embed_images=jax.jit(functools.partial(image_embeddings, backbone, head)),
      embed_texts=jax.jit(functools.partial(text_embeddings, text)), backbone=backbone,
      vision_head=head, backbone_frozen=freeze, mesh=mesh, rules=rules)
  eval_params = lambda state: {**frozen, **state["params"]}

  if config.eval_only:
    with parallel.activation_sharding(mesh, rules):
      results = loop.evaluate(evaluations, eval_params(state), start, loop.MetricWriter(workdir))
    return {**results, "steps": start}

  # ------------------------------------------------------------------------------------------------
  # The loop
  # ------------------------------------------------------------------------------------------------
  state, summary = loop.train(context, state, train_step, start=start, num_steps=num_steps,
                              step_args=lambda state: (schedule(state["step"]), frozen),
                              evaluations=evaluations, eval_params=eval_params)
  export_towers(state["params"], workdir)
  if skipped.count:
    logging.warning("%d unreadable images were skipped.", skipped.count)
  return {**summary, "steps": num_steps, "skipped_images": skipped.count}
