"""Semantic cache for Tier 3: repeated questions are answered without inference, measured for wrong hits."""
