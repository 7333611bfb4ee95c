"""Checks that what the README and docs/ quote exists in the code: routes, options, variables, examples, links.

The generated tables (scripts/docs_reference.py) cannot drift; this covers the hand-written rest. Each
function takes the docs' text and what the code offers, and returns problems as sentences that say what
to fix, so tests/test_docs.py can also feed it a doctored command or table and watch it fail.
"""

from __future__ import annotations

import re
from pathlib import Path

import click
import yaml

# Flags of other programs that the docs quote on their own; every other `--flag` must be an option of a
# tier-runner command, or follow a program below, or a script of this repository that reads it.
FOREIGN_OPTIONS = {"--no-deps": "pip", "--enforce-eager": "vLLM's server",
                   "--interrupt_requests": "llama-cpp-python's server", "--jinja": "llama.cpp's server",
                   "--enable-auto-tool-choice": "vLLM's server", "--tool-call-parser": "vLLM's server",
                   "--cache-ram": "llama.cpp's server", "--cache-idle-slots": "llama.cpp's server"}
FOREIGN_PROGRAMS = ("llama-server", "litellm", "pip", "cmake", "vllm")
METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")

ENDPOINT_TABLE = re.compile(r"<!-- checked: endpoints -->\n(?P<table>.*?)<!-- end checked -->", re.S)
ROUTE_MENTION = re.compile(r"\b(?P<method>" + "|".join(METHODS) + r") (?P<path>/[^\s`?)\]]*)")
LOCAL_URL = re.compile(r"http://127\.0\.0\.1:8080(?P<path>/[^\s'\"`)?]*)")
CODE_SPAN = re.compile(r"`([^`\n]+)`")
FENCE = re.compile(r"^```[^\n]*\n(.*?)^```", re.S | re.M)
COMMAND_LINE = re.compile(r"(?:^|[\s/(])tier-runner((?: +[a-z][a-z-]*)+)[^`\n|;&]*")
SCRIPT_LINE = re.compile(r"\b(?P<script>(?:benchmarks|scripts)/[\w.-]+\.(?:py|sh))[^`\n|;&]*")
PROGRAM_LINE = re.compile(r"(?:^|[\s(])(?:" + "|".join(FOREIGN_PROGRAMS) + r")\b[^`\n|;&]*")
FLAG = re.compile(r"(?<![\w-])(--[a-z][a-z0-9_-]*)")
ENV = re.compile(r"\bTIER_RUNNER_[A-Z_]*[A-Z]\b")
VALIDATE = re.compile(r"<!-- validate: (?P<what>[a-z-]+) -->\n```yaml\n(?P<yaml>.*?)```", re.S)
LINK = re.compile(r"\]\((?!https?://|#|mailto:)(?P<target>[^)#\s]+)(?:#[^)]*)?\)")


def endpoint_rows(text: str) -> list[str]:
    """`METHOD /path` named in the first cell of each row of the checked endpoint table."""
    m = ENDPOINT_TABLE.search(text)
    if m is None:
        return []
    rows = []
    for line in m["table"].splitlines():
        if line.startswith("|") and not line.startswith("|---"):
            rows += [f"{r['method']} {r['path']}" for r in ROUTE_MENTION.finditer(line.split("|")[1])]
    return rows


def endpoint_problems(text: str, routes: set[str]) -> list[str]:
    rows = endpoint_rows(text)
    if not rows:
        return ["docs/endpoints.md has no `<!-- checked: endpoints -->` table"]
    problems = [f"docs/endpoints.md lists `{r}`, which the app does not serve; remove its row"
                for r in rows if r not in routes]
    problems += [f"docs/endpoints.md lists `{r}` twice" for r in sorted({r for r in rows if rows.count(r) > 1})]
    problems += [f"the app serves `{r}`, which docs/endpoints.md does not list; add a row to its endpoint table"
                 for r in sorted(routes - set(rows))]
    return problems


def _path_pattern(path: str) -> re.Pattern:
    """`/admin/cache/{request_id}` also matches a quoted `/admin/cache/<request_id>`."""
    return re.compile(re.sub(r"\\\{[^}]+\\\}", r"[^/]+", re.escape(path)) + "/?")


def code_snippets(text: str) -> list[str]:
    """Fenced blocks (continued lines joined) and inline code spans: where commands and routes are quoted."""
    fenced = [body.replace("\\\n", " ") for body in FENCE.findall(text)]
    return [*fenced, *CODE_SPAN.findall(FENCE.sub("", text))]


def _options(command: click.Command) -> set[str]:
    return {o for p in command.params if isinstance(p, click.Option) for o in (*p.opts, *p.secondary_opts)}


def _command_problems(name: str, line: str, cmds: dict[str, click.Command], used: set[str]) -> list[str]:
    problems = []
    for m in COMMAND_LINE.finditer(line):
        path = ""
        for word in m[1].split():  # the longest command path the words spell
            if f"{path}{word}" not in cmds:
                break
            path = f"{path}{word} "
        path = path.strip()
        if not path:
            problems.append(f"{name}: `tier-runner {m[1].split()[0]}` is not a command")
            continue
        for flag in FLAG.findall(m[0]):
            used.add(flag)
            if flag not in _options(cmds[path]) and flag != "--help":
                problems.append(f"{name}: `tier-runner {path}` has no option {flag}")
    return problems


def _script_problems(name: str, line: str, root: Path, used: set[str]) -> list[str]:
    """A flag after `benchmarks/x.py` or `scripts/y.py` must be one that script spells out."""
    problems = []
    for m in SCRIPT_LINE.finditer(line):
        script = root / m["script"]
        source = script.read_text(encoding="utf-8") if script.is_file() else ""
        if not source:
            problems.append(f"{name}: {m['script']} does not exist")
        for flag in FLAG.findall(m[0]):
            used.add(flag)
            if source and f'"{flag}"' not in source and f"'{flag}'" not in source:
                problems.append(f"{name}: {m['script']} has no option {flag}")
    return problems


def script_flags(root: Path) -> set[str]:
    """Options the scripts under benchmarks/ and scripts/ spell out as string literals."""
    found = set()
    for folder in ("benchmarks", "scripts"):
        for script in (root / folder).glob("*.py"):
            found.update(re.findall(r"""["'](--[a-z][a-z0-9_-]*)["']""", script.read_text(encoding="utf-8")))
    return found


def reference_problems(name: str, text: str, cmds: dict[str, click.Command], routes: set[str],
                       code_text: str, root: Path) -> list[str]:
    """Options, routes, local URLs and TIER_RUNNER_ variables a page quotes that the code does not have."""
    problems = []
    every_flag = {o for c in cmds.values() for o in _options(c)} | script_flags(root)
    served = [(r.split(" ", 1)[0], r.split(" ", 1)[1]) for r in sorted(routes)]
    patterns = [(method, _path_pattern(path), path) for method, path in served]
    for snippet in code_snippets(text):
        used: set[str] = set()
        for line in snippet.splitlines():
            problems += _command_problems(name, line, cmds, used)
            problems += _script_problems(name, line, root, used)
            for m in PROGRAM_LINE.finditer(line):
                used.update(FLAG.findall(m[0]))
        for flag in sorted(set(FLAG.findall(snippet)) - used):
            if flag not in every_flag and flag not in FOREIGN_OPTIONS and flag != "--help":
                problems.append(f"{name}: `{flag}` is not an option of any tier-runner command or script here (if "
                                "it belongs to another program, add it to FOREIGN_OPTIONS in scripts/docs_truth.py)")
        for m in ROUTE_MENTION.finditer(snippet):
            if not any(method == m["method"] and pattern.fullmatch(m["path"]) for method, pattern, _ in patterns):
                problems.append(f"{name}: `{m['method']} {m['path']}` is not a route of the app")
        for m in LOCAL_URL.finditer(snippet):
            path = m["path"].rstrip("/")
            if not any(pattern.fullmatch(path) or route.startswith(path + "/") for _, pattern, route in patterns):
                problems.append(f"{name}: the app serves nothing at {m['path']}")
    for var in sorted(set(ENV.findall(text))):
        if var not in code_text:
            problems.append(f"{name}: {var} is not read anywhere in the code")
    return problems


def code_corpus(root: Path) -> str:
    """The source that may read an environment variable: the packages, tests, scripts and the Makefile."""
    parts = [(root / "Makefile").read_text(encoding="utf-8")]
    for folder in ("tiers", "runners", "hardware", "evals", "tests", "scripts", "benchmarks"):
        parts += [p.read_text(encoding="utf-8") for p in sorted((root / folder).rglob("*.py"))]
        parts += [p.read_text(encoding="utf-8") for p in sorted((root / folder).rglob("*.sh"))]
    return "\n".join(parts)


def example_problems(name: str, text: str) -> list[str]:
    """YAML examples marked `<!-- validate: routing|profile|keys -->` must load as what they claim to be."""
    import runners.builtin  # noqa: F401  (registers the built-in runners)
    from hardware.profile import Profile
    from runners.base import RUNNERS
    from tiers.auth import KeysFile
    from tiers.routing import RoutingTable

    kinds = {"routing": RoutingTable, "profile": Profile, "keys": KeysFile}
    problems = []
    for m in VALIDATE.finditer(text):
        line = text[:m.start()].count("\n") + 1
        if m["what"] not in kinds:
            problems.append(f"{name}:{line}: unknown example kind {m['what']!r}; use one of {', '.join(kinds)}")
            continue
        try:
            value = kinds[m["what"]].model_validate(yaml.safe_load(m["yaml"]))
            for placement in getattr(value, "tiers", {}).values():
                if placement.runner not in RUNNERS:
                    raise ValueError(f"unknown runner {placement.runner!r}")
                RUNNERS[placement.runner].Options.model_validate(placement.options)
        except Exception as exc:  # noqa: BLE001  (whatever fails is the example's problem, reported with its line)
            problems.append(f"{name}:{line}: the {m['what']} example does not load: {' '.join(str(exc).split())[:400]}")
    return problems


REPO_PATH = re.compile(r"^(?P<path>[\w.-]+/[\w./-]+\.(?:py|sh|yaml|md|toml|json))$")


def path_problems(name: str, text: str, root: Path) -> list[str]:
    """A quoted file path under one of the repository's folders (`tiers/chat.py`) must exist."""
    problems = []
    for span in sorted(set(CODE_SPAN.findall(text))):
        m = REPO_PATH.match(span)
        if m and (root / m["path"].split("/")[0]).is_dir() and not (root / m["path"]).exists():
            problems.append(f"{name}: `{m['path']}` does not exist")
    return problems


def link_problems(name: str, page: Path, text: str) -> list[str]:
    return [f"{name}: links to {m['target']}, which does not exist"
            for m in LINK.finditer(text) if not (page.parent / m["target"]).exists()]
