"""Pretrain a causal LM with WSD / WSD-S: one launch, one decayed, evaluated checkpoint per budget.

    accelerate launch recipes/pretrain.py                                   # the embedded default, offline
    accelerate launch recipes/pretrain.py recipes/llama-tiny/pretrain/config_wsd_s.yaml --schedule wsd
    accelerate launch recipes/pretrain.py CONFIG.yaml --budgets 1000 2000 --corpus ./my_texts/

Every field of the YAML file can be overridden on the command line (`--field value`); `--help` lists them.
The flow lives in hf_wsd/scripts/pretrain.py.
"""

import sys

from hf_wsd.scripts import pretrain, run_recipe
from hf_wsd.summary import budget_table, format_summary, preview_table

if __name__ == "__main__":
    with run_recipe():
        trainer = pretrain.main(sys.argv[1:])
        if trainer.is_world_process_zero():
            budgets = trainer.output_path / "budgets"
            print(f"\nDecayed checkpoints (from_pretrained-ready folders in {budgets}):")
            print(format_summary(budget_table(trainer.output_path)))
            previews = preview_table(trainer.output_path)
            if previews:
                print("\nEMA previews (averages of the stable phase, not decayed budgets):")
                print(format_summary(previews))
