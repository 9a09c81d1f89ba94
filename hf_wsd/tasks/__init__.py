"""lm-evaluation-harness tasks: the bundled offline benchmarks (:mod:`.bundled`) and their validation
(:mod:`.validation`)."""

from .bundled import BUNDLED_TASKS, CLOZE, NEXT_PASSAGE, build_bundled_tasks, sentence_spans, task_config

__all__ = ["BUNDLED_TASKS", "CLOZE", "NEXT_PASSAGE", "build_bundled_tasks", "sentence_spans", "task_config"]
