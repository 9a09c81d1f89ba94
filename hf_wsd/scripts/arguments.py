"""The fields the recipes add to ``WSDConfig``: where the data comes from and which model to train."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class DataArguments:
    """Parameters that control the data of a recipe."""

    corpus: str = field(
        default="kjv",
        metadata={"help": "'kjv' (embedded), 'shakespeare', a local path or a datasets name."},
    )
    dataset_config: str | None = field(default=None, metadata={"help": "Config name of a datasets corpus."})
    dataset_split: str = field(default="train", metadata={"help": "Split of a datasets corpus."})
    text_column: str = field(default="text", metadata={"help": "Text column of a datasets or JSONL corpus."})
    tokenizer_name: str | None = field(
        default=None,
        metadata={"help": "Tokenizer to load; default: train a byte-level BPE."},
    )
    vocab_size: int = field(default=4096, metadata={"help": "Vocabulary of the trained tokenizer."})
    block_size: int = field(default=128, metadata={"help": "Tokens per packed training block."})
    heldout_fraction: float = field(default=0.05, metadata={"help": "Share of documents held out for evaluation."})
    max_eval_blocks: int | None = field(default=64, metadata={"help": "Held-out blocks scored per budget (None: all)."})
    streaming: bool = field(
        default=False,
        metadata={"help": "Stream the corpus (a resumable IterableDataset of blocks) instead of preparing it once."},
    )
    num_proc: int | None = field(default=None, metadata={"help": "Processes tokenizing a map-style corpus."})
    cache_dir: str | None = field(
        default=None,
        metadata={"help": "Root of the tokenizer and prepared-data caches (default $HF_WSD_CACHE or ~/.cache/hf_wsd)."},
    )
    max_tokenizer_documents: int = field(
        default=100_000, metadata={"help": "Training documents sampled (seeded) to train the tokenizer."}
    )
    max_heldout_documents: int = field(
        default=2000, metadata={"help": "Held-out documents kept (more are held out by hash, unused)."}
    )
    decay_corpora: list[str] | None = field(
        default=None,
        metadata={"help": "Corpora the decay windows may draw from (decay_mixture names them): name=corpus ... (a "
                          "dict in YAML); built with the main tokenizer and block_size; their held-out sets are "
                          "scored per budget."},
    )
    eval_corpora: list[str] | None = field(
        default=None,
        metadata={"help": "More corpora whose held-out sets are scored per budget (not trained on): name=corpus ..."},
    )
    bundled_tasks: bool = field(
        default=True,
        metadata={"help": "Build the offline benchmarks from held-out documents."},
    )
    bundled_task_examples: int = field(default=200, metadata={"help": "Examples per bundled benchmark."})


@dataclass
class ModelArguments:
    """Parameters that control the model of a recipe: a checkpoint to continue, an architecture, or a fresh Llama."""

    model_name_or_path: str | None = field(
        default=None,
        metadata={"help": "Start from these weights (continual pretraining)."},
    )
    config_name: str | None = field(
        default=None,
        metadata={"help": "Architecture to train from scratch (AutoConfig name or path)."},
    )
    hidden_size: int = field(default=128, metadata={"help": "Default Llama: hidden size."})
    intermediate_size: int = field(default=352, metadata={"help": "Default Llama: MLP size."})
    num_hidden_layers: int = field(default=2, metadata={"help": "Default Llama: layers."})
    num_attention_heads: int = field(default=4, metadata={"help": "Default Llama: attention heads."})
    num_key_value_heads: int = field(default=2, metadata={"help": "Default Llama: key/value heads."})
    attn_implementation: str | None = field(
        default=None,
        metadata={"help": "Attention kernel; default: flash_attention_2 on CUDA when flash-attn is installed, "
                          "else sdpa.",
                  "choices": ["eager", "sdpa", "flash_attention_2"]},
    )
