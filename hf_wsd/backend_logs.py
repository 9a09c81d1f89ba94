"""What the logging backends (``report_to``) see of a WSD run: the main branch under the usual names, each WSD
side branch under its own.

A WSD side branch trains updates ``Tᵢ − Dᵢ + 1 … Tᵢ`` and then the main branch trains the same update numbers
again. The Trainer's integration callbacks (TensorBoard, W&B, Trackio, MLflow…) write each ``on_log`` at
``state.global_step`` (Trackio at its own counter), so a branch's points would land on the main curves with steps
going back (20 → 17). While a branch runs, the callbacks get the same values renamed ``branch/<budget name>/<key>``
(:func:`for_backends`): every main-branch tag keeps strictly increasing steps, each branch draws its own curves.
``state.log_history`` and ``wsd_log.jsonl`` keep the original keys with the branch's index (forecasts read them).

Budget and preview metrics (``budget/…``, ``preview/…``) are one point per budget at the budget's step: never
renamed, so each is one curve over the run's budgets. The Trainer adds ``epoch`` to every log (training, evaluation,
budget metrics, the end of training): the backends get it once per step and path (:func:`without_repeated_epoch`),
so ``epoch`` too has strictly increasing steps.
"""

from __future__ import annotations

from typing import Any

SHARED_PREFIXES = ("budget/", "preview/")  # per-budget metrics: one curve across branches


def branch_prefix(budget_name: str) -> str:
    """The prefix of a branch's keys, e.g. ``branch/step20-tokens1.28K/`` (TensorBoard: ``train/branch/…/loss``)."""
    return f"branch/{budget_name}/"


def for_backends(logs: dict[str, Any], branch_name: str | None) -> dict[str, Any]:
    """``logs`` as the logging callbacks should see them: unchanged on the main branch, renamed on a side branch."""
    if branch_name is None or not logs:
        return logs
    prefix = branch_prefix(branch_name)
    return {key if key.startswith(SHARED_PREFIXES) else prefix + key: value for key, value in logs.items()}


def without_repeated_epoch(logs: dict[str, Any], branch_name: str | None, step: int,
                           last: tuple | None) -> tuple[dict[str, Any], tuple | None]:
    """``(logs, where epoch was last passed on)``: ``logs`` (as :func:`for_backends` made them) without their epoch
    when one was already passed on at this step of this path."""
    key = branch_prefix(branch_name) + "epoch" if branch_name is not None else "epoch"
    if key not in logs:
        return logs, last
    if last == (branch_name, step):
        return {k: v for k, v in logs.items() if k != key}, last
    return logs, (branch_name, step)
