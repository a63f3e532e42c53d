"""Talk2DINO training (Barsellotti et al., "Talking to DINO", 2025, §3.2): learn the map ψ from CLIP's
text space into DINOv2's patch space on image–caption pairs; DINOv2 and CLIP stay frozen.

Each image is represented by one embedding per attention head of the backbone's last block (patch
tokens averaged with that head's CLS attention); a caption, through CLIP's text tower and ψ, is
compared with the head of its own image it matches best, and a symmetric InfoNCE over the global
batch (all devices and hosts) with a fixed temperature pulls pairs together.

Reads top to bottom: the update step (`make_train_step`), then `run`: mesh, data, frozen models, ψ
and its optimizer, checkpoint and resume, the loop. Everything numeric comes from the config
(`configs/talk2dino_vitb14reg.py`).
"""

import math
import os

import jax
import jax.numpy as jnp
import optax
from absl import logging

from dinojax import backbones, checkpoint, convert, hub, loop, optim, parallel
from dinojax.data import captions
from dinojax.data.clip_tokenizer import tokenize
from dinojax.losses import talk2dino as t2d_loss
from dinojax.models import talk2dino


def total_steps(config) -> int:
  return config.total_steps or config.optim.epochs * config.steps_per_epoch


def make_train_step(config, backbone, text_encoder, projection, tx):
  """`train_step(state, batch, frozen) -> (state, metrics)`: one step of ψ, pure (jit it with the
  state donated). `frozen` holds the frozen towers' params ({"backbone", "text"}); `tx` is ψ's
  optimizer (a constant lr, `config.optim.lr`)."""
  logit_scale = math.log(1.0 / config.temperature)  # the InfoNCE's fixed temperature

  def train_step(state, batch, frozen):
    # Frozen towers: plain forward passes, outside the differentiated function.
    out = backbone.apply(frozen["backbone"], batch["image"], return_cls_attention=True)
    heads = talk2dino.head_pooled_embeddings(out["x_norm_patchtokens"], out["cls_attention_logits"],
                                             1 + backbone.num_register_tokens)
    text = text_encoder.apply(frozen["text"], batch["tokens"])["text_embeds"]
    heads, text = jax.lax.stop_gradient((heads, text))

    def loss_fn(params):
      # Global (B, B) similarities: the arrays span the whole mesh, so every caption is contrasted
      # with every image of the global batch whatever the device count.
      similarity = t2d_loss.head_pooled_similarity(projection.apply({"params": params}, text), heads)
      return t2d_loss.infonce_loss(similarity, logit_scale), similarity

    (loss, similarity), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"])
    updates, opt = tx.update(grads, state["opt"], state["params"])
    params = optax.apply_updates(state["params"], updates)
    diagonal = jnp.arange(similarity.shape[0])
    metrics = {
        "loss": loss,
        # In-batch retrieval: how often a caption's best image (and an image's best caption) is its own.
        "text_to_image_top1": (similarity.argmax(axis=1) == diagonal).mean(),
        "image_to_text_top1": (similarity.argmax(axis=0) == diagonal).mean(),
        "lr": jnp.asarray(config.optim.lr, jnp.float32),
        "grad_norm": optax.tree.norm(grads),
        "param_norm": optax.tree.norm(params),
        # Constant over the run (and across resumes) when the towers really are frozen.
        "frozen_norm": optax.tree.norm(frozen),
    }
    return {"params": params, "opt": opt, "step": state["step"] + 1}, metrics

  return train_step


def run(config, workdir: str) -> dict:
  os.makedirs(workdir, exist_ok=True)
  num_steps = total_steps(config)

  # ------------------------------------------------------------------------------------------------
  # Mesh
  # ------------------------------------------------------------------------------------------------
  mesh, rules = loop.make_mesh(config)

  # ------------------------------------------------------------------------------------------------
  # Frozen models: DINOv2 backbone and CLIP text tower (released weights, or random for tiny runs)
  # ------------------------------------------------------------------------------------------------
  m = config.model
  frozen = hub.talk2dino(m.backbone, m.backbone_checkpoint, m.clip_checkpoint, seed=config.seed,
                        backbone_overrides=m.backbone_overrides.to_dict(),
                        text_overrides=m.text_overrides.to_dict())
  missing = [n for n in ("backbone_checkpoint", "clip_checkpoint") if not m[n]]
  if missing:
    logging.warning("No %s: randomly initialised frozen parts (a pipeline check, not Talk2DINO).",
                    ", ".join(missing))
  backbone, text_encoder = frozen.backbone, frozen.text_encoder
  size = config.image_size
  if size % backbone.patch_size:
    raise ValueError(f"image_size={size} is not a multiple of the backbone's patch size "
                     f"{backbone.patch_size}.")
  context_length = text_encoder.context_length
  frozen_params = {
      "backbone": backbones.place(backbone, frozen.backbone_params, jnp.zeros((1, size, size, 3)), mesh,
                                  rules),
      "text": backbones.place(text_encoder, frozen.text_params, jnp.zeros((1, context_length), jnp.int32),
                              mesh, rules),
  }

  # ------------------------------------------------------------------------------------------------
  # Data: one caption per image visit, tokenised for CLIP
  # ------------------------------------------------------------------------------------------------
  source = captions.make_caption_source(config.data.source, config.data.split)
  dataset, skipped = captions.caption_dataset(
      source, config.batch_size, size, config.seed, lambda text: tokenize([text], context_length)[0],
      jax.process_index(), jax.process_count(), config.data.threads)
  batch_shardings = {"image": parallel.batch_sharding(mesh, rules, 4),
                     "tokens": parallel.batch_sharding(mesh, rules, 2),
                     "label": parallel.batch_sharding(mesh, rules, 1)}

  # ------------------------------------------------------------------------------------------------
  # ψ and its optimizer (the official: Adam, constant lr, no weight decay, fixed temperature)
  # ------------------------------------------------------------------------------------------------
  projection = talk2dino.TextToPatchProjection(backbone.embed_dim, config.projection.hidden_layers,
                                               config.projection.act)
  params, param_shardings = parallel.init_sharded(
      lambda k: projection.init(k, jnp.zeros((1, text_encoder.embed_dim)))["params"], mesh, rules,
      jax.random.key(config.seed))
  o = config.optim
  tx = optax.adam(o.lr, b1=o.adam_beta1, b2=o.adam_beta2, eps=o.adam_eps)

  state = jax.jit(lambda p: {"params": p, "opt": optim.sharded_init(tx, p, param_shardings),
                             "step": jnp.zeros((), jnp.int32)})(params)
  state_shardings = jax.tree.map(lambda x: x.sharding, state)
  frozen_shardings = jax.tree.map(lambda x: x.sharding, frozen_params)
  logging.info("Trainable ψ: %.3fM params; frozen: %.1fM",
               sum(x.size for x in jax.tree.leaves(params)) / 1e6,
               sum(x.size for x in jax.tree.leaves(frozen_params)) / 1e6)

  # ------------------------------------------------------------------------------------------------
  # The update step
  # ------------------------------------------------------------------------------------------------
  train_step = jax.jit(make_train_step(config, backbone, text_encoder, projection, tx),
                       in_shardings=(state_shardings, batch_shardings, frozen_shardings),
                       out_shardings=(state_shardings, None), donate_argnums=0)

  # ------------------------------------------------------------------------------------------------
  # Checkpoint and resume
  # ------------------------------------------------------------------------------------------------
  ckpt = checkpoint.manager(os.path.join(workdir, "checkpoints"), config.checkpoint.keep,
                            config.checkpoint.every)
  # The frozen towers are not checkpointed: resuming must read the same ones.
  context = loop.Run(config=config, workdir=workdir, mesh=mesh, rules=rules, data_iter=iter(dataset),
                     batch_shardings=batch_shardings, ckpt=ckpt, skipped=skipped,
                     run_meta={"backbone_checkpoint": m.backbone_checkpoint,
                               "clip_checkpoint": m.clip_checkpoint})
  state, start = loop.restore(context, state, state_shardings)

  # ------------------------------------------------------------------------------------------------
  # The loop
  # ------------------------------------------------------------------------------------------------
  state, summary = loop.train(context, state, train_step, start=start, num_steps=num_steps,
                              step_args=lambda state: (frozen_params,))
  if jax.process_index() == 0:  # ψ in the official key layout, for `--projection` and the official code
    convert.save_state_dict(convert.talk2dino_to_state_dict(jax.device_get(state["params"])),
                            os.path.join(workdir, "projection.safetensors"))
  return {**summary, "steps": num_steps, "skipped_images": skipped.count}

