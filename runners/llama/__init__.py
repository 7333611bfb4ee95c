"""Tier 3's engine: continuous batching of GGUF models over llama.cpp's batch API.

engine.py owns the model and the engine thread; scheduler.py is that thread's loop (queue, batch,
decode); slots.py keeps each KV slot's reusable prefix; sampling.py builds sampler chains and grammars;
text.py turns tokens into text, stop strings and logprobs; types.py holds what goes in and comes out;
layout.py decides the weight layout llama.cpp loads (no AMX by default).
"""

from runners.llama.engine import LlamaEngine
from runners.llama.types import EngineOptions, Finished, Piece, SamplingParams, TokenInfo

__all__ = ["EngineOptions", "Finished", "LlamaEngine", "Piece", "SamplingParams", "TokenInfo"]
