"""Scrubbing secrets out of text that leaves the process (logs, errors, /ready): the one place it is done.

On the ground floor because configuration errors (hardware/config.py) redact too.

A provider often echoes a key partly masked (`sk-proj-abc1********wxyz`), so matching the whole key is not
enough: any run of MIN_RUN or more characters of a secret is replaced. Command lines are scrubbed by flag:
the value of any flag whose name says key, secret, token or password.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

MIN_RUN = 8
MARK = "[redacted]"
SECRET_WORDS = frozenset({"key", "apikey", "secret", "token", "password", "passwd", "credential", "credentials",
                          "sha256", "auth", "authorization"})


def is_secret_name(name: str) -> bool:
    """`api_key_env`, `--api-key`, `HF_TOKEN`, `admin_sha256`: a word of the name says it holds a secret
    (`tokens_per_minute` does not: a count of tokens is not a token)."""
    return any(word in SECRET_WORDS for word in re.split(r"[^a-z0-9]+", name.lower()))


def redact(text: str, secrets: Iterable[str | None]) -> str:
    """`text` with every run of MIN_RUN or more characters of any secret replaced by [redacted]; a secret
    shorter than MIN_RUN is replaced where it appears whole."""
    covered = bytearray(len(text))
    for secret in secrets:
        if not secret:
            continue
        if len(secret) < MIN_RUN:
            for match in re.finditer(re.escape(secret), text):
                covered[match.start():match.end()] = b"\x01" * (match.end() - match.start())
            continue
        pieces = {secret[i:i + MIN_RUN] for i in range(len(secret) - MIN_RUN + 1)}
        for start in range(len(text) - MIN_RUN + 1):
            if text[start:start + MIN_RUN] in pieces:
                covered[start:start + MIN_RUN] = b"\x01" * MIN_RUN
    if not any(covered):
        return text
    out, inside = [], False
    for char, hidden in zip(text, covered):
        if hidden and not inside:
            out.append(MARK)
        elif not hidden:
            out.append(char)
        inside = bool(hidden)
    return "".join(out)


def redact_argv(argv: list[str]) -> list[str]:
    """A command line fit to log: the value after (or `=` in) a flag with a secret name is [redacted]."""
    out = list(argv)
    for i, arg in enumerate(argv):
        if not arg.startswith("-"):
            continue
        name, equals, _ = arg.partition("=")
        if not is_secret_name(name):
            continue
        if equals:
            out[i] = f"{name}={MARK}"
        elif i + 1 < len(argv) and not argv[i + 1].startswith("--"):
            out[i + 1] = MARK
    return out


def secret_values(argv: list[str], env: dict[str, str]) -> list[str]:
    """The secrets a command line and its environment carry: values of secret-named flags and variables."""
    values = [value for name, value in env.items() if is_secret_name(name)]
    hidden = redact_argv(argv)
    values += [arg.partition("=")[2] if "=" in arg and arg.startswith("-") else arg
               for arg, shown in zip(argv, hidden) if shown != arg]
    return values
