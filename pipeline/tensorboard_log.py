"""TensorBoard events of a run (``train.tensorboard``): every line of ``metrics.jsonl`` as scalars and every
validation preview (:mod:`pipeline.validation`) as an image, in ``<run>/tensorboard/``, so ``tensorboard
--logdir outputs`` shows all runs side by side while they train. Written with torch's ``SummaryWriter``,
which needs the ``tensorboard`` package (``pip install '.[tensorboard]'``). metrics.jsonl stays the run's
record: the events are a view of it, flushed every few seconds.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np

from pipeline.types import NLSError

#: the events' folder under the run
TENSORBOARD_DIR = "tensorboard"
#: seconds between flushes to disk (SummaryWriter's default is 120)
FLUSH_SECONDS = 10


def check_tensorboard(option: str) -> None:
    """NLSError naming ``option`` (how the user asked for events) when the tensorboard package, which torch's
    writer needs, is not installed. Looked up without importing it (or torch), so ``nls batch`` checks it too."""
    import importlib.util

    if importlib.util.find_spec("tensorboard") is None:
        raise NLSError(f"{option} needs the tensorboard package, which is not installed; install it with pip "
                       f"install '.[tensorboard]' (or pip install tensorboard), or leave it off (metrics.jsonl and "
                       f"nls report have the same figures)")


class TensorBoardLog:
    """Scalars and images of one training session. ``resume_step``: the checkpoint's step when the run
    resumes; events logged after it by the stopped session are dropped, as metrics.jsonl's lines are."""

    def __init__(self, run_dir: Path, resume_step: Optional[int] = None) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.folder = run_dir / TENSORBOARD_DIR
        self.writer = SummaryWriter(str(self.folder), flush_secs=FLUSH_SECONDS,
                                    purge_step=None if not resume_step else resume_step + 1)

    def scalars(self, record: dict) -> None:
        """Every number of a metrics.jsonl ``record`` but ``step`` and ``time``, at its ``step``."""
        step = int(record["step"])
        for key, value in record.items():
            if key not in ("step", "time") and isinstance(value, (int, float)) and not isinstance(value, bool):
                self.writer.add_scalar(key, value, step)

    def image(self, tag: str, image: np.ndarray, step: int) -> None:
        """An (H, W, 3) uint8 image at ``step``."""
        self.writer.add_image(tag, image, step, dataformats="HWC")

    def close(self) -> None:
        """Flush and close the event file."""
        self.writer.close()
