"""The JAX k-means (`dinojax.curation.lloyd`) against a NumPy restatement of the official iteration
of facebookresearch/ssl-data-curation: same seed, same seeding rows, same centroids; on one device
and on eight (rows padded unevenly, chunked); and resumed mid-seeding or mid-iterations, unchanged."""

import jax
import numpy as np
import pytest

from dinojax.curation import lloyd

N, D, K, ITERATIONS, SEED = 300, 16, 12, 6, 3


def reference_kmeans(x: np.ndarray, k: int, iterations: int, seed: int) -> np.ndarray:
  """The official k-means written out plainly (float64 accumulations, as its web config)."""
  x = x.astype(np.float64)
  sqdist = lambda a, b: (a * a).sum(1)[:, None] - 2 * a @ b.T + (b * b).sum(1)[None, :]  # noqa: E731
  draws = np.random.RandomState(seed)
  chosen = [draws.randint(len(x))]
  closest = sqdist(x, x[chosen])[:, 0]
  potential = closest.sum()
  for _ in range(1, k):
    # Candidates drawn ∝ squared distance; keep the one that lowers the potential most.
    targets = draws.uniform(size=2 + int(np.log(k))) * potential
    candidates = np.minimum(np.searchsorted(np.cumsum(closest), targets), len(x) - 1)
    if_added = np.minimum(closest[None, :], sqdist(x[candidates], x))
    best = if_added.sum(1).argmin()
    chosen.append(candidates[best])
    closest, potential = if_added[best], if_added[best].sum()
  centroids = x[chosen]
  for _ in range(iterations):
    labels = sqdist(x, centroids).argmin(1)
    for j in range(k):  # an empty cluster keeps its centroid
      if (labels == j).any():
        centroids[j] = x[labels == j].mean(0)
  return centroids


@pytest.fixture(scope="module")
def pool():
  rng = np.random.default_rng(0)
  centres = rng.normal(size=(8, D))
  return (centres[rng.integers(0, 8, N)] + 0.4 * rng.normal(size=(N, D))).astype(np.float32)


def mesh_of(num_devices):
  return jax.make_mesh((num_devices,), ("rows",), devices=jax.devices()[:num_devices])


@pytest.fixture(scope="module")
def rows8(pool):
  return lloyd.shard_rows(pool, mesh_of(8), chunk=16)  # 300 rows: 38 per device, padded to 48


@pytest.mark.parametrize("num_devices", [1, 8])
def test_equals_the_official_iteration(pool, rows8, num_devices):
  rows = rows8 if num_devices == 8 else lloyd.shard_rows(pool, mesh_of(1), chunk=64)
  seeds = lloyd.fit(rows, K, 0, SEED)
  np.testing.assert_array_equal(seeds, reference_kmeans(pool, K, 0, SEED).astype(np.float32))
  np.testing.assert_allclose(lloyd.fit(rows, K, ITERATIONS, SEED), reference_kmeans(pool, K, ITERATIONS, SEED),
                             atol=2e-5)


def test_resumes_mid_seeding_and_mid_iterations(pool, rows8, tmp_path, monkeypatch):
  fresh = lloyd.fit(rows8, K, ITERATIONS, SEED)
  save = lloyd._save_seeding

  def killed_after_first_save(*args):
    save(*args)
    raise KeyboardInterrupt

  monkeypatch.setattr(lloyd, "_save_seeding", killed_after_first_save)
  with pytest.raises(KeyboardInterrupt):
    lloyd.fit(rows8, K, ITERATIONS, SEED, state_dir=str(tmp_path), checkpoint_every=5)
  monkeypatch.undo()
  assert sorted(p.name for p in tmp_path.iterdir()) == ["seeding-000000005-closest-00000.npy",
                                                       "seeding-000000005.npz"]
  lloyd.fit(rows8, K, 2, SEED, state_dir=str(tmp_path), checkpoint_every=5)  # stops after 2 iterations
  assert (tmp_path / "centroids-0002.npy").exists() and not (tmp_path / "seeding-000000005.npz").exists()
  resumed = lloyd.fit(rows8, K, ITERATIONS, SEED, state_dir=str(tmp_path), checkpoint_every=5)
  np.testing.assert_array_equal(resumed, fresh)
  with pytest.raises(ValueError, match="needs 1 <= k"):
    lloyd.fit(rows8, N + 1, 1, SEED)
