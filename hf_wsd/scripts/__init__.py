"""What the recipes in ``recipes/`` share, and their bodies: argument dataclasses, one parser for YAML + CLI,
model and data set-up (:mod:`.setup`), and the pretraining, continual-pretraining and comparison flows.

Each ``recipes/*.py`` file is a thin launcher for ``accelerate launch`` that calls one of these ``main``
functions and prints what it returns, as TRL's ``trl/scripts`` are called by ``trl sft``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shlex
import signal
import sys
import threading
from typing import Sequence

logger = logging.getLogger(__name__)
RESUME_FLAG = "--resume_from_checkpoint"


@contextlib.contextmanager
def run_recipe(resumable: bool = True):
    """Around a recipe's ``main``: logging set up (:func:`hf_wsd.quiet.recipe_logging`); Ctrl-C (or the SIGTERM
    ``accelerate launch`` and schedulers send) ends with one line naming the command that resumes the run instead of
    a traceback (exit status 130); the process group is destroyed at exit (a clean end under ``accelerate launch``)."""
    from ..quiet import recipe_logging

    main_thread = threading.current_thread() is threading.main_thread()  # signal handlers live there only
    previous = {number: signal.getsignal(number) for number in (signal.SIGINT, signal.SIGTERM)}
    if main_thread and previous[signal.SIGTERM] in (signal.SIG_DFL, None):
        signal.signal(signal.SIGTERM, _interrupt)
    try:
        with recipe_logging():  # INFO on the main process only; log lines off the progress bars
            yield
    except KeyboardInterrupt:
        if main_thread:
            for number in previous:  # a second Ctrl-C must not cut the message
                signal.signal(number, signal.SIG_IGN)
        if int(os.environ.get("RANK", "0")) == 0:
            logger.warning(interrupted_message(sys.argv, resumable))  # stderr, through the recipe's logging
        raise SystemExit(130) from None
    finally:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
        if main_thread:
            for number, handler in previous.items():
                signal.signal(number, handler if handler is not None else signal.SIG_DFL)


def _interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def resume_command(argv: Sequence[str]) -> str:
    """The launch command of ``argv`` (a recipe's ``sys.argv``) that resumes its run: ``--resume_from_checkpoint
    true`` in place of any value it had."""
    script, *rest = argv
    kept, skip = [], False
    for item in rest:
        if skip:
            skip = False
        elif item == RESUME_FLAG:
            skip = True
        elif not item.startswith(RESUME_FLAG + "="):
            kept.append(item)
    return shlex.join(["accelerate", "launch", script, *kept, RESUME_FLAG, "true"])


def interrupted_message(argv: Sequence[str], resumable: bool = True) -> str:
    if not resumable:
        return "Interrupted."
    return (
        "Interrupted. Budgets already written stay in their folders; the run resumes from its newest checkpoint "
        f"(updates after it are trained again) with:\n  {resume_command(argv)}"
    )
