"""``WSDConfig``: ``TrainingArguments`` plus the budget plan, the evaluation and the publishing of budgets.

The WSD fields live in :class:`WSDArguments`, a dataclass with no base, so they combine with any trainer's
config: ``WSDConfig`` is ``WSDArguments`` + ``TrainingArguments``, and :func:`wsd_config_class` builds the same
for another config class (e.g. TRL's ``SFTConfig``) to pair with :class:`~hf_wsd.trainer.WSDMixin`.
"""

from __future__ import annotations

import copyreg
import dataclasses
import math
from dataclasses import dataclass, field

from transformers import TrainingArguments

from .averaging import AVERAGE_DEVICES, check_average_fields
from .branching import BRANCH_RESTORES
from .plan import BUDGET_UNITS, SCHEDULES, BudgetPlan
from .schedules import DECAY_SHAPES


@dataclass
class WSDArguments:
    r"""
    The budget plan, the evaluation of budgets and lean training, as fields of any trainer config.

    Configuration of [`WSDTrainer`] ([`WSDConfig`]): every [`~transformers.TrainingArguments`] field, plus the
    fields below.

    Parameters that control the budgets:
        budgets (`list[str]`):
            Increasing compute budgets, one decayed checkpoint each: `["1000", "2000"]` updates, or with
            `budget_unit="tokens"`, `["2.5M", "10M"]`. Suffixes K, M, B, T are powers of 1000.
        budget_unit (`str`, *optional*, defaults to `"steps"`):
            `"steps"` (optimizer updates) or `"tokens"`. Tokens per update = per-device batch size ×
            gradient accumulation × world size × `seq_length`.
        seq_length (`int` or `None`, *optional*, defaults to `None`):
            Tokens per training example. `None` reads it from the first training example (packed blocks).

    Parameters that control the schedule:
        schedule (`str`, *optional*, defaults to `"wsd-s"`):
            `"wsd-s"` (decay in-line at each budget, then straight back to peak LR, optimizer state kept),
            `"wsd"` (decay on a side branch per budget; the main branch never decays), `"cyclic-cosine"` or
            `"cosine"` (baselines).
        decay_fraction (`float` or `None`, *optional*, defaults to `None`):
            Decay length as a fraction of each period (WSD-S) or of the budget (WSD); `None` means 0.1 unless
            `decay_steps` is set.
        decay_steps (`int` or `None`, *optional*, defaults to `None`):
            Fixed decay length in updates (instead of `decay_fraction`).
        decay_shape (`str`, *optional*, defaults to `"linear"`):
            `"linear"`, `"cosine"`, `"1-sqrt"`, `"inverse"` or `"exp"`.
        min_lr_ratio (`float`, *optional*, defaults to `0.0`):
            Multiplier of `learning_rate` that each decay approaches.
        rewarmup_steps (`int`, *optional*, defaults to `0`):
            WSD-S only: updates to climb back to peak after each budget (0 jumps straight back).
        `warmup_steps` (from `TrainingArguments`) is the initial warmup; below 1 it is a ratio of the last budget.
        `max_steps` follows from the plan: leave it at -1 (any other value must equal the last budget).

    Parameters that control the decay data (annealing; see `hf_wsd/data/mixture.py` and docs/annealing.md):
        decay_mixture (`dict[str, float]` or `None`, *optional*, defaults to `None`):
            The data mixture of every decay window: source names → weights, e.g. `{"main": 0.7, "quality": 0.3}`
            (`name=weight` strings on the command line). `main` is `train_dataset`; other names are keys of the
            trainer's `decay_datasets` (`decay_dataset=` alone is named `decay` and, without a mixture, fills
            every decay update). Weights are ≥ 0 and are normalised; each source keeps its own position.
        decay_mixture_per_budget (`dict[str, dict[str, float]]`, *optional*, defaults to `{}`):
            Mixtures for single budgets' windows, keyed by the budget as written in `budgets`
            (`{"800": {"main": 0.5, "quality": 0.5}}`; `800:main=0.5,quality=0.5` on the command line); they
            replace `decay_mixture` there. Without `decay_mixture`, only these budgets anneal.
        decay_mixture_tail (`float` or `None`, *optional*, defaults to `None`):
            Only the last fraction of each decay window draws from the mixture (`None`: all of it). Required for
            `cyclic-cosine` and `cosine`, whose windows are whole cosine periods.

    Parameters that control the evaluation of each budget:
        budget_eval (`bool`, *optional*, defaults to `True`):
            Score every decayed checkpoint (held-out loss and perplexity on `eval_dataset`, plus `eval_tasks`).
        eval_tasks (`list[str]`, *optional*, defaults to `[]`):
            lm-evaluation-harness task names (`hellaswag`, `arc_easy`, … or tasks in `eval_task_paths`).
        eval_task_paths (`list[str]`, *optional*, defaults to `[]`):
            Directories of local lm-eval task YAML files.
        eval_limit (`int` or `None`, *optional*, defaults to `None`):
            At most this many examples per lm-eval task.
        lm_eval_batch_size (`int`, *optional*, defaults to `8`):
            Batch size of lm-eval.

    Parameters that control parameter-efficient training (LoRA adapters; see `hf_wsd/lean.py` and docs/lean.md):
        use_peft (`bool`, *optional*, defaults to `False`):
            Train a LoRA adapter on the frozen model (`peft.get_peft_model`, as TRL's `SFTTrainer` does); passing
            `peft_config=` to `WSDTrainer` does the same with any PEFT config. Budget folders and checkpoints then
            hold the adapter only; `budget.json` and the card name the base model and how to load the adapter.
        lora_r (`int`, *optional*, defaults to `16`):
            LoRA rank.
        lora_alpha (`int`, *optional*, defaults to `32`):
            LoRA scaling numerator (the update is scaled by `lora_alpha / lora_r`).
        lora_dropout (`float`, *optional*, defaults to `0.05`):
            Dropout on the LoRA input.
        lora_target_modules (`list[str]` or `None`, *optional*, defaults to `None`):
            Modules that get an adapter: names (`["q_proj", "v_proj"]`), one regex over full module names, or
            `["all-linear"]`; `None`: PEFT's default for the architecture (`q_proj`, `v_proj` for Llama).
        lora_modules_to_save (`list[str]` or `None`, *optional*, defaults to `None`):
            Modules trained in full and saved with the adapter (e.g. `["embed_tokens", "lm_head"]` for a new
            vocabulary).
        save_merged_budgets (`bool`, *optional*, defaults to `False`):
            Also write each budget's base weights with the adapter merged in to `{budget}/merged/` (loads with
            `AutoModelForCausalLM`; holds a second copy of the model in memory while it is written).

    Parameters that control the EMA previews (see `hf_wsd/averaging.py` and docs/averaging.md):
        ema_beta (`float` or `None`, *optional*, defaults to `None`):
            Keep a bias-corrected exponential moving average of the main branch's weights over the stable-phase
            updates (peak LR, after warmup; never a decay, rewarmup or WSD branch update), saved in every checkpoint,
            and write EMA previews from it. In (0, 1): about the last 1/(1-β) averaged updates count. `None`: off.
        ema_device (`str`, *optional*, defaults to `"device"`):
            Where the average lives: `"device"` (next to the parameters: 4 bytes per parameter) or `"cpu"` (host
            memory: one device-to-host copy of the weights per averaged update).
        preview_steps (`list[int]` or `None`, *optional*, defaults to `None`):
            Main-branch updates after which a preview `budgets/{step name}-ema/` is written (a `from_pretrained`
            folder holding the average, evaluated and carded like a budget, labelled as a preview); `None`: at every
            resumable checkpoint save of the main branch. A list replaces that default; `[]` writes none.
        preview_push_to_hub (`bool`, *optional*, defaults to `False`):
            Also publish each preview to its own Hub branch (its folder name); `main` never holds a preview.

    Parameters that control the run:
        budget_forecast (`bool`, *optional*, defaults to `True`):
            Fit a loss-vs-schedule law to the run's log up to each budget's decay start, predict the budget's training
            loss (`forecast.json` in the folder) and show it against the measured loss in the card (`hf-wsd forecast`
            does the same for any plan).
        log_throughput (`bool`, *optional*, defaults to `True`):
            Log tokens/s (global and per device), TFLOP/s per device and MFU (percent of the device's dense peak,
            FLOPs per token from the architecture: 6·N + 12·L·H·Q·T) with every training loss, and summarise them per
            budget in `budget.json` and the card. Time spent on budgets, evaluation, checkpoints and branch switches
            is left out.
        peak_tflops (`float` or `None`, *optional*, defaults to `None`):
            Dense peak TFLOP/s of one device at the training precision; default: looked up from the device name.
        card_dataset_name, card_datasets, card_license, card_language (*optional*, default `None`):
            What each budget's model card says about the training data: its name, Hub dataset ids (`datasets:`
            metadata), the weights' license and the data's languages. The recipes fill them for the corpora they
            know (kjv, shakespeare: public domain, English; a Hub dataset id).
        flops_per_token (`float` or `None`, *optional*, defaults to `None`):
            Training FLOPs per token (forward + backward) behind TFLOP/s and MFU; default: counted from the model
            config (the active experts of a mixture of experts). Without either, tokens/s are still logged.
        branch_restore (`str`, *optional*, defaults to `"auto"`):
            How a WSD side branch keeps the main branch: `"device"` (a copy where the tensors are), `"cpu"` (host
            memory), `"checkpoint"` (save at the branch point and restart `train()` from it) or `"auto"`
            (checkpoint under FSDP1 and DeepSpeed with NVMe offload, else a device copy when it fits, else host
            memory; under FSDP2 each rank keeps its own shards, under DeepSpeed ZeRO-1/2/3 its own partitions). The
            main branch's resumable checkpoint at each branch point is written in every mode.
        budget_request_steps (`int`, *optional*, defaults to `1`):
            Look for `hf-wsd budget add/remove` requests every this many updates on the main path (and when a
            launch starts). With several processes each look is one small broadcast from the main process.
        on_divergence (`str`, *optional*, defaults to `"stop"`):
            A non-finite training loss or non-finite weights stop the run, naming the update, the value and the
            last good checkpoint (`"stop"`), or are logged and training goes on (`"warn"`). Either way a budget
            with non-finite weights is never written, evaluated or published.
        allow_data_change (`bool`, *optional*, defaults to `False`):
            Resume even though the training data's fingerprint differs from the one the run started with (a shard
            added, removed or edited in place). Without it such a resume is refused.
        allow_step_suffixes (`bool`, *optional*, defaults to `False`):
            With `budget_unit="steps"`, accept `K`/`M`/`B`/`T` suffixes (`"20K"` = 20,000 updates); otherwise such
            a budget is refused as a likely token count.
        async_checkpoints (`bool`, *optional*, defaults to `True`):
            Write the main branch's resumable checkpoints (branch points, in-line budgets, `save_steps`) off the
            critical path: training stops only to capture the state; a background thread copies the model and
            optimizer tensors into host memory while the next update's forward and backward run (its optimizer step
            waits for the copy; the buffers are reused: one extra copy of model + optimizer in RAM), writes the
            Trainer's usual files into a hidden `.tmp-checkpoint-N/`, syncs them and renames it to `checkpoint-N`.
            A kill mid-write leaves the previous checkpoint as the resume point. `train()` returns once the last
            write is on disk; a failed write is raised. Synchronous under FSDP / DeepSpeed (sharded, collective
            savers) and with `load_best_model_at_end` / `metric_for_best_model`.
        overwrite_output_dir (`bool`, *optional*, defaults to `False`):
            Start a new run in an `output_dir` that already holds one: the old run's checkpoints, budgets, records,
            log, requests and publishing ledger are removed first. Without it, such a directory is an error unless
            you resume.

    Publishing uses the usual `push_to_hub`, `hub_model_id`, `hub_private_repo` and `hub_token`: each budget
    becomes a branch named after it, and `main` holds the newest budget.

    Defaults that differ from `TrainingArguments`: `logging_steps=10`, `save_steps=1000`,
    `lr_scheduler_type` and `num_train_epochs` are refused (the plan is the schedule; `budgets` set the length).
    """

    budgets: list[str] = field(
        default_factory=list,
        metadata={"help": "Increasing budgets: 1000 2000, or 2.5M 10M with --budget_unit tokens."},
    )
    budget_unit: str = field(
        default="steps",
        metadata={"help": "Unit of `budgets`: optimizer updates or tokens.", "choices": list(BUDGET_UNITS)},
    )
    seq_length: int | None = field(
        default=None,
        metadata={"help": "Tokens per example; default: read from the first training example."},
    )
    schedule: str = field(
        default="wsd-s",
        metadata={"help": "The LR schedule over the budgets.", "choices": list(SCHEDULES)},
    )
    decay_fraction: float | None = field(
        default=None,
        metadata={"help": "Decay length as a fraction of each period (WSD-S) or budget (WSD); default 0.1."},
    )
    decay_steps: int | None = field(
        default=None,
        metadata={"help": "Fixed decay length in updates, instead of decay_fraction."},
    )
    decay_shape: str = field(default="linear", metadata={"help": "Shape of each decay.", "choices": list(DECAY_SHAPES)})
    min_lr_ratio: float = field(
        default=0.0,
        metadata={"help": "Multiplier of learning_rate that each decay approaches."},
    )
    rewarmup_steps: int = field(
        default=0,
        metadata={"help": "WSD-S: updates to climb back to peak after each budget (0 = jump)."},
    )
    decay_mixture: list[str] | None = field(
        default=None,
        metadata={"help": "Data mixture of every decay window: name=weight ... (main: train_dataset; a dict in YAML)."},
    )
    decay_mixture_per_budget: list[str] | None = field(
        default=None,
        metadata={"help": "Mixtures of single budgets' windows: BUDGET:name=weight,... (a dict in YAML)."},
    )
    decay_mixture_tail: float | None = field(
        default=None,
        metadata={"help": "Only the last fraction of each decay window draws from the mixture (cosine schedules)."},
    )
    budget_eval: bool = field(
        default=True,
        metadata={"help": "Evaluate every decayed checkpoint (held-out loss + eval_tasks)."},
    )
    eval_tasks: list[str] = field(default_factory=list, metadata={"help": "lm-evaluation-harness task names."})
    eval_task_paths: list[str] = field(
        default_factory=list,
        metadata={"help": "Directories of local lm-eval task YAMLs."},
    )
    eval_limit: int | None = field(default=None, metadata={"help": "At most this many examples per lm-eval task."})
    lm_eval_batch_size: int = field(
        default=8,
        metadata={"help": "Batch size of lm-eval (TrainingArguments.eval_batch_size stays the held-out loss batch)."},
    )
    use_peft: bool = field(
        default=False,
        metadata={"help": "Train a LoRA adapter on the frozen model (budgets hold the adapter only)."},
    )
    lora_r: int = field(default=16, metadata={"help": "LoRA rank."})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA alpha (the update is scaled by lora_alpha / lora_r)."})
    lora_dropout: float = field(default=0.05, metadata={"help": "Dropout on the LoRA input."})
    lora_target_modules: list[str] | None = field(
        default=None,
        metadata={
            "help": (
                "Modules with an adapter: names, one regex, or all-linear; default: PEFT's per-architecture choice."
            ),
        },
    )
    lora_modules_to_save: list[str] | None = field(
        default=None,
        metadata={"help": "Modules trained in full and saved with the adapter."},
    )
    save_merged_budgets: bool = field(
        default=False,
        metadata={"help": "Also save each budget with the adapter merged in, in {budget}/merged/."},
    )
    budget_forecast: bool = field(
        default=True,
        metadata={"help": "Forecast each budget's training loss from the run's own log before its decay (a loss law, "
                          "hf_wsd/forecast.py) and show it against the measured loss in the card."},
    )
    log_throughput: bool = field(
        default=True,
        metadata={"help": "Add tokens_per_second, tokens_per_second_per_device, tflops_per_device and mfu to every "
                          "training log line (and a per-budget summary to budget.json)."},
    )
    peak_tflops: float | None = field(
        default=None,
        metadata={"help": "Dense peak TFLOP/s of one device at the training precision (the MFU denominator); default: "
                          "looked up from the device name (hf_wsd/throughput.py); no MFU when unknown."},
    )
    # ---- What the budgets' model cards say about the training data (hf_wsd/card_data.py)
    card_dataset_name: str | None = field(
        default=None,
        metadata={"help": "The training data as the model card names it (the recipes: the corpus)."},
    )
    card_datasets: list[str] | None = field(
        default=None,
        metadata={"help": "Hub dataset ids trained on: the card's `datasets:` metadata (the recipes: a Hub corpus)."},
    )
    card_license: str | None = field(
        default=None,
        metadata={"help": "License of the published weights: a Hub license id (apache-2.0…) or a name (`license: "
                          "other`); the recipes set 'public domain' for the public-domain corpora they embed."},
    )
    card_language: list[str] | None = field(
        default=None,
        metadata={"help": "Languages of the training data (ISO 639-1: en …): the card's `language:` metadata."},
    )
    # ---- Throughput of architectures hf_wsd cannot count (hf_wsd/flops.py)
    flops_per_token: float | None = field(
        default=None,
        metadata={"help": "Training FLOPs per token (forward + backward) for TFLOP/s and MFU; default: counted from "
                          "the model config (active experts for mixtures of experts). Tokens/s are logged either way."},
    )
    branch_restore: str = field(
        default="auto",
        metadata={
            "help": (
                "How WSD branches keep the main branch: in device memory, host memory, or a checkpoint + restart "
                "(auto: in memory when it fits, under FSDP2 and ZeRO each rank its own shards/partitions; "
                "checkpoint under FSDP1 and DeepSpeed NVMe offload)."
            ), "choices": list(BRANCH_RESTORES),
        },
    )
    budget_request_steps: int = field(
        default=1,
        metadata={"help": "Look for `hf-wsd budget` requests every this many updates (one broadcast each with several "
                          "processes)."},
    )
    ema_beta: float | None = field(
        default=None,
        metadata={"help": "Keep an EMA of the stable-phase weights with this β in (0, 1) and write EMA previews."},
    )
    ema_device: str = field(
        default="device",
        metadata={"help": "Where the EMA lives: next to the parameters, or in host memory.",
                  "choices": list(AVERAGE_DEVICES)},
    )
    preview_steps: list[int] | None = field(
        default=None,
        metadata={"help": "Updates that get an EMA preview folder; default: every resumable checkpoint save."},
    )
    preview_push_to_hub: bool = field(
        default=False,
        metadata={"help": "Publish each EMA preview to its own Hub branch (main never holds one)."},
    )
    # --- run safety (hf_wsd/divergence.py, hf_wsd/run_lock.py, hf_wsd/data fingerprints)
    on_divergence: str = field(
        default="stop",
        metadata={"help": "A non-finite training loss or non-finite weights: 'stop' the run (the last good checkpoint "
                          "stays resumable) or 'warn' and train on; a budget with non-finite weights is never "
                          "written or published either way.", "choices": ["stop", "warn"]},
    )
    allow_data_change: bool = field(
        default=False,
        metadata={"help": "Resume even though the training data changed since the run started (a shard added, removed "
                          "or edited: the data order changes). Off, such a resume is refused."},
    )
    allow_step_suffixes: bool = field(
        default=False,
        metadata={"help": "Accept K/M/B/T suffixes on budgets counted in updates (budget_unit='steps'): '20K' "
                          "then means 20,000 updates. Off, such a budget is refused as a likely token count."},
    )
    # ---- checkpoints off the critical path (hf_wsd/async_checkpoints.py)
    async_checkpoints: bool = field(
        default=True,
        metadata={"help": "Write the main branch's checkpoints in a background thread (training pauses only to capture "
                          "the state); crash-safe: a checkpoint appears only once complete. "
                          "Synchronous under FSDP / DeepSpeed and with best-model tracking."},
    )
    overwrite_output_dir: bool = field(
        default=False,
        metadata={"help": "Start over in an output_dir that holds another run (its checkpoints, budgets, records, log "
                          "and publishing ledger are removed first)."},
    )

    def __post_init__(self):
        if isinstance(self.budgets, (str, int)):
            self.budgets = [self.budgets]
        self.budgets = [str(b) for b in self.budgets]
        if not self.budgets:
            raise ValueError("`budgets` is empty: give at least one budget, e.g. budgets=['1000', '2000'].")
        # Validate everything the plan can check now, long before any compute is spent. Token budgets need
        # the tokens per update (world size, sequence length), so their plan is completed by the trainer.
        plan = self.build_plan(tokens_per_update=None if self.budget_unit == "steps" else 1)
        if self.budget_unit == "steps":
            if self.max_steps not in (-1, plan.total_steps):
                raise ValueError(
                    f"`max_steps`={self.max_steps} conflicts with the last budget ({plan.total_steps} updates): "
                    "leave max_steps at -1; the budget plan sets it."
                )
            self.max_steps = plan.total_steps
        elif self.max_steps != -1:
            raise ValueError(f"`max_steps`={self.max_steps} conflicts with token budgets: leave it at -1.")
        if self.seq_length is not None and self.seq_length < 1:
            raise ValueError(f"`seq_length` must be a positive integer; got {self.seq_length}.")
        if self.branch_restore not in BRANCH_RESTORES:
            choices = ", ".join(BRANCH_RESTORES)
            raise ValueError(f"unknown `branch_restore` {self.branch_restore!r}; choose one of {choices}.")
        if isinstance(self.budget_request_steps, bool) or not isinstance(self.budget_request_steps, int) or (
            self.budget_request_steps < 1
        ):
            raise ValueError(f"`budget_request_steps` must be an integer ≥ 1; got {self.budget_request_steps!r}.")
        self._check_adapter_fields()
        self._check_run_safety_fields()
        self._check_unhonoured_trainer_fields()
        if self.preview_steps is not None:
            self.preview_steps = [int(s) if isinstance(s, str) and s.isdigit() else s for s in self.preview_steps]
        check_average_fields(self, plan if self.budget_unit == "steps" else None)
        self._check_decay_mixture(plan)
        if self.max_steps == -1:
            self.max_steps = 1  # placeholder so TrainingArguments accepts the config; WSDTrainer sets the real value
        super().__post_init__()

    def _check_run_safety_fields(self) -> None:
        from .divergence import check_action
        from .plan import check_step_suffixes

        check_action(self.on_divergence)
        if self.budget_unit == "steps":
            check_step_suffixes(self.budgets, self.allow_step_suffixes, "budgets",
                                "allow_step_suffixes=True (recipe: --allow_step_suffixes true)")

    # ---- Trainer fields a WSD run cannot honour: refused (naming the WSD field to use) rather than ignored
    def _check_unhonoured_trainer_fields(self) -> None:
        # `--resume_from_checkpoint true` (the command line gives a string): the newest usable checkpoint
        resume = self.resume_from_checkpoint
        if isinstance(resume, str) and resume.strip().lower() in ("true", "yes", "1", "false", "no", "0", "none", ""):
            self.resume_from_checkpoint = True if resume.strip().lower() in ("true", "yes", "1") else None
        defaults = {f.name: f.default for f in dataclasses.fields(type(self))}
        scheduler = getattr(self.lr_scheduler_type, "value", self.lr_scheduler_type)
        default = defaults.get("lr_scheduler_type")
        if scheduler not in (getattr(default, "value", default), self.schedule):
            raise ValueError(
                f"`lr_scheduler_type`={scheduler!r} cannot apply to a WSD run: its LR schedule is the budget plan. "
                f"Set `schedule` ({', '.join(SCHEDULES)}), `decay_shape`, `decay_fraction` and `min_lr_ratio` "
                "instead, and leave lr_scheduler_type unset."
            )
        if "num_train_epochs" in defaults and self.num_train_epochs != defaults["num_train_epochs"]:
            raise ValueError(
                f"`num_train_epochs`={self.num_train_epochs} cannot apply to a WSD run: its length is its last budget. "
                "Set `budgets` (updates, or tokens with budget_unit=tokens) instead, and leave num_train_epochs unset "
                "(the data is repeated, reshuffled, as often as the budgets need)."
            )

    def _check_adapter_fields(self) -> None:
        """LoRA fields set without ``use_peft`` would silently train the full model: refuse them."""
        defaults = {f.name: f.default for f in dataclasses.fields(WSDArguments)}
        changed = [
            name for name in ("lora_r", "lora_alpha", "lora_dropout", "lora_target_modules", "lora_modules_to_save")
            if getattr(self, name) != defaults[name]
        ]
        if changed and not self.use_peft:
            raise ValueError(
                f"{', '.join(f'`{name}`' for name in changed)} set without `use_peft`: the full model would be trained "
                "and the adapter settings ignored. Set use_peft=True, or drop them (a peft_config= passed to the "
                "trainer carries its own settings)."
            )

    def _check_decay_mixture(self, plan: BudgetPlan) -> None:
        """Parse the mixture fields into dicts and check what needs no dataset (names are checked by the trainer)."""
        if self.decay_mixture is None and not self.decay_mixture_per_budget and self.decay_mixture_tail is None:
            return
        from .data import mixture

        self.decay_mixture = mixture.parse_mixture(self.decay_mixture)
        self.decay_mixture_per_budget = mixture.parse_mixture_per_budget(self.decay_mixture_per_budget)
        self.decay_mixture_tail = mixture.check_tail(self.decay_mixture_tail)
        if self.decay_mixture is not None or self.decay_mixture_per_budget:
            mixture.check_schedule(self.schedule, self.decay_mixture_tail)
        if self.budget_unit == "steps":  # token budgets resolve once the tokens per update are known
            mixture.resolve_budgets(plan, self.decay_mixture_per_budget)

    def __getstate__(self) -> dict:
        """Pickles (``training_args.bin`` in every checkpoint and budget folder) never carry the Hub token."""
        state = self.__dict__.copy()
        state["hub_token"] = None
        return state

    def build_plan(self, tokens_per_update: int | None) -> BudgetPlan:
        """The budget plan of this config, for ``tokens_per_update`` tokens per optimizer update."""
        warmup = self.warmup_steps
        if 0 < warmup < 1:  # a ratio of the run, as in TrainingArguments: resolve it against the last budget
            probe = BudgetPlan(
                self.budgets, decay_steps=1, budget_unit=self.budget_unit, tokens_per_update=tokens_per_update
            )
            warmup = math.ceil(probe.total_steps * warmup)
        return BudgetPlan(
            budgets=self.budgets,
            schedule=self.schedule,
            warmup_steps=int(warmup),
            decay_fraction=self.decay_fraction,
            decay_steps=self.decay_steps,
            decay_shape=self.decay_shape,
            min_lr_ratio=self.min_lr_ratio,
            rewarmup_steps=self.rewarmup_steps,
            budget_unit=self.budget_unit,
            tokens_per_update=tokens_per_update,
        )


@dataclass
class WSDConfig(WSDArguments, TrainingArguments):
    __doc__ = WSDArguments.__doc__

    logging_steps: float = field(default=10, metadata={"help": "Log every X updates (below 1: a ratio of the run)."})
    save_steps: float = field(default=1000, metadata={"help": "Save a resumable checkpoint every X updates."})


def wsd_config_class(base: type) -> type:
    """A config class with ``WSDArguments``' fields on top of ``base`` (a ``TrainingArguments`` subclass).

    ``wsd_config_class(SFTConfig)`` is what :class:`~hf_wsd.trainer.WSDMixin` paired with TRL's ``SFTTrainer``
    takes. The same class comes back for the same ``base``.
    """
    if not (isinstance(base, type) and issubclass(base, TrainingArguments)):
        raise TypeError(f"`base` must be a TrainingArguments subclass; got {base!r}.")
    if issubclass(base, WSDArguments):
        return base
    if base not in _COMBINED:
        name = f"WSD{base.__name__}"
        # Built at run time, the class is no attribute of a module, so pickle (``training_args.bin`` in every
        # checkpoint) could not find it by name: instances pickle as "rebuild the class for ``base``" instead.
        namespace = {
            "__module__": __name__, "__doc__": WSDArguments.__doc__, "__reduce__": _reduce_combined, "_wsd_base": base,
        }
        _COMBINED[base] = dataclass(type(name, (WSDArguments, base), namespace))
    return _COMBINED[base]


def _reduce_combined(config):
    cls = type(config)
    if _COMBINED.get(cls._wsd_base) is cls:
        return _rebuild_combined, (cls._wsd_base, config.__getstate__())
    return copyreg.__newobj__, (cls,), config.__getstate__()  # a user's subclass: pickled by name as usual


def _rebuild_combined(base: type, state: dict):
    cls = wsd_config_class(base)
    config = cls.__new__(cls)
    config.__dict__.update(state)
    return config


_COMBINED: dict[type, type] = {TrainingArguments: WSDConfig}
