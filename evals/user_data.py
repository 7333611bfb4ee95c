"""Eval suites over the user's own labelled data: a JSONL, CSV or Parquet file next to the suite, no Python.

`source: {path: data/tickets.jsonl}` is read relative to the suite file. A `fields:` mapping names which
column gives each sample field (`id` and `target` are required; the others fill the prompt templates), so
`fields: {id: ticket_id, target: queue, ticket: body}` and `prompt: {user: "Ticket: {ticket}"}` make a suite.
A suite may instead name a record function (row -> Sample) registered under the `tier_runner.records`
entry-point group by an installed plugin, the way `tier_runner.commands` finds subcommands.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from collections.abc import Callable
from functools import lru_cache
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from hardware.errors import ConfigError
from hardware.extras import require_extra

RECORDS_GROUP = "tier_runner.records"
SUFFIX_FORMATS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv", ".parquet": "parquet"}


class FileSource(BaseModel):
    """A data file of your own, relative to the suite file."""

    model_config = ConfigDict(extra="forbid")
    path: str = Field(min_length=1, description="JSONL, CSV or Parquet file, relative to the suite file")
    format: Literal["jsonl", "csv", "parquet"] | None = Field(
        default=None, description="default: from the file's extension (.jsonl/.ndjson, .csv, .parquet)")
    license: str = Field(default="your own data", description="whose data this is")
    split: str = Field(default="all", description="which part of your data the file holds")

    def resolve(self, folder: Path) -> Path:
        path = Path(self.path)
        return path if path.is_absolute() else (folder / path)

    def file_format(self) -> str:
        if self.format:
            return self.format
        fmt = SUFFIX_FORMATS.get(Path(self.path).suffix.lower())
        if fmt is None:
            raise ConfigError(f"source.path {self.path!r}: cannot tell the format from its extension; set "
                              f"source.format to jsonl, csv or parquet")
        return fmt


def read_table(path: Path, fmt: str) -> list[dict]:
    """Rows of a user's data file as dicts; CSV values stay strings, JSONL and Parquet keep their types."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{path}: data file not found; source.path is relative to the suite file") from None
    if fmt == "jsonl":
        rows = []
        for number, line in enumerate(raw.decode("utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ConfigError(f"{path}: line {number} is not JSON ({exc.msg}); each line holds one record") from None
            if not isinstance(row, dict):
                raise ConfigError(f"{path}: line {number} is not a JSON object; each line holds one record")
            rows.append(row)
        return rows
    if fmt == "csv":
        return list(csv.DictReader(io.StringIO(raw.decode("utf-8-sig"))))
    require_extra("pyarrow", "evals", f"a Parquet suite source ({path.name})")
    import pyarrow.parquet as pq

    return pq.read_table(io.BytesIO(raw)).to_pylist()


def columns_of(rows: list[dict]) -> list[str]:
    seen: dict[str, None] = {}
    for row in rows:
        seen.update(dict.fromkeys(row))
    return list(seen)


def check_columns(rows: list[dict], fields: dict[str, str], data_path: Path, suite_file: Path | str) -> None:
    """Every mapped column exists in the file; else name the file, the column and the columns there are."""
    have = columns_of(rows)
    for name, column in fields.items():
        if column not in have:
            raise ConfigError(f"{suite_file}: fields.{name} names column {column!r}, which {data_path} does not "
                              f"have; its columns are: {', '.join(have) or '(none: the file has no rows)'}")


def mapped_rows(rows: list[dict], fields: dict[str, str], data_path: Path) -> list[dict]:
    """Rows renamed through the mapping; a row without its id or target is an error naming the row."""
    out = []
    for number, row in enumerate(rows, start=1):
        mapped = {name: row.get(column) for name, column in fields.items()}
        for required in ("id", "target"):
            if mapped[required] is None or mapped[required] == "":
                raise ConfigError(f"{data_path}: record {number} has no {fields[required]!r} (fields.{required})")
        out.append(mapped)
    return out


def file_digest(path: Path) -> str:
    """The data file's content hash, part of the suite's fingerprint: edited data never reuses old results."""
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


@lru_cache(maxsize=None)
def plugin_records() -> dict[str, Any]:
    """Record functions installed by plugins: entry point name -> entry point (loaded when used)."""
    return {ep.name: ep for ep in entry_points(group=RECORDS_GROUP)}


def plugin_record(name: str) -> Callable[[dict], Any] | None:
    ep = plugin_records().get(name)
    if ep is None:
        return None
    try:
        return ep.load()
    except Exception as exc:  # a broken plugin names itself, not a traceback from deep in importlib
        raise ConfigError(f"record {name!r} (entry point {ep.value} in group {RECORDS_GROUP}) cannot be loaded: "
                          f"{exc.__class__.__name__}: {exc}") from None
