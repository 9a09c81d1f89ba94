"""The training data feed: the micro-batches of every update as a function of where the run is.

WSD needs to put the data stream back where it was: after a crash (resume), and after every WSD side branch
(the branch trains on the data the main branch sees next, and the main branch then sees it again). The feed
makes both O(1):

- **Map-style data** (a ``datasets.Dataset``, a token folder, any dataset with ``len`` and indexing): the examples
  of update ``t`` are a pure function of ``(seed, t, micro-batch, rank)`` — a seeded permutation per epoch,
  as in Levanter (``iter_from_step``) and OLMo-core —, so a resume or a branch restore only sets the step.
- **Streaming data** (a ``datasets.IterableDataset``, or any iterable with ``state_dict``/``load_state_dict``):
  read in order; its position is the dataset's own ``state_dict()``, saved with every checkpoint and with
  every in-memory branch snapshot, so nothing consumed is read again. A plain iterable without state is
  re-read up to its position on resume (logged: slow at scale).

The Trainer iterates :class:`FeedLoader`, an iterable with no length and no prefetch: each micro-batch is made
when the loop asks for it, for the update the trainer is at, so a restore between updates is exact.

Global slots: update ``t`` consumes ``G = per_device_batch × accumulation × world_size`` examples; micro-batch
``j`` of rank ``r`` takes slots ``t·G + j·B·W + r·B … + B``. The union over ranks of micro-batch ``j`` is the
micro-batch ``j`` of a single process with batch ``B·W``: a DDP run sees the data of the 1-process run with the
same global batch.
"""

from __future__ import annotations

import copy
import logging
from typing import Any, Callable, Iterator

import numpy as np

logger = logging.getLogger(__name__)


def is_map_style(dataset: Any) -> bool:
    """Random access by index with a length (``datasets.Dataset``, token folders, ``torch`` map-style datasets)."""
    try:
        import datasets

        if isinstance(dataset, datasets.IterableDataset):
            return False
    except ImportError:  # pragma: no cover - datasets is a dependency
        pass
    return hasattr(dataset, "__len__") and hasattr(dataset, "__getitem__")


class MapSource:
    """Examples of a map-style dataset at global positions: position ``p`` is example ``perm_e[p mod N]`` of epoch
    ``e = p // N``, with ``perm_e`` a permutation seeded by ``(seed, e)`` (or the identity without shuffling)."""

    def __init__(self, dataset: Any, seed: int, shuffle: bool = True):
        if len(dataset) == 0:
            raise ValueError("`train_dataset` is empty: it has no example to train on.")
        self.dataset, self.seed, self.shuffle = dataset, seed, shuffle
        self.size = len(dataset)
        self._permutations: dict[int, np.ndarray] = {}

    def permutation(self, epoch: int) -> np.ndarray:
        if epoch not in self._permutations:
            if len(self._permutations) >= 2:  # a batch spans at most two epochs
                self._permutations.pop(min(self._permutations))
            order = np.random.default_rng([self.seed, epoch]).permutation(self.size) if self.shuffle else None
            self._permutations[epoch] = np.arange(self.size) if order is None else order
        return self._permutations[epoch]

    def indices(self, positions: np.ndarray) -> list[int]:
        epochs, offsets = np.divmod(positions, self.size)
        return [int(self.permutation(int(e))[o]) for e, o in zip(epochs, offsets)]

    def rows(self, positions: np.ndarray) -> list[dict]:
        indices = self.indices(positions)
        getitems = getattr(self.dataset, "__getitems__", None)
        return list(getitems(indices)) if getitems is not None else [self.dataset[i] for i in indices]


class StreamSource:
    """Examples of a stream, in order; its position is the dataset's ``state_dict()`` (or a count)."""

    def __init__(self, dataset: Any):
        self.dataset = dataset
        self.stateful = callable(getattr(dataset, "state_dict", None)) and callable(
            getattr(dataset, "load_state_dict", None)
        )
        self.epoch, self.consumed = 0, 0
        self._iterator: Iterator | None = None
        self._loaded: dict | None = None  # a state loaded and not yet read past (see state_dict)

    def _next(self) -> dict:
        if self._iterator is None:
            self._iterator = iter(self.dataset)
        for _ in range(2):
            try:
                example = next(self._iterator)
                self.consumed += 1
                self._loaded = None
                return example
            except StopIteration:  # the next pass over the stream (reshuffled if the dataset shuffles)
                self.epoch += 1
                if hasattr(self.dataset, "set_epoch"):
                    self.dataset.set_epoch(self.epoch)
                self._iterator = iter(self.dataset)
        raise ValueError("`train_dataset` yields no example: the stream is empty.")

    def take(self, n: int) -> list[dict]:
        return [self._next() for _ in range(n)]

    def state_dict(self) -> dict:
        if self._loaded is not None:
            # A datasets stream reports a loaded state only once it iterates again: until then, the loaded one.
            return copy.deepcopy(self._loaded)
        state: dict[str, Any] = {"epoch": self.epoch, "consumed": self.consumed}
        if self.stateful:
            state["dataset"] = self.dataset.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.consumed = state["epoch"], state["consumed"]
        self._loaded = copy.deepcopy(state)
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(self.epoch)
        if self.stateful:
            self.dataset.load_state_dict(state["dataset"])
            self._iterator = iter(self.dataset)
            return
        logger.warning(
            "the training stream has no state_dict(): re-reading %d examples to get back to its position "
            "(a datasets.IterableDataset resumes without re-reading)", self.consumed,
        )
        self._iterator = iter(self.dataset)
        for _ in range(self.consumed):
            next(self._iterator)


class UpdateFeed:
    """The micro-batches of the run: ``micro_batch(step, micro)`` for map-style data, in order for streams.

    Args:
        dataset: the training data (map-style or streaming).
        collator: turns a list of rows into a batch (the Trainer's ``data_collator``).
        batch_size, accumulation, world_size, rank: the batch geometry (per-device batch, micro-batches per
            update, processes, this process).
        seed: seed of the per-epoch permutations (map-style data).
    """

    def __init__(
        self,
        dataset: Any,
        collator: Callable[[list[dict]], Any],
        batch_size: int,
        accumulation: int,
        world_size: int = 1,
        rank: int = 0,
        seed: int = 0,
        shuffle: bool = True,
    ):
        self.collator = collator
        self.batch_size, self.accumulation, self.world_size, self.rank = batch_size, accumulation, world_size, rank
        self.global_batch = batch_size * accumulation * world_size
        if is_map_style(dataset):
            self.map_source, self.stream = MapSource(dataset, seed, shuffle), None
        else:
            self.map_source, self.stream = None, StreamSource(_shard_stream(dataset, world_size, rank))
        self._last: tuple[int, int] | None = None

    per_rank = True  # each rank reads its own share of a stream

    @property
    def streaming(self) -> bool:
        return self.stream is not None

    @property
    def needs_state(self) -> bool:
        """A stream's position must come from a checkpoint; map-style data is positioned by the step alone."""
        return self.stream is not None

    def positions(self, step: int, micro: int) -> np.ndarray:
        """Global slots of micro-batch ``micro`` of update ``step`` on this rank."""
        start = step * self.global_batch + micro * self.batch_size * self.world_size + self.rank * self.batch_size
        return np.arange(start, start + self.batch_size, dtype=np.int64)

    def micro_batch(self, step: int, micro: int) -> Any:
        if self.stream is not None:
            expected = (step, micro) if self._last is None else _after(self._last, self.accumulation)
            if (step, micro) != expected and self._last is not None:
                raise RuntimeError(
                    f"the training stream was asked for update {step} micro-batch {micro} after {self._last}: streams "
                    "are read in order; restore the feed's state first."
                )
            rows = self.stream.take(self.batch_size)
        else:
            rows = self.map_source.rows(self.positions(step, micro))
        self._last = (step, micro)
        return self.collator(rows)

    def state_dict(self) -> dict:
        """What a checkpoint or a branch snapshot must keep: the stream's position (nothing for map-style data)."""
        return {} if self.stream is None else {"stream": self.stream.state_dict(), "last": self._last}

    def load_state_dict(self, state: dict) -> None:
        if self.stream is not None and state:
            self.stream.load_state_dict(state["stream"])
            self._last = tuple(state["last"]) if state.get("last") is not None else None


def _after(last: tuple[int, int], accumulation: int) -> tuple[int, int]:
    step, micro = last
    return (step, micro + 1) if micro + 1 < accumulation else (step + 1, 0)


def _shard_stream(dataset: Any, world_size: int, rank: int) -> Any:
    """This rank's share of a stream (``datasets.distributed.split_dataset_by_node`` for ``datasets`` streams)."""
    if world_size == 1:
        return dataset
    try:
        import datasets
        from datasets.distributed import split_dataset_by_node

        if isinstance(dataset, datasets.IterableDataset):
            return split_dataset_by_node(dataset, rank=rank, world_size=world_size)
    except ImportError:  # pragma: no cover
        pass
    raise ValueError(
        "`train_dataset` is a stream that is not a datasets.IterableDataset: shard it per process yourself "
        "(each rank must see its own examples), or use a datasets.IterableDataset."
    )


class FeedLoader:
    """What the Trainer iterates: an endless iterable with no length, making each micro-batch on demand.

    ``position()`` returns the update the trainer is at (its global step); the micro-batch index counts the
    calls within that update.
    """

    def __init__(self, feed: UpdateFeed, position: Callable[[], int]):
        self.feed, self.position = feed, position

    def __iter__(self) -> Iterator[Any]:
        step, micro = None, 0
        accumulation = self.feed.accumulation
        while True:
            current = self.position()
            # An update takes `accumulation` micro-batches: after the last one the count starts again even when the
            # position is the same (a WSD branch of one update ends back at the step it started from).
            micro = (micro + 1) % accumulation if current == step else 0
            step = current
            yield self.feed.micro_batch(step, micro)
