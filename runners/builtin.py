"""Importing this module registers the built-in runners; each imports its heavy backend lazily."""

import runners.llamacpp  # noqa: F401
import runners.hosted  # noqa: F401
import runners.vllm  # noqa: F401
