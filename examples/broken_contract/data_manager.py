"""Data manager of the broken example (never used: the build fails first)."""

from __future__ import annotations

from flops_utils import DataManager


class NoData(DataManager):
    def get_data(self) -> tuple[list[float], list[float]]:
        return [], []
