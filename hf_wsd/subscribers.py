"""The budget subscribers a config asks for, built in one place: evaluation, the model card, publishing.

The trainer calls :func:`add_budget_subscribers` once; it imports nothing of what the subscribers do, so
"the trainer knows nothing about the Hub" holds for its imports too. Order comes from each subscriber's
``priority`` (:mod:`hf_wsd.events`): evaluation (100), user subscribers (0), the card (-100), publishing (-200).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from transformers import Trainer, TrainerCallback


def budget_subscribers(trainer: "Trainer") -> list["TrainerCallback"]:
    """The subscribers ``trainer.args`` asks for; every setting is checked now, before any compute is spent."""
    from .card import BudgetCard

    args = trainer.args
    found: list[TrainerCallback] = []
    if args.budget_eval:
        from .evaluation import BudgetEvaluator, validate_tasks

        check_heldout_batches(trainer)
        validate_tasks(args.eval_tasks, args.eval_task_paths)  # fail now, not after hours of compute
        found.append(BudgetEvaluator(
            eval_tasks=args.eval_tasks,
            eval_task_paths=args.eval_task_paths,
            eval_limit=args.eval_limit,
            eval_batch_size=args.lm_eval_batch_size,
        ))
    found.append(BudgetCard(forecast=args.budget_forecast))
    if args.push_to_hub:
        from .publishing import HubPublisher

        publisher = HubPublisher.from_args(args)
        refusal = None
        if args.process_index == 0:  # the token and the repo, before step 0 (hours before the first upload)
            try:
                publisher.uploader.check_access()
            except ValueError as error:
                refusal = str(error)
        refusal = trainer._from_main(refusal) if hasattr(trainer, "_from_main") else refusal
        if refusal is not None:
            from .hub_upload import HubAccessError

            raise HubAccessError(refusal)
        found.append(publisher)
    return found


def add_budget_subscribers(trainer: "Trainer") -> None:
    for subscriber in budget_subscribers(trainer):
        trainer.add_callback(subscriber)


def check_heldout_batches(trainer: "Trainer") -> None:
    """With ``dataloader_drop_last`` a held-out set smaller than one batch would score nothing: say so now."""
    args, eval_dataset = trainer.args, trainer.eval_dataset
    datasets = eval_dataset if isinstance(eval_dataset, dict) else {"eval_dataset": eval_dataset}
    batch = args.eval_batch_size * args.world_size
    for name, dataset in datasets.items():
        if args.dataloader_drop_last and hasattr(dataset, "__len__") and len(dataset) < batch:
            raise ValueError(
                f"`dataloader_drop_last` drops every held-out batch: {name} has {len(dataset)} examples, fewer than "
                f"one batch ({batch}); lower `per_device_eval_batch_size` or set dataloader_drop_last=False."
            )
