"""FLOPs per token, device peaks and the throughput meter (hf_wsd/flops.py, hf_wsd/throughput.py): hand counts,
real weights, exact arithmetic."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import CONFIG_MAPPING, AutoModelForCausalLM, GPT2Config, LlamaConfig, LlamaForCausalLM

from hf_wsd.flops import GATED_MLP_TYPES, PLAIN_MLP_TYPES, flops_breakdown, flops_per_token
from hf_wsd.throughput import PEAK_TFLOPS, ThroughputMeter, find_device, matmul_precision, peak_flops

TINY_LLAMA = dict(
    hidden_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    intermediate_size=128,
    vocab_size=512,
)


# ----------------------------------------------------------------------------------------- FLOPs per token
@pytest.mark.parametrize("tied", [False, True])
def test_llama_flops_match_a_hand_count(tied):
    # d=64, L=2, H=4 heads of Q=16, K=2 key/value heads, F=128, V=512, T=256.
    # attention per layer: q 64·64 + k 64·32 + v 64·32 + o 64·64 = 4096 + 2048 + 2048 + 4096 = 12288
    # gated MLP per layer: gate, up, down = 3·64·128 = 24576
    # LM head (a matmul whether tied or not): 512·64 = 32768
    n = 2 * 12288 + 2 * 24576 + 32768
    assert n == 106496
    attention_scores = 12 * 2 * 4 * 16 * 256  # 12·L·H·Q·T, every query against all T keys
    breakdown = flops_breakdown(LlamaConfig(**TINY_LLAMA, tie_word_embeddings=tied), 256)
    assert (breakdown.attention_params, breakdown.mlp_params, breakdown.lm_head_params) == (24576, 49152, 32768)
    assert breakdown.matmul_params == n
    assert breakdown.training() == 6 * n + attention_scores == 1032192
    assert breakdown.forward() == 2 * n + attention_scores // 3 == 344064
    assert breakdown.training(causal=True) == 6 * n + attention_scores // 2
    config = LlamaConfig(**TINY_LLAMA, tie_word_embeddings=tied)
    assert flops_per_token(config, 256) == 1032192
    assert flops_per_token(config, 256, training=False) == 344064


@pytest.mark.parametrize("tied", [False, True])
def test_llama_matmul_params_equal_the_weights_of_the_instantiated_model(tied):
    config = LlamaConfig(**TINY_LLAMA, tie_word_embeddings=tied)
    model = LlamaForCausalLM(config)
    embedding = model.model.embed_tokens.weight.numel()
    norms = sum(p.numel() for name, p in model.named_parameters() if "norm" in name)
    non_embedding = (
        sum(p.numel() for p in model.parameters()) - embedding - norms
    )  # parameters() lists a tied head once
    head = 0 if not tied else config.vocab_size * config.hidden_size  # a tied head still costs its matmul
    breakdown = flops_breakdown(config, 256)
    assert non_embedding + head == breakdown.matmul_params
    assert 6 * (non_embedding + head) == breakdown.training() - 12 * 2 * 4 * 16 * 256
    assert flops_breakdown(config, 256, model=model) == breakdown  # a known architecture is counted from its config


def test_gpt2_config_uses_n_embd_n_layer_n_head_and_a_4x_mlp():
    config = GPT2Config(n_embd=64, n_layer=2, n_head=4, n_positions=128, vocab_size=512)  # n_inner=None: 4 × 64
    # per layer: c_attn 64·192 + c_proj 64·64 = 16384; MLP c_fc 64·256 + c_proj 256·64 = 32768; tied head 512·64
    breakdown = flops_breakdown(config, 128)
    assert (breakdown.attention_params, breakdown.mlp_params, breakdown.lm_head_params) == (32768, 65536, 32768)
    assert breakdown.training() == 6 * 131072 + 12 * 2 * 4 * 16 * 128 == 983040


def test_gqa_shrinks_the_key_and_value_projections_only():
    def breakdown(kv_heads):
        return flops_breakdown(LlamaConfig(**{**TINY_LLAMA, "num_key_value_heads": kv_heads}), 256)

    mha, mqa = breakdown(4), breakdown(1)
    assert mha.attention_params - mqa.attention_params == 2 * 2 * 64 * 16 * (4 - 1)  # L · (k, v) · d · Q · heads saved
    assert (mha.mlp_params, mha.lm_head_params, mha.attention_flops) == (
        mqa.mlp_params,
        mqa.lm_head_params,
        mqa.attention_flops,
    )


def test_gemma_head_dim_need_not_be_hidden_over_heads():
    config = CONFIG_MAPPING["gemma"](
        hidden_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=48,
        intermediate_size=96,
        vocab_size=256,
    )
    breakdown = flops_breakdown(config, 10)
    assert breakdown.attention_params == 64 * 48 * (2 * 2 + 2 * 1)
    assert breakdown.attention_flops == 4 * 2 * 48 * 10


_TINY = dict(
    vocab_size=96,
    hidden_size=32,
    n_embd=32,
    num_hidden_layers=2,
    n_layer=2,
    num_attention_heads=4,
    n_head=4,
    intermediate_size=48,
    max_position_embeddings=64,
    n_positions=64,
    pad_token_id=0,
    bos_token_id=1,
    eos_token_id=2,
)
_TINY_EXTRA = {
    "opt": dict(ffn_dim=48, word_embed_proj_dim=16),  # OPT-350m-style projections in and out of the embedding width
    "gpt2": dict(n_inner=48),
    "gptj": dict(n_inner=48, rotary_dim=4),
    "gpt_bigcode": dict(n_inner=48),
    "falcon": dict(ffn_hidden_size=48, new_decoder_architecture=True, num_kv_heads=2),
    "gemma": dict(head_dim=16, num_key_value_heads=2),
    "gemma2": dict(head_dim=16, num_key_value_heads=2),
    "gemma3_text": dict(head_dim=16, num_key_value_heads=2),
    "qwen3": dict(head_dim=16, num_key_value_heads=1),
    "llama": dict(num_key_value_heads=2),
    "mistral": dict(num_key_value_heads=2),
    "qwen2": dict(num_key_value_heads=2),
}


@pytest.mark.parametrize("model_type", sorted(GATED_MLP_TYPES | PLAIN_MLP_TYPES))
def test_every_known_architecture_counts_the_matmul_weights_its_model_has(model_type):
    config = CONFIG_MAPPING[model_type](**{**_TINY, **_TINY_EXTRA.get(model_type, {})})
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    from_config = flops_breakdown(config, 64)
    from hf_wsd.flops import _from_parameters

    from_weights = _from_parameters(config, 64, model)
    assert from_config.matmul_params == from_weights.matmul_params
    assert from_config.lm_head_params == from_weights.lm_head_params
    assert from_config.attention_flops == from_weights.attention_flops


def test_sliding_window_layers_count_at_most_the_window():
    gemma2 = CONFIG_MAPPING["gemma2"](
        hidden_size=64,
        num_hidden_layers=4,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=32,
        intermediate_size=96,
        vocab_size=256,
        sliding_window=100,
    )
    assert gemma2.layer_types.count("sliding_attention") == 2
    assert flops_breakdown(gemma2, 1000).attention_flops == 4 * 2 * 32 * (2 * 1000 + 2 * 100)
    assert flops_breakdown(gemma2, 80).attention_flops == 4 * 2 * 32 * 4 * 80  # shorter than the window: no effect
    mistral = CONFIG_MAPPING["mistral"](
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=96,
        vocab_size=256,
        sliding_window=100,
    )
    assert flops_breakdown(mistral, 1000).attention_flops == 4 * 4 * 16 * 2 * 100


class _CustomConfig:
    model_type = "my-transformer"
    hidden_size, num_hidden_layers, num_attention_heads = 64, 2, 4


def test_unknown_architecture_is_an_error_without_a_model_and_counts_weights_with_one():
    with pytest.raises(ValueError, match="unknown architecture `model_type`='my-transformer'.*pass `model=`"):
        flops_per_token(_CustomConfig(), 256)
    model = LlamaForCausalLM(LlamaConfig(**TINY_LLAMA))
    breakdown = flops_breakdown(_CustomConfig(), 256, model=model)
    assert breakdown.source == "parameters"
    assert breakdown.matmul_params == 106496  # the hand count above, from the weights
    assert breakdown.training() == 1032192


class _LlamaLikeConfig:  # a known model_type whose config names the depth differently
    model_type = "llama"
    hidden_size, depth, num_attention_heads, intermediate_size, vocab_size = 64, 2, 4, 128, 512


def test_missing_config_attribute_is_named_and_weights_are_the_fallback():
    with pytest.raises(
        ValueError, match=r"`num_hidden_layers` \(or `n_layer`, `num_layers`\) is missing from the _LlamaLikeConfig"
    ):
        flops_per_token(_LlamaLikeConfig(), 256)
    model = LlamaForCausalLM(LlamaConfig(**TINY_LLAMA))
    breakdown = flops_breakdown(_LlamaLikeConfig(), 256, model=model)
    assert (breakdown.source, breakdown.matmul_params, breakdown.attention_flops) == (
        "parameters",
        106496,
        0,
    )  # no depth


MOE = dict(hidden_size=64, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2, vocab_size=256,
           tie_word_embeddings=False)
MOE_CASES = {  # model_type: (config fields, experts, experts per token)
    "mixtral": (dict(intermediate_size=96, num_local_experts=4, num_experts_per_tok=2), 4, 2),
    "qwen2_moe": (dict(intermediate_size=96, moe_intermediate_size=32, shared_expert_intermediate_size=48,
                       num_experts=8, num_experts_per_tok=2, mlp_only_layers=[1]), 8, 2),
    "qwen3_moe": (dict(intermediate_size=96, moe_intermediate_size=32, num_experts=8, num_experts_per_tok=2,
                       mlp_only_layers=[0], head_dim=16), 8, 2),
    "olmoe": (dict(intermediate_size=32, num_experts=8, num_experts_per_tok=2, eos_token_id=1), 8, 2),
    "deepseek_v3": (dict(intermediate_size=96, moe_intermediate_size=32, n_routed_experts=8, num_experts_per_tok=2,
                         n_shared_experts=1, first_k_dense_replace=1, q_lora_rank=32, kv_lora_rank=16,
                         qk_rope_head_dim=8, qk_nope_head_dim=8, v_head_dim=16), 8, 2),
}


def _active_matmul_weights(model, experts: int, active: int) -> float:
    """The real model's matmul weights a token uses: routed experts' tensors at active / experts, all else whole."""
    embedding = {id(p) for m in model.modules() if isinstance(m, torch.nn.Embedding) for p in m.parameters()}
    return sum(p.numel() * (active / experts if ".experts." in name and "shared" not in name else 1)
               for name, p in model.named_parameters() if p.ndim >= 2 and id(p) not in embedding)


@pytest.mark.parametrize("model_type", sorted(MOE_CASES))
def test_mixtures_of_experts_count_the_weights_a_token_visits(model_type):
    fields, experts, active = MOE_CASES[model_type]
    config = CONFIG_MAPPING[model_type](**MOE, **fields)
    model = AutoModelForCausalLM.from_config(config)
    expected = _active_matmul_weights(model, experts, active)
    if model_type == "deepseek_v3":  # latent attention: counted from the model's weights only
        with pytest.raises(ValueError, match="`flops_per_token`"):
            flops_breakdown(config, 64)
        assert flops_breakdown(config, 64, model=model).matmul_params == expected
        return
    breakdown = flops_breakdown(config, 64)
    assert breakdown.source == "config" and breakdown.matmul_params == expected
    total = sum(p.numel() for p in model.parameters()) - model.get_input_embeddings().weight.numel()
    assert breakdown.matmul_params < total  # not every expert: 6·N of the active weights


def test_a_mixture_of_experts_without_experts_per_token_and_a_bad_seq_length_are_refused():
    from types import SimpleNamespace

    config = SimpleNamespace(model_type="custom_moe", num_experts=4, intermediate_size=96, **MOE)
    with pytest.raises(ValueError, match="`num_experts_per_tok`.*`flops_per_token`"):
        flops_per_token(config, 256)
    with pytest.raises(ValueError, match="`seq_length` must be a positive integer"):
        flops_per_token(LlamaConfig(**TINY_LLAMA), 0)


def test_a_meter_without_flops_per_token_logs_tokens_per_second_only():
    meter = ThroughputMeter(flops_per_token=None, peak_flops=1e12)
    meter.update(0, 0, now=0.0)
    meter.update(1, 1000, now=2.0)
    assert meter.log_figures() == {"tokens_per_second": 500.0, "tokens_per_second_per_device": 500.0}


@pytest.mark.slow
@pytest.mark.parametrize("flops", [None, 1.5e6])
def test_a_moe_run_logs_tokens_per_second_and_flops_from_its_active_experts(tmp_path, flops):
    """Qwen2-MoE trains with throughput figures: counted from its active experts, or the `flops_per_token` given."""
    from helpers import VOCAB, tiny_trainer

    config = CONFIG_MAPPING["qwen2_moe"](**{**MOE, "vocab_size": VOCAB}, **MOE_CASES["qwen2_moe"][0])
    torch.manual_seed(0)
    trainer = tiny_trainer(tmp_path, [6], model=AutoModelForCausalLM.from_config(config), warmup_steps=1,
                           flops_per_token=flops)
    trainer.train()
    logged = [e for e in trainer.state.log_history if "loss" in e]
    assert all(e["tokens_per_second"] > 0 and e["tflops_per_device"] > 0 for e in logged[1:])
    expected = flops or flops_per_token(config, 16)
    assert trainer.meter.flops_per_token == expected
    record = (tmp_path / "budgets").glob("*/budget.json")
    import json

    assert json.loads(next(record).read_text())["throughput"]["flops_per_token"] == expected


# ----------------------------------------------------------------------------------------- peak FLOP/s
@pytest.mark.parametrize(
    "name, dtype, tflops",
    [
        ("NVIDIA H100 80GB HBM3", "bf16", 989.5),  # dense: the datasheet's 1979 is with 2:4 sparsity
        ("NVIDIA H100 80GB HBM3", "tf32", 494.5),
        ("NVIDIA H100 PCIe", "bf16", 756.5),
        ("NVIDIA H100 NVL", "fp16", 835.5),
        ("NVIDIA H200", "bf16", 989.5),
        ("NVIDIA H200 NVL", "bf16", 835.5),
        ("NVIDIA H20", "bf16", 148.0),
        ("NVIDIA A100-SXM4-80GB", "bf16", 312.0),
        ("NVIDIA A100-SXM4-40GB", "fp32", 19.5),
        ("NVIDIA A100 80GB PCIe", torch.bfloat16, 312.0),
        ("NVIDIA A100-PCIE-40GB", "tf32", 156.0),
        ("NVIDIA A10", "bf16", 125.0),
        ("NVIDIA L4", "bf16", 121.0),
        ("NVIDIA L40S", "bf16", 362.05),
        ("NVIDIA L40", "bf16", 181.05),
        ("Tesla V100-SXM2-16GB", "fp16", 125.0),
        ("Tesla V100-PCIE-32GB", torch.float16, 112.0),
        ("Tesla V100S-PCIE-32GB", "fp16", 130.0),
        ("Tesla T4", "fp16", 65.0),
        ("Tesla T4", "tf32", 8.1),  # no TF32 units: fp32 matmuls at the fp32 rate
        ("NVIDIA GeForce RTX 4090", "bf16", 165.2),  # tensor cores with fp32 accumulate
        ("NVIDIA GeForce RTX 3090", "bf16", 71.0),
        ("AMD Instinct MI300X", "bf16", 1307.4),
        ("AMD Instinct MI250X", "bf16", 191.5),  # one GCD: torch sees two devices per board
    ],
)
def test_peak_table_knows_the_names_torch_reports(name, dtype, tflops):
    assert peak_flops(name, dtype) == pytest.approx(tflops * 1e12)


@pytest.mark.parametrize(
    "name, dtype",
    [
        ("cpu", "bf16"),
        ("NVIDIA GeForce RTX 3090 Ti", "bf16"),
        ("Tesla V100-SXM2-32GB", "bf16"),
        ("Tesla T4", torch.bfloat16),
        ("NVIDIA A10G", "bf16"),
    ],
)
def test_peak_is_none_when_unknown(name, dtype):
    assert peak_flops(name, dtype) is None


def test_similar_names_do_not_match_each_other():
    assert [
        find_device(n).name
        for n in (
            "NVIDIA A10",
            "NVIDIA A10G",
            "NVIDIA A100-SXM4-80GB",
            "NVIDIA H20",
            "NVIDIA H200",
            "NVIDIA L4",
            "NVIDIA L40",
            "NVIDIA L40S",
        )
    ] == ["A10", "A10G", "A100", "H20", "H200 SXM", "L4", "L40", "L40S"]


def test_peak_override_wins_and_is_checked():
    assert peak_flops("cpu", "bf16", override_tflops=100) == 1e14
    assert peak_flops("NVIDIA H100 80GB HBM3", "bf16", override_tflops=700.0) == 7e14
    with pytest.raises(ValueError, match="`peak_tflops` must be a positive number of TFLOP/s"):
        peak_flops("cpu", "bf16", override_tflops=0)
    with pytest.raises(ValueError, match="unknown matmul precision `dtype`='int8'"):
        peak_flops("NVIDIA H100 80GB HBM3", "int8")


def test_matmul_precision_follows_the_trainer_flags():
    assert matmul_precision(bf16=True) == "bf16"
    assert matmul_precision(fp16=True) == "fp16"
    assert matmul_precision(tf32=True) == "tf32"
    assert matmul_precision(tf32=False) == "fp32"
    assert matmul_precision() == ("tf32" if torch.backends.cuda.matmul.allow_tf32 else "fp32")


# ----------------------------------------------------------------------------------------- the meter
def _meter_with_a_paused_budget():
    """Updates 1–2 at 1000 tokens/s, 87.5 s paused for a budget, update 3 at 500 tokens/s (1e9 FLOPs/token,
    2 devices)."""
    meter = ThroughputMeter(flops_per_token=1e9, peak_flops=1e12, world_size=2)
    meter.update(0, 0, now=10.0)  # the starting point: counts nothing
    meter.update(1, 1000, now=11.0)
    meter.update(2, 2000, now=12.0)
    meter.pause(now=12.5)  # the half second after update 2 is still training (logging, the next batch)
    meter.resume(now=100.0)  # writing and evaluating the budget: not training
    meter.update(3, 3000, now=101.5)
    return meter


def test_meter_leaves_paused_time_out_of_tokens_per_second_and_mfu():
    meter = _meter_with_a_paused_budget()
    # 3000 tokens in 1 + 1 + (0.5 + 1.5) = 4 training seconds: 750 tokens/s, 375 per device,
    # 375 · 1e9 = 0.375 TFLOP/s per device, 37.5 % of the 1 TFLOP/s peak.
    assert meter.log_figures() == {
        "tokens_per_second": 750.0,
        "tokens_per_second_per_device": 375.0,
        "tflops_per_device": 0.375,
        "mfu": 37.5,
    }
    assert meter.log_figures() == {}  # nothing new since
    meter.update(4, 4000, now=102.5)
    assert meter.log_figures()["tokens_per_second"] == 1000.0


def test_meter_without_a_peak_omits_mfu():
    meter = ThroughputMeter(flops_per_token=1e9, world_size=1)
    meter.update(10, 0, now=0.0)
    meter.update(11, 500, now=2.0)
    assert meter.log_figures() == {
        "tokens_per_second": 250.0,
        "tokens_per_second_per_device": 250.0,
        "tflops_per_device": 0.25,
    }


def test_summary_covers_a_step_range_in_proportion():
    meter = _meter_with_a_paused_budget()
    # Intervals: updates 1–2 (2000 tokens, 2 s; closed by the pause) and update 3 (1000 tokens, 2 s).
    assert meter.summary(0, 2) == {
        "tokens_per_second": 1000.0,
        "tokens_per_second_per_device": 500.0,
        "tflops_per_device": 0.5,
        "mfu": 50.0,
        "updates": 2,
        "tokens": 2000,
        "seconds": 2.0,
    }
    assert meter.summary(2, 3)["tokens_per_second"] == 500.0
    # Half of the first interval (update 2: 1000 tokens, 1 s) and all of the second: 2000 tokens in 3 s.
    assert meter.summary(1, 3)["tokens_per_second"] == pytest.approx(666.7)
    assert meter.summary()["tokens"] == 3000 and meter.summary()["seconds"] == 4.0
    assert meter.summary(3, 10) == {}


def test_pauses_nest_and_resume_must_match_a_pause():
    meter = ThroughputMeter(flops_per_token=1.0)
    meter.update(0, 0, now=0.0)
    meter.pause(now=1.0)
    meter.pause(now=2.0)  # evaluation inside a budget's pause
    meter.resume(now=3.0)
    meter.update(1, 100, now=4.0)  # still paused: not counted, and counting goes on from here
    meter.resume(now=10.0)
    meter.update(2, 200, now=11.0)
    assert meter.summary() == {
        "tokens_per_second": 100.0,
        "tokens_per_second_per_device": 100.0,
        "tflops_per_device": 1e-10,
        "updates": 1,
        "tokens": 100,
        "seconds": 1.0,
    }
    with pytest.raises(ValueError, match="resume\\(\\) without a matching pause\\(\\)"):
        meter.resume()


def test_a_wsd_branch_restart_counts_on_from_the_restored_position():
    meter = ThroughputMeter(flops_per_token=1.0)
    for step in range(5):  # main branch to 2, then the branch's decay updates 3 and 4
        meter.update(step, 100 * step, now=float(step))
    meter.pause(now=4.0)  # write the budget, restore checkpoint-2
    meter.resume(now=50.0, step=2, tokens_seen=200)
    meter.update(3, 300, now=52.0)
    # Updates 1–4 in 4 s, then update 3 again in the 2 s after the restore: 500 tokens in 6 training seconds.
    summary = meter.summary()
    assert (summary["updates"], summary["tokens"], summary["seconds"]) == (5, 500, 6.0)
    assert summary["tokens_per_second"] == 83.33
    assert meter.summary(2, 3)["tokens"] == 200  # update 3 twice: on the branch and again on the main branch


def test_moving_back_without_a_position_counts_nothing_for_that_update():
    meter = ThroughputMeter(flops_per_token=1.0)
    meter.update(0, 0, now=0.0)
    meter.update(4, 400, now=4.0)
    meter.update(3, 300, now=60.0)  # restored to 2 without telling the meter: update 3 is the new starting point
    meter.update(4, 400, now=61.0)
    assert meter.summary()["tokens"] == 500 and meter.summary()["seconds"] == 5.0


def test_history_stays_bounded_and_keeps_the_totals():
    meter = ThroughputMeter(flops_per_token=1.0, max_intervals=4)
    meter.update(0, 0, now=0.0)
    for step in range(1, 21):
        meter.update(step, 10 * step, now=float(step))
        meter.pause(now=float(step))  # one interval per update
        meter.resume(now=float(step))
    assert len(meter.intervals) <= 4
    assert meter.summary() == {
        "tokens_per_second": 10.0,
        "tokens_per_second_per_device": 10.0,
        "tflops_per_device": 1e-11,
        "updates": 20,
        "tokens": 200,
        "seconds": 20.0,
    }


def test_meter_arguments_are_checked():
    with pytest.raises(ValueError, match="`flops_per_token` must be a positive number, or None"):
        ThroughputMeter(flops_per_token=0)
    with pytest.raises(ValueError, match="`world_size` must be a positive integer"):
        ThroughputMeter(flops_per_token=1.0, world_size=0)


# ----------------------------------------------------------------------------------------- the docs
DOC = (Path(__file__).resolve().parents[1] / "docs" / "throughput.md").read_text()


def test_docs_worked_example_is_what_the_code_computes():
    config = LlamaConfig(
        hidden_size=768,
        num_hidden_layers=12,
        num_attention_heads=12,
        num_key_value_heads=12,
        intermediate_size=2048,
        vocab_size=32768,
        tie_word_embeddings=True,
    )
    breakdown = flops_breakdown(config, 2048)
    for figure in (breakdown.matmul_params, breakdown.training(), breakdown.training(causal=True), breakdown.forward()):
        assert f"{figure:,}" in DOC
    meter = ThroughputMeter(breakdown.training(), peak_flops("NVIDIA H100 80GB HBM3", "bf16"))
    meter.update(0, 0, now=0.0)
    meter.update(100, 100 * 16 * 2048, now=8.192)  # 400,000 tokens/s
    assert str(meter.log_figures()) in DOC


def test_docs_table_lists_every_device_row_with_its_figures():
    def cell(tflops):
        return "—" if tflops is None else f"{tflops:g}"

    for row in PEAK_TFLOPS:
        pattern = row.pattern.replace("|", "\\|")
        line = next(line for line in DOC.splitlines() if f"| `{pattern}` |" in line)
        assert f"| {cell(row.bf16)} | {cell(row.fp16)} | {cell(row.tf32)} | {cell(row.fp32)} |" in line, row.name
