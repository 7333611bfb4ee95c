"""Backends behind one interface; every runner speaks OpenAI chat completions."""
