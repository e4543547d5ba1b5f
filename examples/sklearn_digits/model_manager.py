"""Logistic regression on 8x8 digits, wrapped for FLOps.

The parameters exist before the first fit (zeros of the final shape), so the
aggregator can hand out an initial model and every learner's arrays line up even
when its local data lacks some digits.
"""

from __future__ import annotations

import warnings

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import log_loss

from flops_utils import ModelManager as BaseModelManager

from data_manager import DigitsData

NUM_CLASSES = 10
NUM_FEATURES = 64
LOCAL_ITERATIONS = 10  # lbfgs iterations per federated round


class ModelManager(BaseModelManager):
    def __init__(self) -> None:
        self.model = LogisticRegression(max_iter=LOCAL_ITERATIONS, warm_start=True)
        self.model.classes_ = np.arange(NUM_CLASSES)
        self.model.coef_ = np.zeros((NUM_CLASSES, NUM_FEATURES))
        self.model.intercept_ = np.zeros(NUM_CLASSES)
        self.model.n_features_in_ = NUM_FEATURES
        self.x_train = self.y_train = self.x_test = self.y_test = np.zeros(0)

    def set_model_data(self) -> None:
        (self.x_train, self.y_train), (self.x_test, self.y_test) = DigitsData().get_data()

    def get_model(self) -> LogisticRegression:
        return self.model

    def get_model_parameters(self) -> list[np.ndarray]:
        return [self.model.coef_.copy(), self.model.intercept_.copy()]

    def set_model_parameters(self, parameters: list[np.ndarray]) -> None:
        coef, intercept = parameters
        self.model.coef_ = np.asarray(coef, dtype=np.float64).reshape(NUM_CLASSES, NUM_FEATURES)
        self.model.intercept_ = np.asarray(intercept, dtype=np.float64).reshape(NUM_CLASSES)

    def fit_model(self) -> int:
        x, y, weights = self.x_train, self.y_train, np.ones(len(self.y_train))
        # Digits this node has never seen join with zero weight, so coef_ keeps all 10 rows.
        missing = np.setdiff1d(np.arange(NUM_CLASSES), y)
        if len(missing):
            x = np.vstack([x, np.zeros((len(missing), NUM_FEATURES), dtype=x.dtype)])
            y = np.concatenate([y, missing])
            weights = np.concatenate([weights, np.zeros(len(missing))])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            self.model.fit(x, y, sample_weight=weights)
        return len(self.x_train)

    def evaluate_model(self) -> tuple[float, float, int]:
        probabilities = self.model.predict_proba(self.x_test)
        loss = float(log_loss(self.y_test, probabilities, labels=np.arange(NUM_CLASSES)))
        accuracy = float(self.model.score(self.x_test, self.y_test))
        return loss, accuracy, len(self.x_test)
