"""Validated loading of prompts, preference pairs and edit records.

Sources: JSONL (one object per line), a JSON array, a parquet file, a directory written by HF ``datasets``'
``save_to_disk``, or a Hugging Face Hub data set named ``hf:REPO[:CONFIG[:SPLIT]]`` (read through
``datasets.load_dataset``; split ``train`` unless named). Pairs, prompts and single responses are recognised
in the schemas of :mod:`fgrlhf.data.schemas` (TRL, AlpacaFarm, conversational) or renamed by a field map.
Every record is checked against a schema of required string fields; a problem is a :class:`DataError`
naming file, line (or row) and field, or with ``skip_invalid`` a counted skip with the same message.
Records keep all their other fields, so outputs can carry them through.
"""

from __future__ import annotations

import json
import logging
import os
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fgrlhf.data.schemas import Kind, Recognizer

log = logging.getLogger(__name__)

PAIR_FIELDS = ("prompt", "chosen", "rejected")
RESPONSE_FIELDS = ("prompt", "response")
PROMPT_FIELDS = ("prompt",)
EDIT_FIELDS = ("prompt", "original", "edited", "status")


ALPACA_EVAL_SET = "alpaca_eval/eval_set.jsonl"
ALPACA_EVAL_PAIRS = "alpaca_eval/preferences_alpaca7b_vs_davinci003.jsonl"


def packaged_data_dir() -> Path:
    """The data shipped inside the package (what and from where: resources/data/README.md)."""
    return Path(str(resources.files("fgrlhf") / "resources" / "data"))


def data_dirs() -> list[Path]:
    """Folders that relative data names resolve under, in order: ``$FGRLHF_DATA_DIR`` when set (a folder
    of the same layout, e.g. a newer copy of the data), then the packaged data."""
    override = os.environ.get("FGRLHF_DATA_DIR")
    return ([Path(override).expanduser()] if override else []) + [packaged_data_dir()]


HUB_PREFIX = "hf:"


def is_hub_id(path: str | Path) -> bool:
    """``hf:REPO[:CONFIG[:SPLIT]]``: a data set on the Hugging Face Hub rather than a local path."""
    return isinstance(path, str) and path.startswith(HUB_PREFIX)


def resolve_data_path(path: str | Path) -> Path:
    """``path`` as given if it exists (absolute or relative to the working directory), else under the first
    of :func:`data_dirs` that holds it, so configs can name ``alpaca_eval/eval_set.jsonl`` on any
    installation; else ``path`` unchanged, for the caller to report missing."""
    path = Path(path).expanduser()
    if path.is_absolute() or path.exists():
        return path
    for folder in data_dirs():
        if (folder / path).exists():
            return folder / path
    return path


class DataError(ValueError):
    """A record is malformed; the message starts with ``file:line`` and names the field."""


# Per text field, in UTF-8 bytes: a few hundred times a long answer. Beyond it a record is refused at load
# time, so one runaway response cannot stall the editors, the token diff or the tokenizers downstream.
DEFAULT_MAX_FIELD_BYTES = 256 * 1024
MAX_FIELD_BYTES_ENV = "FGRLHF_MAX_FIELD_BYTES"


def max_field_bytes() -> int:
    """The size limit of one text field: ``$FGRLHF_MAX_FIELD_BYTES`` (set by ``--max-field-bytes``; 0 = no
    limit), else :data:`DEFAULT_MAX_FIELD_BYTES`. An environment variable, so Ray workers inherit it."""
    raw = os.environ.get(MAX_FIELD_BYTES_ENV)
    if raw is None:
        return DEFAULT_MAX_FIELD_BYTES
    try:
        value = int(raw)
    except ValueError:
        value = -1
    if value < 0:
        raise DataError(f"{MAX_FIELD_BYTES_ENV}={raw!r}: expected a number of bytes (0 = no limit)")
    return value


def is_datasets_dir(path: Path) -> bool:
    """A directory written by ``datasets``' ``save_to_disk`` (a Dataset or a DatasetDict)."""
    return any((path / name).is_file() for name in ("state.json", "dataset_info.json", "dataset_dict.json"))


@dataclass
class LoadReport:
    """What a load kept and skipped, with each skip's message (for ``--skip-invalid`` runs)."""

    loaded: int = 0
    skipped: int = 0
    ties: int = 0  # pairs without a better side (AlpacaFarm's preference 0 or 1.5): not training data
    reasons: Counter = field(default_factory=Counter)
    messages: list[str] = field(default_factory=list)


def _dataset_rows(where: str, load: Callable[[], Any]) -> Iterator[tuple[str, object]]:
    """Rows of the HF ``datasets`` Dataset ``load()`` returns; its failures become one DataError line."""
    try:
        dataset = load()
    except Exception as exc:  # datasets' and pyarrow's many error types: all are "cannot read this source"
        raise DataError(f"{where}: cannot read it with datasets: {type(exc).__name__}: {exc}".splitlines()[0]) from None
    if hasattr(dataset, "keys") and not hasattr(dataset, "features"):  # a DatasetDict
        splits = list(dataset.keys())
        if len(splits) != 1:
            raise DataError(f"{where}: holds the splits {', '.join(splits)}; name one (e.g. {where}/{splits[0]})")
        dataset = dataset[splits[0]]
    for index, row in enumerate(dataset):
        yield f"{where}:row {index}", row


def _hub_rows(spec: str) -> Iterator[tuple[str, object]]:
    repo, config, split = (spec[len(HUB_PREFIX) :].split(":") + ["", ""])[:3]
    if not repo or spec.count(":") > 3:
        raise DataError(f"{spec}: expected hf:REPO[:CONFIG[:SPLIT]], e.g. hf:trl-lib/ultrafeedback_binarized")
    from datasets import load_dataset

    yield from _dataset_rows(spec, lambda: load_dataset(repo, config or None, split=split or "train"))


def _raw_records(path: str | Path) -> Iterator[tuple[str, object]]:
    """Yield ``(location, parsed-or-DataError)`` for each record of a JSONL/JSON/parquet file, a datasets
    dir or a Hub data set."""
    if is_hub_id(path):
        yield from _hub_rows(str(path))
        return
    path = Path(path)
    if path.is_dir():
        if not is_datasets_dir(path):
            raise DataError(
                f"{path}: is a directory; expected a JSONL, JSON or parquet file (or a directory written "
                "by datasets' save_to_disk)"
            )
        from datasets import load_from_disk

        yield from _dataset_rows(str(path), lambda: load_from_disk(str(path)))
        return
    if path.suffix == ".parquet":
        from datasets import load_dataset

        yield from _dataset_rows(str(path), lambda: load_dataset("parquet", data_files=str(path), split="train"))
        return
    if path.suffix == ".json":
        try:
            rows = json.loads(path.read_text(encoding="utf-8-sig"))  # a UTF-8 BOM is allowed
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise DataError(f"{path}: not a valid JSON file: {exc}") from None
        if not isinstance(rows, list):
            raise DataError(f"{path}: a .json data file must hold a list of objects")
        for index, row in enumerate(rows):
            yield f"{path}:item {index}", row
        return
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            where = f"{path}:{number}"
            try:
                text = raw.decode("utf-8-sig" if number == 1 else "utf-8")  # a BOM may open the file
            except UnicodeDecodeError as exc:
                yield where, DataError(f"{where}: line is not valid UTF-8 ({exc.reason} at byte {exc.start})")
                continue
            if not text.strip():
                continue
            try:
                yield where, json.loads(text)
            except json.JSONDecodeError as exc:
                yield where, DataError(f"{where}: not valid JSON ({exc.msg} at column {exc.colno})")


def _check(where: str, record: object, required: tuple[str, ...], allow_empty: tuple[str, ...], max_bytes: int) -> dict:
    if isinstance(record, DataError):
        raise record
    if not isinstance(record, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(record).__name__}")
    for name in required:
        if name not in record:
            raise DataError(f"{where}: missing field '{name}'")
        value = record[name]
        if not isinstance(value, str):
            raise DataError(f"{where}: field '{name}' must be a string, got {type(value).__name__}")
        if not value.strip() and name not in allow_empty:
            raise DataError(f"{where}: field '{name}' is empty")
        _check_size(where, name, value, max_bytes)
    return record


def _check_size(where: str, name: str, value: str, max_bytes: int) -> None:
    # A character is at most 4 UTF-8 bytes: only long strings need encoding to measure.
    if max_bytes and len(value) * 4 > max_bytes and (size := len(value.encode("utf-8"))) > max_bytes:
        raise DataError(
            f"{where}: field '{name}' is larger than {max_bytes} bytes ({size} bytes); raise the "
            f"limit with --max-field-bytes or {MAX_FIELD_BYTES_ENV} (0 = no limit)"
        )


def load_records(
    path: str | Path,
    required: tuple[str, ...],
    *,
    allow_empty: tuple[str, ...] = (),
    skip_invalid: bool = False,
    limit: int | None = None,
    report: LoadReport | None = None,
    max_bytes: int | None = None,
    convert: Callable[[str, dict], dict | None] | None = None,
) -> list[dict]:
    """Load and validate records that must carry the non-empty string fields ``required``, each at most
    ``max_bytes`` long in UTF-8 (default :func:`max_field_bytes`; 0 = no limit). ``convert`` turns each
    object into the record checked (a :class:`~fgrlhf.data.schemas.Recognizer`); None drops it as a tie."""
    if not is_hub_id(path):
        path = resolve_data_path(path)
        if not path.exists():
            raise DataError(f"{path}: no such file or directory")
    report = report if report is not None else LoadReport()
    max_bytes = max_field_bytes() if max_bytes is None else max_bytes
    records = []
    for where, raw in _raw_records(path):
        try:
            record = convert(where, raw) if convert is not None and isinstance(raw, dict) else raw
            if record is None:
                report.ties += 1
                continue
            records.append(_check(where, record, required, allow_empty, max_bytes))
        except DataError as exc:
            if not skip_invalid:
                raise
            report.skipped += 1
            report.reasons[str(exc).split(": ", 1)[-1].split(" (")[0]] += 1
            report.messages.append(str(exc))
            log.warning("skipping invalid record: %s", exc)
            continue
        if limit is not None and len(records) >= limit:
            break
    report.loaded = len(records)
    if report.ties:
        log.warning("%s: skipped %d tied pairs (no better response)", path, report.ties)
    if not records:
        raise DataError(f"{path}: no valid records")
    return records


def _recognizer(kind: Kind, path: str | Path, field_map: dict[str, str] | None, flag: str) -> Recognizer:
    from fgrlhf.data.schemas import Recognizer  # imports this module

    return Recognizer(kind, str(path), field_map, flag)


def load_pairs(
    path: str | Path, *, field_map: dict[str, str] | None = None, field_map_flag: str = "--field-map", **kwargs
) -> list[dict]:
    """Preference pairs ``{prompt, chosen, rejected}`` (+ ``input``, ``prompt_messages``), from any schema of
    :mod:`fgrlhf.data.schemas`; ``field_map`` renames the fields of any other (``field_map_flag`` sets it)."""
    return load_records(path, PAIR_FIELDS, convert=_recognizer("pairs", path, field_map, field_map_flag), **kwargs)


def load_prompts(
    path: str | Path, *, field_map: dict[str, str] | None = None, field_map_flag: str = "--field-map", **kwargs
) -> list[dict]:
    """Prompts ``{prompt}`` (+ ``input``, ``prompt_messages``), as :func:`load_pairs`."""
    return load_records(path, PROMPT_FIELDS, convert=_recognizer("prompts", path, field_map, field_map_flag), **kwargs)


def first_record(path: str | Path) -> dict | None:
    """The first JSON object of a source (None when it has none or does not exist), for telling kinds apart."""
    if not is_hub_id(path):
        path = resolve_data_path(path)
        if not path.exists():
            return None
    return next((raw for _, raw in _raw_records(path) if isinstance(raw, dict)), None)


def load_edit_inputs(
    path: str | Path, *, field_map: dict[str, str] | None = None, field_map_flag: str = "--field-map", **kwargs
) -> tuple[list[dict], str]:
    """Inputs of ``fgrlhf edit``: pairs (the rejected side is edited) or single responses.

    Returns the records and which field holds the text to edit (``rejected`` or ``response``).
    """
    first = first_record(path)
    if isinstance(first, dict):
        first = {**first, **{target: first.get(name) for target, name in (field_map or {}).items()}}
    if isinstance(first, dict) and "response" in first and not {"rejected", "output_2"} & set(first):
        convert = _recognizer("responses", path, field_map, field_map_flag)
        return load_records(path, RESPONSE_FIELDS, convert=convert, **kwargs), "response"
    return load_pairs(path, field_map=field_map, field_map_flag=field_map_flag, **kwargs), "rejected"


def load_edit_records(path: str | Path, *, statuses: tuple[str, ...] = ("edited",), **kwargs) -> list[dict]:
    """Output records of ``fgrlhf edit`` whose status is in ``statuses`` (others are not training data)."""
    records = load_records(path, EDIT_FIELDS, allow_empty=("edited",), **kwargs)
    return [record for record in records if record["status"] in statuses]


def write_jsonl(path: str | Path, records: list[dict]) -> None:
    """Write atomically (temp file + rename) so an interrupted write never leaves a truncated file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
    tmp.replace(path)


def read_jsonl(path: str | Path) -> list[dict]:
    """The records of a JSONL file this project wrote itself (metrics, stage outputs): no validation; input
    data goes through :func:`load_records`."""
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
