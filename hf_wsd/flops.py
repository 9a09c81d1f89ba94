"""FLOPs per token of a training update, from the architecture (dense and mixture-of-experts models).

Conventions (docs/throughput.md has the derivation and a worked example): FLOPs per token = 6·N + 12·L·H·Q·T
[PaLM, appendix B; torchtitan's ``get_num_flop_per_token``]. N counts the weights that take part in a matmul for
every token: the attention projections (q and o have H heads, k and v the config's key/value heads, so GQA and MQA
count less), the MLP (3 matrices when gated — gate, up, down —, else 2; for a mixture of experts, only the experts a
token visits, the shared experts and the router) and the LM head, which is a matmul whether or not it is tied to the
input embedding. The embedding lookup is not a matmul; norms and biases are not counted. The attention term counts
QKᵀ and A·V with every query against all T keys (not halved for causal masking, as PaLM and torchtitan do);
sliding-window layers count min(T, window) keys. Forward only (evaluation) is 2·N + 4·L·H·Q·T. ``causal=True``
halves the attention term. Pure functions of the config (and, for some MoE layouts, the model's weights).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

logger = logging.getLogger(__name__)

# model_type → whether the MLP is gated (gate, up and down projections) or plain (up and down).
GATED_MLP_TYPES = frozenset(
    {"llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text", "olmo", "olmo2", "phi3", "smollm3",
     "granite"}
)
PLAIN_MLP_TYPES = frozenset({"gpt2", "gpt_neox", "opt", "gptj", "gpt_bigcode", "falcon", "bloom", "phi"})
# Plain-MLP configs that leave the MLP width unset (``n_inner=None``) mean 4 × hidden; Bloom's is always 4 × hidden.
_FOUR_X_MLP_TYPES = frozenset({"gpt2", "gptj", "gpt_bigcode", "bloom", "falcon"})

_HIDDEN = ("hidden_size", "n_embd", "d_model")
_LAYERS = ("num_hidden_layers", "n_layer", "num_layers")
_HEADS = ("num_attention_heads", "n_head", "num_heads")
_KV_HEADS = ("num_key_value_heads", "num_kv_heads", "n_kv_heads")
_MLP_WIDTH = ("intermediate_size", "n_inner", "ffn_dim", "ffn_hidden_size")
_MOE_FIELDS = ("num_local_experts", "num_experts", "n_routed_experts")
_ACTIVE_EXPERTS = ("num_experts_per_tok", "moe_topk", "top_k")


@dataclass(frozen=True)
class FlopsBreakdown:
    """Per-token FLOPs of a decoder-only transformer at ``seq_length`` tokens per sequence.

    Parameter counts are the matmul weights of each part (all layers). ``attention_flops`` is the forward
    FLOPs per token of QKᵀ and A·V (4·H·Q per key, every query against the full T keys). With
    ``source="parameters"`` the counts come from a model's weights and everything but the LM head is in
    ``other_params``.
    """

    seq_length: int
    attention_params: int
    mlp_params: int
    lm_head_params: int
    other_params: int
    attention_flops: int
    source: str  # "config" or "parameters"

    @property
    def matmul_params(self) -> int:
        """N: weights taking part in a matmul per token (the input embedding lookup is not one)."""
        return self.attention_params + self.mlp_params + self.lm_head_params + self.other_params

    def training(self, causal: bool = False) -> int:
        """FLOPs per token of forward + backward: 6·N + 12·L·H·Q·T (attention halved if ``causal``)."""
        return 6 * self.matmul_params + 3 * self._attention(causal)

    def forward(self, causal: bool = False) -> int:
        """FLOPs per token of a forward pass (evaluation): 2·N + 4·L·H·Q·T."""
        return 2 * self.matmul_params + self._attention(causal)

    def _attention(self, causal: bool) -> int:
        return self.attention_flops // 2 if causal else self.attention_flops


def flops_per_token(
    config: Any, seq_length: int, *, model: Any = None, training: bool = True, causal: bool = False
) -> int:
    """FLOPs per token of a training update (``training=False``: a forward pass) of ``config`` at ``seq_length``.

    ``model`` is a fallback for architectures hf_wsd does not know: its weights are counted instead.
    """
    breakdown = flops_breakdown(config, seq_length, model=model)
    return breakdown.training(causal) if training else breakdown.forward(causal)


def flops_breakdown(config: Any, seq_length: int, *, model: Any = None) -> FlopsBreakdown:
    """Split the per-token FLOPs of a ``transformers`` decoder-only config into their parts (see the module doc)."""
    if isinstance(seq_length, bool) or not isinstance(seq_length, int) or seq_length < 1:
        raise ValueError(f"`seq_length` must be a positive integer (tokens per sequence); got {seq_length!r}.")
    if hasattr(config, "get_text_config"):
        config = config.get_text_config()  # multimodal configs: the language model's
    model_type = getattr(config, "model_type", None)
    experts = _first(config, _MOE_FIELDS)
    if isinstance(experts, int) and experts > 1:
        try:
            return _mixture_of_experts(config, seq_length, experts)
        except ValueError as error:
            active = _first(config, _ACTIVE_EXPERTS)
            if model is None or active is None:
                raise
            logger.info("%s Counting the model's weights instead (the experts at %d of %d).", error, active, experts)
            return _from_parameters(config, seq_length, model, expert_share=active / experts)
    if model_type not in GATED_MLP_TYPES | PLAIN_MLP_TYPES:
        if model is not None:
            return _from_parameters(config, seq_length, model)
        known = ", ".join(sorted(GATED_MLP_TYPES | PLAIN_MLP_TYPES))
        raise ValueError(
            f"unknown architecture `model_type`={model_type!r}: hf_wsd counts the FLOPs of {known}; pass `model=` "
            "so that its weights are counted instead."
        )
    try:
        return _from_config(config, model_type, seq_length)
    except ValueError as error:
        if model is None:
            raise
        logger.warning("%s Counting the model's weights instead.", error)
        return _from_parameters(config, seq_length, model)


def _from_config(config: Any, model_type: str, seq_length: int) -> FlopsBreakdown:
    hidden = _require(config, _HIDDEN)
    layers = _require(config, _LAYERS)
    heads = _require(config, _HEADS)
    vocab = _require(config, ("vocab_size",))
    head_dim = _head_dim(config, hidden, heads)
    if model_type == "falcon" and not getattr(config, "new_decoder_architecture", False):
        kv_heads = 1 if getattr(config, "multi_query", False) else heads
    else:
        kv_heads = _first(config, _KV_HEADS) or heads
    width = None if model_type == "bloom" else _first(config, _MLP_WIDTH)
    if width is None:
        if model_type not in _FOUR_X_MLP_TYPES:
            raise ValueError(f"`intermediate_size` (the MLP width) is missing from the {type(config).__name__}.")
        width = 4 * hidden
    mlp_matrices = 3 if model_type in GATED_MLP_TYPES else 2
    # q and o: H heads; k and v: the key/value heads (GQA/MQA).
    attention = layers * hidden * head_dim * (2 * heads + 2 * kv_heads)
    mlp = layers * mlp_matrices * hidden * width
    lm_head, other = vocab * hidden, 0
    projection = getattr(config, "word_embed_proj_dim", None)
    if model_type == "opt" and projection not in (None, hidden):
        lm_head, other = vocab * projection, 2 * projection * hidden  # OPT-350m: project_in and project_out
    attention_flops = 4 * heads * head_dim * _keys_per_query(config, layers, seq_length)
    return FlopsBreakdown(seq_length, attention, mlp, lm_head, other, attention_flops, "config")


def _mixture_of_experts(config: Any, seq_length: int, experts: int) -> FlopsBreakdown:
    """A mixture-of-experts decoder (Mixtral, Qwen2/3-MoE, OLMoE, DeepSeek-style shared experts): N counts the
    *active* weights of a token — the router, the ``num_experts_per_tok`` experts it visits (gated MLPs of
    ``moe_intermediate_size``, else ``intermediate_size``) and any shared expert —, and dense MLP layers where the
    config keeps some (``mlp_only_layers``, ``decoder_sparse_step``, ``first_k_dense_replace``)."""
    name = type(config).__name__
    active = _first(config, _ACTIVE_EXPERTS)
    if active is None:
        raise ValueError(
            f"mixture-of-experts {name} with {experts} experts does not say how many each token visits "
            f"(`{_ACTIVE_EXPERTS[0]}`): set `flops_per_token` in the config to have TFLOP/s and MFU."
        )
    if _first(config, ("kv_lora_rank", "q_lora_rank")) is not None:
        raise ValueError(
            f"{name} uses latent attention (`kv_lora_rank`), whose weights hf_wsd counts only from the model: pass "
            "`model=`, or set `flops_per_token` in the config."
        )
    hidden, layers, heads = _require(config, _HIDDEN), _require(config, _LAYERS), _require(config, _HEADS)
    vocab, head_dim = _require(config, ("vocab_size",)), _head_dim(config, _require(config, _HIDDEN), heads)
    kv_heads = _first(config, _KV_HEADS) or heads
    dense_width = _first(config, _MLP_WIDTH)
    expert_width = _first(config, ("moe_intermediate_size",)) or dense_width
    if expert_width is None:
        raise ValueError(f"`moe_intermediate_size` (or `intermediate_size`) is missing from the {name}.")
    shared_width = getattr(config, "shared_expert_intermediate_size", None) or (
        (getattr(config, "n_shared_experts", None) or 0) * expert_width
    )
    dense_only = set(getattr(config, "mlp_only_layers", None) or ())
    step = getattr(config, "decoder_sparse_step", None) or 1
    first_dense = getattr(config, "first_k_dense_replace", None) or 0
    sparse = [i not in dense_only and (i + 1) % step == 0 and i >= first_dense for i in range(layers)]
    moe_layer = 3 * hidden * (active * expert_width + shared_width) + hidden * experts  # experts, shared, router
    if getattr(config, "shared_expert_intermediate_size", None):
        moe_layer += hidden  # Qwen2-MoE's shared-expert gate
    dense_layers = layers - sum(sparse)
    if dense_layers and dense_width is None:
        raise ValueError(f"`intermediate_size` (the dense MLP width) is missing from the {name}.")
    mlp = sum(sparse) * moe_layer + dense_layers * 3 * hidden * (dense_width or 0)
    attention = layers * hidden * head_dim * (2 * heads + 2 * kv_heads)
    attention_flops = 4 * heads * head_dim * _keys_per_query(config, layers, seq_length)
    return FlopsBreakdown(seq_length, attention, mlp, vocab * hidden, 0, attention_flops, "config")


def _from_parameters(config: Any, seq_length: int, model: Any, expert_share: float = 1.0) -> FlopsBreakdown:
    """Count the model's matmul weights: every ≥2-D parameter outside embedding layers, plus a tied LM head; routed
    experts' weights (``….experts.…``) at ``expert_share``, the share of them a token visits."""
    import torch.nn as nn

    embedding = {id(p) for m in model.modules() if isinstance(m, nn.Embedding) for p in m.parameters(recurse=False)}
    matrices = round(sum(
        p.numel() * (expert_share if ".experts." in f".{name}" and "shared" not in name else 1.0)
        for name, p in model.named_parameters() if p.ndim >= 2 and id(p) not in embedding
    ))
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    weight = getattr(head, "weight", None)
    lm_head = 0 if weight is None else weight.numel()
    other = matrices - (0 if weight is None or id(weight) in embedding else lm_head)  # a tied head is an embedding
    try:
        hidden, layers, heads = _require(config, _HIDDEN), _require(config, _LAYERS), _require(config, _HEADS)
        attention_flops = 4 * heads * _head_dim(config, hidden, heads) * _keys_per_query(config, layers, seq_length)
    except ValueError as error:
        logger.warning("%s FLOPs per token leave out the attention scores (12·L·H·Q·T).", error)
        attention_flops = 0
    return FlopsBreakdown(seq_length, 0, 0, lm_head, other, attention_flops, "parameters")


def _keys_per_query(config: Any, layers: int, seq_length: int) -> int:
    """Keys each query is counted against, summed over layers: T, or min(T, window) in sliding-window layers."""
    window = getattr(config, "sliding_window", None)
    layer_types = getattr(config, "layer_types", None)
    if layer_types:
        sliding = min(seq_length, window or seq_length)
        return sum(sliding if kind == "sliding_attention" else seq_length for kind in layer_types)
    if window and getattr(config, "use_sliding_window", True):
        return layers * min(seq_length, window)
    return layers * seq_length


def _head_dim(config: Any, hidden: int, heads: int) -> int:
    head_dim = getattr(config, "head_dim", None)
    if head_dim:
        return head_dim
    if hidden % heads:
        raise ValueError(f"`head_dim` is missing and hidden size {hidden} does not divide into {heads} heads.")
    return hidden // heads


def _first(config: Any, names: tuple[str, ...]) -> int | None:
    for name in names:
        value = getattr(config, name, None)
        if value is not None:
            return value
    return None


def _require(config: Any, names: tuple[str, ...]) -> int:
    value = _first(config, names)
    if value is None:
        aliases = f" (or {', '.join(f'`{n}`' for n in names[1:])})" if len(names) > 1 else ""
        raise ValueError(f"`{names[0]}`{aliases} is missing from the {type(config).__name__}.")
    return value
