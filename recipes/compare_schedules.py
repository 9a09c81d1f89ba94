"""Compare WSD-S, WSD, cyclic-cosine and a per-budget cosine "oracle" at small scale (Wen et al., 2024).

    python recipes/compare_schedules.py            # recipes/llama-tiny/compare/config.yaml (30-40 min, 2 CPU cores)
    python recipes/compare_schedules.py --quick    # recipes/llama-tiny/compare/config_quick.yaml (under a minute)
    python recipes/compare_schedules.py CONFIG.yaml --seed 1 --output_dir runs/compare-seed1

The flow, its fields and what it writes: hf_wsd/scripts/compare.py; measured results: docs/results.md.
"""

import sys

from hf_wsd.scripts import compare, run_recipe

if __name__ == "__main__":
    with run_recipe(resumable=False):
        rows, text = compare.main(sys.argv[1:])
        print("\n" + text)
