"""The two interfaces a user ML repository implements (see README "ML repo contract").

Example ``model_manager.py``::

    from flops_utils import ModelManager
    from data_manager import DigitsData

    class ModelManager(ModelManager):
        def __init__(self) -> None:
            self.model = LogisticRegression(max_iter=50)
        def set_model_data(self) -> None:
            (self.x_train, self.y_train), (self.x_test, self.y_test) = DigitsData().get_data()
        def get_model(self): return self.model
        def get_model_parameters(self): return [self.model.coef_, self.model.intercept_]
        def set_model_parameters(self, parameters): self.model.coef_, self.model.intercept_ = parameters
        def fit_model(self) -> int: self.model.fit(self.x_train, self.y_train); return len(self.x_train)
        def evaluate_model(self): return loss, accuracy, len(self.x_test)
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

import numpy as np

NDArrays = list[np.ndarray]

REQUIRED_MODEL_METHODS = (
    "set_model_data",
    "get_model",
    "get_model_parameters",
    "set_model_parameters",
    "fit_model",
    "evaluate_model",
)
REQUIRED_DATA_METHODS = ("get_data",)


@dataclass(frozen=True)
class FitContext:
    """What the aggregator asks of one ``fit_model`` call; the runtime sets ``ModelManager.fit_context``
    before each call (a ``fit_model`` that ignores it behaves as before).

    ``proximal_mu``: the SLA's FedProx weight (0 unless the strategy is ``fedprox``): add
    ``proximal_mu / 2 * ||w - global_parameters||^2`` to the training loss.
    ``global_parameters``: the global model this round started from (what ``set_model_parameters`` got).
    """

    server_round: int = 0
    proximal_mu: float = 0.0
    global_parameters: NDArrays = field(default_factory=list)


class DataManager(ABC):
    """Loads this node's data (via :func:`flops_utils.load_dataset`) and splits it.

    Example::

        class DigitsData(DataManager):
            def _prepare_data(self):
                table = load_dataset()           # fragments for the project's data tags
                ...                              # to numpy, normalise, split
            def get_data(self):
                return (x_train, y_train), (x_test, y_test)
    """

    def _prepare_data(self) -> Any:  # noqa: B027 - optional hook with a default
        """Fetch and pre-process the node's data; called by ``get_data`` implementations."""

    @abstractmethod
    def get_data(self) -> tuple[Any, Any]:
        """Return ``(train, test)`` in whatever shape the ModelManager expects."""


class ModelManager(ABC):
    """Wraps the user's model so the injected FL runtime can train and aggregate it.

    The constructor takes no arguments. Learners call ``set_model_data`` before
    training; the aggregator never does (it has no data) and only moves parameters
    and logs ``get_model()`` with the SLA's MLflow flavor. Before each ``fit_model`` the runtime sets
    ``self.fit_context`` (a :class:`FitContext`: the round, FedProx's ``proximal_mu``, the global model).
    """

    fit_context: FitContext = FitContext()

    @abstractmethod
    def set_model_data(self) -> None:
        """Load the node's training and test data (learners only)."""

    @abstractmethod
    def get_model(self) -> Any:
        """Return an object the SLA's MLflow flavor can log (sklearn estimator, torch module, ...)."""

    @abstractmethod
    def get_model_parameters(self) -> NDArrays:
        """Return the model's parameters as a list of numpy arrays."""

    @abstractmethod
    def set_model_parameters(self, parameters: NDArrays) -> None:
        """Replace the model's parameters with ``parameters`` (same order and shapes)."""

    @abstractmethod
    def fit_model(self) -> int:
        """Train one local round; return the number of training examples used."""

    @abstractmethod
    def evaluate_model(self) -> tuple[float, float, int]:
        """Return ``(loss, accuracy, number_of_test_examples)``."""
