"""Edits of the routing table YAML that keep its comments: a feature's gate keys (`calibrate`) or its tier
(`recommend --apply`). The old file is kept as `<file>.bak`, as `promote` keeps the profile's.

The edit touches only the lines of the keys it changes. A feature written in flow style on one line
(`name: {tier: 2, ...}`), or a gate written that way, is rewritten as one flow line (comments inside it
are not kept; the .bak has them). The result is loaded and checked before it stays: a table that no longer
validates, or that does not say what was written, is put back and the error says why.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

import yaml

from hardware.errors import ConfigError
from tiers.routing import RoutingTable, load_routing


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def _is_content(line: str) -> bool:
    return bool(line.strip()) and not line.strip().startswith("#")


def _extent(lines: list[str], start: int) -> int:
    """End (exclusive) of the entry whose key is on line `start`: the lines indented deeper, without the blank and
    comment lines that trail it."""
    indent, end, i = _indent(lines[start]), start + 1, start + 1
    while i < len(lines):
        if _is_content(lines[i]):
            if _indent(lines[i]) <= indent:
                break
            end = i + 1
        i += 1
    return end


def _find_key(lines: list[str], start: int, end: int, key: str, indent: int | None = None) -> int | None:
    pattern = re.compile(rf"^(\s*)['\"]?{re.escape(key)}['\"]?\s*:(\s|$)")
    for i in range(start, end):
        match = pattern.match(lines[i])
        if match and _is_content(lines[i]) and (indent is None or len(match.group(1)) == indent):
            return i
    return None


def _child_indent(lines: list[str], start: int, end: int, default: int) -> int:
    return next((_indent(lines[i]) for i in range(start + 1, end) if _is_content(lines[i])), default)


def _flow(value: Any) -> str:
    return yaml.safe_dump(value, default_flow_style=True, width=10**9, sort_keys=False).strip().removesuffix("\n...")


def _inline(line: str) -> str:
    """What follows `key:` on its line, without a trailing comment."""
    rest = line.split(":", 1)[1]
    return re.sub(r"\s+#.*$", "", rest).strip()


def _parse_entry(lines: list[str], start: int, end: int) -> tuple[str, Any]:
    base = _indent(lines[start])
    data = yaml.safe_load("".join(line[base:] if _is_content(line) else "\n" for line in lines[start:end]))
    (key, value), = data.items()
    return key, value


def _replace_flow(lines: list[str], start: int, end: int, update) -> None:
    """An entry written in flow style, parsed, changed by `update(value)` and written back as one line."""
    key, value = _parse_entry(lines, start, end)
    value = update(dict(value or {}))
    comment = re.search(r"\s+#[^'\"{}\[\]]*$", lines[end - 1].rstrip("\n"))
    lines[start:end] = [f"{' ' * _indent(lines[start])}{lines[start].strip().split(':', 1)[0]}: {_flow(value)}"
                        f"{comment.group(0) if comment else ''}\n"]


def _feature_span(lines: list[str], feature: str) -> tuple[int, int]:
    top = _find_key(lines, 0, len(lines), "features", 0)
    if top is None:
        raise ConfigError("the routing table has no top-level `features:` key to edit")
    end = _extent(lines, top)
    at = _find_key(lines, top + 1, end, feature, _child_indent(lines, top, end, 2))
    if at is None:
        raise ConfigError(f"feature {feature!r} is not in the routing table's features")
    return at, _extent(lines, at)


def _merge_gate(gate: dict, updates: dict[str, Any]) -> dict:
    for key, value in updates.items():
        if value is None:
            gate.pop(key, None)
        else:
            gate[key] = value
    return gate


def _edit_gate(lines: list[str], feature: str, updates: dict[str, Any]) -> None:
    start, end = _feature_span(lines, feature)
    if _inline(lines[start]):
        return _replace_flow(lines, start, end, lambda spec: {**spec, "gate": _merge_gate(dict(spec.get("gate") or {}),
                                                                                           updates)})
    child = _child_indent(lines, start, end, _indent(lines[start]) + 2)
    at = _find_key(lines, start + 1, end, "gate", child)
    if at is None:
        lines.insert(end, f"{' ' * child}gate: {_flow(_merge_gate({}, updates))}\n")
        return
    gate_end = _extent(lines, at)
    if _inline(lines[at]):
        return _replace_flow(lines, at, gate_end, lambda gate: _merge_gate(gate, updates))
    inner = _child_indent(lines, at, gate_end, child + 2)
    for key, value in updates.items():
        found = _find_key(lines, at + 1, gate_end, key, inner)
        new = [] if value is None else [f"{' ' * inner}{key}: {_flow(value)}\n"]
        if found is None:
            lines[gate_end:gate_end] = new
        else:
            lines[found:_extent(lines, found)] = new
        gate_end = _extent(lines, at)


def _edit_tier(lines: list[str], feature: str, tier: int) -> None:
    start, end = _feature_span(lines, feature)
    if _inline(lines[start]):
        return _replace_flow(lines, start, end, lambda spec: {**spec, "tier": tier})
    at = _find_key(lines, start + 1, end, "tier", _child_indent(lines, start, end, _indent(lines[start]) + 2))
    if at is None:
        raise ConfigError(f"feature {feature!r} has no `tier:` line to change")
    lines[at] = re.sub(r"^(\s*tier\s*:\s*)[^#\s]+", rf"\g<1>{tier}", lines[at])


def _write(path: Path, edit, check) -> Path:
    """Back up, edit the lines, load the result and check it; on any failure put the old file back."""
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    backup = path.with_name(path.name + ".bak")
    shutil.copy2(path, backup)
    lines = text.splitlines(keepends=True)
    if lines and not lines[-1].endswith("\n"):
        lines[-1] += "\n"
    try:
        edit(lines)
        path.write_text("".join(lines), encoding="utf-8")
        problem = check(load_routing(path))
        if problem:
            raise ConfigError(f"{path}: {problem} after the edit; the file is unchanged, edit it by hand")
    except (ConfigError, yaml.YAMLError, ValueError) as exc:
        shutil.copy2(backup, path)
        raise ConfigError(f"{path}: the edit was not kept ({exc}); the file is as it was") from None
    return backup


def write_gate(path: Path, feature: str, updates: dict[str, Any]) -> Path:
    """Set (or, with None, remove) keys of a feature's gate; returns the backup's path."""

    def check(table: RoutingTable) -> str | None:
        gate = table.features[feature].gate
        got = gate.model_dump(exclude_none=True) if gate else {}
        for key, value in updates.items():
            if got.get(key) != value:
                return f"features.{feature}.gate.{key} reads {got.get(key)!r}, not {value!r}"
        return None

    return _write(path, lambda lines: _edit_gate(lines, feature, updates), check)


def write_tier(path: Path, feature: str, tier: int) -> Path:
    """Move a feature to another tier; returns the backup's path."""

    def check(table: RoutingTable) -> str | None:
        got = table.features[feature].tier
        return None if got == tier else f"features.{feature}.tier reads {got}, not {tier}"

    return _write(path, lambda lines: _edit_tier(lines, feature, tier), check)
