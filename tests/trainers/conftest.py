"""What the trainer tests share: a run preempted the hard way."""

import pathlib
import signal
import subprocess
import time

import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]


@pytest.fixture
def kill_after_checkpoint():
  """`kill(command, checkpoint_dir, env)`: starts the training command, SIGKILLs it as soon as
  `checkpoint_dir` appears (or it exits, or 10 minutes pass), as a preempted job dies."""

  def kill(command, checkpoint_dir: pathlib.Path, env: dict) -> None:
    proc = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 600
    while not checkpoint_dir.exists() and proc.poll() is None and time.time() < deadline:
      time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()

  return kill
