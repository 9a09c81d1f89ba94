"""Budget evaluation: bundled benchmarks through the real lm-eval harness, results files and logs, validation,
leakage, and leaving training exactly as it was."""

from __future__ import annotations

import json
import random
import textwrap

import pytest
from helpers import budget_event, fake_args, fake_trainer, kjv_chapters, text_model, tiny_lm_data, trainer_state

from hf_wsd import data
from hf_wsd.evaluation import BudgetEvaluator
from hf_wsd.summary import format_summary, summarize
from hf_wsd.tasks import BUNDLED_TASKS, build_bundled_tasks, validation
from hf_wsd.tasks.validation import validate_tasks

RESULT_KEYS = {"task", "task_type", "dataset_name", "dataset_type", "metric", "value", "stderr", "samples"}
LIMIT = 6  # examples per bundled task in these tests


def small_trainer(model=None):
    """The fake trainer with 16 held-out blocks, so the held-out loss takes a fraction of a second."""
    data_ = tiny_lm_data()
    return fake_trainer(model, eval_dataset=data_.heldout.select(range(16)))


@pytest.fixture(scope="module")
def evaluated_run(tmp_path_factory):
    """Two budgets evaluated on held-out loss + both bundled tasks, then the end-of-run summary."""
    output_dir = tmp_path_factory.mktemp("run")
    trainer, state, args = small_trainer(), trainer_state(), fake_args(output_dir)
    lm = tiny_lm_data()
    evaluator = BudgetEvaluator(eval_tasks=list(BUNDLED_TASKS), eval_limit=LIMIT, eval_batch_size=8,
                                heldout_documents=lm.heldout_documents, train_documents=lm.train_documents)
    evaluator.on_train_begin(args, state, None)
    for index in (0, 1):
        evaluator.on_budget_reached(args, state, None, event=budget_event(output_dir, index), trainer=trainer)
    evaluator.on_train_end(args, state, None)
    return output_dir, trainer


def test_each_bundled_task_lands_in_eval_results_with_the_agreed_shape(evaluated_run):
    output_dir, _ = evaluated_run
    record = json.loads((output_dir / "budgets" / "step10-tokens2.56K" / "eval_results.json").read_text())
    assert set(record) == {"budget", "step", "tokens", "lm_eval_version", "seconds", "results"}
    assert (record["budget"], record["step"], record["tokens"], record["lm_eval_version"]) == (
        "step10-tokens2.56K", 10, 2560, "0.4.13")
    assert record["seconds"] > 0
    assert all(set(result) == RESULT_KEYS for result in record["results"])
    metrics = {(r["task"], r["metric"]): r for r in record["results"]}
    assert set(metrics) == {("heldout", "loss"), ("heldout", "perplexity"), ("wsd_next_passage", "acc"),
                            ("wsd_next_passage", "acc_norm"), ("wsd_cloze", "acc"), ("wsd_cloze", "perplexity")}
    assert metrics[("heldout", "loss")]["samples"] == 16 and metrics[("heldout", "loss")]["stderr"] is None
    assert metrics[("wsd_next_passage", "acc")]["samples"] == LIMIT
    assert metrics[("wsd_next_passage", "acc")]["task_type"] == "multiple-choice"
    assert metrics[("wsd_cloze", "acc")]["task_type"] == "text-generation"
    assert 0.0 <= metrics[("wsd_next_passage", "acc")]["value"] <= 1.0
    assert isinstance(metrics[("wsd_cloze", "acc")]["stderr"], float)


def test_metrics_reach_the_trainer_log(evaluated_run):
    _, trainer = evaluated_run
    budget_logs = [entry for entry in trainer.log_history if "budget/step" in entry]
    assert [entry["budget/step"] for entry in budget_logs] == [10.0, 20.0]
    for key in ("budget/heldout_loss", "budget/heldout_perplexity", "budget/wsd_next_passage_acc",
                "budget/wsd_next_passage_acc_norm", "budget/wsd_cloze_acc", "budget/wsd_cloze_perplexity",
                "budget/tokens", "budget/eval_seconds", "budget/eval_share"):
        assert key in budget_logs[0], key


def test_end_of_run_summary_table_csv_json_and_plots(evaluated_run):
    output_dir, _ = evaluated_run
    rows = summarize(output_dir)
    assert [row["budget"] for row in rows] == ["step10-tokens2.56K", "step20-tokens5.12K"]
    folder = output_dir / "budgets"
    assert (folder / "eval_summary.csv").read_text().splitlines()[0].startswith("budget,step,tokens,eval_seconds,")
    summary = json.loads((folder / "eval_summary.json").read_text())
    assert summary["budgets"] == rows and summary["timing"]["eval_share"] > 0
    for metric in ("heldout_loss", "wsd_next_passage_acc", "wsd_cloze_perplexity"):
        assert (folder / f"eval_{metric}.png").stat().st_size > 1000
    table = format_summary(rows)
    assert len({len(line) for line in table.splitlines()}) == 1  # fixed width
    assert "wsd_cloze_acc" in table.splitlines()[0]


def test_bundled_tasks_are_built_from_heldout_documents_only(evaluated_run):
    output_dir, _ = evaluated_run
    manifest = json.loads((output_dir / "eval_tasks" / "manifest.json").read_text())
    assert manifest["decontaminated"] and set(manifest["tasks"]) == set(BUNDLED_TASKS)
    train_text = "\n".join(tiny_lm_data().train_documents)
    heldout_text = "\n".join(tiny_lm_data().heldout_documents)
    for line in (output_dir / "eval_tasks" / "wsd_next_passage.jsonl").read_text().splitlines():
        example = json.loads(line)
        assert example["context"] in heldout_text and example["context"] not in train_text


def test_documents_are_recovered_from_packed_blocks_when_not_given():
    from hf_wsd.evaluation import _decode_documents

    lm = tiny_lm_data()
    decoded = _decode_documents(lm.heldout, lm.tokenizer)
    assert decoded == lm.heldout_documents[: len(decoded)]
    assert len(decoded) >= len(lm.heldout_documents) - 1  # the tail cut off by packing is dropped
    assert _decode_documents(None, lm.tokenizer) is None
    assert _decode_documents(lm.train, lm.tokenizer, max_tokens=1000) is None


def test_no_benchmark_text_occurs_in_the_training_documents(tmp_path):
    """On the full KJV split, where formulaic verses repeat across chapters, so the filter has work to do."""
    train_ids, heldout_ids = data.split_documents(kjv_chapters(), 0.05, seed=0)
    train = [kjv_chapters()[i] for i in train_ids]
    build_bundled_tasks([kjv_chapters()[i] for i in heldout_ids], tmp_path, n_examples=200, train_documents=train)
    train_text = "\n".join(train)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert sum(task["rejected_as_in_training"] for task in manifest["tasks"].values()) > 0
    for line in (tmp_path / "wsd_next_passage.jsonl").read_text().splitlines():
        example = json.loads(line)
        assert len(example["choices"]) == 4 and len(set(example["choices"])) == 4
        for text in (example["context"], *example["choices"]):
            assert text not in train_text
    cloze = [json.loads(line) for line in (tmp_path / "wsd_cloze.jsonl").read_text().splitlines()]
    assert len(cloze) == 200
    for example in cloze:
        assert f"{example['context']} {example['target']}" not in train_text
        assert example["target"].isalpha()


def test_bundled_tasks_are_deterministic(tmp_path):
    documents = tiny_lm_data().heldout_documents
    for folder in ("a", "b"):
        build_bundled_tasks(documents, tmp_path / folder, n_examples=50, seed=3)
    for name in BUNDLED_TASKS:
        assert (tmp_path / "a" / f"{name}.jsonl").read_bytes() == (tmp_path / "b" / f"{name}.jsonl").read_bytes()
    assert validate_tasks(list(BUNDLED_TASKS), [str(tmp_path / "a")], offline=True) == list(BUNDLED_TASKS)


def test_cloze_targets_are_scored_as_separate_words(tmp_path):
    """lm-eval adds no delimiter to loglikelihood continuations: the target must bring its own space."""
    from lm_eval.tasks import TaskManager

    build_bundled_tasks(kjv_chapters()[:40], tmp_path, n_examples=5, seed=0)
    manager = TaskManager(include_path=str(tmp_path), include_defaults=False)
    task = manager.load_task_or_group(["wsd_cloze"])["wsd_cloze"]
    for doc in task.test_docs():
        context, continuation = task.doc_to_text(doc), task.doc_to_target(doc)
        assert continuation == " " + doc["target"] and not context.endswith(" ")


def test_evaluation_leaves_rng_states_and_train_mode_as_it_found_them(tmp_path):
    import numpy as np
    import torch

    def train(model, steps):
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        for _ in range(steps):
            vocab = model.config.vocab_size
            ids = (torch.randint(0, vocab, (4, 16)) + random.randrange(vocab) + int(np.random.randint(vocab))) % vocab
            model(input_ids=ids, labels=ids).loss.backward()  # dropout draws from torch's RNG too
            optimizer.step()
            optimizer.zero_grad()

    def run(evaluate: bool):
        random.seed(1), np.random.seed(1), torch.manual_seed(1)
        model = text_model(dropout=0.2)
        model.train()
        model.model.layers[0].mlp.eval()  # a mixed mode that model.train() would not restore
        train(model, 2)
        modes = [m.training for m in model.modules()]
        if evaluate:
            states = random.getstate(), np.random.get_state()[1].copy(), torch.get_rng_state()
            evaluator = BudgetEvaluator(eval_tasks=["wsd_cloze"], eval_limit=4, eval_batch_size=4,
                                        heldout_documents=tiny_lm_data().heldout_documents)
            evaluator.on_budget_reached(fake_args(tmp_path), trainer_state(), None,
                                        event=budget_event(tmp_path), trainer=small_trainer(model))
            assert (tmp_path / "budgets" / "step10-tokens2.56K" / "eval_results.json").exists()
            assert random.getstate() == states[0] and (np.random.get_state()[1] == states[1]).all()
            assert torch.equal(torch.get_rng_state(), states[2])
        assert [m.training for m in model.modules()] == modes
        train(model, 3)
        return model.state_dict()

    evaluated, untouched = run(True), run(False)
    assert all(torch.equal(evaluated[name], untouched[name]) for name in untouched)


def test_heldout_only_and_disabled_evaluation(tmp_path, monkeypatch):
    monkeypatch.setattr(BudgetEvaluator, "_run_lm_eval", lambda *a: pytest.fail("lm-eval must not run"))
    trainer, args = small_trainer(), fake_args(tmp_path)
    BudgetEvaluator().on_budget_reached(args, trainer_state(), None, event=budget_event(tmp_path), trainer=trainer)
    record = json.loads((tmp_path / "budgets" / "step10-tokens2.56K" / "eval_results.json").read_text())
    assert [(r["task"], r["metric"]) for r in record["results"]] == [("heldout", "loss"), ("heldout", "perplexity")]

    off, trainer = BudgetEvaluator(heldout=False), small_trainer()
    event = budget_event(tmp_path, index=1)
    off.on_budget_reached(args, trainer_state(), None, event=event, trainer=trainer)
    off.on_train_end(fake_args(tmp_path / "elsewhere"), trainer_state(), None)
    assert not (event.folder / "eval_results.json").exists() and trainer.log_history == []
    assert not (tmp_path / "elsewhere").exists()


def test_other_ranks_wait_and_write_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(BudgetEvaluator, "_run_lm_eval", lambda *a: pytest.fail("lm-eval runs on the main process"))
    trainer, event = small_trainer(), budget_event(tmp_path)
    evaluator = BudgetEvaluator(eval_tasks=["wsd_cloze"])
    evaluator.on_budget_reached(fake_args(tmp_path), trainer_state(main=False), None, event=event, trainer=trainer)
    assert trainer.accelerator.waits == 1
    assert not (event.folder / "eval_results.json").exists()
    assert "budget/heldout_loss" in trainer.log_history[-1]  # every rank logs the same keys, as the Trainer does
    assert not (tmp_path / "eval_tasks").exists()


def test_a_failing_benchmark_is_logged_and_training_goes_on(tmp_path, monkeypatch, caplog):
    def broken(*args):
        raise RuntimeError("benchmark exploded")

    monkeypatch.setattr(BudgetEvaluator, "_run_lm_eval", broken)
    trainer, event = small_trainer(), budget_event(tmp_path)
    evaluator = BudgetEvaluator(eval_tasks=["wsd_cloze"], heldout_documents=tiny_lm_data().heldout_documents)
    evaluator.on_budget_reached(fake_args(tmp_path), trainer_state(), None, event=event, trainer=trainer)
    assert "benchmark exploded" in caplog.text
    record = json.loads((event.folder / "eval_results.json").read_text())
    assert {r["task"] for r in record["results"]} == {"heldout"}


# ------------------------------------------------------------------------------------------------ validation
@pytest.fixture
def task_dirs(tmp_path, monkeypatch):
    """A user task folder, an empty folder, and a stand-in for lm-eval's ~15k built-in tasks (indexing the
    real ones takes 8–30 s), holding a Hub-backed task and a group of it."""
    local, empty, builtin = tmp_path / "local", tmp_path / "empty", tmp_path / "builtin"
    for folder in (local, empty, builtin):
        folder.mkdir()
    (local / "rows.jsonl").write_text('{"q": "a", "a": "b"}\n')
    (local / "my_task.yaml").write_text(textwrap.dedent(f"""\
        task: my_task
        dataset_path: json
        dataset_kwargs: {{data_files: {{test: {local / 'rows.jsonl'}}}}}
        output_type: loglikelihood
        test_split: test
        doc_to_text: "{{{{q}}}}"
        doc_to_target: "{{{{a}}}}"
        """))
    (local / "broken_task.yaml").write_text("task: broken_task\ndataset_path: json\n"
                                            "dataset_kwargs: {data_files: {test: /nonexistent/rows.jsonl}}\n")
    (builtin / "hub_task.yaml").write_text("task: hub_task\ndataset_path: someorg/not-cached-anywhere\n")
    (builtin / "hub_group.yaml").write_text("group: hub_group\ntask: [hub_task]\n")
    (empty / "README.md").write_text("no tasks here\n")
    real = validation.task_index.__wrapped__ if hasattr(validation.task_index, "__wrapped__") else validation.task_index
    calls = []

    def fake_index(paths, include_defaults):
        calls.append(include_defaults)
        return real(tuple(paths) + ((str(builtin),) if include_defaults else ()), False)

    monkeypatch.setattr(validation, "task_index", fake_index)
    return local, empty, calls


def test_bundled_and_local_tasks_validate_without_indexing_builtins(task_dirs):
    local, _, calls = task_dirs
    assert validate_tasks("wsd_cloze, my_task", [str(local)], offline=True) == ["wsd_cloze", "my_task"]
    assert validate_tasks(list(BUNDLED_TASKS), None) == list(BUNDLED_TASKS)
    assert True not in calls


def test_unknown_task_names_eval_tasks(task_dirs):
    local, _, _ = task_dirs
    with pytest.raises(ValueError, match=r"unknown task 'my_tsak' in `eval_tasks`.*Did you mean my_task"):
        validate_tasks(["my_tsak"], [str(local)])


def test_task_directory_without_yamls_names_eval_task_paths(task_dirs, tmp_path):
    _, empty, _ = task_dirs
    with pytest.raises(ValueError, match="holds no \\*.yaml.*`eval_task_paths`|`eval_task_paths`"):
        validate_tasks(["wsd_cloze"], [str(empty)])
    with pytest.raises(ValueError, match="is not a directory.*`eval_task_paths`|`eval_task_paths`.*not a directory"):
        validate_tasks(["wsd_cloze"], [str(tmp_path / "missing")])


def test_hub_dataset_while_offline_names_eval_tasks(task_dirs):
    local, _, _ = task_dirs
    for name in ("hub_task", "hub_group"):
        with pytest.raises(ValueError, match=f"task '{name}' in `eval_tasks`.*Hub.*not cached"):
            validate_tasks([name], [str(local)], offline=True)
        assert validate_tasks([name], [str(local)], offline=False) == [name]
    with pytest.raises(ValueError, match="task 'broken_task' in `eval_tasks`.*does not exist"):
        validate_tasks(["broken_task"], [str(local)], offline=False)


def test_offline_is_read_from_the_environment(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    assert validation.is_offline()
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "0")
    assert not validation.is_offline()


def _rank_worker(rank: int, folder: str, results) -> None:
    """One rank of a 2-process gloo group: rank 0 takes 3 s over "lm-eval", rank 1 must wait for it."""
    import time

    import torch
    import torch.distributed as dist

    from helpers import FakeTrainer

    def slow_lm_eval(self, trainer):
        time.sleep(3)
        return [dict(task="t", task_type="text-generation", dataset_name="t", dataset_type="t",
                     metric="acc", value=0.5, stderr=None, samples=1)]

    dist.init_process_group("gloo", init_method=f"file://{folder}/store", rank=rank, world_size=2)
    BudgetEvaluator._run_lm_eval = slow_lm_eval
    BudgetEvaluator._prepare_tasks = lambda self, args, trainer, write: None
    trainer = FakeTrainer(model=torch.nn.Linear(1, 1), processing_class=None)
    evaluator = BudgetEvaluator(eval_tasks=["wsd_cloze"], heldout=False)
    start = time.time()
    evaluator.on_budget_reached(fake_args(folder), trainer_state(main=rank == 0), None,
                                event=budget_event(folder), trainer=trainer)
    results.put((rank, time.time() - start, trainer.log_history))
    dist.destroy_process_group()


@pytest.mark.multiprocess
def test_other_ranks_wait_for_the_main_process_and_log_its_results(tmp_path):
    """Forked (not spawned) ranks: they inherit the imports, so the test takes seconds, not a minute."""
    import multiprocessing

    context = multiprocessing.get_context("fork")
    results = context.Queue()
    procs = [context.Process(target=_rank_worker, args=(rank, str(tmp_path), results)) for rank in (0, 1)]
    for proc in procs:
        proc.start()
    outputs = dict((rank, (waited, logs)) for rank, waited, logs in (results.get(timeout=120) for _ in procs))
    for proc in procs:
        proc.join(timeout=30)
    assert all(proc.exitcode == 0 for proc in procs)
    assert outputs[1][0] >= 2.5  # rank 1 waited for rank 0's evaluation
    assert outputs[0][1][0]["budget/t_acc"] == outputs[1][1][0]["budget/t_acc"] == 0.5
    assert (tmp_path / "budgets" / "step10-tokens2.56K" / "eval_results.json").exists()
