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

Annealing (``decay_datasets`` + a :class:`~hf_wsd.data.mixture.MixturePlan`): inside a decay window the slots of
an update are filled from several named sources, each at its own position (:mod:`hf_wsd.data.mixture`); the
feed then needs the path as well as the step (``micro_batch(step, micro, branch)``). Each decay source is
map-style or a stream like the main data, with its own permutation seed, shard and saved state.
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Iterator

import numpy as np

from .mixture import MAIN, MixturePlan, source_seed

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

    def __init__(self, dataset: Any, seed: int | list[int], shuffle: bool = True, field: str = "train_dataset"):
        if len(dataset) == 0:
            raise ValueError(f"`{field}` is empty: it has no example to train on.")
        self.dataset, self.seed, self.shuffle = dataset, seed, shuffle
        self.size = len(dataset)
        self._permutations: dict[int, np.ndarray] = {}

    def permutation(self, epoch: int) -> np.ndarray:
        if epoch not in self._permutations:
            if len(self._permutations) >= 2:  # a batch spans at most two epochs
                self._permutations.pop(min(self._permutations))
            key = [*self.seed, epoch] if isinstance(self.seed, list) else [self.seed, epoch]
            order = np.random.default_rng(key).permutation(self.size) if self.shuffle else None
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
    """Examples of a stream, in order; its position is the dataset's ``state_dict()`` (or a count).

    Until it yields an example (after it is built or restored) its state is the one it started from: a stream's
    own ``state_dict()`` says nothing reliable before it is read (a probe may have read it), and a decay stream is
    snapshotted at WSD branch points long before its first window.
    """

    def __init__(self, dataset: Any, field: str = "train_dataset"):
        self.dataset, self.field = dataset, field
        self.stateful = callable(getattr(dataset, "state_dict", None)) and callable(
            getattr(dataset, "load_state_dict", None)
        )
        self.epoch, self.consumed = 0, 0
        self._iterator: Iterator | None = None
        self._start: dict = {"epoch": 0, "consumed": 0}  # the state until the next example is read
        self._read_since_start = False

    def _next(self) -> dict:
        if self._iterator is None:
            self._iterator = iter(self.dataset)
        for _ in range(2):
            try:
                example = next(self._iterator)
                self.consumed += 1
                self._read_since_start = True
                return example
            except StopIteration:  # the next pass over the stream (reshuffled if the dataset shuffles)
                self.epoch += 1
                if hasattr(self.dataset, "set_epoch"):
                    self.dataset.set_epoch(self.epoch)
                self._iterator = iter(self.dataset)
        raise ValueError(f"`{self.field}` yields no example: the stream is empty.")

    def take(self, n: int) -> list[dict]:
        return [self._next() for _ in range(n)]

    def state_dict(self) -> dict:
        if not self._read_since_start:
            return dict(self._start)
        state: dict[str, Any] = {"epoch": self.epoch, "consumed": self.consumed}
        if self.stateful:
            state["dataset"] = self.dataset.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.consumed = state["epoch"], state["consumed"]
        self._start, self._read_since_start = dict(state), False
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(self.epoch)
        if self.stateful and "dataset" in state:
            self.dataset.load_state_dict(state["dataset"])
            self._iterator = iter(self.dataset)
            return
        if self.stateful and not is_map_style(self.dataset) and _is_datasets_stream(self.dataset):
            self.dataset.load_state_dict(None)  # never read when saved: start over (forget a state loaded before)
        elif self.consumed:
            logger.warning(
                "the stream `%s` has no state_dict(): re-reading %d examples to get back to its position "
                "(a datasets.IterableDataset resumes without re-reading)", self.field, self.consumed,
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
        decay_datasets: named decay sources (map-style or streaming) for ``mixture``.
        mixture: which source fills each slot inside the decay windows (:class:`~hf_wsd.data.mixture.MixturePlan`).
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
        decay_datasets: dict[str, Any] | None = None,
        mixture: MixturePlan | None = None,
    ):
        self.collator = collator
        self.batch_size, self.accumulation, self.world_size, self.rank = batch_size, accumulation, world_size, rank
        self.global_batch = batch_size * accumulation * world_size
        self.map_source, self.stream = self._source(dataset, seed, shuffle, MAIN)
        self.mixture = mixture
        if mixture is not None and mixture.examples_per_update != self.global_batch:
            raise ValueError(
                f"the mixture plan is for {mixture.examples_per_update} examples per update, the feed makes "
                f"{self.global_batch}: build it with examples_per_update={self.global_batch}."
            )
        decay_datasets = decay_datasets or {}
        missing = [name for name in (() if mixture is None else mixture.sources[1:]) if name not in decay_datasets]
        if missing:
            raise ValueError(f"the mixture draws from {missing}, which `decay_datasets` lacks: pass them by name.")
        self.decay_sources = {
            name: self._source(decay_datasets[name], seed, shuffle, name)
            for name in (() if mixture is None else mixture.sources[1:])
        }
        self._last: tuple[int, int] | None = None

    def _source(self, dataset: Any, seed: int, shuffle: bool, name: str):
        """``(MapSource, None)`` or ``(None, StreamSource)`` for the dataset of source ``name``."""
        field = "train_dataset" if name == MAIN else f"decay_datasets[{name!r}]"
        if is_map_style(dataset):
            return MapSource(dataset, seed if name == MAIN else source_seed(seed, name), shuffle, field), None
        return None, StreamSource(_shard_stream(dataset, self.world_size, self.rank, field), field)

    per_rank = True  # each rank reads its own share of a stream

    @property
    def streaming(self) -> bool:
        return self.stream is not None

    @property
    def needs_state(self) -> bool:
        """A stream's position must come from a checkpoint; map-style data is positioned by the step alone."""
        return self.stream is not None or any(stream is not None for _, stream in self.decay_sources.values())

    def positions(self, step: int, micro: int) -> np.ndarray:
        """Global slots of micro-batch ``micro`` of update ``step`` on this rank."""
        start = step * self.global_batch + micro * self.batch_size * self.world_size + self.rank * self.batch_size
        return np.arange(start, start + self.batch_size, dtype=np.int64)

    def epochs(self, step: int, branch: int | None = None) -> float:
        """Passes over the training data after ``step`` updates on the path of ``branch``: examples of the main source
        fed so far over its length (decay sources not counted). A stream's length is unknown until it ends: its
        completed passes."""
        if self.map_source is None:
            return float(self.stream.epoch)
        fed = step * self.global_batch if self.mixture is None else self.mixture.positions(step, branch)[MAIN]
        return fed / self.map_source.size

    def micro_batch(self, step: int, micro: int, branch: int | None = None) -> Any:
        """Micro-batch ``micro`` of update ``step`` on the path of ``branch`` (a WSD branch's budget index, or
        ``None`` for the main path; it matters only with a mixture)."""
        if self.needs_state:  # some source is a stream, read in order
            expected = (step, micro) if self._last is None else _after(self._last, self.accumulation)
            if (step, micro) != expected and self._last is not None:
                raise RuntimeError(
                    f"the training stream was asked for update {step} micro-batch {micro} after {self._last}: streams "
                    "are read in order; restore the feed's state first."
                )
        if self.mixture is None:
            rows = self.stream.take(self.batch_size) if self.stream is not None else (
                self.map_source.rows(self.positions(step, micro))
            )
        else:
            rows = self._mixed_rows(step, micro, branch)
        self._last = (step, micro)
        return self.collator(rows)

    def _mixed_rows(self, step: int, micro: int, branch: int | None) -> list[dict]:
        sources, positions = self.mixture.slots(step, branch)
        first = micro * self.batch_size * self.world_size + self.rank * self.batch_size
        sources, positions = sources[first : first + self.batch_size], positions[first : first + self.batch_size]
        rows: list[Any] = [None] * self.batch_size
        for index, name in enumerate(self.mixture.sources):
            slots = np.flatnonzero(sources == index)
            if not len(slots):
                continue
            map_source, stream = (self.map_source, self.stream) if name == MAIN else self.decay_sources[name]
            taken = stream.take(len(slots)) if stream is not None else map_source.rows(positions[slots])
            for slot, row in zip(slots, taken):
                rows[slot] = row
        return rows

    def state_dict(self) -> dict:
        """What a checkpoint or a branch snapshot must keep: the streams' positions (nothing for map-style data)."""
        if not self.needs_state:
            return {}
        state: dict[str, Any] = {"last": self._last}
        if self.stream is not None:
            state["stream"] = self.stream.state_dict()
        decay = {name: stream.state_dict() for name, (_, stream) in self.decay_sources.items() if stream is not None}
        if decay:
            state["decay_streams"] = decay
        return state

    def load_state_dict(self, state: dict) -> None:
        if not state or not self.needs_state:
            return
        if self.stream is not None:
            self.stream.load_state_dict(state["stream"])
        for name, (_, stream) in self.decay_sources.items():
            if stream is not None:
                saved = state.get("decay_streams", {}).get(name)
                if saved is None:
                    raise ValueError(
                        f"the saved data feed holds no position of the decay stream {name!r}: it was written by a run "
                        "without it. Resume with the decay sources that run had, or start over."
                    )
                stream.load_state_dict(saved)
        self._last = tuple(state["last"]) if state.get("last") is not None else None


def _is_datasets_stream(dataset: Any) -> bool:
    try:
        import datasets
    except ImportError:  # pragma: no cover - datasets is a dependency
        return False
    return isinstance(dataset, datasets.IterableDataset)


def _after(last: tuple[int, int], accumulation: int) -> tuple[int, int]:
    step, micro = last
    return (step, micro + 1) if micro + 1 < accumulation else (step + 1, 0)


def _shard_stream(dataset: Any, world_size: int, rank: int, field: str = "train_dataset") -> Any:
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
        f"`{field}` is a stream that is not a datasets.IterableDataset: shard it per process yourself "
        "(each rank must see its own examples), or use a datasets.IterableDataset."
    )


class FeedLoader:
    """What the Trainer iterates: an endless iterable with no length, making each micro-batch on demand.

    ``position()`` returns where the trainer is: its global step, or ``(step, branch)`` with the WSD branch it is
    on (``None`` on the main path); the micro-batch index counts the calls within that update.
    """

    def __init__(self, feed: UpdateFeed, position: Callable[[], int | tuple[int, int | None]]):
        self.feed, self.position = feed, position

    def __iter__(self) -> Iterator[Any]:
        where, micro = None, 0
        while True:
            current = self.position()
            micro = micro + 1 if current == where else 0
            where = current
            step, branch = current if isinstance(current, tuple) else (current, None)
            yield self.feed.micro_batch(step, micro, branch)
