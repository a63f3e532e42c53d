"""The curation steps in order, and the whole pipeline as one job (`job = "curate"` in
`dinojax.main`): embed -> dedup -> retrieve (when the config names queries) -> cluster -> sample."""

from absl import logging

from dinojax.curation import cluster, dedup, embed, retrieve, sampling

STEPS = {
    "embed": embed.run,
    "dedup": dedup.run,
    "retrieve": retrieve.run,
    "cluster": cluster.run,
    "sample": sampling.run,
}


def run(config, workdir: str, process_index: int = 0, process_count: int = 1) -> dict:
  """Every step in order; stops (returning what ran) where a step still waits for other processes."""
  out = {}
  for name, step in STEPS.items():
    if name == "retrieve" and not config.data.get("queries"):
      logging.info("No config.data.queries: skipping retrieval.")
      continue
    out[name] = step(config, workdir, process_index, process_count)
    if out[name] is None or (name == "embed" and any(v is None for v in out[name].values())):
      logging.info("%s waits for other processes' parts; run the next steps once they finish.", name)
      break
  return out
