"""One parser for the recipes: a YAML config overridden by ``--field value`` arguments, over several dataclasses
(as alignment-handbook's ``TrlParser((ScriptArguments, SFTConfig, ModelConfig)).parse_args_and_config()``).

    recipes/pretrain.py [CONFIG.yaml] [--field value ...]

Every key of the YAML file must be a field of one of the dataclasses; ``choices`` in a field's metadata are
checked by argparse, and ``--help`` lists every field with its help text.
"""

from __future__ import annotations

import dataclasses
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


def read_config(path: Path, known: set[str]) -> dict[str, Any]:
    """A recipe config: a YAML mapping of field names to values; anything else is a clear error."""
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
    unknown = sorted(str(key) for key in settings if key not in known)
    if unknown:
        raise ValueError(f"unknown field(s) {', '.join(unknown)} in {path}; `--help` lists the fields.")
    return settings


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
        return self.parse_args_into_dataclasses(args=[*cli, *extra])


def _as_arguments(key: str, value: Any) -> list[str]:
    values = value if isinstance(value, (list, tuple)) else [value]
    return [f"--{key}", *(str(v) for v in values)]
