"""The reference tables in docs/ come from the code: `make docs` writes them, `--check` fails when docs and code differ.

A block between `<!-- generated: KIND NAME -->` and `<!-- end generated -->` is rewritten from:
- `cli <command>`: a `tier-runner` command, found through the `tier_runner.commands` entry points;
- `config <Model>`: a configuration model, found by walking the pydantic models of the routing table, the
  profile, each registered runner's `Options`, the server settings and the keys file;
- `schema <table>`: a ledger table;
- `request <METHOD> <path>`: the JSON body of a route of the app, from its OpenAPI document;
- `layout <folder> ...`: each module of those folders and the first paragraph of its docstring.
`--check` (tests/test_docs.py, so `make test`) also fails when a command, model, table or body has no block, and
runs scripts/docs_truth.py over the hand-written rest.
"""

from __future__ import annotations

import inspect
import re
import sys
import tempfile
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
from pydantic import BaseModel

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "scripts")]

import docs_truth  # noqa: E402
from docs_tables import anchor, render_cli, render_config, render_layout, render_request, render_schema  # noqa: E402

PACKAGES = ("hardware", "runners", "tiers", "evals")
BLOCK = re.compile(r"(<!-- generated: (?P<kind>cli|config|schema|request|layout) (?P<name>[^>]+?) -->\n)(?P<body>.*?)"
                   r"(<!-- end generated -->)", re.S)


def doc_files(root: Path = REPO) -> list[Path]:
    return [root / "README.md", *sorted((root / "docs").glob("*.md"))]


# -- what the code offers -------------------------------------------------------------------------


def commands() -> dict[str, click.Command]:
    """Every `tier-runner` command and subcommand by its path ("serve", "models convert"), as the CLI finds them."""
    from tiers.cli import cli

    found: dict[str, click.Command] = {}

    def walk(group: click.Group, prefix: str) -> None:
        ctx = click.Context(group)
        for name in group.list_commands(ctx):
            command = group.get_command(ctx, name)
            found[f"{prefix}{name}"] = command
            if isinstance(command, click.Group):
                walk(command, f"{prefix}{name} ")

    walk(cli, "")
    return found


def config_models() -> dict[str, type[BaseModel]]:
    """Every pydantic model a user writes in YAML or passes as a setting, by class name."""
    import runners.builtin  # noqa: F401  (registers the built-in runners)
    from hardware.profile import Profile
    from runners.base import RUNNERS
    from tiers.auth import KeysFile
    from tiers.routing import RoutingTable
    from tiers.settings import Settings

    found: dict[str, type[BaseModel]] = {}

    def visit(annotation: Any) -> None:
        if not (inspect.isclass(annotation) and issubclass(annotation, BaseModel)):
            for arg in typing.get_args(annotation):
                visit(arg)
            return
        seen = found.get(annotation.__name__)
        if seen is not None and seen is not annotation:
            raise SystemExit(f"two configuration models are called {annotation.__name__} ({seen.__module__} and "
                             f"{annotation.__module__}); rename one, the docs name them by class")
        if seen is None:
            found[annotation.__name__] = annotation
            for info in annotation.model_fields.values():
                visit(info.annotation)

    from tiers.embedding_models import BACKENDS

    embedding_options = [BACKENDS[kind].Options for kind in ("vllm", "hosted")]  # minilm and llamacpp take none
    # Only the product's runners: a test may register its own (tests/test_live_config.py) in the same process.
    product = [RUNNERS[kind] for kind in sorted(RUNNERS) if RUNNERS[kind].__module__.split(".")[0] in PACKAGES]
    for root in (RoutingTable, Profile, *(runner.Options for runner in product), *embedding_options,
                 Settings, KeysFile):
        visit(root)
    return found


def ledger_tables() -> dict[str, Any]:
    from tiers.ledger.schema import metadata

    return dict(metadata.tables)


def build_app():
    """The app `create_app` builds on the cpu-tier3 profile; building starts no runner."""
    from tiers.server import create_app
    from tiers.settings import Settings

    with tempfile.TemporaryDirectory() as data_dir:
        app = create_app(Settings(profile="cpu-tier3", data_dir=Path(data_dir)))
        app.state.ledger.close()
    return app


def app_routes(app) -> set[str]:
    """`METHOD /path` of every route of the app (`{model_id:path}` documented as `{model_id}`)."""
    try:  # FastAPI >= 0.13x includes routers lazily; this walks them, prefixes applied
        from fastapi.routing import iter_route_contexts

        routes = list(iter_route_contexts(app.routes))
    except ImportError:
        routes = app.routes
    found: set[str] = set()
    for route in routes:
        methods = set(route.methods or ())
        if "GET" in methods:
            methods.discard("HEAD")
        path = re.sub(r"\{(\w+):\w+\}", r"{\1}", route.path)
        found.update(f"{method} {path}" for method in methods)
    return found


def request_bodies(app) -> dict[str, tuple[dict, dict]]:
    """`METHOD /path` -> (JSON schema of its JSON body, the OpenAPI components it refers to)."""
    document = app.openapi()
    schemas = document.get("components", {}).get("schemas", {})
    found = {}
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            body = operation.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema")
            if body is not None:
                found[f"{method.upper()} {path}"] = (body, schemas)
    return found


# -- the blocks -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Code:
    """What the docs are generated from and checked against; tests build a doctored one to see the check fail."""

    commands: dict[str, click.Command]
    models: dict[str, type[BaseModel]]
    tables: dict[str, Any]
    routes: set[str]
    bodies: dict[str, tuple[dict, dict]]

    @classmethod
    def load(cls) -> Code:
        app = build_app()
        return cls(commands(), config_models(), ledger_tables(), app_routes(app), request_bodies(app))


@dataclass(frozen=True)
class Block:
    page: Path
    kind: str
    name: str


def blocks(texts: dict[Path, str]) -> list[Block]:
    return [Block(page, m["kind"], m["name"].strip()) for page, text in texts.items() for m in BLOCK.finditer(text)]


def render(texts: dict[Path, str], code: Code, root: Path = REPO) -> tuple[dict[Path, str], list[str]]:
    """Each page with its blocks regenerated, and the blocks that name nothing or are there twice."""
    found = blocks(texts)
    problems = [f"{b.page.name}: `{b.kind} {b.name}` is generated more than once"
                for b in set(found) if sum((c.kind, c.name) == (b.kind, b.name) for c in found) > 1]
    out = {}
    for page, text in texts.items():
        links = {b.name: (f"#{anchor(b.name)}" if b.page == page else f"{b.page.name}#{anchor(b.name)}")
                 for b in found if b.kind == "config"}

        def replace(m: re.Match) -> str:
            kind, name = m["kind"], m["name"].strip()
            source = {"cli": code.commands, "config": code.models, "schema": code.tables,
                      "request": code.bodies}.get(kind)
            if source is not None and name not in source:
                problems.append(f"{page.name}: the code has no {kind} `{name}`; remove its block")
                return m[0]
            body = {"cli": lambda: render_cli(name, code.commands[name]),
                    "config": lambda: render_config(code.models[name], links),
                    "schema": lambda: render_schema(code.tables[name]),
                    "request": lambda: render_request(*code.bodies[name]),
                    "layout": lambda: render_layout(name, root)}[kind]()
            return m[1] + body + m[5]

        out[page] = BLOCK.sub(replace, text)
    return out, problems


def undocumented(texts: dict[Path, str], code: Code) -> list[str]:
    """Commands with options or arguments, configuration models and ledger tables that no page has a block for."""
    have = {(b.kind, b.name) for b in blocks(texts)}
    wanted = [("cli", path) for path, c in code.commands.items() if [p for p in c.params if p.name != "help"]]
    wanted += [("config", name) for name in code.models] + [("schema", name) for name in code.tables]
    wanted += [("request", route) for route in code.bodies]
    return [f"{kind} `{name}` is not documented: put `<!-- generated: {kind} {name} -->` and "
            "`<!-- end generated -->` on the docs page it belongs to, then run `make docs`"
            for kind, name in wanted if (kind, name) not in have]


def check(root: Path = REPO, code: Code | None = None) -> list[str]:
    code = code or Code.load()
    routes = code.routes
    texts = {p: p.read_text(encoding="utf-8") for p in doc_files(root)}
    rendered, problems = render(texts, code, root)
    problems += [f"{p.relative_to(root)}: a generated table is out of date; run `make docs`"
                 for p in texts if rendered[p] != texts[p]]
    problems += undocumented(texts, code)
    problems += docs_truth.endpoint_problems(texts.get(root / "docs" / "endpoints.md", ""), routes)
    corpus = docs_truth.code_corpus(root)
    for page, text in texts.items():
        name = str(page.relative_to(root))
        problems += docs_truth.reference_problems(name, text, code.commands, routes, corpus, root)
        problems += docs_truth.example_problems(name, text)
        problems += docs_truth.link_problems(name, page, text)
        problems += docs_truth.path_problems(name, text, root)
    return problems


def write(root: Path = REPO) -> list[str]:
    code = Code.load()
    texts = {p: p.read_text(encoding="utf-8") for p in doc_files(root)}
    rendered, problems = render(texts, code, root)
    for page, text in rendered.items():
        if text != texts[page]:
            page.write_text(text, encoding="utf-8")
            print(f"rewrote {page.relative_to(root)}", file=sys.stderr)
    return problems + undocumented(rendered, code)


def main(argv: list[str]) -> int:
    problems = check() if "--check" in argv else write()
    for line in problems:
        print(line, file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
