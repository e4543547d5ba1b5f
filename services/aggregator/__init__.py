"""Aggregator service: a Flower SuperLink plus the FLOps ServerApp (classic, root or cluster role)."""
