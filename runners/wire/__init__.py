"""Wire formats: each module speaks one API's JSON and converts it to and from the internal types.

They serve both directions: the edge (tiers/api/) parses clients' requests with them, and the
runners that forward to a server of the same protocol (vLLM, hosted APIs) emit and parse with them.
"""
