"""The attempt's metrics as a TensorBoard event file, uploaded beside its checkpoints.

Every numeric metric the job reports (and the worker's ``sys/`` samples) becomes a scalar at its step and wall
time, so ``tensorboard --logdir`` on a downloaded job shows the same curves as the job page. The file is written
in a folder of the worker's own, outside the job's folder (the job cannot swap it for a link to a file of the
worker's), and uploaded as the artifact ``tensorboard/events.out.tfevents.<start>.<job>-<attempt>``: a top-level
folder, not under ``output/``, so it is never taken for a checkpoint to resume from. The file name carries no
host name (tensorboardX's own writer would put the donor's there).
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any

__all__ = ["EventWriter"]

log = logging.getLogger(__name__)


class EventWriter:
    """Appends scalars to one event file in ``folder``; ``artifact_path`` is where it is uploaded."""

    def __init__(self, folder: Path, job_id: str, attempt: int):
        from tensorboardX.proto.event_pb2 import Event
        from tensorboardX.record_writer import RecordWriter

        folder.mkdir(parents=True, exist_ok=True)
        name = f"events.out.tfevents.{int(time.time())}.{job_id}-{attempt}"
        self.file = folder / name
        self.artifact_path = f"tensorboard/{name}"
        # RecordWriter, not tensorboardX's EventsWriter: that one names the file after the host
        self._writer = RecordWriter(str(self.file))
        self._writer.write(Event(wall_time=time.time(), file_version="brain.Event:2").SerializeToString())
        self._writer.flush()
        self._dirty = False

    def add(self, records: list[dict[str, Any]]) -> int:
        """Write each numeric metric of ``records`` (``{step, ts, metrics}``); returns how many scalars."""
        from tensorboardX.proto.event_pb2 import Event
        from tensorboardX.proto.summary_pb2 import Summary

        n = 0
        for rec in records:
            values = []
            for tag, value in (rec.get("metrics") or {}).items():
                if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                    continue
                values.append(Summary.Value(tag=str(tag)[:256], simple_value=float(value)))
            if values:
                event = Event(wall_time=float(rec.get("ts") or time.time()), step=int(rec.get("step") or 0),
                              summary=Summary(value=values))
                self._writer.write(event.SerializeToString())
                n += len(values)
        if n:
            self._writer.flush()
            self._dirty = True
        return n

    def take_dirty(self) -> bool:
        """Whether scalars were added since the last call (then the file is worth uploading again)."""
        dirty, self._dirty = self._dirty, False
        return dirty

    def close(self) -> None:
        try:
            self._writer.close()
        except Exception:
            log.warning("closing %s failed", self.file, exc_info=True)
