"""Output a user reads: third-party noise dropped, HTTP requests unlogged, log lines off the progress bars.

- bitsandbytes warns "Failed to load CPU gemm_4bit_forward from kernels-community" when it is imported on a CPU
  with AVX-512 BF16 (every launch, ``--help`` included, since transformers and PEFT import it): 4-bit CPU matmuls
  hf_wsd never runs. :func:`drop_known_noise` (called when ``hf_wsd`` is imported) filters exactly that record.
- ``httpx`` logs every request at INFO: :func:`quiet_http` raises it to WARNING for CLIs that log at INFO.
- :func:`recipe_logging`: INFO on the main process only (a DDP launch logs each line once), WARNING elsewhere;
  log lines written through ``tqdm.write`` so they never land inside the training or evaluation bar.
- :func:`follow_replica_log_level`: in any script, hf_wsd's loggers on the processes that do not log take the
  Trainer's ``log_level_replica`` (default ``warning``), as transformers' own loggers do.
"""

from __future__ import annotations

import contextlib
import logging
import os
from typing import Iterator

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# (logger, message prefix) of records that say nothing about a WSD run
KNOWN_NOISE = (("bitsandbytes.backends.cpu.ops", "Failed to load CPU gemm_4bit_forward"),)


class _DropPrefix(logging.Filter):
    def __init__(self, prefix: str):
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.prefix)


def drop_known_noise() -> None:
    """Filter :data:`KNOWN_NOISE` (idempotent; the loggers need not exist yet)."""
    for name, prefix in KNOWN_NOISE:
        target = logging.getLogger(name)
        if not any(isinstance(f, _DropPrefix) and f.prefix == prefix for f in target.filters):
            target.addFilter(_DropPrefix(prefix))


def quiet_http() -> None:
    """No INFO line per HTTP request (``hf-wsd push`` logs at INFO)."""
    for name in ("httpx", "httpcore", "urllib3"):
        logging.getLogger(name).setLevel(logging.WARNING)


def follow_replica_log_level(args) -> None:
    """hf_wsd's loggers at ``args.log_level_replica`` on a process that does not log (``args.should_log`` False)."""
    if getattr(args, "should_log", True):
        return
    level = args.get_process_log_level()
    if level >= 0:  # "passive" (-1): leave the logger as the script set it
        logging.getLogger("hf_wsd").setLevel(level)


def is_main_process() -> bool:
    """Rank 0 of a launch (``RANK`` set by ``accelerate launch`` / ``torchrun``), or a single process."""
    return int(os.environ.get("RANK", "0")) == 0


@contextlib.contextmanager
def recipe_logging() -> Iterator[None]:
    """The recipes' logging: INFO on the main process, WARNING on the others, through ``tqdm.write``."""
    logging.basicConfig(format=LOG_FORMAT, level=logging.INFO if is_main_process() else logging.WARNING)
    try:
        from tqdm.contrib.logging import logging_redirect_tqdm
    except ImportError:  # pragma: no cover - tqdm comes with transformers
        yield
        return
    with logging_redirect_tqdm():
        yield
