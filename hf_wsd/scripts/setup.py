"""The set-up every recipe shares: machine defaults, data, held-out blocks, bundled benchmarks and the model."""

from __future__ import annotations

import dataclasses
import importlib.util
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import runs

if TYPE_CHECKING:
    from ..config import WSDConfig
    from ..data import LMData
    from .arguments import DataArguments, ModelArguments

logger = logging.getLogger(__name__)


def start_checkpoint(model_args: "ModelArguments", what: str) -> str:
    """The checkpoint a continual recipe starts from (``model_name_or_path``), refused when empty."""
    if not model_args.model_name_or_path:
        raise ValueError(
            f"`model_name_or_path` is empty: {what} starts from a checkpoint, e.g. a budget folder "
            "(runs/llama-tiny-wsd-s/budgets/step800-tokens1.64M) or a from_pretrained name."
        )
    return model_args.model_name_or_path


def start_losses(trainer) -> dict[str, float]:
    """The starting checkpoint's held-out loss on each set of ``trainer.eval_dataset`` (a continual run's baseline)."""
    return {
        key: trainer.evaluate(eval_dataset=dataset, metric_key_prefix=f"start_{key}")[f"start_{key}_loss"]
        for key, dataset in trainer.eval_dataset.items()
    }


def machine_defaults() -> dict[str, Any]:
    """Defaults that depend on the machine, under any config: GPU-ready on CUDA (bf16, or fp16 where bf16 is
    missing; fused AdamW), and ``use_cpu`` without a GPU (transformers joins a gloo launch only then) — except under a
    DeepSpeed launch, which joins on CPU processes only with ``use_cpu=False`` and the gloo backend."""
    import torch

    from ..engines import requested_engine

    if not torch.cuda.is_available():
        if requested_engine() == "DeepSpeed":
            return {"use_cpu": False, "ddp_backend": "gloo"}
        return {"use_cpu": True}
    bf16 = torch.cuda.is_bf16_supported()
    return {"use_cpu": False, "bf16": bf16, "fp16": not bf16, "optim": "adamw_torch_fused"}


def load_data(data_args: "DataArguments", args: "WSDConfig", tokenizer=None) -> "LMData":
    """The recipe's corpus → held-out split → tokenizer (trained and cached, unless given) → packed blocks."""
    from ..data import build_lm_datasets

    return build_lm_datasets(
        corpus=data_args.corpus,
        tokenizer=tokenizer if tokenizer is not None else data_args.tokenizer_name,
        vocab_size=data_args.vocab_size,
        block_size=data_args.block_size,
        heldout_fraction=data_args.heldout_fraction,
        seed=args.seed,
        dataset_config=data_args.dataset_config,
        dataset_split=data_args.dataset_split,
        text_column=data_args.text_column,
        cache_dir=data_args.cache_dir,
        streaming=data_args.streaming,
        num_proc=data_args.num_proc,
        max_tokenizer_documents=data_args.max_tokenizer_documents,
        max_heldout_documents=data_args.max_heldout_documents,
    )


def fill_card_fields(data_args: "DataArguments", args: "WSDConfig") -> None:
    """The model cards' data fields the user left empty, from the main corpus and the decay corpora (trained on;
    the eval corpora are not): hf_wsd/card_data.py."""
    from ..card_data import fill_known

    fill_known(args, data_args.corpus, list(named_corpora(data_args.decay_corpora, "decay_corpora").values()))


def named_corpora(value, field: str) -> dict[str, str]:
    """``{name: corpus}`` from a YAML mapping or ``name=corpus`` strings (the command line)."""
    if not value:
        return {}
    if isinstance(value, dict):
        return {str(k): str(v) for k, v in value.items()}
    named = {}
    for item in [value] if isinstance(value, str) else value:
        name, sep, corpus = str(item).partition("=")
        if not sep or not name.strip() or not corpus.strip():
            raise ValueError(f"`{field}` entries are name=corpus (e.g. shakespeare=shakespeare); got {item!r}.")
        named[name.strip()] = corpus.strip()
    return named


def load_side_corpora(data_args: "DataArguments", args: "WSDConfig", data: "LMData") -> tuple[dict, dict]:
    """``(decay, evaluated)``: the ``decay_corpora`` and ``eval_corpora`` as ``LMData`` by name, built with the main
    data's tokenizer and block size (a corpus named in both is built once); every one checked to share the main
    data's vocabulary."""
    decay, extra = named_corpora(data_args.decay_corpora, "decay_corpora"), named_corpora(
        data_args.eval_corpora, "eval_corpora"
    )
    for name in {**decay, **extra}:
        if name == data.corpus or name == "main":
            raise ValueError(
                f"`decay_corpora`/`eval_corpora` name {name!r}, which names the main corpus: choose another name."
            )
        if name in decay and name in extra and decay[name] != extra[name]:
            raise ValueError(f"{name!r} is {decay[name]!r} in `decay_corpora` but {extra[name]!r} in `eval_corpora`.")
    from ..data import is_token_folder

    built = {}
    for name, corpus in {**extra, **decay}.items():
        settings = dataclasses.replace(data_args, corpus=corpus, dataset_config=None)
        # A token folder brings the tokenizer it was written with: compared below, never silently replaced.
        built[name] = load_data(settings, args, tokenizer=None if is_token_folder(corpus) else data.tokenizer)
        check_same_vocabulary(data, built[name], name)
        logger.info("%s corpus %r: %s", "decay" if name in decay else "evaluation", name, built[name].describe())
    return {n: built[n] for n in decay}, {n: built[n] for n in {**extra, **decay}}


def check_same_vocabulary(main: "LMData", other: "LMData", name: str) -> None:
    """A side corpus must be tokenized like the main data: the same vocabulary, ids inside it."""
    if other.tokenizer.get_vocab() != main.tokenizer.get_vocab():
        raise ValueError(
            f"corpus {name!r} was tokenized with another vocabulary ({other.vocab_size} tokens) than the main data "
            f"({main.vocab_size}): a token folder brings its own tokenizer; write it with the main data's tokenizer "
            "(hf-wsd prepare --tokenizer ...)."
        )
    if other.max_token_id >= main.vocab_size:
        raise ValueError(f"corpus {name!r} holds token id {other.max_token_id} ≥ the vocabulary ({main.vocab_size}).")
    if other.block_size != main.block_size:
        raise ValueError(f"corpus {name!r} has blocks of {other.block_size} tokens, the main data {main.block_size}.")


def first_blocks(dataset, limit: int | None):
    """The first ``limit`` blocks of a held-out set (all of them for ``None``)."""
    return dataset if limit is None else dataset.select(range(min(len(dataset), limit)))


def add_bundled_tasks(args: "WSDConfig", data_args: "DataArguments", data: "LMData") -> None:
    """Build the offline benchmarks from the held-out documents and add them to the config's eval tasks."""
    if not (args.budget_eval and data_args.bundled_tasks):
        return
    from ..tasks import build_bundled_tasks

    task_dir = Path(args.output_dir) / runs.TASKS_DIR
    names = build_bundled_tasks(
        data.heldout_documents, task_dir, data_args.bundled_task_examples, args.seed,
        train_documents=data.train_documents,
    )
    args.eval_task_paths = [*args.eval_task_paths, str(task_dir)]
    args.eval_tasks = [*args.eval_tasks, *[n for n in names if n not in args.eval_tasks]]


def attention_implementation(requested: str | None) -> str:
    """``requested``, else flash-attention 2 on CUDA when ``flash_attn`` is installed, else PyTorch's SDPA."""
    if requested is not None:
        return requested
    import torch

    if torch.cuda.is_available() and importlib.util.find_spec("flash_attn") is not None:
        return "flash_attention_2"
    return "sdpa"


def build_model(model_args: "ModelArguments", data: "LMData"):
    """A checkpoint to continue (``model_name_or_path``), an architecture from scratch (``config_name``), or the
    recipe's Llama, over ``data``'s tokenizer. Its config is checked against the data (context, vocabulary)
    before any weight is loaded or allocated."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from ..data import validate_for_model

    attention = attention_implementation(model_args.attn_implementation)
    if model_args.model_name_or_path:
        validate_for_model(data, AutoConfig.from_pretrained(model_args.model_name_or_path))
        return AutoModelForCausalLM.from_pretrained(model_args.model_name_or_path, attn_implementation=attention)
    config = model_config(model_args, data)
    validate_for_model(data, config)
    return AutoModelForCausalLM.from_config(config, attn_implementation=attention)


def model_config(model_args: "ModelArguments", data: "LMData"):
    """The architecture to train from scratch: ``config_name`` over the tokenizer's vocabulary, or the recipe's
    Llama."""
    from transformers import AutoConfig, LlamaConfig

    tokenizer = data.tokenizer
    if model_args.config_name:
        return AutoConfig.from_pretrained(model_args.config_name, vocab_size=len(tokenizer))
    return LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=model_args.hidden_size,
        intermediate_size=model_args.intermediate_size,
        num_hidden_layers=model_args.num_hidden_layers,
        num_attention_heads=model_args.num_attention_heads,
        num_key_value_heads=model_args.num_key_value_heads,
        max_position_embeddings=data.block_size,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
