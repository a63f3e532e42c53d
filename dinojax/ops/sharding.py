"""Partition specs that fit the arrays they describe."""

import logging
import math

from jax.sharding import Mesh, PartitionSpec as P


def divisible_spec(spec: P, shape: tuple[int, ...], mesh: Mesh) -> P:
  """Drops mesh axes from dims they do not divide (those dims stay replicated)."""
  dims = []
  for dim, axes in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec))):
    names = (axes,) if isinstance(axes, str) else tuple(axes or ())
    size = math.prod(mesh.shape[n] for n in names)
    if names and dim % size:
      logging.info("Dimension of size %d not divisible by mesh axes %s; replicating it.", dim, names)
      names = ()
    dims.append(names[0] if len(names) == 1 else (names or None))
  return P(*dims)
