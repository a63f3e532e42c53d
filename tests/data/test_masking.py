import numpy as np

from dinojax.data.masking import BlockMasking, sample_masks


def test_masked_counts_follow_the_ratio_schedule():
  rng = np.random.default_rng(0)
  masks, upper = sample_masks(rng, batch=64, grid=(16, 16))
  counts = masks.sum(1)
  assert masks.shape == (64, 256) and masks.dtype == bool
  assert (counts == 0).sum() == 32                      # mask_probability 0.5
  masked = np.sort(counts[counts > 0])
  assert masked.min() >= 4 and masked.max() <= 0.5 * 256
  # The 32 targets span linspace(0.1, 0.5): the masked fractions spread over that range.
  assert 0.08 <= masked.min() / 256 <= 0.15 and masked.max() / 256 >= 0.4
  assert counts.sum() <= upper


def test_masks_are_rectangles_of_bounded_aspect():
  rng = np.random.default_rng(1)
  gen = BlockMasking((14, 14), max_num_patches=98)
  for _ in range(20):
    mask = np.zeros((14, 14), bool)
    added = gen._add_block(mask, 30, rng)
    if added:
      rows, cols = np.nonzero(mask)
      h, w = np.ptp(rows) + 1, np.ptp(cols) + 1
      assert mask[rows.min():rows.max() + 1, cols.min():cols.max() + 1].all()  # a solid block
      assert 0.3 / 1.5 <= h / w <= 1.5 / 0.3 and h * w <= 30


def test_deterministic_given_seed():
  a, _ = sample_masks(np.random.default_rng(7), 8, (7, 7))
  b, _ = sample_masks(np.random.default_rng(7), 8, (7, 7))
  c, _ = sample_masks(np.random.default_rng(8), 8, (7, 7))
  np.testing.assert_array_equal(a, b)
  assert (a != c).any()


def test_requests_reach_their_target_when_they_fit():
  gen = BlockMasking((16, 16), max_num_patches=128)
  counts = [gen(60, np.random.default_rng(s)).sum() for s in range(20)]
  assert np.mean(np.abs(np.array(counts) - 60) <= 6) >= 0.8
