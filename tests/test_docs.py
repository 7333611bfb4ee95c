"""The README and docs/ say only what the code does: generated tables are current, every command, option,
configuration key, ledger table and route is documented, and everything the pages quote exists.

The first test checks the real docs against the real code (scripts/docs_reference.py --check, what
`make docs` fixes where it can). The others feed the same checks a doctored command, model, route or page,
so a check that could never fail would show here.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click
import pytest
from pydantic import Field, create_model

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "scripts"))

import docs_reference  # noqa: E402
import docs_truth  # noqa: E402


@pytest.fixture(scope="module")
def code():
    return docs_reference.Code.load()


@pytest.fixture(scope="module")
def routes(code):
    return code.routes


@pytest.fixture(scope="module")
def texts():
    return {p: p.read_text(encoding="utf-8") for p in docs_reference.doc_files()}


def test_docs_match_the_code(code):
    problems = docs_reference.check(code=code)
    assert not problems, "the docs and the code disagree (`make docs` rewrites the generated tables):\n" + \
        "\n".join(problems)


def test_readme_is_a_short_front_door_to_every_docs_page():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert len(readme.splitlines()) <= 150
    for page in sorted((REPO / "docs").glob("*.md")):
        assert f"](docs/{page.name})" in readme, f"the README's table of contents has no link to docs/{page.name}"
    for command in ("make serve-tiers", "make test"):
        assert command in readme


def test_the_generator_finds_what_the_code_offers(code, routes):
    assert {"serve", "audit", "eval", "promote", "hardware", "models convert", "keys new"} <= set(code.commands)
    assert {"RoutingTable", "Feature", "GateSpec", "CachePolicy", "Profile", "TierPlacement", "LlamaCppOptions",
            "VllmOptions", "HostedOptions", "Settings", "KeysFile", "ClientKey"} <= set(code.models)
    assert {"POST /v1/chat/completions", "POST /v1/feedback", "GET /ready"} <= routes
    assert "attempts" in code.tables


def _with_command(code, path: str, command: click.Command):
    return docs_reference.Code({**code.commands, path: command}, code.models, code.tables, code.routes, code.bodies)


def test_a_new_option_makes_the_check_fail_until_the_docs_are_regenerated(code, texts):
    serve = code.commands["serve"]
    doctored = click.Command(serve.name, params=[*serve.params, click.Option(["--fake-option"], help="new")],
                             callback=serve.callback, help=serve.help)
    rendered, problems = docs_reference.render(texts, _with_command(code, "serve", doctored))
    assert not problems
    operations = REPO / "docs" / "operations.md"
    assert rendered[operations] != texts[operations] and "`--fake-option`" in rendered[operations]


def test_a_new_command_or_model_without_a_docs_block_fails(code, texts):
    fake = click.Command("fake", params=[click.Option(["--level"])])
    model = create_model("FakeOptions", depth=(int, Field(default=1, description="how deep")))
    doctored = docs_reference.Code({**code.commands, "fake": fake}, {**code.models, "FakeOptions": model}, code.tables,
                                   code.routes, {**code.bodies, "POST /v1/fake": ({"type": "object"}, {})})
    problems = docs_reference.undocumented(texts, doctored)
    assert any("cli `fake`" in p for p in problems) and any("config `FakeOptions`" in p for p in problems)
    assert any("request `POST /v1/fake`" in p for p in problems)


def test_a_new_config_key_changes_its_generated_table(code, texts):
    settings = code.models["Settings"]
    grown = create_model("Settings", __base__=settings, fake_key=(int, Field(default=3, description="new key")))
    doctored = docs_reference.Code(code.commands, {**code.models, "Settings": grown}, code.tables, code.routes,
                                   code.bodies)
    rendered, _ = docs_reference.render(texts, doctored)
    operations = REPO / "docs" / "operations.md"
    assert "| `fake_key` | integer | `3` | new key |" in rendered[operations]


def test_a_block_for_something_that_does_not_exist_fails(code):
    page = REPO / "docs" / "x.md"
    text = "<!-- generated: cli no-such-command -->\n<!-- end generated -->\n" \
           "<!-- generated: config NoSuchModel -->\n<!-- end generated -->\n"
    _, problems = docs_reference.render({page: text}, code)
    assert len(problems) == 2


def test_a_route_missing_from_the_endpoint_table_or_a_row_for_none_fails(routes, texts):
    table = texts[REPO / "docs" / "endpoints.md"]
    assert not docs_truth.endpoint_problems(table, routes)
    added = docs_truth.endpoint_problems(table, routes | {"POST /v1/fake"})
    assert added == ["the app serves `POST /v1/fake`, which docs/endpoints.md does not list; "
                     "add a row to its endpoint table"]
    row = next(line for line in table.splitlines() if line.startswith("| `POST /v1/feedback`"))
    assert any("POST /v1/feedback" in p for p in docs_truth.endpoint_problems(table.replace(row + "\n", ""), routes))
    assert any("GET /health" in p for p in docs_truth.endpoint_problems(table, routes - {"GET /health"}))


def test_quoted_options_routes_urls_and_variables_must_exist(code, routes):
    page = (
        "Run `tier-runner serve --port 1 --no-such-flag` or `tier-runner nosuch`, then `--made-up`;\n"
        "call `POST /v1/nowhere`, `DELETE /admin/cache/<request_id>` and `GET /v1/models`,\n"
        "export `TIER_RUNNER_NOT_A_VARIABLE`.\n"
        "```sh\ntier-runner audit \\\n  --window-hours 24 --bogus\ncurl http://127.0.0.1:8080/v1/missing\n```\n"
    )
    problems = docs_truth.reference_problems("page.md", page, code.commands, routes, "TIER_RUNNER_PORT", REPO)
    assert sorted(problems) == sorted([
        "page.md: `tier-runner serve` has no option --no-such-flag",
        "page.md: `tier-runner nosuch` is not a command",
        "page.md: `--made-up` is not an option of any tier-runner command or script here (if it belongs to "
        "another program, add it to FOREIGN_OPTIONS in scripts/docs_truth.py)",
        "page.md: `POST /v1/nowhere` is not a route of the app",
        "page.md: TIER_RUNNER_NOT_A_VARIABLE is not read anywhere in the code",
        "page.md: `tier-runner audit` has no option --bogus",
        "page.md: the app serves nothing at /v1/missing",
    ])


def test_yaml_examples_marked_for_validation_must_load():
    good = "<!-- validate: routing -->\n```yaml\nfeatures:\n  a: {tier: 3, value: internal, owner: x, failure_cost_usd: 0}\n```\n"
    assert docs_truth.example_problems("p.md", good) == []
    typo = good.replace("owner: x", "ower: x")
    assert "ower" in docs_truth.example_problems("p.md", typo)[0]
    profile = "<!-- validate: profile -->\n```yaml\ntiers:\n  1: {runner: hosted, model: m, retries: 2}\n```\n"
    assert "retries" in docs_truth.example_problems("p.md", profile)[0]


def test_links_to_missing_files_fail(tmp_path):
    page = tmp_path / "page.md"
    assert docs_truth.link_problems("page.md", page, "[x](nowhere.md#a) [y](https://example.org)") == \
        ["page.md: links to nowhere.md, which does not exist"]


def test_quoted_repository_paths_must_exist():
    text = "`tiers/routing.py`, `tiers/no_such_module.py`, `.data/ledger.db`, `~/.cache/x/y.json`"
    assert docs_truth.path_problems("p.md", text, REPO) == ["p.md: `tiers/no_such_module.py` does not exist"]
