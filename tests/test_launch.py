import pathlib
import subprocess

REPO = pathlib.Path(__file__).resolve().parents[1]
SCRIPTS = sorted((REPO / "launch").glob("*.sh"))


def test_scripts_parse():
  assert SCRIPTS
  for script in SCRIPTS:
    subprocess.run(["bash", "-n", str(script)], check=True)


def test_local_dry_run_prints_the_command():
  out = subprocess.run(["bash", str(REPO / "launch/local.sh"), "--dry-run", "configs/features_pca.py",
                        "workdir/x", "--config.resolution=224"], capture_output=True, text=True,
                       check=True, env={"FAKE_DEVICES": "8", "PATH": "/usr/bin:/bin"}).stdout
  assert "python -m dinojax.main --config configs/features_pca.py --workdir workdir/x" in out
  assert "--config.resolution=224" in out and "device_count=8" in out
