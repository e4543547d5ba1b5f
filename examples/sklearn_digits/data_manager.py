"""This node's digits data: fetched from the node's data server, split into train and test."""

from __future__ import annotations

import numpy as np
from sklearn.model_selection import train_test_split

from flops_utils import DataManager, load_dataset
from flops_utils.data_client import to_numpy

TEST_FRACTION = 0.2
SEED = 42


class DigitsData(DataManager):
    def _prepare_data(self) -> tuple[np.ndarray, np.ndarray]:
        # load_dataset() returns the fragments tagged with the project's data tags;
        # features are 64 pixel values already scaled to [0, 1].
        return to_numpy(load_dataset())

    def get_data(self) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
        x, y = self._prepare_data()
        x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=TEST_FRACTION, random_state=SEED)
        return (x_train, y_train), (x_test, y_test)
