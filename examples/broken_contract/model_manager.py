"""A ModelManager that forgets two methods of the FLOps interface (for the failure tests)."""

from __future__ import annotations

import numpy as np

from flops_utils import ModelManager as BaseModelManager


class ModelManager(BaseModelManager):
    def __init__(self) -> None:
        self.weights = [np.zeros(3)]

    def set_model_data(self) -> None:
        pass

    def get_model(self) -> list[np.ndarray]:
        return self.weights

    def get_model_parameters(self) -> list[np.ndarray]:
        return self.weights

    def set_model_parameters(self, parameters: list[np.ndarray]) -> None:
        self.weights = parameters

    # fit_model and evaluate_model are missing: the builder must refuse this repository.
