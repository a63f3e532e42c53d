"""Linear evaluation of a frozen backbone, the DINOv2 paper's protocol (§7.1; the official
`dinov2/eval/linear.py`): a grid of linear classifiers trained together on frozen features, over

- the input (a `Probe`): the class tokens of the last 1 or 4 blocks (after the final norm), alone or
  with the mean of the last block's patch tokens;
- the learning rate: 13 values from 1e-5 to 0.1, each scaled by the global batch / 256;

trained with SGD (momentum 0.9, no weight decay) under a cosine decay to 0, on random resized crops
with flips, the cross-entropies of all classifiers summed. The result is the classifier with the best
validation top-1, written with all the others to `results_eval_linear.json`; `data.test_sets` are
scored at the end by that classifier.

  python -m dinojax.main --config configs/linear_eval.py:vitl14_reg --workdir workdir/linear \
      --config.backbone.checkpoint=dinov2_vitl14_reg4_pretrain.pth

Reads top to bottom: mesh, data, the frozen backbone, the classifier grid and its optimizer, the
update step, evaluation, the loop (checkpoints, exact resume, progress and metrics, as every trainer).
"""

import dataclasses
import functools
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging
from jax.sharding import NamedSharding, PartitionSpec as P

from dinojax import backbones, checkpoint, convert, loop, parallel
from dinojax.data import pipeline, sources
from dinojax.evaluators import base
from dinojax.models import classifier


# ---------------------------------------------------------------------------------------------------
# The classifier grid
# ---------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Probe:
  """One input of the grid (the official `create_linear_input`)."""
  blocks: int
  avgpool: bool

  @property
  def name(self) -> str:
    return f"{self.blocks}_blocks_avgpool_{self.avgpool}"

  def features(self, outputs) -> jax.Array:
    return classifier.linear_input(outputs, self.blocks, self.avgpool)


def make_probes(n_last_blocks, avgpool) -> tuple[Probe, ...]:
  return tuple(Probe(int(n), bool(a)) for n in n_last_blocks for a in avgpool)


def scaled_learning_rates(learning_rates, global_batch: int) -> np.ndarray:
  """The official `scale_lr`: each learning rate × global batch / 256."""
  return np.asarray(learning_rates, np.float32) * global_batch / 256.0


def classifier_name(probe: Probe, lr: float) -> str:
  """The official name (`classifier_4_blocks_avgpool_True_lr_0_00250`), so results read as theirs;
  a rate that five decimals do not hold (small batches scale 1e-5 below 1e-5) in `2_50e-06` form,
  where the official names would collide."""
  text = f"{lr:.5f}"
  if abs(float(text) - lr) > 1e-3 * lr:
    text = f"{lr:.2e}"
  return f"classifier_{probe.name}_lr_{text}".replace(".", "_")


def classifier_grid(probes, lrs) -> dict:
  """{classifier name: (probe, index of its learning rate)}, in the official order."""
  return {classifier_name(p, lr): (p, i) for p in probes for i, lr in enumerate(lrs)}


def init_classifiers(rng, dims: dict, num_lrs: int, num_classes: int) -> dict:
  """{probe name: {"kernel" (lrs, dim, classes), "bias" (lrs, classes)}}: a linear layer per (probe,
  learning rate), weights N(0, 0.01²) and biases 0 (the official init)."""
  keys = jax.random.split(rng, len(dims))
  return {name: {"kernel": 0.01 * jax.random.normal(key, (num_lrs, dim, num_classes)),
                 "bias": jnp.zeros((num_lrs, num_classes))}
          for key, (name, dim) in zip(keys, sorted(dims.items()))}


def classifier_logits(classifiers: dict, features: jax.Array) -> jax.Array:
  """(lrs, B, classes): the logits of one probe's classifiers."""
  return jnp.einsum("bd,ldc->lbc", features, classifiers["kernel"]) + classifiers["bias"][:, None]


def grid_loss(classifiers: dict, features: dict, labels: jax.Array) -> jax.Array:
  """The sum over every classifier of its batch-mean cross-entropy, so each one's gradient is that
  of its own loss (the official sum of `CrossEntropyLoss`es)."""
  total = jnp.zeros(())
  for name, params in classifiers.items():
    logits = classifier_logits(params, features[name])
    total += optax.softmax_cross_entropy_with_integer_labels(logits, labels[None]).mean(axis=1).sum()
  return total


def make_optimizer(total_steps: int, momentum: float) -> optax.GradientTransformation:
  """SGD with momentum, no weight decay, the learning rate decayed from 1 to 0 along a cosine over
  the run (torch's `CosineAnnealingLR`). Each classifier's own rate multiplies its gradient first
  (`scale_by_learning_rates`): momentum is linear, so this is exactly SGD with a rate per group."""
  return optax.sgd(optax.cosine_decay_schedule(1.0, total_steps), momentum=momentum)


def scale_by_learning_rates(grads: dict, lrs: jax.Array) -> dict:
  return jax.tree.map(lambda g: g * lrs.reshape(-1, *[1] * (g.ndim - 1)), grads)


def sgd_update(tx: optax.GradientTransformation, lrs: jax.Array, classifiers: dict, opt_state,
               features: dict, labels: jax.Array) -> tuple[dict, object, jax.Array]:
  """One step of every classifier on one batch of features: (classifiers, opt_state, summed loss)."""
  loss, grads = jax.value_and_grad(grid_loss)(classifiers, features, labels)
  updates, opt_state = tx.update(scale_by_learning_rates(grads, lrs), opt_state, classifiers)
  return optax.apply_updates(classifiers, updates), opt_state, loss


def correct_counts(classifiers: dict, features: dict, labels: jax.Array, valid: jax.Array,
                   top_k: int) -> dict:
  """{probe name: (top-1 hits, top-k hits)}, each (lrs,), over the valid rows of a batch."""
  counts = {}
  for name, params in classifiers.items():
    _, predicted = jax.lax.top_k(classifier_logits(params, features[name]), top_k)
    hits = (predicted == labels[None, :, None]) & valid[None, :, None]
    counts[name] = (hits[..., 0].sum(axis=1), hits.any(axis=-1).sum(axis=1))
  return counts


def best_classifier(accuracies: dict) -> tuple[str, float]:
  """(name, top-1) of the best classifier; the first listed wins a tie, as officially."""
  name = max(accuracies, key=lambda k: accuracies[k]["top1"])
  return name, accuracies[name]["top1"]


# ---------------------------------------------------------------------------------------------------
# The job
# ---------------------------------------------------------------------------------------------------
def total_steps(config) -> int:
  return config.total_steps or config.epochs * config.steps_per_epoch


def run(config, workdir: str) -> dict:
  os.makedirs(workdir, exist_ok=True)
  num_steps = total_steps(config)
  probes = make_probes(config.linear.n_last_blocks, config.linear.avgpool)
  if not probes or not len(config.linear.learning_rates):
    raise ValueError("linear.n_last_blocks, linear.avgpool and linear.learning_rates must each list "
                     "at least one value.")
  if min(p.blocks for p in probes) < 1:
    raise ValueError(f"linear.n_last_blocks={tuple(config.linear.n_last_blocks)} must be block counts ≥ 1.")

  # ------------------------------------------------------------------------------------------------
  # Mesh
  # ------------------------------------------------------------------------------------------------
  mesh, rules = loop.make_mesh(config)
  replicated = NamedSharding(mesh, P())

  # ------------------------------------------------------------------------------------------------
  # Data: labelled training crops; the evaluation transform on the validation split
  # ------------------------------------------------------------------------------------------------
  train_source = sources.make_source(config.data.source, config.data.train_split)
  val_source = sources.make_source(config.data.source, config.data.val_split)
  num_classes = train_source.num_classes
  dataset, skipped = pipeline.classification_dataset(
      train_source, config.batch_size, config.image_size, config.seed, tuple(config.linear.crop_scale),
      jax.process_index(), jax.process_count(), config.data.threads)
  batch_shardings = {"image": parallel.batch_sharding(mesh, rules, 4),
                     "label": parallel.batch_sharding(mesh, rules, 1)}

  # ------------------------------------------------------------------------------------------------
  # The frozen backbone: the last blocks' tokens, as every probe reads them
  # ------------------------------------------------------------------------------------------------
  backbone = backbones.build_backbone(config)
  depth = max(p.blocks for p in probes)
  if depth > backbone.depth:
    raise ValueError(f"linear.n_last_blocks asks for {depth} blocks; the backbone has {backbone.depth}.")
  if config.image_size % backbone.patch_size:
    raise ValueError(f"image_size={config.image_size} is not a multiple of the backbone's patch size "
                     f"{backbone.patch_size}.")
  backbone_params, backbone_source = backbones.init_backbone(config, backbone, mesh, rules)
  logging.info("Backbone (%s): %.2fM params", backbone_source,
               sum(x.size for x in jax.tree.leaves(backbone_params)) / 1e6)

  def features(backbone_params, images):
    outputs = backbone.apply({"params": backbone_params}, images, depth, return_class_token=True,
                             method=backbone.get_intermediate_layers)
    return {p.name: p.features(outputs) for p in probes}

  # ------------------------------------------------------------------------------------------------
  # The classifier grid and its optimizer (replicated: a few hundred MB even for ViT-g)
  # ------------------------------------------------------------------------------------------------
  images = jax.ShapeDtypeStruct((1, config.image_size, config.image_size, 3), jnp.float32)
  dims = {k: v.shape[-1] for k, v in jax.eval_shape(features, backbone_params, images).items()}
  lrs = scaled_learning_rates(config.linear.learning_rates, config.batch_size)
  tx = make_optimizer(num_steps, config.linear.momentum)
  schedule = optax.cosine_decay_schedule(1.0, num_steps)

  def init_state(rng):
    params = init_classifiers(rng, dims, len(lrs), num_classes)
    return {"params": params, "opt": tx.init(params), "step": jnp.zeros((), jnp.int32)}

  state = jax.jit(init_state, out_shardings=replicated)(jax.random.key(config.seed))
  state_shardings = jax.tree.map(lambda x: x.sharding, state)

  # ------------------------------------------------------------------------------------------------
  # The update step
  # ------------------------------------------------------------------------------------------------
  def train_step(backbone_params, state, batch):
    feats = features(backbone_params, batch["image"])
    params, opt, loss = sgd_update(tx, jnp.asarray(lrs), state["params"], state["opt"], feats,
                                   batch["label"])
    new_state = {"params": params, "opt": opt, "step": state["step"] + 1}
    return new_state, {"loss": loss, "lr_scale": schedule(state["step"])}

  step_fn = jax.jit(train_step, in_shardings=(None, state_shardings, batch_shardings),
                    out_shardings=(state_shardings, replicated), donate_argnums=1)
  step_fn = functools.partial(step_fn, backbone_params)

  # ------------------------------------------------------------------------------------------------
  # Checkpoint and resume (the backbone is not in the state: it is read again from its source, and
  # the source is saved with every checkpoint so a resume cannot switch backbones)
  # ------------------------------------------------------------------------------------------------
  ckpt = checkpoint.manager(os.path.join(workdir, "checkpoints"), config.checkpoint.keep,
                            config.checkpoint.every)
  context = loop.Run(config=config, workdir=workdir, mesh=mesh, rules=rules, data_iter=iter(dataset),
                     batch_shardings=batch_shardings, ckpt=ckpt, skipped=skipped,
                     run_meta={"backbone": backbone_source})
  state, start = loop.restore(context, state, state_shardings)

  # ------------------------------------------------------------------------------------------------
  # Evaluation: every classifier on the validation split, the best by top-1
  # ------------------------------------------------------------------------------------------------
  top_k = min(5, num_classes)
  grid = classifier_grid(probes, lrs)
  eval_shardings = {**batch_shardings, "valid": parallel.batch_sharding(mesh, rules, 1)}
  count = jax.jit(lambda bp, classifiers, batch: correct_counts(
      classifiers, features(bp, batch["image"]), batch["label"], batch["valid"], top_k),
      out_shardings=replicated)

  def accuracies_on(source, what: str, state) -> tuple[dict, int]:
    """{classifier: {"top1", "topK"}} on every readable image of `source` (`what` names it in
    errors), and their count."""
    totals, seen = None, 0
    for local in pipeline.eval_dataset(source, config.eval.batch_size // jax.process_count(),
                                       config.image_size, jax.process_index(), jax.process_count()):
      batch = loop.global_batch(local, eval_shardings)
      hits = jax.device_get(count(backbone_params, state["params"], batch))
      totals = hits if totals is None else jax.tree.map(np.add, totals, hits)
      seen += int(jax.device_get(batch["valid"].sum()))
    if not seen:
      raise ValueError(f"No readable image in {what}.")
    return {name: {"top1": float(totals[p.name][0][i]) / seen,
                   f"top{top_k}": float(totals[p.name][1][i]) / seen} for name, (p, i) in grid.items()}, seen

  best = {}  # the best classifier on the validation split at the last evaluation

  def evaluate(state) -> dict:
    accuracies, seen = accuracies_on(val_source, f"split {config.data.val_split!r} of {config.data.source!r}",
                                     state)
    name, top1 = best_classifier(accuracies)
    best.update(name=name)
    write_results(workdir, int(state["step"]), name, accuracies, seen, backbone_source)
    probe, i = grid[name]
    write_head(workdir, jax.tree.map(lambda x: x[i], state["params"][probe.name]))
    logging.info("Best classifier: %s, top-1 %.2f%%", name, 100 * top1)
    return {"linear_top1": top1, f"linear_top{top_k}": accuracies[name][f"top{top_k}"]}

  # ------------------------------------------------------------------------------------------------
  # The loop, then the classifier chosen on the validation split on each test set (the official
  # `--test-datasets`, e.g. ImageNet-V2)
  # ------------------------------------------------------------------------------------------------
  state, summary = loop.train(context, state, step_fn, start=start, num_steps=num_steps,
                              evaluations=[base.Evaluation("linear", evaluate, every=config.eval.every)])
  if skipped.count:
    logging.warning("%d unreadable images were skipped.", skipped.count)
  if config.data.test_sets:
    with parallel.activation_sharding(mesh, rules):
      if not best:  # a finished run started again: its last evaluation, once more
        evaluate(state)
      tests = {}
      for source_name, split in config.data.test_sets:
        accuracies, seen = accuracies_on(sources.make_source(source_name, split),
                                         f"test set {source_name!r} split {split!r}", state)
        tests[f"{source_name}:{split}"] = {**accuracies[best["name"]], "images": seen}
    add_test_results(workdir, best["name"], tests)
    test_metrics = {f"linear_top1/{name}": r["top1"] for name, r in tests.items()}
    loop.MetricWriter(workdir).write(num_steps, test_metrics)
    loop.log_metrics(num_steps, test_metrics)
    summary.update(test_metrics)
  return {**summary, "steps": num_steps, "skipped_images": skipped.count}


def write_results(workdir: str, step: int, best: str, accuracies: dict, images: int,
                  backbone: str) -> None:
  """WORKDIR/results_eval_linear.json (process 0): the best classifier and every classifier's
  accuracies at `step`, rewritten at each evaluation."""
  if jax.process_index() != 0:
    return
  results = {"step": step, "backbone": backbone, "validation_images": images,
             "best_classifier": {"name": best, "accuracy": accuracies[best]["top1"]},
             "classifiers": accuracies}
  with open(os.path.join(workdir, "results_eval_linear.json"), "w") as f:
    json.dump(results, f, indent=1)


def add_test_results(workdir: str, best: str, tests: dict) -> None:
  """Adds {test set: the accuracies of `best` (chosen on the validation split)} to
  WORKDIR/results_eval_linear.json (process 0)."""
  if jax.process_index() != 0:
    return
  path = os.path.join(workdir, "results_eval_linear.json")
  with open(path) as f:
    results = json.load(f)
  results["test_sets"] = {"classifier": best, **tests}
  with open(path, "w") as f:
    json.dump(results, f, indent=1)


def write_head(workdir: str, head: dict) -> None:
  """WORKDIR/best_linear_head.safetensors (process 0): the best classifier as a PyTorch `nn.Linear`
  state dict, the layout of the released heads (`hub.dinov2_classifier(..., head=...)` with the
  blocks and avgpool of its name loads it)."""
  if jax.process_index() == 0:
    convert.save_state_dict(convert.classifier_head_to_state_dict(jax.device_get(head)),
                            os.path.join(workdir, "best_linear_head.safetensors"))
