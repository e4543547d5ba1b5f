"""Shared runtime of the federated services: Flower processes, reports, user code, MLflow."""
