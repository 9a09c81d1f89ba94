"""The tokenizer: a byte-level BPE trained on a bounded sample of the training documents (cached on disk), or any
``AutoTokenizer``; its fingerprint for cache keys; the compact dtype its ids fit in."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Sequence

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

logger = logging.getLogger(__name__)

ENDOFTEXT = "<|endoftext|>"
PAD = "<|pad|>"
_TOKENIZER_FORMAT = "bytelevel-bpe-v1"  # bump when the training recipe below changes


def default_cache_dir() -> Path:
    """``$HF_WSD_CACHE``, else ``$XDG_CACHE_HOME/hf_wsd``, else ``~/.cache/hf_wsd``."""
    if os.environ.get("HF_WSD_CACHE"):
        return Path(os.environ["HF_WSD_CACHE"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")).expanduser() / "hf_wsd"


def cache_root(cache_dir: str | Path | None) -> Path:
    """``cache_dir`` expanded, or :func:`default_cache_dir`."""
    return Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()


def lock_path(cache_dir: str | Path | None, name: str) -> str:
    """The file lock guarding cache entry ``name`` (kept apart from the entries)."""
    locks = cache_root(cache_dir) / "locks"
    locks.mkdir(parents=True, exist_ok=True)
    return str(locks / f"{name}.lock")


def tokenizer_cache_key(documents: Sequence[str], vocab_size: int, min_frequency: int = 2) -> str:
    """Hash of the training documents and the tokenizer settings: the tokenizer cache's key."""
    digest = hashlib.sha256()
    settings = {
        "format": _TOKENIZER_FORMAT,
        "vocab_size": vocab_size,
        "min_frequency": min_frequency,
        "special_tokens": [ENDOFTEXT, PAD],
    }
    digest.update(json.dumps(settings, sort_keys=True).encode())
    for document in documents:
        digest.update(hashlib.sha256(document.encode("utf-8")).digest())
    return digest.hexdigest()


def train_tokenizer(
    documents: Sequence[str],
    vocab_size: int = 4096,
    cache_dir: str | Path | None = None,
    name: str = "corpus",
    min_frequency: int = 2,
) -> "PreTrainedTokenizerBase":
    """A byte-level BPE tokenizer trained on ``documents``, loaded from the cache when it was trained before.

    Cached at ``{cache_dir}/tokenizers/{name}-bpe{vocab_size}-{key[:12]}/`` (a ``from_pretrained`` folder);
    ``cache_dir`` defaults to :func:`default_cache_dir`. Special tokens: ``<|endoftext|>`` (BOS = EOS), ``<|pad|>``.
    Processes racing on one cache train once: the others wait on a file lock and load.
    """
    from filelock import FileLock
    from transformers import PreTrainedTokenizerFast

    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < 258:
        raise ValueError(f"`vocab_size` must be an integer ≥ 258 (256 bytes + 2 special tokens); got {vocab_size!r}.")
    key = tokenizer_cache_key(documents, vocab_size, min_frequency)
    folder = (
        cache_root(cache_dir) / "tokenizers" / f"{re.sub(r'[^A-Za-z0-9_.-]', '_', name)}-bpe{vocab_size}-{key[:12]}"
    )
    folder.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(lock_path(cache_dir, folder.name)):
        if (folder / "tokenizer.json").is_file():
            logger.info("Loading cached tokenizer from %s", folder)
            return PreTrainedTokenizerFast.from_pretrained(str(folder))
        tokenizer = _train_bpe(documents, vocab_size, min_frequency)
        # Write next to the target and rename: a reader without the lock never sees a half-written folder.
        scratch = Path(tempfile.mkdtemp(prefix=".tmp-", dir=folder.parent))
        tokenizer.save_pretrained(str(scratch))
        try:
            os.rename(scratch, folder)
            logger.info(
                "Trained a %d-token byte-level BPE tokenizer on %d documents; cached at %s",
                len(tokenizer),
                len(documents),
                folder,
            )
        except OSError:  # another process won the race; its tokenizer is identical
            shutil.rmtree(scratch, ignore_errors=True)
    # Load it back: a first run and a cached run then hand out identical objects (name_or_path included).
    return PreTrainedTokenizerFast.from_pretrained(str(folder))


def _train_bpe(documents: Iterable[str], vocab_size: int, min_frequency: int) -> "PreTrainedTokenizerBase":
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=[ENDOFTEXT, PAD],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(documents, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token=ENDOFTEXT, eos_token=ENDOFTEXT, pad_token=PAD)


def load_tokenizer(tokenizer: "str | os.PathLike | PreTrainedTokenizerBase") -> "PreTrainedTokenizerBase":
    """``tokenizer`` itself, or ``AutoTokenizer.from_pretrained(tokenizer)`` for a name or path."""
    if isinstance(tokenizer, (str, os.PathLike)):
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(tokenizer))
    if tokenizer.eos_token_id is None:
        raise ValueError("the tokenizer has no EOS token; documents need a separator when packed (`tokenizer`).")
    return tokenizer


def tokenizer_fingerprint(tokenizer: "PreTrainedTokenizerBase") -> str:
    """SHA-256 of the tokenizer's full definition (vocabulary, merges, normalizer, special tokens) and EOS id."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    definition = backend.to_str() if backend is not None else json.dumps(tokenizer.get_vocab(), sort_keys=True)
    return hashlib.sha256(f"{definition}\0{tokenizer.eos_token_id}".encode()).hexdigest()


def token_dtype(vocab_size: int) -> str:
    """The smallest dtype holding ids below ``vocab_size``: ``"uint16"`` up to 65,536 tokens, else ``"uint32"``."""
    return "uint16" if vocab_size <= 1 << 16 else "uint32"


def encode_documents(tokenizer: "PreTrainedTokenizerBase", documents: Sequence[str]) -> list[list[int]]:
    """Token ids of each document without special tokens (one batched Rust call for fast tokenizers)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        return [e.ids for e in backend.encode_batch(list(documents), add_special_tokens=False)]
    return tokenizer(list(documents), add_special_tokens=False)["input_ids"]
