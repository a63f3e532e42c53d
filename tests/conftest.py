"""Eight fake CPU devices, so sharded code paths run for real on small meshes; one persistent
compilation cache for the session, so the many runs of the same tiny configs (in this process and in
the training jobs tests start as subprocesses, which inherit the environment) compile each program
once. Without it, XLA's compiles are most of the suite's time on a CPU."""

import atexit
import collections
import gc
import os
import shutil
import tempfile

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="dinojax-test-xla-cache-")
  atexit.register(shutil.rmtree, os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)
# Only compiles that take long enough to be worth a disk round trip.
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

import jax  # noqa: E402  (after XLA_FLAGS on purpose)
import pytest  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def _eight_devices():
  assert jax.device_count() == 8, "tests expect 8 fake CPU devices; was jax imported before conftest?"


def pytest_collection_modifyitems(items):
  # Files by their share of slow tests, the training-job files (all slow) first and the quick files
  # last: the two xdist workers take files from the front of this order (pyproject.toml:
  # `--no-loadscope-reorder`), so the long files start early and the quick ones even out the end.
  tests, slow = collections.Counter(), collections.Counter()
  for item in items:
    tests[item.path] += 1
    slow[item.path] += item.get_closest_marker("slow") is not None
  items.sort(key=lambda item: -slow[item.path] / tests[item.path])


def pytest_sessionfinish():
  # Free this process's compiled programs while an xdist controller still waits for it: left to the
  # collections after it reports back, they outlast xdist's 5 s shutdown grace and the worker is
  # interrupted (a KeyboardInterrupt traceback after the results).
  jax.clear_caches()
  gc.collect()
