"""The budget plan by scheduler name, for users who keep a plain ``Trainer`` and ``TrainingArguments``.

    import hf_wsd
    hf_wsd.register()
    args = TrainingArguments(..., max_steps=8000, warmup_steps=200, lr_scheduler_type="wsd-s",
                             lr_scheduler_kwargs={"budgets": [1000, 2000, 4000, 8000], "decay_fraction": 0.1})
    Trainer(model=model, args=args, ...).train()    # the LR follows the plan at every update

transformers' ``lr_scheduler_type`` is a closed ``str`` enum (``SchedulerType``): ``TrainingArguments.__post_init__``
converts the value with ``SchedulerType(value)``, and ``get_scheduler`` maps the member through
``TYPE_TO_SCHEDULER_FUNCTION`` and calls the function with ``num_warmup_steps``, ``num_training_steps`` and
``lr_scheduler_kwargs``. :func:`register` adds one member per name to the enum (and so to ``--lr_scheduler_type``'s
choices on the command line) and one entry to that table. Only the enum's value lookup tables are touched
(``_value2member_map_``, ``_member_map_``, ``_member_names_``: present and used alike on Python 3.10–3.13), and
:func:`register` checks the whole path (name → member → scheduler, pickling) before returning; where any step
fails it raises a ``ValueError`` naming ``lr_scheduler_type`` and the way that always works
(``optimizers=(optimizer, get_budget_plan_scheduler(optimizer, plan))``).

The scheduler is :class:`~hf_wsd.lr_scheduler.BudgetPlanLR`: picklable, and its state is the step counter, so a
resumed ``Trainer`` continues the plan. A plain ``Trainer`` gets the LR only: budget folders, their evaluation and
publishing, and WSD side branches (``"wsd"``, which needs the trainer to branch) come with
:class:`~hf_wsd.WSDTrainer` or :class:`~hf_wsd.trainer.WSDMixin`.
"""

from __future__ import annotations

import enum
import functools
import sys
from typing import Any

# lr_scheduler_type value → the plan's schedule. WSD side branches need WSDTrainer, so "wsd" has no name here.
SCHEDULER_NAMES = {"wsd-s": "wsd-s", "cyclic-cosine": "cyclic-cosine"}
# lr_scheduler_kwargs a plan takes (warmup comes from TrainingArguments.warmup_steps, the length from max_steps).
PLAN_KWARGS = (
    "budgets", "decay_fraction", "decay_steps", "decay_shape", "min_lr_ratio", "rewarmup_steps", "budget_unit",
    "tokens_per_update",
)
_registered = False
_FALLBACK = (
    "use hf_wsd.WSDTrainer, or pass the plan's scheduler yourself: "
    "Trainer(..., optimizers=(optimizer, hf_wsd.get_budget_plan_scheduler(optimizer, plan)))"
)


def register() -> tuple[str, ...]:
    """Make ``lr_scheduler_type="wsd-s"`` (and ``"cyclic-cosine"``) valid in transformers; returns the names.

    Call it once before building ``TrainingArguments`` (or an ``HfArgumentParser``); calling it again does nothing.
    ``lr_scheduler_kwargs`` holds the plan's fields (:data:`PLAN_KWARGS`; ``budgets`` is required).
    """
    global _registered
    if _registered:
        return tuple(SCHEDULER_NAMES)
    import transformers

    try:
        from transformers import optimization, trainer_utils

        scheduler_type, functions = trainer_utils.SchedulerType, optimization.TYPE_TO_SCHEDULER_FUNCTION
        if optimization.SchedulerType is not scheduler_type or not issubclass(scheduler_type, enum.Enum):
            raise TypeError("transformers' SchedulerType is not the enum get_scheduler reads")
        for name, schedule in SCHEDULER_NAMES.items():
            member = add_enum_member(scheduler_type, name.upper().replace("-", "_"), name, reduce=_reduce_member)
            functions[member] = functools.partial(get_plan_scheduler, registered_as=schedule)
        _registered = True  # before the check: unpickling a member inside it calls register() again
        _check_registration(scheduler_type, optimization.get_scheduler)
    except Exception as error:  # noqa: BLE001 - any failure means the names cannot work here
        _registered = False
        version = f"transformers {transformers.__version__}, Python {sys.version.split()[0]}"
        raise ValueError(
            f"`lr_scheduler_type`: hf_wsd cannot register {', '.join(map(repr, SCHEDULER_NAMES))} with {version} "
            f"({type(error).__name__}: {error}); {_FALLBACK}."
        ) from error
    return tuple(SCHEDULER_NAMES)


def get_plan_scheduler(optimizer, num_warmup_steps: int | None = None, num_training_steps: int | None = None, *,
                       registered_as: str, **plan_kwargs: Any):
    """What ``get_scheduler`` calls for a registered name: the plan of ``lr_scheduler_kwargs`` as a ``BudgetPlanLR``.

    The plan's warmup is the Trainer's (``warmup_steps``) and its last budget must be the run's length
    (``max_steps``): both are checked here, when the Trainer builds its scheduler, before the first update.
    """
    from .lr_scheduler import get_budget_plan_scheduler
    from .plan import BudgetPlan

    name = next(key for key, value in SCHEDULER_NAMES.items() if value == registered_as)
    unknown = sorted(set(plan_kwargs) - set(PLAN_KWARGS))
    if unknown:
        hints = {"warmup_steps": "set TrainingArguments.warmup_steps", "schedule": f"the name {name!r} is the schedule"}
        detail = "; ".join(f"`{key}`: {hints[key]}" for key in unknown if key in hints)
        raise ValueError(
            f"`lr_scheduler_kwargs` of lr_scheduler_type={name!r}: unknown key(s) {', '.join(unknown)}"
            + (f" ({detail})" if detail else "") + f"; the plan takes {', '.join(PLAN_KWARGS)}."
        )
    if not plan_kwargs.get("budgets"):
        raise ValueError(
            f"`lr_scheduler_kwargs` of lr_scheduler_type={name!r} needs `budgets`, e.g. "
            "lr_scheduler_kwargs={'budgets': [1000, 2000, 4000]}."
        )
    plan = BudgetPlan(schedule=registered_as, warmup_steps=int(num_warmup_steps or 0), **plan_kwargs)
    if num_training_steps is not None and num_training_steps != plan.total_steps:
        raise ValueError(
            f"`max_steps`: lr_scheduler_type={name!r} plans {plan.total_steps} updates (the last budget) but the "
            f"Trainer will run {num_training_steps}: set max_steps={plan.total_steps}."
        )
    return get_budget_plan_scheduler(optimizer, plan)


# ----------------------------------------------------------------------------------------------- the enum
def add_enum_member(enum_cls: type[enum.Enum], name: str, value: Any, reduce=None) -> enum.Enum:
    """Add member ``name`` = ``value`` to ``enum_cls`` as if it had been declared (the one for ``value`` if present).

    ``reduce``: the member's ``__reduce_ex__`` (pickle), e.g. to register again when a fresh process unpickles it.
    """
    existing = enum_cls._value2member_map_.get(value)
    if existing is not None:
        return existing
    if name in enum_cls._member_map_ or name in vars(enum_cls):
        raise ValueError(f"{enum_cls.__name__} already has an attribute {name!r}")
    member_type = getattr(enum_cls, "_member_type_", object)
    member = object.__new__(enum_cls) if member_type is object else member_type.__new__(enum_cls, value)
    member._name_, member._value_, member.__objclass__ = name, value, enum_cls
    member._sort_order_ = len(enum_cls._member_names_)  # Python >= 3.11 orders members by it (harmless before)
    if reduce is not None:
        member.__reduce_ex__ = functools.partial(reduce, member)
    setattr(enum_cls, name, member)
    enum_cls._member_map_[name] = member
    enum_cls._value2member_map_[value] = member
    enum_cls._member_names_.append(name)
    return member


def _reduce_member(member: enum.Enum, protocol: int):
    return _registered_member, (member.value,)


def _registered_member(value: str):
    """Unpickle a registered member (``training_args.bin``) in a process that has not called :func:`register`."""
    register()
    from transformers.trainer_utils import SchedulerType

    return SchedulerType(value)


def _check_registration(scheduler_type: type[enum.Enum], get_scheduler) -> None:
    """Every step of the by-name path, on a one-parameter optimizer: a failure here means it cannot work."""
    import pickle

    import torch

    from .lr_scheduler import BudgetPlanLR

    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    for name in SCHEDULER_NAMES:
        member = scheduler_type(name)
        if member.value != name or member != name or name not in [m.value for m in scheduler_type]:
            raise TypeError(f"SchedulerType({name!r}) is not a member equal to its value")
        if pickle.loads(pickle.dumps(member)) is not member:
            raise TypeError(f"SchedulerType({name!r}) does not survive pickling")
        scheduler = get_scheduler(member, optimizer, num_warmup_steps=0, num_training_steps=2,
                                  scheduler_specific_kwargs={"budgets": [2], "decay_steps": 1})
        if not isinstance(scheduler, BudgetPlanLR):
            raise TypeError(f"get_scheduler({name!r}) returned {type(scheduler).__name__}, not the plan's scheduler")
