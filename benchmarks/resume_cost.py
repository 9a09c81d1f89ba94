"""What a resume costs as a run grows: restart at update 1,000 vs 10,000, side by side, for each kind of data.

    python benchmarks/resume_cost.py [--steps 1000 10000] [--rounds 2]

For a prepared (Arrow, memory-mapped) dataset, a token folder, a stream (``datasets.IterableDataset``) and,
for contrast, a plain ``Trainer`` on the same stream: a checkpoint at update ``k`` is made (a real checkpoint
of a short run, its step set to ``k``; for the stream, the stream's position after ``k`` updates, as a run
would have saved it), and the time from ``train(resume_from_checkpoint=…)`` to the end of the first resumed
update is measured. Rows the collator saw are counted: hf_wsd's feed positions the data without reading it,
the plain Trainer re-reads and re-collates every skipped batch. Goal: flat (≤ 1.2× from 1k to 10k).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from datasets import Dataset, load_from_disk
from transformers import LlamaConfig, LlamaForCausalLM, Trainer, TrainerCallback, TrainingArguments

from hf_wsd import WSDConfig, WSDTrainer
from hf_wsd.data import BlockCollator, TokenFolder
from hf_wsd.data.feed import StreamSource

VOCAB, SEQ, BATCH = 256, 16, 4


class FirstUpdate(TrainerCallback):
    def __init__(self):
        self.started, self.seconds = time.perf_counter(), None

    def on_step_end(self, args, state, control, **kwargs):
        if self.seconds is None:
            self.seconds = time.perf_counter() - self.started
        control.should_training_stop = True


class Counting(BlockCollator):
    rows = 0

    def __call__(self, rows):
        Counting.rows += len(rows)
        return super().__call__(rows)


def model() -> LlamaForCausalLM:
    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                        num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=SEQ))


def datasets_of(root: Path, rows: int) -> dict:
    ids = np.random.default_rng(0).integers(0, VOCAB, size=(rows, SEQ), dtype=np.uint16)
    Dataset.from_dict({"input_ids": ids.tolist()}).save_to_disk(root / "arrow")
    folder = root / "tokens"
    folder.mkdir()
    ids.reshape(-1).tofile(folder / "train.bin")
    ids[:8].reshape(-1).tofile(folder / "heldout.bin")
    (folder / "metadata.json").write_text(json.dumps({"dtype": "uint16", "eos_token_id": 0, "vocab_size": VOCAB,
                                                      "train_files": ["train.bin"], "heldout_files": ["heldout.bin"]}))
    return {
        "prepared": lambda: load_from_disk(str(root / "arrow")).with_format("numpy"),
        "token folder": lambda: TokenFolder(folder).train(SEQ),
        "stream": lambda: load_from_disk(str(root / "arrow")).to_iterable_dataset(num_shards=4),
    }


def wsd_trainer(out: Path, data, steps: int, callbacks=()) -> WSDTrainer:
    args = WSDConfig(output_dir=str(out), budgets=[str(steps + 2)], decay_steps=1, learning_rate=1e-3,
                     per_device_train_batch_size=BATCH, save_steps=1, logging_steps=10**6, report_to="none",
                     budget_eval=False, budget_forecast=False, use_cpu=True, disable_tqdm=True, seed=0,
                     log_throughput=False)
    return WSDTrainer(model=model(), args=args, train_dataset=data, callbacks=list(callbacks),
                      data_collator=Counting())


def plain_trainer(out: Path, data, steps: int, callbacks=()) -> Trainer:
    args = TrainingArguments(output_dir=str(out), max_steps=steps + 2, learning_rate=1e-3,
                             per_device_train_batch_size=BATCH, save_steps=1, logging_steps=10**6, report_to="none",
                             use_cpu=True, disable_tqdm=True, seed=0)
    return Trainer(model=model(), args=args, train_dataset=data, callbacks=list(callbacks), data_collator=Counting())


def checkpoint_at(trainer_for, data, out: Path, steps: int) -> Path:
    """A real checkpoint of one update, moved to update ``steps`` (trainer state, scheduler, stream position)."""

    class StopAfterOne(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            control.should_training_stop = True

    trainer_for(out, data(), steps, [StopAfterOne()]).train()
    source, target = out / "checkpoint-1", out / f"checkpoint-{steps}"
    shutil.move(source, target)
    state = json.loads((target / "trainer_state.json").read_text())
    state["global_step"] = steps
    (target / "trainer_state.json").write_text(json.dumps(state))
    scheduler = torch.load(target / "scheduler.pt", weights_only=False)
    scheduler["last_epoch"], scheduler["_step_count"] = steps, steps + 1
    torch.save(scheduler, target / "scheduler.pt")
    feed = target / "wsd_state" / "feed-rank0.pt"
    if feed.is_file():  # the stream's position after `steps` updates, as the run would have saved it
        stream = StreamSource(data())
        stream.take(steps * BATCH)
        torch.save({"stream": stream.state_dict(), "last": (steps - 1, 0)}, feed)
    return target


def resume_seconds(trainer_for, data, steps: int) -> tuple[float, int]:
    with tempfile.TemporaryDirectory() as work:
        out = Path(work)
        checkpoint = checkpoint_at(trainer_for, data, out, steps)
        first = FirstUpdate()
        trainer = trainer_for(out, data(), steps, [first])
        Counting.rows = 0
        first.started = time.perf_counter()
        trainer.train(resume_from_checkpoint=str(checkpoint))
        return first.seconds, Counting.rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", nargs=2, type=int, default=[1000, 10000])
    parser.add_argument("--rounds", type=int, default=2)
    cli = parser.parse_args()
    with tempfile.TemporaryDirectory() as root:
        kinds = datasets_of(Path(root), (max(cli.steps) + 10) * BATCH)
        cases = [(f"WSDTrainer, {kind}", wsd_trainer, data) for kind, data in kinds.items()]
        cases.append(("Trainer, stream (skips by reading)", plain_trainer, kinds["stream"]))
        print(f"restart to the end of the first resumed update, batch {BATCH}×{SEQ}, {cli.rounds} rounds (median), CPU")
        print(f"{'case':<38} {'at ' + str(cli.steps[0]):>12} {'at ' + str(cli.steps[1]):>12} {'ratio':>7} "
              f"{'rows read at ' + str(cli.steps[1]):>20}")
        for name, trainer_for, data in cases:
            seconds, rows = {}, {}
            for steps in cli.steps:
                runs = [resume_seconds(trainer_for, data, steps) for _ in range(cli.rounds)]
                seconds[steps] = statistics.median(r[0] for r in runs)
                rows[steps] = runs[-1][1]
            small, large = cli.steps
            ratio = seconds[large] / seconds[small]
            print(f"{name:<38} {seconds[small]:>11.2f}s {seconds[large]:>11.2f}s {ratio:>7.2f} {rows[large]:>20,}")


if __name__ == "__main__":
    main()
