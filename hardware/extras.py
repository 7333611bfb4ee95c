"""Optional stacks (pip extras): a feature that needs one checks for it when it is configured, at start.

`pip install 'value-tier-runner[postgres,redis,faiss,reports,evals]'` brings them all; without one, the
feature that needs it stops the command before it serves or runs anything, naming the extra to install.
"""

from __future__ import annotations

import importlib.util

from hardware.errors import ConfigError


def require_extra(module: str, extra: str, feature: str) -> None:
    """Raise a ConfigError naming the extra when `module` cannot be imported; it is not imported here."""
    try:
        found = importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        found = False
    if not found:
        raise ConfigError(f"{feature} needs the Python package {module!r}, which is not installed: "
                          f"pip install 'value-tier-runner[{extra}]'")
