"""What a run trains on, as fingerprints: recorded in the run when it starts and checked when it resumes.

A resume on other data silently trains on another order (rows of earlier updates trained again, others never):
the resume refuses it unless ``allow_data_change=True``. The fingerprint of a training set:

- a ``datasets.Dataset`` (a prepared dataset memory-mapped from the prepared cache, or any other): for each Arrow file
  under it, its path, size and a sampled content digest (:func:`sampled_digest`), plus its length and three rows;
  the prepared folder's name already carries the corpus key, so a corpus that gained or changed a shard is another
  folder;
- a token folder (:class:`~hf_wsd.data.token_folder.TokenBlocks`): each token file's path, size and sampled digest;
- a stream: the corpus fingerprint its source recorded (:data:`FINGERPRINT_ATTR`);
- any other dataset: ``hf_wsd_fingerprint`` if it has one, else it is not checked.

:func:`sampled_digest` reads three 64 KiB windows (start, middle, end) of a file: an edit that keeps the size and
the modification time is seen when it touches one of them — a parquet file's footer (its statistics and offsets)
is always in the last window — but not elsewhere. That is the limit the README states.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

FINGERPRINT_ATTR = "hf_wsd_fingerprint"  # a dataset may carry its own (streams: the corpus fingerprint)
WINDOW = 64 * 1024


def sampled_digest(path: str | Path, window: int = WINDOW) -> str:
    """SHA-256 of a file's size and three ``window``-byte slices (start, middle, end): O(1) reads per file."""
    path = Path(path)
    size = path.stat().st_size
    digest = hashlib.sha256(str(size).encode())
    with path.open("rb") as handle:
        for offset in sorted({0, max(0, size // 2 - window // 2), max(0, size - window)}):
            handle.seek(offset)
            digest.update(handle.read(window))
    return digest.hexdigest()


def _files_record(paths: list[str]) -> list[list]:
    return [[str(p), Path(p).stat().st_size, sampled_digest(p)] for p in paths]


def data_record(dataset: Any) -> dict | None:
    """``{"kind", "fingerprint", "files"}`` of a training set, or ``None`` when it cannot be fingerprinted."""
    own = getattr(dataset, FINGERPRINT_ATTR, None)
    if own is not None:
        return {"kind": type(dataset).__name__, "fingerprint": str(own), "files": None}
    from .token_folder import TokenBlocks

    if isinstance(dataset, TokenBlocks):
        files = _files_record(dataset.paths)
        payload = [files, dataset.dtype, dataset.block_size]
        return {"kind": "token folder", "fingerprint": _sha(payload), "files": files}
    if not hasattr(dataset, "cache_files") or not hasattr(dataset, "__getitem__") or not hasattr(dataset, "__len__"):
        return None
    # Not ``datasets``' own ``_fingerprint``: a transform it cannot hash gets a random one, which would refuse every
    # resume. The Arrow files under the dataset and three rows (first, middle, last: an index mapping is seen) instead.
    cache_files = [c["filename"] for c in dataset.cache_files or [] if Path(c["filename"]).is_file()]
    files = _files_record(cache_files) if cache_files else None
    size = len(dataset)
    rows = [_plain(dataset[i]) for i in sorted({0, size // 2, size - 1})] if size else []
    return {"kind": "datasets", "fingerprint": _sha([files, size, rows]), "files": files}


def _plain(value):
    """A row as JSON-able values (numpy arrays and tensors as lists)."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in sorted(value.items())}
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value if isinstance(value, (str, int, float, bool, type(None))) else repr(value)


def _sha(payload) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def check_resume_data(saved: dict | None, current: dict | None, allow: bool, output_dir: Path) -> None:
    """Refuse a resume whose training data differs from the data the run started on, unless ``allow``."""
    if saved is None or current is None or saved.get("fingerprint") == current.get("fingerprint"):
        return
    what = _difference(saved, current)
    if allow:
        logger.warning("The training data changed since %s started (%s); allow_data_change=True: resuming on it.",
                       output_dir, what)
        return
    raise ValueError(
        f"The training data changed since the run in {output_dir} started ({what}). A resume on other data trains "
        "on another order: rows of earlier updates are trained again and others never. Resume on the data the run "
        "started with; or set allow_data_change=True (recipe: --allow_data_change true) to go on with this data; "
        "or start over (overwrite_output_dir=True)."
    )


def _difference(saved: dict, current: dict) -> str:
    old, new = saved.get("files"), current.get("files")
    if old is None or new is None:
        return f"{saved.get('kind')} fingerprint {str(saved.get('fingerprint'))[:12]} → " \
               f"{current.get('kind')} {str(current.get('fingerprint'))[:12]}"
    folders = ({str(Path(f[0]).parent) for f in old}, {str(Path(f[0]).parent) for f in new})
    if current.get("kind") == "datasets" and folders[0] != folders[1]:
        return (f"another prepared cache: {', '.join(sorted(folders[0]))} → {', '.join(sorted(folders[1]))}, so the "
                "corpus gained, lost or changed a shard, or a preparing setting changed")
    before = {Path(f[0]).name: f for f in old}
    after = {Path(f[0]).name: f for f in new}
    parts = []
    if added := sorted(set(after) - set(before)):
        parts.append(f"added: {', '.join(added[:5])}")
    if gone := sorted(set(before) - set(after)):
        parts.append(f"missing: {', '.join(gone[:5])}")
    if edited := sorted(n for n in set(before) & set(after) if before[n][1:] != after[n][1:]):
        parts.append(f"changed in place: {', '.join(edited[:5])}")
    if not parts:
        parts.append(f"{len(old)} files → {len(new)} files, other paths")
    return "; ".join(parts)


def stream_fingerprint(source, tokenizer, block_size: int, heldout_fraction: float, seed: int) -> str:
    """A streamed corpus's fingerprint: its files (or dataset) and every setting that changes its blocks."""
    from .tokenizer import tokenizer_fingerprint

    return _sha([source.fingerprint, source.text_column, tokenizer_fingerprint(tokenizer), block_size,
                 heldout_fraction, seed])
