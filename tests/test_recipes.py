"""The shipped recipe configs parse, and the ~124M Llama config builds and trains two updates on the CPU."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CONFIGS = sorted((REPO / "recipes").glob("*/pretrain/config_*.yaml"))


@pytest.mark.parametrize("config", CONFIGS, ids=[str(c.relative_to(REPO / "recipes")) for c in CONFIGS])
def test_every_pretraining_config_parses_into_a_valid_plan(config):
    from hf_wsd.scripts import pretrain

    data_args, model_args, args = pretrain.parser().parse([str(config)])
    tokens_per_update = args.per_device_train_batch_size * args.gradient_accumulation_steps * data_args.block_size
    plan = args.build_plan(tokens_per_update)
    assert plan.budgets and plan.total_steps == plan.budgets[-1].step


@pytest.mark.slow
def test_the_124m_config_builds_and_runs_two_updates_on_the_cpu(tmp_path, small_corpus):
    from hf_wsd.scripts import pretrain

    config = REPO / "recipes" / "llama-124m" / "pretrain" / "config_wsd_s.yaml"
    trainer = pretrain.main([
        str(config), "--corpus", str(small_corpus), "--output_dir", str(tmp_path), "--vocab_size", "1024",
        "--block_size", "64", "--per_device_train_batch_size", "1", "--gradient_accumulation_steps", "1",
        "--budgets", "2", "--budget_unit", "steps", "--warmup_steps", "0", "--decay_fraction", "0.5",
        "--budget_eval", "false", "--disable_tqdm", "true", "--logging_steps", "1",
    ])
    model = trainer.accelerator.unwrap_model(trainer.model)
    assert (model.config.hidden_size, model.config.num_hidden_layers, model.config.num_key_value_heads) == (768, 12, 12)
    blocks = sum(p.numel() for p in model.parameters()) - model.get_input_embeddings().weight.numel()
    assert 84_000_000 < blocks < 86_000_000  # + 38M of tied embeddings at the config's 49,152-token vocabulary
    assert trainer.state.global_step == 2 and (tmp_path / "budgets" / "step2-tokens128").is_dir()
