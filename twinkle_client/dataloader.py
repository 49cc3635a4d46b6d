"""A server-side ``DataLoader`` (http.md §9.4) over a server-side dataset: batches come back as lists of rows
(or, after ``set_processor``, the processor's tensors as nested lists).

>>> loader = DataLoader(dataset=ds, batch_size=4)
>>> for batch in loader:
...     model.forward_backward(inputs=batch)
"""

from __future__ import annotations

from typing import Any

from twinkle_client.processor import RemoteObject

__all__ = ["DataLoader"]


class DataLoader(RemoteObject):
    processor_type = "dataloader"

    def __init__(self, dataset: Any, **kwargs: Any) -> None:
        super().__init__(dataset=dataset, **kwargs)

    def __iter__(self) -> DataLoader:
        self._call("__iter__")  # a fresh pass on the server
        return self

    def __next__(self) -> Any:
        return self._call("__next__")  # the server's 410 ends the loop (StopIteration)

    def __len__(self) -> int:
        return int(self._call("__len__"))

    def set_processor(self, processor: Any = "InputProcessor", **kwargs: Any) -> None:
        self._call("set_processor", processor=processor, **kwargs)

    def skip_consumed_samples(self, consumed_train_samples: int) -> None:
        self._call("skip_consumed_samples", consumed_train_samples=consumed_train_samples)

    def resume_from_checkpoint(self, consumed_train_samples: int) -> None:
        self._call("resume_from_checkpoint", consumed_train_samples=consumed_train_samples)

    def get_state(self) -> dict[str, int]:
        return self._call("get_state")
