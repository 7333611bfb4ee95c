"""Markdown tables from code: a click command's options, a pydantic model's keys, a ledger table, a folder's modules.

Pure functions from an object to Markdown; scripts/docs_reference.py decides where each table goes.
"""

from __future__ import annotations

import ast
import inspect
import json
import types
import typing
from pathlib import Path
from typing import Any, Literal

import click
from pydantic import BaseModel
from pydantic.fields import FieldInfo

REPO = Path(__file__).resolve().parent.parent


def _cell(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def _first_paragraph(doc: str | None) -> str:
    return _cell((doc or "").strip().split("\n\n")[0])


def _value(value: Any) -> str:
    """A default as the user writes it in YAML or on the command line."""
    if isinstance(value, BaseModel):
        return "its own defaults"
    if isinstance(value, Path):
        return f"`{value.relative_to(REPO) if value.is_absolute() and value.is_relative_to(REPO) else value}`"
    if isinstance(value, (dict, list, tuple, bool)) or value is None:
        return f"`{json.dumps(value, default=str)}`"
    return '`""`' if value == "" else f"`{value}`"


def _type(annotation: Any, links: dict[str, str]) -> str:
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if annotation is type(None):
        return "null"
    if origin is Literal:
        return " \\| ".join(json.dumps(a) if isinstance(a, str) else str(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        return " \\| ".join(_type(a, links) for a in args)
    if origin in (list, tuple, set):
        return f"list of {_type(args[0], links)}" if args else "list"
    if origin is dict:
        return f"map of {_type(args[0], links)} to {_type(args[1], links)}" if args else "map"
    if inspect.isclass(annotation) and issubclass(annotation, BaseModel):
        name = annotation.__name__
        return f"[{name}]({links[name]})" if name in links else name
    names = {str: "string", int: "integer", float: "number", bool: "boolean", Path: "path", Any: "any"}
    return names.get(annotation, getattr(annotation, "__name__", str(annotation)))


def _bounds(info: FieldInfo) -> str:
    words = []
    for item in info.metadata:
        for attr, sign in (("ge", "≥"), ("gt", ">"), ("le", "≤"), ("lt", "<"), ("min_length", "at least"),
                           ("max_length", "at most"), ("pattern", "matching")):
            bound = getattr(item, attr, None)
            if bound is not None:
                words.append(f"{sign} `{bound}`" if attr == "pattern" else f"{sign} {bound}")
    return f", {', '.join(words)}" if words else ""


def _default(info: FieldInfo) -> str:
    if info.is_required():
        return "required"
    return _value(info.default_factory() if info.default_factory is not None else info.default)


def anchor(name: str) -> str:
    return f"config-{name.lower()}"


def render_config(model: type[BaseModel], links: dict[str, str]) -> str:
    doc = _first_paragraph(model.__dict__.get("__doc__"))
    rule = {"forbid": "Any other key is an error.", "allow": "Other keys are accepted too."}.get(
        model.model_config.get("extra"), "")
    head = " ".join(part for part in (f"{doc}" if doc else "", rule) if part)
    lines = [f'<a id="{anchor(model.__name__)}"></a>**`{model.__name__}`**' + (f": {head}" if head else ""), "",
             "| key | type | default | what |", "|---|---|---|---|"]
    for name, info in model.model_fields.items():
        lines.append(f"| `{info.alias or name}` | {_type(info.annotation, links)}{_bounds(info)} | {_default(info)} "
                     f"| {_cell(info.description or '')} |")
    return "\n".join(lines) + "\n"


def _param_type(param: click.Parameter) -> str:
    if isinstance(param, click.Option) and param.is_flag:
        return "flag"
    if isinstance(param.type, click.Choice):
        text = " \\| ".join(f"`{c}`" for c in param.type.choices)
    else:
        text = {"float": "number"}.get(param.type.name, param.type.name)
    return text + (", repeatable" if param.multiple else "")


def _param_default(param: click.Parameter, ctx: click.Context) -> str:
    if param.required:
        return "required"
    default = param.get_default(ctx, call=True)
    if type(default).__name__ == "Sentinel":  # click's "no default" marker
        default = None
    if isinstance(param, click.Option) and param.is_flag:
        return "on" if default else "off"
    return "" if default in (None, ()) else _value(default)


def render_cli(path: str, command: click.Command) -> str:
    ctx = click.Context(command, info_name=f"tier-runner {path}")
    usage = " ".join(command.collect_usage_pieces(ctx))
    lines = [f"`tier-runner {path} {usage}`: {_first_paragraph(command.help)}", ""]
    params = [p for p in command.params if p.name != "help"]
    if params:
        lines += ["| option | type | default | environment | what |", "|---|---|---|---|---|"]
    for p in params:
        names = ", ".join(f"`{o}`" for o in (*p.opts, *p.secondary_opts)) if isinstance(p, click.Option) \
            else f"`{p.human_readable_name}` (argument)"
        env = p.envvar if isinstance(p.envvar, str) else ", ".join(p.envvar or ())
        lines.append(f"| {names} | {_param_type(p)} | {_param_default(p, ctx)} | {f'`{env}`' if env else ''} | "
                     f"{_cell(getattr(p, 'help', None) or '')} |")
    return "\n".join(lines) + "\n"


def render_schema(table: Any) -> str:
    lines = [f"**`{table.name}`**", "", "| column | type | null | key |", "|---|---|---|---|"]
    for column in table.columns:
        key = "primary" if column.primary_key else "indexed" if column.index else ""
        lines.append(f"| `{column.name}` | {column.type} | {'yes' if column.nullable else 'no'} | {key} |")
    return "\n".join(lines) + "\n"


def _module_line(path: Path) -> str:
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".py":
        doc = ast.get_docstring(ast.parse(text)) or ""
    else:  # a shell script: its comment block after the shebang
        comments = []
        for line in text.splitlines()[1:]:
            if not line.startswith("#") or not line[1:].strip():
                break
            comments.append(line[1:].strip())
        doc = "\n".join(comments)
    return _first_paragraph(doc)


def render_layout(folders: str, root: Path = REPO) -> str:
    lines = ["| file | what it is for |", "|---|---|"]
    for folder in folders.split():
        for path in sorted((root / folder).rglob("*")):
            if path.suffix in (".py", ".sh") and "__pycache__" not in path.parts and path.name != "__init__.py":
                lines.append(f"| `{path.relative_to(root)}` | {_module_line(path)} |")
    return "\n".join(lines) + "\n"


def _schema_type(schema: dict) -> str:
    """A JSON schema as a short type: `string \\| null`, `list of ChatMessage`, `"none" \\| "auto"`."""
    if "$ref" in schema:
        return schema["$ref"].rsplit("/", 1)[1]
    if "enum" in schema:
        return " \\| ".join(json.dumps(v) for v in schema["enum"])
    if "const" in schema:
        return json.dumps(schema["const"])
    for key in ("anyOf", "oneOf"):
        if key in schema:
            return " \\| ".join(_schema_type(s) for s in schema[key])
    kind = schema.get("type")
    if kind == "array":
        return f"list of {_schema_type(schema.get('items', {}))}"
    if kind == "object":
        return "object"
    return kind or "any"


def _schema_bounds(schema: dict) -> str:
    words = []
    for part in [schema, *schema.get("anyOf", [])]:
        for key, sign in (("minimum", "≥"), ("exclusiveMinimum", ">"), ("maximum", "≤"), ("exclusiveMaximum", "<"),
                          ("minLength", "at least"), ("maxLength", "at most"), ("minItems", "at least"),
                          ("maxItems", "at most")):
            if key in part:
                value = part[key]
                words.append(f"{sign} {int(value) if float(value).is_integer() else value}")
    return f", {', '.join(words)}" if words else ""


def render_request(body: dict, schemas: dict) -> str:
    """The fields of a route's JSON body; nested objects are named by their schema."""
    name = body["$ref"].rsplit("/", 1)[1] if "$ref" in body else ""
    schema = schemas.get(name, body)
    required = set(schema.get("required", []))
    lines = [f"Body: `{name}`" + (f": {_first_paragraph(schema.get('description'))}" if schema.get("description") else ""),
             "", "| field | type | default | what |", "|---|---|---|---|"]
    for field, spec in schema.get("properties", {}).items():
        default = "required" if field in required else _value(spec["default"]) if "default" in spec else ""
        lines.append(f"| `{field}` | {_schema_type(spec)}{_schema_bounds(spec)} | {default} | "
                     f"{_cell(spec.get('description', ''))} |")
    return "\n".join(lines) + "\n"
