"""Bundled offline benchmarks, built from a run's held-out documents as lm-evaluation-harness YAML tasks.

- ``wsd_next_passage`` (``multiple_choice``, metrics ``acc`` / ``acc_norm``): given a passage, pick the sentence
  that follows it among four; the three distractors are sentences of other held-out documents.
- ``wsd_cloze`` (``loglikelihood``, metrics ``acc`` = the word is the greedy continuation, and ``perplexity``):
  predict the last word of a passage, LAMBADA-style.

Each task is a ``{name}.jsonl`` + ``{name}.yaml`` pair (``dataset_path: json`` with an absolute ``data_files``
path), so it runs through the same harness as any published benchmark. Examples come from held-out documents
only; given the training documents, any example whose passage, context or choice occurs verbatim in them
is dropped (the KJV repeats many formulaic verses across chapters).
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import re
from pathlib import Path
from typing import Sequence

import yaml

logger = logging.getLogger(__name__)

NEXT_PASSAGE = "wsd_next_passage"
CLOZE = "wsd_cloze"
BUNDLED_TASKS = (NEXT_PASSAGE, CLOZE)
N_CHOICES = 4
CONTEXT_WORDS = (20, 60)  # short enough for a 128-token model context together with the continuation
CONTINUATION_WORDS = (5, 30)
_SENTENCE_END = re.compile(r"[.!?][\"')\]]*(?=\s|$)")
_WORD = re.compile(r"[A-Za-z]{3,}")

_METRICS = {
    NEXT_PASSAGE: [
        {"metric": "acc", "aggregation": "mean", "higher_is_better": True},
        {"metric": "acc_norm", "aggregation": "mean", "higher_is_better": True},
    ],
    CLOZE: [
        {"metric": "perplexity", "aggregation": "perplexity", "higher_is_better": False},
        {"metric": "acc", "aggregation": "mean", "higher_is_better": True},
    ],
}
_DESCRIPTIONS = {
    NEXT_PASSAGE: "Pick the sentence that follows a passage of held-out text among 4 (3 from other documents).",
    CLOZE: "Predict the last word of a passage of held-out text (LAMBADA-style).",
}


def sentence_spans(text: str) -> list[tuple[int, int]]:
    """``(start, end)`` character spans of the sentences of ``text`` (ends at ``.``, ``!`` or ``?``)."""
    spans, start = [], 0
    for match in _SENTENCE_END.finditer(text):
        if text[start : match.end()].strip():
            spans.append((start + len(text[start:]) - len(text[start:].lstrip()), match.end()))
        start = match.end()
    return spans


def _words(text: str) -> int:
    return len(text.split())


def _context_start(text: str, spans: list[tuple[int, int]], last: int, end: int) -> int | None:
    """Start of the shortest run of whole sentences ``..last`` such that ``text[start:end]`` has at least
    ``CONTEXT_WORDS[0]`` words; ``None`` if it would exceed ``CONTEXT_WORDS[1]``."""
    for first in range(last, -1, -1):
        words = _words(text[spans[first][0] : end])
        if words > CONTEXT_WORDS[1]:
            return None
        if words >= CONTEXT_WORDS[0]:
            return spans[first][0]
    return None


class _Decontaminator:
    """Rejects texts that occur verbatim in the training documents (no-op without them)."""

    def __init__(self, train_documents: Sequence[str] | None):
        self.text = None if train_documents is None else "\n".join(train_documents)
        self.rejected = 0

    def clean(self, *texts: str) -> bool:
        if self.text is not None and any(t in self.text for t in texts):
            self.rejected += 1
            return False
        return True


def _next_passage_examples(documents, n_examples, rng, guard) -> list[dict]:
    pool, candidates = [], []  # pool: (doc, sentence text) usable as a choice
    for d, text in enumerate(documents):
        spans = sentence_spans(text)
        for i, (a, b) in enumerate(spans):
            if CONTINUATION_WORDS[0] <= _words(text[a:b]) <= CONTINUATION_WORDS[1]:
                pool.append((d, text[a:b]))
                start = _context_start(text, spans, i - 1, spans[i - 1][1]) if i else None
                if start is not None:
                    candidates.append((d, text[start : spans[i - 1][1]], text[a:b]))
    rng.shuffle(candidates)
    examples = []
    for d, context, answer in candidates:
        if len(examples) == n_examples:
            break
        others = [s for e, s in pool if e != d and s != answer] or [s for _, s in pool if s != answer]
        if len(set(others)) < N_CHOICES - 1:
            break
        distractors: list[str] = []
        # Prefer distractors of similar length, so length alone does not give the answer away.
        similar = [s for s in others if 0.67 <= _words(s) / _words(answer) <= 1.5]
        source = similar if len(set(similar)) >= N_CHOICES - 1 else others
        while len(distractors) < N_CHOICES - 1:
            choice = rng.choice(source)
            if choice not in distractors:
                distractors.append(choice)
        if not guard.clean(context, answer, *distractors):
            continue
        label = rng.randrange(N_CHOICES)
        choices = distractors[:label] + [answer] + distractors[label:]
        examples.append({"context": context, "choices": choices, "label": label})
    return examples


def _cloze_examples(documents, n_examples, rng, guard) -> list[dict]:
    candidates = []
    for text in documents:
        spans = sentence_spans(text)
        for i, (a, b) in enumerate(spans):
            words = list(_WORD.finditer(text, a, b))
            if not words:
                continue
            target = words[-1]
            # The target is a whole word ending its sentence ("...the earth." → "earth").
            whole_word = target.start() > 0 and text[target.start() - 1].isspace()
            if not whole_word or text[target.end() : b].strip("\"')]") not in (".", "!", "?"):
                continue
            start = _context_start(text, spans, i, target.start())
            if start is not None:
                context = text[start : target.start()].rstrip()
                candidates.append((context, target.group(), text[start : target.end()]))
    rng.shuffle(candidates)
    examples = []
    for context, target, passage in candidates:
        if len(examples) == n_examples:
            break
        if guard.clean(passage):
            examples.append({"context": context, "target": target})
    return examples


def task_config(name: str, data_file: Path, cache_dir: Path) -> dict:
    """The lm-eval YAML config of bundled task ``name`` reading ``data_file``."""
    config = {
        "task": name,
        "dataset_path": "json",
        # A private datasets cache keeps runs from writing into ~/.cache/huggingface.
        "dataset_kwargs": {"data_files": {"test": str(data_file)}, "cache_dir": str(cache_dir)},
        "test_split": "test",
        "output_type": "multiple_choice" if name == NEXT_PASSAGE else "loglikelihood",
        "doc_to_text": "{{context}}",
        "metric_list": _METRICS[name],
        "metadata": {"version": 1.0, "description": _DESCRIPTIONS[name]},
    }
    if name == NEXT_PASSAGE:
        config.update(doc_to_choice="choices", doc_to_target="label")
    else:
        # lm-eval adds target_delimiter to multiple-choice continuations only: a loglikelihood target carries its
        # own space, as in lm-eval's LAMBADA (else "unto" + "Pharaoh" is scored as the sub-words of "untoPharaoh").
        config.update(doc_to_target="{{' ' + target}}")
    return config


def build_bundled_tasks(
    heldout_documents: Sequence[str],
    directory: str | Path,
    n_examples: int = 200,
    seed: int = 0,
    train_documents: Sequence[str] | None = None,
    tasks: Sequence[str] = BUNDLED_TASKS,
) -> list[str]:
    """Write the bundled tasks' JSONL + YAML into ``directory``; returns the task names.

    Deterministic: the same documents, ``n_examples`` and ``seed`` give byte-identical files. With
    ``train_documents``, examples whose text occurs in them are dropped. ``directory/manifest.json`` records
    the example counts and a hash of the held-out documents.
    """
    unknown = [t for t in tasks if t not in BUNDLED_TASKS]
    if unknown:
        raise ValueError(f"unknown bundled task(s) {unknown} in `eval_tasks`; bundled: {', '.join(BUNDLED_TASKS)}.")
    documents = [d for d in heldout_documents if d.strip()]
    if not documents:
        raise ValueError("the bundled tasks need held-out documents; got none (`heldout_documents`).")
    directory = Path(directory).expanduser().resolve()
    directory.mkdir(parents=True, exist_ok=True)
    guard = _Decontaminator(train_documents)
    builders = {NEXT_PASSAGE: _next_passage_examples, CLOZE: _cloze_examples}
    manifest = {
        "seed": seed,
        "heldout_documents": len(documents),
        "heldout_sha256": hashlib.sha256("\x00".join(documents).encode()).hexdigest(),
        "decontaminated": train_documents is not None,
        "tasks": {},
    }
    for name in tasks:
        # One generator per task, seeded by name: adding a task leaves the others' examples unchanged.
        rng = random.Random(f"{seed}:{name}")
        rejected_before = guard.rejected
        examples = builders[name](documents, n_examples, rng, guard)
        if not examples:
            raise ValueError(
                f"the held-out documents yield no example for {name!r}; raise `heldout_fraction` or use longer "
                "documents."
            )
        if len(examples) < n_examples:
            logger.warning("%s: only %d of %d examples from %d held-out documents",
                           name, len(examples), n_examples, len(documents))
        data_file = directory / f"{name}.jsonl"
        with data_file.open("w", encoding="utf-8") as handle:
            for example in examples:
                handle.write(json.dumps(example, ensure_ascii=False) + "\n")
        config = task_config(name, data_file, directory / ".datasets_cache")
        (directory / f"{name}.yaml").write_text(yaml.safe_dump(config, sort_keys=False, allow_unicode=True))
        manifest["tasks"][name] = {"examples": len(examples),
                                   "rejected_as_in_training": guard.rejected - rejected_before}
    (directory / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    logger.info("Built bundled tasks in %s: %s", directory, manifest["tasks"])
    return list(tasks)
