"""One protocol for every evaluation (big_vision's `config.evals`): each entry `config.evals.<name> =
dict(type=..., ...)` builds its evaluator once (sources, jitted functions), and `evaluator(params) ->
{name: value}` runs it on a model's params. A scalar value is a metric (metrics.jsonl, TensorBoard),
an (h, w, 3) uint8 array a picture (`loop.MetricWriter.images`). The trainers run them during
training on the schedule of `Evaluation.due` (`loop.train`); dino.txt's `eval_only` runs them once.

The settings an entry does not give come from `config.eval`, the evaluations' shared settings
(`every`, `batch_size`, the k-NN's `source`, ...), and from its own group `config.eval.<name>` where
there is one (dino.txt's `eval.zero_shot`): `--config.eval.every=0` turns every evaluation off,
`--config.evals.knn.every=0` the k-NN alone, `--config.evals.knn.knn_k=10` sets one entry's setting
(`config_check` names a setting its type does not take), and `--config.evals.<name>='{"type": ...}'`
adds an evaluation.

The standalone evaluation jobs run the same objects on a frozen model: `knn_eval` (`knn.KNN`),
`log_regression_eval` (`log_regression.LogRegression`), `linear_segmentation_eval`
(`linear_segmentation.LinearSegmentation`, a released head's mIoU) and `talk2dino_eval`
(`segmentation.Talk2DINOSegmentation`). An entry's type needs the objects its evaluator names from
the job's context (`CONTEXT`): the SSL and distillation trainers give a `backbone` (so `knn`,
`pictures` and `log_regression`, with a short `c_powers` sweep: the official one fits 45 classifiers
at each call), dino.txt its towers' embedding functions (`zero_shot`, `retrieval`, `pictures`); the
segmentation types take a `segmenter` or Talk2DINO's towers, which only their jobs build so far.

`linear_eval` is a job only: its probes are a grid of linear classifiers trained by SGD for epochs
on augmented crops, with checkpoints and resumption (`loop.train`), not a function of the backbone's
params that fits between two training steps. It scores its classifiers through this protocol's
schedule (`Evaluation`) instead. `pca_features` renders one image's patch PCA (what the `pictures`
evaluation draws during training) with its feature file, a tool rather than an evaluation.
"""

import dataclasses
import inspect
from typing import Any, Callable

import ml_collections

from dinojax.evaluators import (knn, linear_segmentation, log_regression, pictures, segmentation,
                                zero_shot)

# An entry's `type` -> the evaluator it builds.
TYPES = {"knn": knn.KNN, "pictures": pictures.Pictures, "zero_shot": zero_shot.ZeroShot,
         "retrieval": zero_shot.Retrieval, "log_regression": log_regression.LogRegression,
         "linear_segmentation": linear_segmentation.LinearSegmentation,
         "talk2dino_segmentation": segmentation.Talk2DINOSegmentation}
# Settings of the schedule, read by `from_config` rather than by an evaluator.
SCHEDULE = ("every", "first")
# What jobs hand the evaluators (`from_config`'s context), never a config's setting.
CONTEXT = ("mesh", "rules", "backbone", "vision_head", "backbone_frozen", "tokenizer", "embed_images",
           "embed_texts", "segmenter", "text_encoder", "projection")


@dataclasses.dataclass(frozen=True)
class Evaluation:
  """A named evaluator and when a training run calls it: every `every` steps (0: never) and at the
  last step, and also before the first step where `first` (pictures of the initial features)."""
  name: str
  evaluator: Callable[[Any], dict]
  every: int
  first: bool = False

  def due(self, step: int, num_steps: int) -> bool:
    if not self.every:
      return False
    if step == 0:
      return self.first
    return step % self.every == 0 or step == num_steps


def settings(config, name: str) -> dict:
  """The settings of evaluation `name`: `config.eval`'s shared ones, then its `config.eval.<name>`
  group's, then its own entry's (without `type`)."""
  shared = config.get("eval", ml_collections.ConfigDict())
  out = {k: v for k, v in shared.items() if not isinstance(v, ml_collections.ConfigDict)}
  if isinstance(shared.get(name), ml_collections.ConfigDict):
    out.update(shared[name].to_dict())
  out.update({k: v for k, v in config.evals[name].items() if k != "type"})
  return out


def settings_of(kind: str) -> tuple[str, ...]:
  """The settings a config entry of type `kind` may give: its evaluator's keyword arguments but the
  objects a job provides (`CONTEXT`), and the schedule."""
  accepted = inspect.signature(TYPES[kind]).parameters
  return (*SCHEDULE, *(k for k in accepted if k not in CONTEXT))


def from_config(config, **context) -> list[Evaluation]:
  """The evaluations `config.evals` names, each evaluator built once. `context` holds what the job
  provides (mesh, rules, backbone, image size, embedding functions...): each evaluator takes the
  settings and the parts of `context` its constructor names; a setting overrides the context's
  value of the same name (`image_size`)."""
  evaluations = []
  for name, entry in config.get("evals", ml_collections.ConfigDict()).items():
    kind = entry.get("type", name)
    if kind not in TYPES:
      raise ValueError(f"evals.{name}.type={kind!r}: no such evaluation; choose one of {sorted(TYPES)}.")
    evaluator = TYPES[kind]
    accepted = inspect.signature(evaluator).parameters
    unknown = sorted(set(entry) - {"type"} - set(settings_of(kind)))
    if unknown:
      raise ValueError(f"evals.{name}: a {kind!r} evaluation has no setting {unknown}; it takes "
                       f"{sorted(settings_of(kind))}.")
    values = {**context, **settings(config, name)}
    missing = [k for k, p in accepted.items() if p.default is p.empty and k not in values]
    if missing:
      raise ValueError(f"evals.{name}: a {kind!r} evaluation needs {missing}, which this job neither "
                       "provides nor its config gives.")
    built = evaluator(**{k: v for k, v in values.items() if k in accepted})
    evaluations.append(Evaluation(name, built, every=values.get("every", 0),
                                  first=values.get("first", False)))
  return evaluations
