"""One parser for the recipes: a YAML config overridden by ``--field value`` arguments, over several dataclasses
(as alignment-handbook's ``TrlParser((ScriptArguments, SFTConfig, ModelConfig)).parse_args_and_config()``).

    recipes/pretrain.py [CONFIG.yaml] [--field value ...]

Every key of the YAML file must be a field of one of the dataclasses; ``choices`` in a field's metadata are
checked by argparse, and ``--help`` lists every field with its help text.
"""

from __future__ import annotations

import dataclasses
import difflib
from pathlib import Path
from typing import Any, Sequence

import yaml
from transformers import HfArgumentParser


def split_config_argument(argv: Sequence[str]) -> tuple[Path | None, list[str]]:
    """``(config path, the other arguments)``: the config is a first argument ending in ``.yaml`` / ``.yml``."""
    argv = list(argv)
    if argv and argv[0].endswith((".yaml", ".yml")):
        return Path(argv[0]), argv[1:]
    return None, argv


def read_config(path: Path, known: set[str] | None) -> dict[str, Any]:
    """A recipe config: a YAML mapping of field names to values; anything else is a clear error (``known``: the
    field names it may hold; ``None``: any)."""
    if not path.is_file():
        raise ValueError(f"recipe config {path} does not exist.")
    settings = yaml.safe_load(path.read_text())
    if settings is None:
        return {}
    if not isinstance(settings, dict):
        raise ValueError(
            f"recipe config {path} holds a YAML {type(settings).__name__}, not a mapping: write one `field: value` "
            "per line (e.g. `budgets: [\"100\", \"200\"]`)."
        )
    unknown = sorted(str(key) for key in settings if known is not None and key not in known)
    if unknown:
        raise ValueError(f"unknown field(s) {_with_suggestions(unknown, known)} in {path}; `--help` lists the fields.")
    return settings


def _with_suggestions(names: Sequence[str], known: set[str], dashes: str = "") -> str:
    """``budgetz (did you mean budgets?), foo``: each unknown name with the known names closest to it."""
    described = []
    for name in names:
        close = difflib.get_close_matches(name, sorted(known), n=3, cutoff=0.6)
        hint = f" (did you mean {' or '.join(dashes + c for c in close)}?)" if close else ""
        described.append(f"{dashes}{name}{hint}")
    return ", ".join(described)


def unknown_arguments_message(arguments: Sequence[str], known: set[str]) -> str:
    """The error for command-line arguments no dataclass field takes, with the closest field names."""
    options = [a[2:].split("=", 1)[0] for a in arguments if a.startswith("--")]
    stray = [a for a in arguments if not a.startswith("-")]
    text = f"unknown argument(s) {_with_suggestions(options, known, '--')}" if options else "unexpected argument(s)"
    if stray and not options:
        text += f" {' '.join(stray)}"
    return text + "; `--help` lists the fields."


class RecipeParser(HfArgumentParser):
    """``HfArgumentParser`` over ``dataclass_types`` that reads a YAML config first.

    Args:
        dataclass_types: the dataclasses to fill (their fields must not overlap).
        default_config: the YAML used when the arguments name none.
        defaults: values under the YAML's (e.g. the machine's: ``use_cpu`` without a GPU).
    """

    def __init__(self, dataclass_types, default_config: Path | None = None, defaults: dict | None = None, **kwargs):
        super().__init__(dataclass_types, allow_abbrev=False, **kwargs)
        self.default_config = default_config
        self.base_defaults = dict(defaults or {})
        self.fields = {f.name for dc in self.dataclass_types for f in dataclasses.fields(dc) if f.init}

    def config(self, argv: Sequence[str]) -> tuple[dict[str, Any], list[str]]:
        """The YAML settings the arguments select, and the remaining command-line overrides."""
        path, overrides = split_config_argument(argv)
        path = path or self.default_config
        return (read_config(path, self.fields) if path is not None else {}), overrides

    def parse(self, argv: Sequence[str] = (), **overrides: Any) -> tuple:
        """One instance per dataclass: the YAML, then ``argv``'s ``--field value`` pairs, then ``overrides``."""
        settings, cli = self.config(argv)
        unknown = sorted(set(overrides) - self.fields)
        if unknown:
            raise ValueError(f"unknown field(s) {', '.join(unknown)}.")
        self.set_defaults(**{**self.base_defaults, **settings})
        extra = [item for key, value in overrides.items() for item in _as_arguments(key, value)]
        # Typos first: the dataclasses check their values (the budget plan…) as they are built.
        _, stray = self.parse_known_args(args=[*cli, *extra])
        if stray:
            raise ValueError(unknown_arguments_message(stray, self.fields))
        return self.parse_args_into_dataclasses(args=[*cli, *extra])


def _as_arguments(key: str, value: Any) -> list[str]:
    values = value if isinstance(value, (list, tuple)) else [value]
    return [f"--{key}", *(str(v) for v in values)]
