"""Several tiny WSD runs in ONE sharded launch (a launch costs ~10 s of imports): the driver of tests/test_sharded.py.

    accelerate launch --config_file recipes/accelerate_configs/fsdp.yaml --num_processes 2 --mixed_precision no \
        tests/sharded_runs.py ROOT --engine fsdp2 --phase first      # then --phase second (after the SIGKILL)

Phase ``first`` trains, under ``ROOT``: ``memory`` (WSD [10, 20], ``branch_restore="auto"``, budgets evaluated),
``checkpoint`` (the same, from checkpoints), ``alone`` (WSD [20]), and last ``killed`` (WSD [10, 20],
SIGKILLed on every rank inside the branch of budget 20). Phase ``second`` resumes ``killed``, extends the finished
``memory`` run to [10, 20, 30] and trains ``alone30`` (WSD [30]). Phase ``machines`` (the two-"machine" DDP launch)
trains ``ddp`` (WSD [10, 20], evaluated: the reference of the sharded engines) and ``stream`` (the same on a streamed
dataset, whose feed state is per rank, published with ``--push``). Each run's ``driver-{phase}.json`` says what ran. The
pytest side compares the folders. FSDP2 on CPU processes needs ``HF_WSD_CPU_FSDP=1`` (hf_wsd/engines.py).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from helpers import VOCAB, _char_tokenizer, tiny_config, tiny_data, tiny_stream  # noqa: E402

KILL_AT = 19  # inside the branch of budget 20 (it decays over updates 18-20)


GPU = False  # --gpu: train on CUDA (fp32, deterministic kernels) instead of CPU processes
PHASE = ""  # the phase of this launch: each run writes what ran into driver-{PHASE}.json


def engine_settings(engine: str) -> dict:
    """TrainingArguments each engine needs on CPU processes (what the recipes' machine defaults set), or on a GPU."""
    if GPU:
        return {"use_cpu": False, "full_determinism": True}
    if engine.startswith("zero"):
        return {"use_cpu": False, "ddp_backend": "gloo"}
    return {"use_cpu": True}


def tied_model():
    """The tiny Llama of the tests with tied input/output embeddings (as the recipes' models): a budget folder must
    keep the tie as the model declares it."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2,
        vocab_size=VOCAB, max_position_embeddings=256, tie_word_embeddings=True,
    ))


def killer(step: int):
    from transformers import TrainerCallback

    class KillAt(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == step:
                os.kill(os.getpid(), signal.SIGKILL)

    return KillAt()


def train(root: Path, name: str, budgets, engine: str, resume: bool = False, callbacks=(), streaming=False,
          evaluate=False, **overrides):
    from hf_wsd import WSDTrainer

    if evaluate:  # held-out loss of every budget (every rank takes its share)
        overrides.update(budget_eval=True, per_device_eval_batch_size=4)
    args = tiny_config(root / name, budgets, "wsd", **engine_settings(engine), **overrides)
    data = tiny_stream() if streaming else tiny_data()
    trainer = WSDTrainer(model=tied_model(), args=args, train_dataset=data, callbacks=list(callbacks),
                         processing_class=_char_tokenizer(), eval_dataset=tiny_data(n=8, seed=1) if evaluate else None)
    if engine == "zero3":  # tiny parameters stay whole under the default threshold: make them really partition
        trainer.accelerator.state.deepspeed_plugin.deepspeed_config["zero_optimization"][
            "stage3_param_persistence_threshold"] = 0
    starts, prepare = [], trainer._prepare_for_training

    def counting_prepare(*args, **kwargs):  # one per (re)start of the Trainer's loop
        starts.append(1)
        return prepare(*args, **kwargs)

    trainer._prepare_for_training = counting_prepare
    trainer.train(resume_from_checkpoint=True if resume else None)
    record = {"engine": trainer.engine, "branch_restore": trainer.branch_restore, "world_size": trainer.args.world_size,
              "train_starts": len(starts), "partitioned": partitioned(trainer)}
    if trainer.is_world_process_zero():
        (root / name / f"driver-{PHASE}.json").write_text(json.dumps(record))
    return trainer


def partitioned(trainer) -> bool:
    """Every parameter is split across the ranks (FSDP2 DTensor shards, ZeRO-3 partitions); ZeRO-1/2 and DDP: False."""
    params = list(trainer.model_wrapped.parameters())
    if all(hasattr(p, "ds_numel") for p in params):
        return all(p.ds_tensor.numel() < p.ds_numel for p in params)
    return all(hasattr(p, "to_local") and p.to_local().numel() < p.numel() for p in params)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("root", type=Path)
    parser.add_argument("--engine", required=True, choices=["fsdp2", "zero2", "zero3", "ddp"])
    parser.add_argument("--phase", required=True, choices=["first", "second", "machines"])
    parser.add_argument("--push", help="publish the streamed run's budgets to this repo (HF_ENDPOINT, HF_TOKEN)")
    parser.add_argument("--gpu", action="store_true", help="train on the GPU (tests/test_gpu.py)")
    cli = parser.parse_args()
    global GPU, PHASE
    GPU, PHASE = cli.gpu, cli.phase
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    root, engine = cli.root, cli.engine
    if cli.phase == "machines":
        train(root, "ddp", (10, 20), engine, evaluate=True)
        push = {"push_to_hub": True, "hub_model_id": cli.push} if cli.push else {}
        train(root, "stream", (10, 20), engine, streaming=True, **push)
    elif cli.phase == "first":
        train(root, "memory", (10, 20), engine, evaluate=True)
        train(root, "checkpoint", (10, 20), engine, branch_restore="checkpoint")
        train(root, "alone", (20,), engine)
        train(root, "killed", (10, 20), engine, callbacks=[killer(KILL_AT)])
    else:
        train(root, "killed", (10, 20), engine, resume=True)
        train(root, "memory", (10, 20, 30), engine, resume=True, evaluate=True)
        train(root, "alone30", (30,), engine)


if __name__ == "__main__":
    main()
