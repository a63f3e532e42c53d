"""End to end: the tiny SSL config trains, resumes exactly after a kill, and gives the same result on
one device and on 8 (data- or fsdp-sharded, XLA or Pallas attention, blocks unrolled or scanned);
the k-NN job on its teacher repeats the run's own evaluation."""

import json
import re
import shutil

import jax
import numpy as np
import pytest
from PIL import Image

import jobs
from dinojax import convert, loop, report

pytestmark = pytest.mark.slow  # training jobs in subprocesses

CONFIG = f"{jobs.REPO / 'configs/dinov2_vits14.py'}:tiny"
SMALL = ["--config.model.depth=2", "--config.batch_size=16", "--config.eval.batch_size=200",
         "--config.log_every=1", "--config.data.threads=1"]


def _command(workdir, *overrides):
  return jobs.main_command(CONFIG, workdir, *SMALL, *overrides)


def _run(workdir, *overrides, devices=8, check=True):
  return jobs.run_main(CONFIG, workdir, *SMALL, *overrides, devices=devices, check=check)


def test_student_fits_a_frozen_teacher(tmp_path):
  # With the EMA frozen (momentum 1) and Sinkhorn-Knopp targets, every loss must fall: a check of
  # the gradients, heads and optimizer independent of the teacher's own dynamics.
  _run(tmp_path, "--config.total_steps=40", "--config.eval.every=0", "--config.checkpoint.every=40",
       "--config.teacher.momentum=1.0", "--config.centering=sinkhorn_knopp")
  rows = [r for r in loop.read_metrics(tmp_path) if "loss" in r]
  assert len(rows) == 40
  for part in ("loss", "loss_dino_global", "loss_dino_local", "loss_ibot", "loss_koleo"):
    values = [r[part] for r in rows]
    assert np.mean(values[-5:]) < np.mean(values[:5]) - 0.05, (part, values[:5], values[-5:])


TWENTY_STEPS = ["--config.total_steps=20", "--config.eval.every=20", "--config.checkpoint.every=4",
                "--config.checkpoint.keep=5"]


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory):
  """A tiny run, uninterrupted: 20 steps, checkpoints every 4 (all kept), k-NN at the end."""
  workdir = tmp_path_factory.mktemp("straight")
  _run(workdir, *TWENTY_STEPS)
  return workdir


def _knn(workdir):
  return [r["knn_top1"] for r in loop.read_metrics(workdir) if "knn_top1" in r]


def test_tiny_run_trains_and_evaluates(straight_run):
  losses = jobs.losses(straight_run)
  assert len(losses) == 20 and all(np.isfinite(list(losses.values())))
  # TensorBoard's scalars are metrics.jsonl's, with the numbers that tell collapse from learning.
  jobs.assert_events_match_metrics(straight_run)
  assert {"teacher_entropy", "center_norm_dino", "center_norm_ibot", "lr", "images_per_s"} <= set(
      loop.read_metrics(straight_run)[-2])
  # Pictures before training and at the evaluation, as PNGs and TensorBoard images, in colours
  # that vary over the patches; 20 warm-up steps move the EMA teacher little, but not nothing.
  accumulator = jobs.events(straight_run)
  for name in ("pca", "cls_attention"):
    assert [e.step for e in accumulator.Images(name)] == [0, 20]
    init, trained = (np.asarray(Image.open(straight_run / f"pictures/{name}_{s:07d}.png")) for s in (0, 20))
    assert init.shape == trained.shape and init.shape[0] >= 4 * 128
    assert len(np.unique(trained[:, trained.shape[1] // 2:].reshape(-1, 3), axis=0)) > 50
    assert not np.array_equal(init, trained)
  knn = _knn(straight_run)
  assert len(knn) == 1 and knn[0] > 0.2  # 10 classes: chance is 0.1
  step, state = jobs.final_state(straight_run)
  assert step == 20 and int(state["step"]) == 20
  assert set(state) == {"params", "teacher", "opt", "center", "step"}
  # The exported model is the EMA teacher's backbone, in the official naming (96 wide, 3 heads).
  _, exported = convert.from_checkpoint(straight_run / "teacher_backbone.safetensors", num_heads=3)
  jobs.assert_same_state(state["teacher"]["backbone"], exported["params"])


def test_knn_job_on_the_run_gives_the_runs_own_evaluation(tmp_path, straight_run):
  # The knn_eval job rebuilds the teacher from the run's config.json and checkpoint, and evaluates
  # it as the trainer did (k = 20, T = 0.07, digits held out). Few-shot with more images per class
  # than any digit has (at most 155 of 1437) keeps them all, and repeats the whole split's k-NN.
  jobs.run_main(f"{jobs.REPO / 'configs/knn_eval.py'}:tiny", tmp_path,
                f"--config.backbone.workdir={straight_run}", "--config.knn.n_per_class=(-1, 200)",
                "--config.knn.n_tries=2")
  results = json.loads((tmp_path / "results_eval_knn.json").read_text())
  assert results["backbone"].endswith("@20") and results["validation_images"] == 360
  assert results["accuracy"]["20"]["top1"] == pytest.approx(_knn(straight_run)[-1], abs=1.5 / 360)
  few_shot = results["few_shot"]
  assert few_shot["tries"] == 2 and sorted(few_shot["200"], key=int) == ["10", "20", "200"]
  assert few_shot["200"]["20"] == pytest.approx(results["accuracy"]["20"])


def test_kill_and_resume_matches_uninterrupted(tmp_path, straight_run):
  jobs.kill_after_checkpoint(_command(tmp_path, *TWENTY_STEPS), tmp_path / "checkpoints" / "4")
  _run(tmp_path, *TWENTY_STEPS)  # resumes from whatever checkpoint survived

  (step_a, a), (step_b, b) = jobs.final_state(straight_run), jobs.final_state(tmp_path)
  assert step_a == step_b == 20
  jobs.assert_same_state(a, b)
  assert jobs.losses(straight_run)[20] == jobs.losses(tmp_path)[20]
  assert _knn(straight_run) == _knn(tmp_path)[-1:]
  jobs.assert_events_match_metrics(tmp_path)  # the restart purged the killed run's later steps
  for name in ("pca_0000020.png", "cls_attention_0000020.png"):
    assert (tmp_path / "pictures" / name).read_bytes() == (straight_run / "pictures" / name).read_bytes()


def test_damaged_checkpoints_are_skipped_and_the_run_ends_as_uninterrupted(tmp_path, straight_run):
  # The finished run, its four newest checkpoints damaged four ways: the rerun names each, resumes
  # from step 4, and writes steps 5-20 and the k-NN again, once each, as the straight run did.
  shutil.copytree(straight_run, tmp_path, dirs_exist_ok=True)
  damages = {20: "flipped_bytes", 16: "truncated_file", 12: "missing_manifest", 8: "missing_meta"}
  for step, how in damages.items():
    jobs.damage_checkpoint(tmp_path / "checkpoints" / str(step), how)
  stderr = _run(tmp_path, *TWENTY_STEPS).stderr
  assert [int(s) for s in re.findall(r"Checkpoint step (\d+) in \S+ is damaged", stderr)] == list(damages)
  assert "Resumed from step 4." in stderr
  assert "Event loop is closed" not in stderr and "overriding" not in stderr

  (step_a, a), (step_b, b) = jobs.final_state(straight_run), jobs.final_state(tmp_path)
  assert step_a == step_b == 20
  jobs.assert_same_state(a, b)
  rows = [[(r["step"], r.get("loss"), r.get("knn_top1")) for r in loop.read_metrics(run)]
          for run in (straight_run, tmp_path)]
  assert rows[1] == rows[0]
  jobs.assert_events_match_metrics(tmp_path)


# Mask and loss groups default to each device's batch; pinned so that 1 and 8 devices draw the same
# masks and compute KoLeo and the iBOT centre over the same images.
THREE_STEPS = ["--config.total_steps=3", "--config.eval.every=0", "--config.checkpoint.every=3",
               "--config.ibot.mask_group=2", "--config.loss_group=2"]


@pytest.fixture(scope="module")
def one_device_losses(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("one_device")
  _run(workdir, *THREE_STEPS, devices=1)
  return jobs.losses(workdir)


@pytest.mark.parametrize("overrides", [
    ["--config.mesh.data=-1"], ["--config.mesh.data=1", "--config.mesh.fsdp=-1", "--config.model.scan_blocks=True"],
    ["--config.mesh.data=-1", "--config.model.attention=pallas"]], ids=["data8", "fsdp8_scan", "pallas"])
def test_eight_devices_equal_one_device(tmp_path, overrides, one_device_losses):
  _run(tmp_path, *THREE_STEPS, *overrides, devices=8)
  eight = jobs.losses(tmp_path)
  np.testing.assert_allclose([eight[s] for s in (1, 2, 3)], [one_device_losses[s] for s in (1, 2, 3)],
                             rtol=2e-5)


def test_non_finite_loss_stops_with_the_step_and_keeps_the_last_good_checkpoint(tmp_path):
  # An absurd learning rate blows the params up within a few steps of warmup.
  result = _run(tmp_path, "--config.total_steps=12", "--config.eval.every=0", "--config.checkpoint.every=1",
                "--config.optim.base_lr=1e30", check=False)
  assert result.returncode != 0
  assert "Non-finite loss at step" in result.stderr and "last good checkpoint is step" in result.stderr
  step, state = jobs.final_state(tmp_path)
  assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(state["params"]))


def test_a_new_phase_starts_from_an_earlier_run(tmp_path, straight_run, capsys):
  # Larger crops (the high-resolution phase, in miniature), zero lr: the weights must be the first run's.
  _run(tmp_path, "--config.total_steps=1", "--config.eval.every=0", "--config.checkpoint.every=1",
       "--config.crops.global_size=48", "--config.crops.local_size=24", "--config.optim.base_lr=0.0",
       f"--config.init_from={straight_run}")
  (_, low), (_, high) = jobs.final_state(straight_run), jobs.final_state(tmp_path)
  assert int(high["step"]) == 1
  jobs.assert_same_state(low["params"], high["params"])

  # The two runs side by side: what their configs change, their losses and evaluations.
  report.main([str(straight_run), str(tmp_path), "--plot", str(tmp_path / "report.png")])
  out = capsys.readouterr().out
  table = {cells[0]: cells[1:] for cells in (re.split(r"\s{2,}", line.strip()) for line in out.splitlines())}
  assert table["config crops.global_size"] == ["32", "48"]
  assert table["loss (last)"] == [f"{jobs.losses(straight_run)[20]:.4g} @20", f"{jobs.losses(tmp_path)[1]:.4g} @1"]
  assert table["knn_top1 (best)"] == [f"{_knn(straight_run)[0]:.4g} @20", "-"]
  assert (tmp_path / "report.png").read_bytes().startswith(b"\x89PNG")
