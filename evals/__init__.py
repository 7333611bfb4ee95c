"""The eval harness: production-like failure rates per tier, and model promotion (not built yet)."""
