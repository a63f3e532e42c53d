"""TensorBoard event files of a run, beside its metrics.jsonl: `tensorboard --logdir WORKDIR`.

Written with tensorboardX's synchronous event writer (tensorboardX's `SummaryWriter` queues events
for a thread, and its flush does not wait for that queue): each write is on disk when it returns, so
a killed run loses at most the interval it was in.
"""

import itertools
import os
import sys
import time

import numpy as np

# tensorboardX's package import loads PyTorch when it is installed, for torch.Tensor inputs these
# writers never pass: about a second of every job's start (and of each process the tests launch).
# Torch is hidden from that import only (an absent module reads as not installed); when torch is
# already loaded nothing changes, and a later `import torch` loads it as usual.
_HIDE_TORCH = "torch" not in sys.modules
if _HIDE_TORCH:
  sys.modules["torch"] = None
try:
  from tensorboardX import summary
  from tensorboardX.event_file_writer import EventsWriter
  from tensorboardX.proto.event_pb2 import Event, SessionLog
  from tensorboardX.proto.summary_pb2 import Summary
finally:
  if _HIDE_TORCH:
    del sys.modules["torch"]

_FILE_NUMBER = itertools.count()  # two writers of one process in the same second get two files


class EventWriter:
  """Scalars and images into a new event file in `logdir`, opened at the first write.

  `purge_step`: this file continues a run that was resumed there. Readers (TensorBoard, its
  `EventAccumulator`) drop the earlier files' events at `purge_step` and later, which the run died
  before checkpointing and now writes again: TensorBoard's own convention for a restart, as
  metrics.jsonl drops those rows.
  """

  def __init__(self, logdir: str, purge_step: int | None = None):
    self.logdir, self.purge_step = logdir, purge_step
    self._file = None

  def _events(self) -> EventsWriter:
    if self._file is None:
      os.makedirs(self.logdir, exist_ok=True)
      self._file = EventsWriter(os.path.join(self.logdir, "events"),
                                f".{os.getpid()}.{next(_FILE_NUMBER)}")
      if self.purge_step is not None:
        self._file.write_event(Event(wall_time=time.time(), step=self.purge_step,
                                     session_log=SessionLog(status=SessionLog.START)))
    return self._file

  def _write(self, step: int, values: list) -> None:
    events = self._events()
    events.write_event(Event(wall_time=time.time(), step=step, summary=Summary(value=values)))
    events.flush()

  def scalars(self, step: int, metrics: dict) -> None:
    """One scalar series per metric, tagged with its metrics.jsonl name."""
    self._write(step, [Summary.Value(tag=k, simple_value=float(v)) for k, v in metrics.items()])

  def images(self, step: int, images: dict[str, np.ndarray]) -> None:
    """(h, w, 3) uint8 pictures, one image series per name."""
    self._write(step, [v for name, image in images.items()
                       for v in summary.image(name, image, dataformats="HWC").value])

  def close(self) -> None:
    if self._file is not None:
      self._file.close()
      self._file = None
