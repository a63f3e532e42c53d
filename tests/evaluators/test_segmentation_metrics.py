import numpy as np

from dinojax.evaluators import segmentation as metrics


def test_confusion_matrix_and_miou_by_hand():
  labels = np.array([[0, 0, 1, 1], [2, 2, 255, 1]])
  preds = np.array([[0, 1, 1, 1], [2, 0, 2, 0]])
  conf = np.asarray(metrics.confusion_matrix(labels, preds, num_classes=4))
  # Rows: ground truth 0, 1, 2, 3; the pixel labelled 255 is ignored.
  expected = np.array([[1, 1, 0, 0],
                       [1, 2, 0, 0],
                       [1, 0, 1, 0],
                       [0, 0, 0, 0]])
  np.testing.assert_array_equal(conf, expected)
  iou = metrics.iou_per_class(conf)
  np.testing.assert_allclose(iou[:3], [1 / 4, 2 / 4, 1 / 2])
  assert np.isnan(iou[3])  # absent from both: left out of the mean
  assert metrics.mean_iou(conf) == np.mean([1 / 4, 2 / 4, 1 / 2])


def test_accumulates_over_images():
  rng = np.random.default_rng(0)
  a, b = (rng.integers(0, 3, size=(2, 5, 7)) for _ in range(2))
  total = sum(np.asarray(metrics.confusion_matrix(a[i], b[i], num_classes=3)) for i in range(2))
  np.testing.assert_array_equal(total, metrics.confusion_matrix(a, b, num_classes=3))
  assert total.sum() == a.size
