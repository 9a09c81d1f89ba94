"""Bad input gets a ValueError naming the field or file and the fix, before any update; damaged run files name
themselves and how to recover."""

from __future__ import annotations

import pytest
from conftest import TINY_RECIPE
from helpers import HUB_TOKEN, tiny_config, tiny_model, tiny_trainer

from hf_wsd.runs import RunFileError


def test_token_budgets_over_rows_of_varying_length_need_a_sequence_length(tmp_path):
    from datasets import Dataset

    from hf_wsd import WSDTrainer

    ragged = Dataset.from_dict({"input_ids": [[1] * (4 + i % 5) for i in range(40)]})
    args = tiny_config(tmp_path, ["2K", "4K"], budget_unit="tokens")
    with pytest.raises(ValueError, match="rows of varying length.*`seq_length`"):
        WSDTrainer(model=tiny_model(), args=args, train_dataset=ragged)


def test_lora_fields_without_use_peft_are_refused(tmp_path):
    with pytest.raises(ValueError, match="`lora_r`, `lora_target_modules` set without `use_peft`"):
        tiny_config(tmp_path, [10], lora_r=4, lora_target_modules=["q_proj"])


def test_a_damaged_plan_file_is_named_on_resume(tmp_path):
    tiny_trainer(tmp_path, [10]).train()
    (tmp_path / "wsd_plan.json").write_text('{"run_id": "abc", "plan": {"budg')
    with pytest.raises(RunFileError, match=r"wsd_plan\.json is damaged .*overwrite_output_dir=True"):
        tiny_trainer(tmp_path, [10, 20]).train(resume_from_checkpoint=True)


def test_a_damaged_ledger_is_named_before_training_and_by_hf_wsd_push(tmp_path, capsys):
    from hf_wsd.cli import main as cli

    tiny_trainer(tmp_path, [10]).train()
    (tmp_path / "budgets" / "published.json").write_text("{not json")
    with pytest.raises(RunFileError, match=r"published\.json is damaged.*hf-wsd push"):
        tiny_trainer(tmp_path, [10, 20], push_to_hub=True, hub_model_id="tester/x", hub_token=HUB_TOKEN)
    assert cli(["push", str(tmp_path), "--repo", "tester/x"]) == 2
    assert "published.json is damaged" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("config", "field"),
    [({"model_type": "llama", "max_position_embeddings": 64, "hidden_size": 32, "intermediate_size": 64,
       "num_hidden_layers": 1, "num_attention_heads": 2}, "max_position_embeddings=64"),
     ({"model_type": "gpt2", "n_positions": 64, "n_embd": 32, "n_layer": 1, "n_head": 2}, "64 positions")],
)
def test_a_model_context_shorter_than_the_block_is_refused_before_training(tmp_path, small_corpus, config, field):
    from transformers import AutoConfig

    from hf_wsd.scripts import pretrain

    AutoConfig.for_model(**config).save_pretrained(tmp_path / "arch")
    argv = ["--corpus", str(small_corpus), "--output_dir", str(tmp_path / "run"), "--budgets", "4",
            *TINY_RECIPE, "--config_name", str(tmp_path / "arch"), "--block_size", "128"]
    with pytest.raises(ValueError, match=r"`block_size`=128 is longer than the model's context"):
        pretrain.main(argv)
    assert not (tmp_path / "run" / "wsd_plan.json").exists()  # nothing trained, no weights allocated


def test_a_recipe_config_that_is_not_a_mapping_is_refused(tmp_path):
    from hf_wsd.scripts import pretrain

    config = tmp_path / "config.yaml"
    config.write_text("- budgets\n- 100\n")
    with pytest.raises(ValueError, match=r"config\.yaml holds a YAML list, not a mapping"):
        pretrain.main([str(config)])
    config.write_text("budgets: [\"10\"]\nbudget_count: 3\n")
    with pytest.raises(ValueError, match="unknown field.*budget_count"):
        pretrain.main([str(config)])


def test_unknown_choices_are_refused_by_the_parser(capsys):
    from hf_wsd.scripts import pretrain

    with pytest.raises(SystemExit):
        pretrain.parser().parse(["--schedule", "wsd-x"])
    assert "invalid choice: 'wsd-x'" in capsys.readouterr().err

