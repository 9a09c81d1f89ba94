"""Training wall time with Hub publishing on vs off, interleaved in one run, against a local Hub server.

    python benchmarks/publishing.py [--rounds 3] [--steps 200]

Same tiny Llama, data and plan (4 WSD-S budgets) both ways; "on" pushes every budget (a branch each, plus
main) from the background worker and waits for the queue at the end, so its wall time includes whatever
the uploads did not overlap with training.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "benchmarks")]

from hub_server import LocalHub  # noqa: E402  (the tests' Hub-compatible server)
from overhead import COMMON, data, model  # noqa: E402

TOKEN = "hf_benchmark-token-not-a-secret"  # fake; the local server only


def run(steps: int, train, publish: bool, endpoint: str) -> float:
    from hf_wsd import WSDConfig, WSDTrainer

    budgets = [str(steps // 8), str(steps // 4), str(steps // 2), str(steps)]
    with tempfile.TemporaryDirectory() as out:
        args = WSDConfig(output_dir=out, budgets=budgets, warmup_steps=10, decay_fraction=0.2, budget_eval=False,
                         push_to_hub=publish, hub_model_id="bench/wsd", hub_token=TOKEN if publish else None,
                         **{**COMMON, "save_strategy": "steps", "save_steps": 10**6})
        trainer = WSDTrainer(model=model(), args=args, train_dataset=train)
        started = time.perf_counter()
        trainer.train()
        return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=200)
    cli = parser.parse_args()
    with LocalHub(token=TOKEN) as hub:
        from huggingface_hub import constants

        constants.ENDPOINT = hub.endpoint  # as the tests' local_hub fixture: API calls and file downloads
        constants.HUGGINGFACE_CO_URL_TEMPLATE = hub.endpoint + "/{repo_id}/resolve/{revision}/{filename}"
        os.environ["HF_HUB_OFFLINE"] = "0"
        constants.HF_HUB_OFFLINE = False
        train = data(cli.steps * 16)
        walls = {"off": [], "on": []}
        for round_ in range(cli.rounds):
            for mode in (["off", "on"] if round_ % 2 == 0 else ["on", "off"]):
                walls[mode].append(run(cli.steps, train, mode == "on", hub.endpoint))
    off, on = statistics.median(walls["off"]), statistics.median(walls["on"])
    print(f"{cli.rounds} interleaved rounds, {cli.steps} updates, 4 budgets, tiny Llama (h128, 2 layers), local Hub")
    print(f"publishing off: median {off:.2f} s; on: median {on:.2f} s; ratio on/off {on / off:.3f}")


if __name__ == "__main__":
    main()
