"""Continual pretraining with WSD-S: start from a checkpoint, re-warm the LR, one decayed budget per budget on new text.

    accelerate launch recipes/pretrain.py              # first: the default run (runs/llama-tiny-wsd-s)
    accelerate launch recipes/continual_pretrain.py    # recipes/llama-tiny/continual/config_lora_wsd_s.yaml
    accelerate launch recipes/continual_pretrain.py CONFIG.yaml --model_name_or_path NAME_OR_FOLDER --use_peft false

The flow (and what the YAML holds) is in hf_wsd/scripts/continual.py.
"""

import sys

from hf_wsd.scripts import continual, run_recipe
from hf_wsd.summary import budget_table, format_summary

if __name__ == "__main__":
    with run_recipe():
        summary = continual.main(sys.argv[1:])
        if summary is not None:
            print(format_summary(budget_table(summary["output_dir"])))
            print("\n" + continual.format_report(summary))
