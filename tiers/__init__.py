"""The gateway: routing table, tier policy, serving layer and HTTP server."""
