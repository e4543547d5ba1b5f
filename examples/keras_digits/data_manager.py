"""This node's digits data as numpy arrays, split 80/20 with a fixed seed."""

from __future__ import annotations

import numpy as np

from flops_utils import DataManager, load_dataset
from flops_utils.data_client import to_numpy

TEST_FRACTION = 0.2
SEED = 42

Split = tuple[np.ndarray, np.ndarray]


class DigitsData(DataManager):
    def _prepare_data(self) -> tuple[np.ndarray, np.ndarray]:
        return to_numpy(load_dataset())  # 64 pixel values in [0, 1], labels 0-9

    def get_data(self) -> tuple[Split, Split]:
        x, y = self._prepare_data()
        order = np.random.default_rng(SEED).permutation(len(y))
        cut = max(1, int(len(y) * (1 - TEST_FRACTION)))
        train, test = order[:cut], order[cut:]
        return (x[train], y[train]), (x[test], y[test])
