"""Learner service: checks its node's data, then answers the aggregator's messages with the FLOps ClientApp."""
