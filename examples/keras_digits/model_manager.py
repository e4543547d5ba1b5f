"""A small Keras 3 network on 8x8 digits (PyTorch backend), wrapped for FLOps."""

from __future__ import annotations

import os

os.environ.setdefault("KERAS_BACKEND", "torch")  # must be set before keras is imported

import keras  # noqa: E402
import numpy as np  # noqa: E402

from flops_utils import ModelManager as BaseModelManager  # noqa: E402

from data_manager import DigitsData  # noqa: E402

LOCAL_EPOCHS = 3
BATCH_SIZE = 32


def build_model() -> keras.Model:
    keras.utils.set_random_seed(0)  # every node starts from the same weights
    model = keras.Sequential(
        [
            keras.Input(shape=(64,)),
            keras.layers.Dense(64, activation="relu"),
            keras.layers.Dense(10, activation="softmax"),
        ]
    )
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


class ModelManager(BaseModelManager):
    def __init__(self) -> None:
        self.model = build_model()
        self.x_train = self.y_train = self.x_test = self.y_test = np.zeros(0)

    def set_model_data(self) -> None:
        (self.x_train, self.y_train), (self.x_test, self.y_test) = DigitsData().get_data()

    def get_model(self) -> keras.Model:
        return self.model

    def get_model_parameters(self) -> list[np.ndarray]:
        return [np.array(weight) for weight in self.model.get_weights()]

    def set_model_parameters(self, parameters: list[np.ndarray]) -> None:
        self.model.set_weights([np.asarray(weight) for weight in parameters])

    def fit_model(self) -> int:
        self.model.fit(self.x_train, self.y_train, epochs=LOCAL_EPOCHS, batch_size=BATCH_SIZE, verbose=0)
        return len(self.x_train)

    def evaluate_model(self) -> tuple[float, float, int]:
        loss, accuracy = self.model.evaluate(self.x_test, self.y_test, verbose=0)
        return float(loss), float(accuracy), len(self.x_test)
