"""Pluggable orchestrator adapters: local processes, containers, Kubernetes, Oakestra."""
