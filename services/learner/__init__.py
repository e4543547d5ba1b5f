"""Learner service: checks its node's data, runs a Flower SuperNode with the FLOps ClientApp."""
