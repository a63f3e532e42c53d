"""Logistic-regression evaluation of frozen features, the DINOv2 paper's protocol for its linear
results on other classification benchmarks (§7.1, Table 10; the official
`dinov2/eval/log_regression.py`, which fits cuML's `LogisticRegression`):

- features: the backbone's CLS token after the final norm, not L2-normalised, of the evaluation crop
  (resize the short side to 224, centre-crop 224);
- the classifier: multinomial logistic regression (binary with two classes), an L2 penalty on the
  weights but not the bias, i.e. scikit-learn's objective C·Σᵢ CE + ½‖W‖², solved by L-BFGS (memory
  5, up to 50 line-search steps, 1000 iterations, tolerance 1e-12) in float64;
- C: 45 values 10^linspace(-6, 5), each fitted on the training split and scored on the fine-tuning
  split (a held-out random 10 % of the training split unless the dataset has one); the best C by
  top-1 is fitted again on both and scored on the test (validation) split.

  python -m dinojax.main --config configs/log_regression_eval.py:vitl14_reg --workdir workdir/logreg \
      --config.backbone.checkpoint=dinov2_vitl14_reg4_pretrain.pth \
      --config.data.source=tfds:food101 --config.data.val_split=validation

Resumable: the extracted features are kept in WORKDIR (`features_<split>.npz`) and each fitted C's
score in `log_regression_sweep.json`, so a run stopped mid-sweep continues at the next C.
"""

import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging
from jax.sharding import NamedSharding, PartitionSpec as P

from dinojax import convert, loop, parallel
from dinojax.data import sources
from dinojax.evaluators import knn
from dinojax.features import extract_features
from dinojax.models.vit import ViT
from dinojax.ops import platform

METRICS = ("mean_accuracy", "mean_per_class_accuracy")


def c_values(powers) -> np.ndarray:
  """The sweep 10^linspace(start, stop, num) (official: (-6, 5, 45)), in float32 as the official
  computes it."""
  start, stop, num = powers
  return (np.float32(10) ** np.linspace(start, stop, int(num), dtype=np.float32)).astype(np.float64)


# ---------------------------------------------------------------------------------------------------
# The classifier and its solver
# ---------------------------------------------------------------------------------------------------
def logistic_objective(params: dict, features: jax.Array, labels: jax.Array, weights: jax.Array,
                       inverse_c: float | jax.Array) -> jax.Array:
  """The mean cross-entropy plus ‖W‖²/(2·C·n): scikit-learn's and cuML's objective divided by n
  (same minimiser). One output column is binary logistic regression (labels 0/1); `weights` zero out
  padding rows."""
  logits = features @ params["w"] + params["b"]
  if logits.shape[1] == 1:
    z = logits[:, 0]
    losses = jax.nn.softplus(z) - labels * z
  else:
    losses = jax.nn.logsumexp(logits, -1) - jnp.take_along_axis(logits, labels[:, None], -1)[:, 0]
  n = jnp.sum(weights)
  return jnp.sum(weights * losses) / n + 0.5 * inverse_c / n * jnp.sum(params["w"] ** 2)


def _lbfgs(features, labels, weights, inverse_c, outputs, max_iter, tol, memory, linesearch_steps,
           replicated):
  """L-BFGS from zero weights until `max_iter` iterations or cuML's stopping rules: ‖∇f‖ ≤
  tol·max(f, tol), or |Δf| ≤ 0.01·tol·max(f, tol). The result is `replicated` (a sharding, or
  None), so every host can read it."""
  params = {"w": jnp.zeros((features.shape[1], outputs), features.dtype),
            "b": jnp.zeros((outputs,), features.dtype)}
  objective = lambda p: logistic_objective(p, features, labels, weights, inverse_c)
  solver = optax.lbfgs(memory_size=memory,
                       linesearch=optax.scale_by_zoom_linesearch(max_linesearch_steps=linesearch_steps))
  value_and_grad = optax.value_and_grad_from_state(objective)

  def step(carry):
    params, state, _ = carry
    value, grad = value_and_grad(params, state=state)
    updates, state = solver.update(grad, state, params, value=value, grad=grad, value_fn=objective)
    return optax.apply_updates(params, updates), state, value

  def running(carry):
    _, state, previous = carry  # the state holds the value and gradient at the current params
    value, grad = optax.tree.get(state, "value"), optax.tree.get(state, "grad")
    scale = tol * jnp.maximum(value, tol)
    moving = (optax.tree.norm(grad) > scale) & (jnp.abs(previous - value) > 0.01 * scale)
    iteration = optax.tree.get(state, "count")
    return (iteration == 0) | ((iteration < max_iter) & moving & jnp.isfinite(value))

  inf = jnp.asarray(jnp.inf, features.dtype)
  params, state, _ = jax.lax.while_loop(running, step, (params, solver.init(params), inf))
  result = params, optax.tree.get(state, "count"), objective(params)
  return result if replicated is None else jax.lax.with_sharding_constraint(result, replicated)


_lbfgs_jit = jax.jit(_lbfgs, static_argnames=("outputs", "memory", "linesearch_steps", "replicated"))


def fit_logistic_regression(features: np.ndarray, labels: np.ndarray, num_outputs: int, c: float, *,
                            max_iter: int = 1000, tol: float = 1e-12, memory: int = 5,
                            linesearch_steps: int = 50, dtype: str = "float64", mesh=None,
                            rules=parallel.DEFAULT_RULES) -> tuple[dict, int]:
  """({"w" (d, K), "b" (K,)}, iterations) minimising `logistic_objective` for labels in [0, K)
  (K = `num_outputs`; 2 classes: one output, binary). With a `mesh`, the rows are split over its
  batch axes (`rules`), padded to split evenly, and the sums run across devices."""
  if c <= 0:
    raise ValueError(f"C={c:g} must be positive.")
  outputs = 1 if num_outputs == 2 else num_outputs
  rows = len(features)
  shards = 1 if mesh is None else parallel.batch_shards(mesh, rules)
  padded = -(-rows // shards) * shards
  host = {"features": np.zeros((padded, features.shape[1]), dtype),
          "labels": np.zeros((padded,), np.int32), "weights": np.zeros((padded,), dtype)}
  host["features"][:rows], host["labels"][:rows], host["weights"][:rows] = features, labels, 1
  with jax.enable_x64(dtype == "float64"):
    if mesh is None:
      arrays, replicated = {k: jnp.asarray(v) for k, v in host.items()}, None
    else:
      arrays = {k: jax.make_array_from_callback(v.shape, parallel.batch_sharding(mesh, rules, v.ndim),
                                                lambda index, v=v: v[index]) for k, v in host.items()}
      replicated = NamedSharding(mesh, P())
    labels_in = arrays["labels"].astype(arrays["features"].dtype) if outputs == 1 else arrays["labels"]
    params, iterations, value = _lbfgs_jit(arrays["features"], labels_in, arrays["weights"],
                                           jnp.asarray(1.0 / c, dtype), outputs, max_iter, tol,
                                           memory, linesearch_steps, replicated)
    params, iterations, value = jax.device_get((params, iterations, value))
  if not np.isfinite(value):
    raise FloatingPointError(f"The logistic regression for C={c:g} diverged (objective {value}).")
  return params, int(iterations)


def class_scores(params: dict, features: np.ndarray) -> np.ndarray:
  """(n, K) scores ordered as the predicted probabilities (binary: logits 0 and z)."""
  logits = features.astype(params["w"].dtype) @ params["w"] + params["b"]
  if logits.shape[1] == 1:
    logits = np.concatenate([np.zeros_like(logits), logits], axis=1)
  return logits


def accuracies(scores: np.ndarray, labels: np.ndarray, metric: str = "mean_accuracy") -> dict:
  """{"top-1", "top-5"} (fractions; top-5 is top-K with fewer classes) of scores (n, K) against labels
  in [0, K). "mean_per_class_accuracy" averages each class's recall (the official metric for
  Aircraft, Pets, Flowers and Caltech-101) over the classes that occur or are predicted, as
  torchmetrics' macro average."""
  if metric not in METRICS:
    raise ValueError(f"Unknown metric {metric!r}; choose one of {METRICS}.")
  k = min(5, scores.shape[1])
  ranked = np.argsort(-scores, axis=1, kind="stable")
  hits = {"top-1": ranked[:, 0] == labels, "top-5": (ranked[:, :k] == labels[:, None]).any(1)}
  if metric == "mean_accuracy":
    return {name: float(h.mean()) for name, h in hits.items()}
  num_classes = scores.shape[1]
  out = {}
  for name, h in hits.items():
    true = np.bincount(labels, minlength=num_classes)
    correct = np.bincount(labels, weights=h, minlength=num_classes)
    predicted = np.bincount(ranked[:, 0], minlength=num_classes) if name == "top-1" else true
    counted = (true > 0) | (predicted > 0)
    out[name] = float(np.sum(correct[counted] / np.maximum(true[counted], 1)) / max(counted.sum(), 1))
  return out


# ---------------------------------------------------------------------------------------------------
# The evaluator, and the `log_regression_eval` job that runs it on a frozen backbone
# ---------------------------------------------------------------------------------------------------
class LogRegression:
  """`log_regression(backbone_params) -> {"log_regression_top1", "log_regression_top5",
  "log_regression_best_c"}` (the `evaluators.base` protocol): the module docstring's protocol on the
  CLS features of `source`'s splits, embedded in global batches of `batch_size` at `image_size`
  (after a resize to `resize_size`, 0: `image_size`). C is chosen on `finetune_split`, else on
  `heldout_split` (`finetune_on_val`), else on a random tenth of `train_split` (drawn with `seed`);
  the best is fitted again and scored on `heldout_split`. `evaluate` also returns what the job
  reports, and keeps features and scores in a directory for a job that resumes."""

  def __init__(self, *, source: str, train_split: str, heldout_split: str, batch_size: int,
               backbone: ViT, image_size: int, mesh, rules, finetune_split: str = "",
               resize_size: int = 0, c_powers=(-6, 5, 45), max_iter: int = 1000, tol: float = 1e-12,
               dtype: str = "float64", metric: str = "mean_accuracy", finetune_on_val: bool = False,
               seed: int = 0):
    self.source, self.splits = source, (train_split, finetune_split, heldout_split)
    self.batch_size, self.image_size = batch_size, image_size
    self.resize = resize_size or image_size
    self.mesh, self.rules = mesh, rules
    self.cs = c_values(c_powers)
    self.max_iter, self.tol, self.dtype, self.metric = max_iter, tol, dtype, metric
    self.finetune_on_val, self.seed = finetune_on_val, seed
    self.embed = knn.cls_features(backbone)

  def __call__(self, params) -> dict:
    return self.evaluate(params)["metrics"]

  def _features(self, params, split: str, store: str, identity: dict) -> tuple[np.ndarray, np.ndarray]:
    """(features, labels) of `split`, read from `store` where an earlier call with the same
    `identity` left them."""
    path = os.path.join(store, f"features_{split.replace('/', '_')}.npz") if store else ""
    if path and os.path.exists(path):
      cached = np.load(path)
      if json.loads(str(cached["identity"])) != identity:
        raise ValueError(f"{path} holds features of {str(cached['identity'])}, not of {identity}; "
                         "use another workdir.")
      return cached["features"], cached["labels"]
    source = sources.make_source(self.source, split)
    feats, labels = extract_features(self.embed, params, source, self.batch_size, self.image_size,
                                     self.mesh, self.rules, resize=self.resize)
    if not len(feats):
      raise ValueError(f"No readable image in split {split!r} of {self.source!r}.")
    if path and jax.process_index() == 0:
      np.savez(path + ".tmp.npz", features=feats, labels=labels, identity=json.dumps(identity))
      os.replace(path + ".tmp.npz", path)
    return feats, labels

  def _fit(self, data, c: float) -> tuple[dict, np.ndarray, int]:
    """(head, the classes its outputs stand for, iterations) on `data`: its classes are those its
    images have, numbered as cuML and scikit-learn number them."""
    classes = np.unique(data[1])
    if len(classes) < 2:
      raise ValueError(f"The training images have {len(classes)} class; logistic regression needs two.")
    head, iterations = fit_logistic_regression(
        data[0], np.searchsorted(classes, data[1]), len(classes), c, max_iter=self.max_iter,
        tol=self.tol, dtype=self.dtype, mesh=self.mesh, rules=self.rules)
    return head, classes, iterations

  def _score(self, head, classes, data) -> dict:
    """Accuracies over all of `data`'s images; a class the classifier never saw counts as a miss."""
    scores = np.full((len(data[1]), int(max(classes.max(), data[1].max())) + 1), -np.inf)
    scores[:, classes] = class_scores(head, data[0])
    return accuracies(scores, data[1], self.metric)

  def evaluate(self, params, store: str = "", identity: dict | None = None) -> dict:
    """{"metrics", "accuracy" (top-1 and top-5 on the held-out split), "best_c", "sweep" (each C's
    accuracies on the fine-tuning images), "head", "classes", "iterations", and the image counts}.
    With a `store` directory (a job's workdir), the features and each C's score are kept there with
    `identity` (what they depend on besides these settings, e.g. the backbone's name), so a stopped
    run continues at the next C; a store holding another identity's is an error."""
    identity = {**(identity or {}), "image_size": self.image_size, "resize_size": self.resize}
    train_split, finetune_split, heldout_split = self.splits
    features_of = lambda split: self._features(params, split, store, identity)
    train, test = features_of(train_split), features_of(heldout_split)
    if finetune_split:
      finetune = features_of(finetune_split)
    elif self.finetune_on_val:
      finetune = test
    else:  # a random tenth of the training split chooses C
      order = np.random.default_rng(self.seed).permutation(len(train[0]))
      held = len(order) // 10
      if not held:
        raise ValueError(f"{len(order)} training images leave no tenth to choose C on; set "
                         "data.finetune_split or log_regression.finetune_on_val.")
      finetune = tuple(x[order[:held]] for x in train)
      train = tuple(x[order[held:]] for x in train)

    # The C sweep, each C's score kept as it finishes, with what it depends on.
    sweep_path = os.path.join(store, "log_regression_sweep.json") if store else ""
    sweep_identity = {**identity, "seed": self.seed, "finetune_split": finetune_split,
                      "metric": self.metric, "max_iter": self.max_iter, "tol": self.tol,
                      "dtype": self.dtype, "finetune_on_val": self.finetune_on_val}
    sweep = {}
    if sweep_path and os.path.exists(sweep_path):
      with open(sweep_path) as f:
        saved = json.load(f)
      if saved["identity"] != sweep_identity:
        raise ValueError(f"{sweep_path} is a sweep over {saved['identity']}, not {sweep_identity}; "
                         "use another workdir.")
      sweep = saved["accuracy"]
    keys = [f"{c:.6g}" for c in self.cs]
    for i, (key, c) in enumerate(zip(keys, self.cs)):
      if key in sweep:
        continue
      start = time.perf_counter()
      head, classes, iterations = self._fit(train, c)
      sweep[key] = self._score(head, classes, finetune)
      logging.info("C %d/%d = %s: top-1 %.2f%% on %d images (%d iterations, %.1f s)", i + 1, len(self.cs),
                   key, 100 * sweep[key]["top-1"], len(finetune[0]), iterations, time.perf_counter() - start)
      if sweep_path and jax.process_index() == 0:
        with open(sweep_path + ".tmp", "w") as f:
          json.dump({"identity": sweep_identity, "accuracy": sweep}, f, indent=1)
        os.replace(sweep_path + ".tmp", sweep_path)
    best = int(np.argmax([sweep[k]["top-1"] for k in keys]))  # the first of equals, as official

    # The final classifier: the best C on train + fine-tuning images, scored on the held-out split.
    if not self.finetune_on_val:
      train = tuple(np.concatenate([a, b]) for a, b in zip(train, finetune))
    head, classes, iterations = self._fit(train, self.cs[best])
    result = self._score(head, classes, test)
    return {"metrics": {"log_regression_top1": result["top-1"], "log_regression_top5": result["top-5"],
                        "log_regression_best_c": float(self.cs[best])},
            "accuracy": result, "best_c": float(self.cs[best]), "sweep": sweep,
            "head": head, "classes": classes, "iterations": iterations, "train_images": len(train[0]),
            "finetune_images": len(finetune[0]), "test_images": len(test[0])}


def run(config, workdir: str) -> dict:
  """The C sweep and the final fit (`LogRegression` on the frozen backbone, its features and scores
  kept in WORKDIR: a resumed run skips the extraction and the fitted C); results in
  WORKDIR/results_eval_log_regression.json and the classifier in best_log_regression_head.safetensors."""
  os.makedirs(workdir, exist_ok=True)
  settings = config.log_regression
  if settings.metric not in METRICS:
    raise ValueError(f"log_regression.metric={settings.metric!r}; choose one of {METRICS}.")
  if settings.dtype not in ("float32", "float64"):
    raise ValueError(f"log_regression.dtype={settings.dtype!r}; choose float32 or float64.")
  if not len(c_values(settings.c_powers)):
    raise ValueError(f"log_regression.c_powers={tuple(settings.c_powers)} gives no C to try.")
  mesh, rules = loop.make_mesh(config)
  backbone, params, backbone_source = knn.frozen_backbone(config, mesh, rules)
  evaluator = LogRegression(
      source=config.data.source, train_split=config.data.train_split,
      heldout_split=config.data.val_split, finetune_split=config.data.finetune_split,
      batch_size=config.batch_size, backbone=backbone, image_size=config.image_size,
      resize_size=config.data.resize_size, mesh=mesh, rules=rules, seed=config.seed, **settings)
  identity = {"backbone": backbone_source, "dtype": str(platform.compute_dtype(config.backbone.dtype))}
  with parallel.activation_sharding(mesh, rules):
    report = evaluator.evaluate(params, store=workdir, identity=identity)
  metrics = report["metrics"]
  loop.log_metrics(0, metrics)
  loop.MetricWriter(workdir).write(0, metrics)
  if jax.process_index() == 0:
    with open(os.path.join(workdir, "results_eval_log_regression.json"), "w") as f:
      json.dump({"backbone": backbone_source, "metric": settings.metric, "best_C": report["best_c"],
                 **report["accuracy"], **{k: report[k] for k in ("train_images", "finetune_images",
                                                                 "test_images", "iterations", "sweep")}},
                f, indent=1)
    write_head(workdir, report["head"], report["classes"])
  logging.info("Logistic regression (%s): top-1 %.2f%%, top-5 %.2f%% on %d images, C = %.6g",
               backbone_source, 100 * report["accuracy"]["top-1"], 100 * report["accuracy"]["top-5"],
               report["test_images"], report["best_c"])
  return metrics


def write_head(workdir: str, head: dict, classes: np.ndarray) -> None:
  """WORKDIR/best_log_regression_head.safetensors: the classifier as an `nn.Linear` state dict
  (`weight` (K, d), `bias` (K,)) and the `classes` its rows stand for. A binary head (one output z)
  becomes the two rows ∓z/2, whose softmax is its sigmoid."""
  w, b = head["w"].T, head["b"]
  if len(w) == 1:
    w, b = np.concatenate([-w, w]) / 2, np.concatenate([-b, b]) / 2
  convert.save_state_dict({"weight": w.astype(np.float32), "bias": b.astype(np.float32),
                           "classes": classes.astype(np.int64)},
                          os.path.join(workdir, "best_log_regression_head.safetensors"))
