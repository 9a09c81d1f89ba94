"""Up-front checks of lm-eval task names and folders, so a bad ``eval_tasks`` fails before training starts.

Indexing only the given folders takes milliseconds; lm-eval's ~15k built-in task YAMLs (8–30 s) are indexed
only when a name is not bundled and not in ``eval_task_paths``, and that index is kept for the process.
"""

from __future__ import annotations

import difflib
import functools
import os
import re
from pathlib import Path
from typing import Any, Sequence

from .bundled import BUNDLED_TASKS

LOCAL_LOADERS = ("json", "csv", "text", "parquet", "arrow", "pandas")
_TRUE = ("1", "true", "yes", "on")


def is_offline() -> bool:
    """True when ``HF_HUB_OFFLINE`` or ``HF_DATASETS_OFFLINE`` is set (read now, not at import time)."""
    return any(os.environ.get(name, "").strip().lower() in _TRUE for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))


def as_list(value: str | Sequence[str] | None) -> list[str]:
    """``None`` → ``[]``; ``"a,b"`` (a command line) → ``["a", "b"]``; a sequence → a list of strings."""
    if value is None:
        return []
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    return [str(v) for v in value]


@functools.lru_cache(maxsize=8)
def task_manager(paths: tuple[str, ...], include_defaults: bool):
    """An lm-eval ``TaskManager`` over ``paths`` (+ the built-in tasks), built once per process."""
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=list(paths) or None, include_defaults=include_defaults)


def task_index(paths: tuple[str, ...], include_defaults: bool) -> dict:
    """``{name: Entry}`` of the tasks, groups and tags found in ``paths`` (+ the built-in tasks)."""
    return task_manager(paths, include_defaults).task_index


def _specs(value: Any) -> list:
    return [] if value is None else value if isinstance(value, list) else [value]


def leaf_configs(name: str, index: dict, seen: set[str] | None = None) -> list[dict]:
    """The configs of the tasks behind ``name`` (a task, a group or a tag) in a task index."""
    seen = set() if seen is None else seen
    entry = index.get(name)
    if entry is None or name in seen:
        return []
    seen.add(name)
    if entry.kind.name == "TAG":
        return [c for child in sorted(entry.tags) for c in leaf_configs(child, index, seen)]
    if entry.kind.name == "GROUP":
        configs = []
        for child in _specs((entry.cfg or {}).get("task")):
            if isinstance(child, dict):
                configs.extend([child] if "dataset_path" in child else leaf_configs(child.get("task", ""), index, seen))
            else:
                configs.extend(leaf_configs(child, index, seen))
        return configs
    return [entry.cfg or {}]


def dataset_problem(config: dict, offline: bool) -> str | None:
    """Why a task config's data cannot load here, or ``None``."""
    path = config.get("dataset_path")
    if not path or "custom_dataset" in config:
        return None
    if path in LOCAL_LOADERS:
        files = (config.get("dataset_kwargs") or {}).get("data_files") or {}
        files = files.values() if isinstance(files, dict) else _specs(files)
        for file in (f for group in files for f in _specs(group)):
            if re.match(r"^[a-z]+://", str(file)):
                if offline:
                    return f"its data file {file} is remote and HF_HUB_OFFLINE/HF_DATASETS_OFFLINE is set"
            elif not Path(str(file)).expanduser().exists():
                return f"its data file {file} does not exist (relative paths resolve against the working directory)"
        return None
    if Path(str(path)).expanduser().exists() or not offline:
        return None
    # Offline with a Hub dataset: fine when a local copy exists in the hub cache or the datasets cache.
    import datasets.config
    from huggingface_hub import constants

    cached = [Path(constants.HF_HUB_CACHE) / f"datasets--{path.replace('/', '--')}",
              Path(datasets.config.HF_DATASETS_CACHE) / path.replace("/", "___")]
    if any(p.exists() or p.with_name(p.name.lower()).exists() for p in cached):
        return None
    return f"its dataset {path!r} comes from the Hub, HF_HUB_OFFLINE/HF_DATASETS_OFFLINE is set and it is not cached"


def validate_tasks(
    eval_tasks: str | Sequence[str] | None,
    eval_task_paths: str | Sequence[str] | None = None,
    offline: bool | None = None,
) -> list[str]:
    """Check ``eval_tasks`` before training; returns the task names. Raises ``ValueError`` naming the field.

    Bundled names (``wsd_next_passage``, ``wsd_cloze``) are valid without a path: they are built at run time.
    Other names must be in a folder of ``eval_task_paths`` or among lm-eval's built-in tasks. Offline
    (``offline=None`` reads ``HF_HUB_OFFLINE``/``HF_DATASETS_OFFLINE``), a task whose dataset comes from the
    Hub is an error unless a copy is in the local hub or datasets cache (a cheap, conservative check: the
    cached copy may still lack the task's config); a local loader (``json``, ``csv``, …) whose
    ``data_files`` are missing is an error online too.
    """
    names, paths = as_list(eval_tasks), [str(Path(p).expanduser().resolve()) for p in as_list(eval_task_paths)]
    offline = is_offline() if offline is None else offline
    for given, path in zip(as_list(eval_task_paths), paths):
        if not Path(path).is_dir():
            raise ValueError(f"{given!r} in `eval_task_paths` is not a directory; give folders of lm-eval task YAMLs.")
        if not any(Path(path).rglob("*.yaml")):
            raise ValueError(
                f"{given!r} in `eval_task_paths` holds no *.yaml task file; add task configs or remove it."
            )
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"`eval_tasks` lists {duplicates} more than once; remove the duplicates.")
    if not names:
        return []
    index = task_index(tuple(paths), False) if paths else {}
    if any(n not in index and n not in BUNDLED_TASKS for n in names):
        index = task_index(tuple(paths), True)
    for name in names:
        if name in BUNDLED_TASKS and name not in index:
            continue
        if name not in index:
            close = difflib.get_close_matches(name, [*index, *BUNDLED_TASKS], n=3)
            hint = f" Did you mean {', '.join(close)}?" if close else ""
            raise ValueError(
                f"unknown task {name!r} in `eval_tasks`: not bundled ({', '.join(BUNDLED_TASKS)}), not in "
                f"`eval_task_paths` {as_list(eval_task_paths)} and not an lm-eval built-in task.{hint}"
            )
        for config in leaf_configs(name, index):
            problem = dataset_problem(config, offline)
            if problem:
                raise ValueError(f"task {name!r} in `eval_tasks` cannot load its data: {problem}.")
    return names
