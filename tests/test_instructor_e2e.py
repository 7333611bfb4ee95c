"""instructor (structured output from a Pydantic model) through the gateway on Tier 3, in the modes its users pick:
TOOLS (a named function call, whole and streamed as partial objects) and JSON_SCHEMA (response_format).

instructor runs in its own environment (tests/instructor_client.py says why); under `make test`
(REQUIRE_INSTRUCTOR=1) a missing one fails these tests, a plain `pytest` skips them with the command to run.
Every response the library received is checked against OpenAI's OpenAPI document here.
"""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from tests.conftest import REPO
from tests.test_tools_tier3_e2e import QWEN
from tests.validating_transport import check_text

PYTHON = REPO / ".venv-instructor" / "bin" / "python"
if not PYTHON.exists():
    why = f"instructor's environment is missing ({PYTHON}): run `make instructor-setup`"
    if os.environ.get("REQUIRE_INSTRUCTOR") == "1":
        pytest.fail(f"{why}; REQUIRE_INSTRUCTOR=1 (make test) does not let instructor go untested", pytrace=False)
    pytest.skip(why, allow_module_level=True)


def instructor(gateway, mode: str, stream: bool = False) -> tuple[dict, list[dict], dict]:
    """Run the client; its answer, every body and chunk the gateway sent it (validated), and the whole report."""
    args = [str(PYTHON), str(REPO / "tests" / "instructor_client.py"), f"{gateway.base_url}/v1", QWEN, mode]
    done = subprocess.run(args + (["--stream"] if stream else []), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout)
    seen: list[dict] = []
    for body in report["bodies"]:
        check_text(body["status"], body["content_type"], body["text"], seen)
    return report["answer"], seen, report


def tool_calls(seen: list[dict]) -> list[dict]:
    return [call for body in seen for choice in body.get("choices", [])
            for call in (choice.get("message") or choice.get("delta") or {}).get("tool_calls") or []]


def test_instructor_tools_mode(tool_gateway):
    """Mode.TOOLS names the model's schema as the one function to call; the arguments are its fields."""
    answer, seen, _ = instructor(tool_gateway, "TOOLS")
    assert answer == {"city": "Oslo", "celsius": 21}
    assert len(seen) == 1, "instructor retried: the first answer did not validate"
    [call] = tool_calls(seen)
    assert call["function"]["name"] == "CityWeather" and seen[0]["choices"][0]["finish_reason"] == "tool_calls"


def test_instructor_tools_mode_streams_partial_objects(tool_gateway):
    """create_partial reads the streamed argument deltas and yields a growing object."""
    answer, seen, report = instructor(tool_gateway, "TOOLS", stream=True)
    assert answer == {"city": "Oslo", "celsius": 21}
    assert report["partials"] > 2 and len(tool_calls(seen)) > 2  # the arguments came in pieces, not in one chunk


def test_instructor_json_schema_mode(tool_gateway):
    """Mode.JSON_SCHEMA asks with response_format json_schema; the content is the object."""
    answer, seen, _ = instructor(tool_gateway, "JSON_SCHEMA")
    assert answer == {"city": "Oslo", "celsius": 21}
    assert len(seen) == 1 and json.loads(seen[0]["choices"][0]["message"]["content"]) == answer
