"""The eval harness: production-like failure rates per tier on real labelled data, and model promotion."""
