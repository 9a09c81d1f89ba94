"""Continual SFT with WSD-S on TRL's SFTTrainer: instruction-style data, one decayed, evaluated checkpoint per budget.

    pip install 'hf_wsd[trl]'
    accelerate launch recipes/pretrain.py          # first: the default run (runs/llama-tiny-wsd-s)
    accelerate launch recipes/continual_sft.py     # recipes/llama-tiny/continual_sft/config_wsd_s.yaml
    accelerate launch recipes/continual_sft.py CONFIG.yaml --sft_data ./pairs.jsonl --model_name_or_path NAME_OR_FOLDER

The flow (and what the YAML holds) is in hf_wsd/scripts/continual_sft.py.
"""

import sys

from hf_wsd.scripts import continual, continual_sft, run_recipe
from hf_wsd.summary import budget_table, format_summary

if __name__ == "__main__":
    with run_recipe():
        summary = continual_sft.main(sys.argv[1:])
        if summary is not None:
            print(format_summary(budget_table(summary["output_dir"])))
            print("\n" + continual.format_report(summary, title="Continual SFT"))
