"""One protocol for every evaluation (big_vision's `config.evals`): each entry `config.evals.<name> =
dict(type=..., ...)` builds its evaluator once (sources, jitted functions), and `evaluator(params) ->
{name: value}` runs it on a model's params. A scalar value is a metric (metrics.jsonl, TensorBoard),
an (h, w, 3) uint8 array a picture (`loop.MetricWriter.images`). The trainers run them during
training on the schedule of `Evaluation.due` (`loop.train`); dino.txt's `eval_only` runs them once.

The settings an entry does not give come from `config.eval`, the evaluations' shared settings
(`every`, `batch_size`, the k-NN's `source`, ...), and from its own group `config.eval.<name>` where
there is one (dino.txt's `eval.zero_shot`): `--config.eval.every=0` turns every evaluation off.
"""

import dataclasses
import inspect
from typing import Any, Callable

import ml_collections

from dinojax.evaluators import knn, pictures, zero_shot

# An entry's `type` -> the evaluator it builds.
TYPES = {"knn": knn.KNN, "pictures": pictures.Pictures, "zero_shot": zero_shot.ZeroShot,
         "retrieval": zero_shot.Retrieval}
# Settings of the schedule, read by `from_config` rather than by an evaluator.
SCHEDULE = ("every", "first")


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


def from_config(config, **context) -> list[Evaluation]:
  """The evaluations `config.evals` names, each evaluator built once. `context` holds what the job
  provides (mesh, rules, backbone, image size, embedding functions...): each evaluator takes the
  settings and the parts of `context` its constructor names."""
  evaluations = []
  for name, entry in config.get("evals", ml_collections.ConfigDict()).items():
    kind = entry.get("type", name)
    if kind not in TYPES:
      raise ValueError(f"evals.{name}.type={kind!r}: no such evaluation; choose one of {sorted(TYPES)}.")
    evaluator = TYPES[kind]
    accepted = inspect.signature(evaluator).parameters
    unknown = sorted(set(entry) - {"type", *SCHEDULE} - set(accepted))
    if unknown:
      raise ValueError(f"evals.{name}: a {kind!r} evaluation has no setting {unknown}; it takes "
                       f"{sorted(k for k in accepted if k not in context)}.")
    values = {**context, **settings(config, name)}
    built = evaluator(**{k: v for k, v in values.items() if k in accepted})
    evaluations.append(Evaluation(name, built, every=values.get("every", 0),
                                  first=values.get("first", False)))
  return evaluations
