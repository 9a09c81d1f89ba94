"""Token folders: flat token arrays on disk (nanoGPT / OLMo / datatrove convention), memory-mapped as a map-style
dataset of fixed blocks, so random access and exact resume are O(1).

Layout (``metadata.json`` is the only required file besides the arrays)::

    metadata.json            {"format": "hf_wsd-tokens-v1", "dtype": "uint16", "eos_token_id": 0, "vocab_size": 4096,
                              "max_token_id": 4095, "train_files": [{"path": "train-00000.bin", "tokens": N}, ...],
                              "heldout_files": [...], "tokenizer": "tokenizer", ...}
    train-00000.bin ...      raw little-endian ids (or .npy arrays); the files concatenated are the token stream
    heldout.bin              the held-out documents' tokens
    heldout_documents.jsonl  held-out texts (bundled benchmarks); train_sample.jsonl: a bounded training sample
    tokenizer/               a from_pretrained folder (or "tokenizer" names a Hub tokenizer)

Folders from other tools need only ``metadata.json`` with ``dtype``, ``eos_token_id``, ``vocab_size`` and
``train_files`` (paths, or ``{"path", "tokens"}``); a missing ``max_token_id`` is computed once (a full scan).
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterable

import numpy as np

try:  # a torch map-style dataset when torch is there (it always is for training); plain object otherwise
    from torch.utils.data import Dataset as _TorchDataset
except ImportError:  # pragma: no cover
    _TorchDataset = object

if TYPE_CHECKING:
    from datasets import Dataset

logger = logging.getLogger(__name__)

TOKEN_FOLDER_FORMAT = "hf_wsd-tokens-v1"
METADATA = "metadata.json"
DTYPES = {"uint16": 1 << 16, "uint32": 1 << 32, "int32": 1 << 31}
FILE_TOKENS = 1 << 30  # tokens per train file written by hf-wsd (2 GiB of uint16)


def is_token_folder(path: str | Path) -> bool:
    """Whether ``path`` is a folder with a token-folder ``metadata.json``."""
    candidate = Path(path).expanduser() / METADATA
    if not candidate.is_file():
        return False
    try:
        return "train_files" in json.loads(candidate.read_text())
    except (OSError, ValueError):
        return True  # a broken metadata file: let open_token_folder say what is wrong


def _fail(folder: Path, problem: str) -> ValueError:
    return ValueError(f"token folder {folder} (`corpus`): {problem}")


def _open_array(path: Path, dtype: str) -> np.ndarray:
    if path.suffix == ".npy":
        return np.load(path, mmap_mode="r")
    return np.memmap(path, dtype=np.dtype(dtype).newbyteorder("<"), mode="r")


@dataclass
class TokenFile:
    path: Path
    tokens: int


class TokenFolder:
    """A validated token folder: metadata checked against the files on disk when opened."""

    def __init__(self, folder: str | Path):
        self.folder = folder = Path(folder).expanduser().resolve()
        meta_path = folder / METADATA
        if not meta_path.is_file():
            raise _fail(folder, f"no {METADATA}; write one with dtype, eos_token_id, vocab_size and train_files.")
        try:
            self.metadata = meta = json.loads(meta_path.read_text())
        except ValueError as error:
            raise _fail(folder, f"{METADATA} is not valid JSON ({error}).") from error
        missing = [k for k in ("dtype", "eos_token_id", "vocab_size", "train_files") if k not in meta]
        if missing:
            raise _fail(folder, f"{METADATA} lacks {', '.join(missing)}.")
        self.dtype = str(meta["dtype"])
        if self.dtype not in DTYPES:
            raise _fail(folder, f"`dtype` {self.dtype!r} in {METADATA} is not one of {', '.join(DTYPES)}.")
        self.vocab_size, self.eos_token_id = int(meta["vocab_size"]), int(meta["eos_token_id"])
        if not 0 < self.vocab_size <= DTYPES[self.dtype]:
            raise _fail(folder, f"`vocab_size` {self.vocab_size} does not fit `dtype` {self.dtype}.")
        if not 0 <= self.eos_token_id < self.vocab_size:
            raise _fail(
                folder,
                f"`eos_token_id` {self.eos_token_id} is outside the vocabulary (`vocab_size` {self.vocab_size}).",
            )
        self.train_files = self._files(meta["train_files"], "train_files")
        if not self.train_files:
            raise _fail(folder, f"`train_files` in {METADATA} is empty.")
        self.heldout_files = self._files(meta.get("heldout_files", []), "heldout_files")
        self._max_token_id = meta.get("max_token_id")
        if self._max_token_id is not None and not self._max_token_id < self.vocab_size:
            raise _fail(folder, f"`max_token_id` {self._max_token_id} ≥ `vocab_size` {self.vocab_size}.")

    def _files(self, entries, field: str) -> list[TokenFile]:
        itemsize = np.dtype(self.dtype).itemsize
        files = []
        for entry in entries:
            name, tokens = (entry, None) if isinstance(entry, str) else (entry.get("path"), entry.get("tokens"))
            path = self.folder / str(name)
            if not path.is_file():
                raise _fail(self.folder, f"`{field}` lists {name}, which does not exist.")
            if path.suffix == ".npy":
                array = np.load(path, mmap_mode="r")
                if array.dtype != np.dtype(self.dtype) or array.ndim != 1:
                    raise _fail(
                        self.folder,
                        f"{name} holds {array.dtype}{list(array.shape)}; `dtype` says a flat {self.dtype} array.",
                    )
                size = len(array)
            else:
                size, remainder = divmod(path.stat().st_size, itemsize)
                if remainder:
                    raise _fail(
                        self.folder,
                        f"{name} has {path.stat().st_size} bytes, not a multiple of {itemsize} (`dtype` {self.dtype}).",
                    )
            if tokens is not None and int(tokens) != size:
                raise _fail(self.folder, f"{name} holds {size} tokens; `{field}` in {METADATA} says {tokens}.")
            files.append(TokenFile(path, size))
        return files

    @property
    def train_tokens(self) -> int:
        return sum(f.tokens for f in self.train_files)

    @property
    def max_token_id(self) -> int:
        """The largest id in the train and held-out files (from the metadata; else one chunked scan)."""
        if self._max_token_id is None:
            logger.warning(
                "%s has no max_token_id in %s: scanning %s tokens once", self.folder, METADATA, f"{self.train_tokens:,}"
            )
            highest = -1
            for file in self.train_files + self.heldout_files:
                array = _open_array(file.path, self.dtype)
                for start in range(0, len(array), 1 << 24):
                    highest = max(highest, int(array[start : start + (1 << 24)].max()))
            self._max_token_id = highest
            if highest >= self.vocab_size:
                raise _fail(self.folder, f"token id {highest} ≥ `vocab_size` {self.vocab_size}.")
        return int(self._max_token_id)

    def train(self, block_size: int) -> "TokenBlocks":
        return TokenBlocks([f.path for f in self.train_files], self.dtype, block_size, self.vocab_size)

    def heldout(self, block_size: int) -> "Dataset":
        """The held-out blocks as a small ``datasets.Dataset`` (read into memory)."""
        from datasets import Dataset

        from .streaming import block_features

        if not self.heldout_files:
            raise _fail(self.folder, f"no `heldout_files` in {METADATA}; a run needs held-out blocks.")
        blocks = TokenBlocks([f.path for f in self.heldout_files], self.dtype, block_size, self.vocab_size)
        if len(blocks) == 0:
            raise _fail(self.folder, f"its held-out tokens make no block of `block_size`={block_size}.")
        rows = np.stack([blocks[i]["input_ids"] for i in range(len(blocks))])
        return Dataset.from_dict({"input_ids": rows}, features=block_features(block_size, self.dtype))

    def documents(self, key: str, default: str) -> list[str]:
        from .prepare import read_documents

        return read_documents(self.folder / self.metadata.get(key, default))

    def tokenizer_path(self) -> str | None:
        name = self.metadata.get("tokenizer")
        if name is None:
            return None
        return str(self.folder / name) if (self.folder / name).is_dir() else str(name)


class TokenBlocks(_TorchDataset):
    """Map-style dataset of ``block_size`` blocks over memory-mapped token files read as one stream.

    ``ds[i]`` / ``ds.__getitems__(indices)`` → ``{"input_ids": numpy array}`` (compact dtype); picklable (the
    memory maps are reopened in each process). With ``vocab_size``, every block read is checked against it: an id
    outside the vocabulary (metadata that understates the largest id) is a ``ValueError`` naming the file and the
    token offset, not an index error deep inside the model.
    """

    def __init__(self, paths: Iterable[str | Path], dtype: str, block_size: int, vocab_size: int | None = None):
        self.paths = [str(p) for p in paths]
        self.dtype = dtype
        self.block_size = block_size
        self.vocab_size = vocab_size
        self._arrays: list[np.ndarray] | None = None
        sizes = [len(a) for a in self._open()]
        self.offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        self.n_blocks = int(self.offsets[-1]) // block_size

    def _open(self) -> list[np.ndarray]:
        if self._arrays is None:
            self._arrays = [_open_array(Path(p), self.dtype) for p in self.paths]
        return self._arrays

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_arrays": None}

    def __len__(self) -> int:
        return self.n_blocks

    def __getitem__(self, index: int) -> dict:
        if not -self.n_blocks <= index < self.n_blocks:
            raise IndexError(f"block {index} of {self.n_blocks}")
        index %= self.n_blocks
        start = index * self.block_size
        end = start + self.block_size
        arrays = self._open()
        first = int(np.searchsorted(self.offsets, start, side="right")) - 1
        local = start - int(self.offsets[first])
        if end <= self.offsets[first + 1]:
            block = np.asarray(arrays[first][local : local + self.block_size])
            return {"input_ids": self._checked(block, first, local)}
        pieces, position, file = [], start, first
        while position < end:  # a block spanning files
            local = position - int(self.offsets[file])
            take = min(end, int(self.offsets[file + 1])) - position
            pieces.append(self._checked(arrays[file][local : local + take], file, local))
            position += take
            file += 1
        return {"input_ids": np.concatenate(pieces)}

    def _checked(self, piece: np.ndarray, file: int, offset: int) -> np.ndarray:
        if self.vocab_size is not None and piece.size and int(piece.max()) >= self.vocab_size:
            at = int(np.argmax(piece >= self.vocab_size))
            raise ValueError(
                f"{self.paths[file]} holds token id {int(piece[at])} at token offset {offset + at:,}, outside the "
                f"vocabulary (`vocab_size` {self.vocab_size} in {METADATA}): the folder's metadata understates its "
                "largest id (`max_token_id`), or the file is damaged. Fix or rewrite the token folder (hf-wsd "
                "prepare), or raise `vocab_size` to the tokenizer's."
            )
        return piece

    def __getitems__(self, indices: list[int]) -> list[dict]:
        return [self[i] for i in indices]


class TokenFileWriter:
    """Appends token pieces to ``{prefix}-00000.bin``, ``-00001.bin``, … of at most ``file_tokens`` tokens each."""

    def __init__(self, folder: Path, prefix: str, dtype: str, file_tokens: int = FILE_TOKENS):
        self.folder, self.prefix, self.dtype, self.file_tokens = folder, prefix, dtype, file_tokens
        self.files: list[dict] = []
        self._handle = None

    def write(self, piece: np.ndarray) -> None:
        piece = np.asarray(piece, dtype=np.dtype(self.dtype).newbyteorder("<"))
        while len(piece):
            if self._handle is None or self.files[-1]["tokens"] >= self.file_tokens:
                self._rotate()
            take = min(len(piece), self.file_tokens - self.files[-1]["tokens"])
            self._handle.write(piece[:take].tobytes())
            self.files[-1]["tokens"] += take
            piece = piece[take:]

    def _rotate(self) -> None:
        if self._handle is not None:
            self._handle.close()
        name = f"{self.prefix}-{len(self.files):05d}.bin"
        self._handle = (self.folder / name).open("wb")
        self.files.append({"path": name, "tokens": 0})

    def close(self) -> list[dict]:
        if self._handle is not None:
            self._handle.close()
            self._handle = None
        return self.files


def write_token_folder(
    source,
    tokenizer,
    output_dir: str | Path,
    heldout_fraction: float = 0.05,
    seed: int = 0,
    num_proc: int | None = None,
    max_heldout_documents: int = 2000,
    max_train_sample_chars: int = 8_000_000,
    file_tokens: int = FILE_TOKENS,
) -> Path:
    """Write ``source`` (a :class:`~hf_wsd.data.sources.CorpusSource`) as a token folder at ``output_dir``
    (written under a temporary name, then renamed); returns the folder. ``output_dir`` must not exist yet."""
    from .pipeline import PassStats, collect_side_documents, training_token_pieces
    from .prepare import publish_folder, write_documents
    from .tokenizer import encode_documents, token_dtype, tokenizer_fingerprint

    output = Path(output_dir).expanduser().resolve()
    if output.exists():
        raise ValueError(f"`output_dir` {output} exists; remove it or choose another folder.")
    output.parent.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix=f".{output.name}.tmp-", dir=output.parent))
    try:
        dtype, eos = token_dtype(len(tokenizer)), tokenizer.eos_token_id
        side = collect_side_documents(source, heldout_fraction, seed, max_heldout_documents, max_train_sample_chars)
        heldout = TokenFileWriter(workdir, "heldout", dtype, file_tokens)
        for ids in encode_documents(tokenizer, side.heldout):
            heldout.write(np.asarray([*ids, eos], dtype=dtype))
        stats = PassStats()
        train = TokenFileWriter(workdir, "train", dtype, file_tokens)
        for piece in training_token_pieces(source, tokenizer, heldout_fraction, seed, workdir, stats, num_proc):
            train.write(piece)
        for scratch in workdir.glob("tokenized*.arrow"):
            scratch.unlink()
        if stats.tokens == 0:
            raise ValueError(f"`corpus` {source.name!r} has no training document left after the held-out split.")
        write_documents(workdir / "heldout_documents.jsonl", side.heldout)
        write_documents(workdir / "train_sample.jsonl", side.train_sample)
        tokenizer.save_pretrained(str(workdir / "tokenizer"))
        metadata = {
            "format": TOKEN_FOLDER_FORMAT,
            "dtype": dtype,
            "eos_token_id": eos,
            "vocab_size": len(tokenizer),
            "max_token_id": stats.max_token_id,
            "tokenizer": "tokenizer",
            "tokenizer_sha256": tokenizer_fingerprint(tokenizer),
            "train_files": train.close(),
            "heldout_files": heldout.close(),
            "heldout_documents": "heldout_documents.jsonl",
            "train_sample": "train_sample.jsonl",
            "train_sample_complete": side.train_sample_complete,
            "corpus": source.name,
            "source": source.source,
            "heldout_fraction": heldout_fraction,
            "seed": seed,
            "train_documents": stats.documents,
            "train_tokens": stats.tokens,
            "heldout_documents_count": len(side.heldout),
            "seconds": round(stats.seconds, 3),
        }
        (workdir / METADATA).write_text(json.dumps(metadata, indent=2) + "\n")
        if not publish_folder(workdir, output):
            raise ValueError(f"`output_dir` {output} was created by another process meanwhile.")
    except BaseException:
        shutil.rmtree(workdir, ignore_errors=True)
        raise
    logger.info(
        "Wrote token folder %s: %s training tokens of %d documents in %.1f s (%.0f tokens/s)",
        output,
        f"{stats.tokens:,}",
        stats.documents,
        stats.seconds,
        stats.tokens / max(stats.seconds, 1e-9),
    )
    return output
