"""What the recipes in ``recipes/`` share, and their bodies: argument dataclasses, one parser for YAML + CLI,
model and data set-up (:mod:`.setup`), and the pretraining, continual-pretraining and comparison flows.

Each ``recipes/*.py`` file is a thin launcher for ``accelerate launch`` that calls one of these ``main``
functions and prints what it returns, as TRL's ``trl/scripts`` are called by ``trl sft``.
"""

from __future__ import annotations

import contextlib


@contextlib.contextmanager
def run_recipe():
    """Around a recipe's ``main``: the process group is destroyed at exit (a clean end under ``accelerate launch``)."""
    try:
        yield
    finally:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
