"""Load YAML into pydantic models with errors that name the file, the key and the fix."""

from __future__ import annotations

from pathlib import Path
from typing import TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from hardware.errors import ConfigError
from hardware.redact import MARK, is_secret_name

M = TypeVar("M", bound=BaseModel)


def load_yaml_model(path: Path, model: type[M]) -> M:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found; create it or point the setting at an existing file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot be read ({exc.__class__.__name__}); check its permissions and encoding") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"{path}: invalid YAML{where}: {getattr(exc, 'problem', exc)}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, found {type(data).__name__}")
    return validate_model(data, model, source=str(path))


def validate_model(data: object, model: type[M], *, source: str) -> M:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"{source}: " + describe_validation_error(exc)) from None


def describe_validation_error(exc: ValidationError) -> str:
    """One line per problem: `key.path: what is wrong (got ...)`. A secret-bearing value (sha256, api_key_env,
    anything named key, secret or token) is never shown: a raw key pasted into one must not reach a log."""
    lines = []
    for err in exc.errors(include_url=False):
        key = ".".join(str(p) for p in err["loc"]) or "(top level)"
        message = err["msg"]
        if err["type"] == "extra_forbidden":
            message = "unknown key; remove it or check its spelling"
        names = [p for p in err["loc"] if isinstance(p, str)]
        secret = bool(names) and is_secret_name(names[-1])
        shown = MARK if secret else repr(_without_secrets(err.get("input")))
        if len(shown) > 80:
            shown = shown[:77] + "..."
        lines.append(f"{key}: {message} (got {shown})")
    return "; ".join(lines)


def _without_secrets(value: object) -> object:
    """A mapping shown in an error (a whole entry that is wrong) with its secret-named values hidden."""
    if isinstance(value, dict):
        return {k: MARK if isinstance(k, str) and is_secret_name(k) else _without_secrets(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_without_secrets(v) for v in value]
    return value
