"""A small multilayer perceptron on 8x8 digits, wrapped for FLOps."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from flops_utils import ModelManager as BaseModelManager

from data_manager import DigitsData

LOCAL_EPOCHS = 3
BATCH_SIZE = 32
LEARNING_RATE = 0.01

torch.set_num_threads(1)  # learners share the node's cores; one thread each is fastest for a model this small


class DigitsMLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


def proximal_term(model: nn.Module, global_weights: list[torch.Tensor]) -> torch.Tensor:
    """||w - w_global||^2 over the model's state (same order as get_model_parameters)."""
    values = list(model.state_dict(keep_vars=True).values())
    return sum(((w - g) ** 2).sum() for w, g in zip(values, global_weights, strict=True))  # type: ignore[return-value]


class ModelManager(BaseModelManager):
    def __init__(self) -> None:
        torch.manual_seed(0)  # every node starts from the same weights
        self.model = DigitsMLP()
        self.train_data: tuple[torch.Tensor, torch.Tensor] | None = None
        self.test_data: tuple[torch.Tensor, torch.Tensor] | None = None

    def set_model_data(self) -> None:
        self.train_data, self.test_data = DigitsData().get_data()

    def get_model(self) -> nn.Module:
        return self.model

    def get_model_parameters(self) -> list[np.ndarray]:
        return [value.detach().cpu().numpy().copy() for value in self.model.state_dict().values()]

    def set_model_parameters(self, parameters: list[np.ndarray]) -> None:
        keys = list(self.model.state_dict().keys())
        state = {key: torch.as_tensor(np.asarray(value)) for key, value in zip(keys, parameters, strict=True)}
        self.model.load_state_dict(state, strict=True)

    def fit_model(self) -> int:
        assert self.train_data is not None, "call set_model_data() first"
        x, y = self.train_data
        optimiser = torch.optim.Adam(self.model.parameters(), lr=LEARNING_RATE)
        loss_fn = nn.CrossEntropyLoss()
        generator = torch.Generator().manual_seed(0)
        # FedProx (SLA strategy "fedprox"): keep close to the round's global model; proximal_mu is 0 otherwise.
        mu = self.fit_context.proximal_mu
        global_weights = [torch.as_tensor(np.asarray(value)) for value in self.fit_context.global_parameters]
        self.model.train()
        for _ in range(LOCAL_EPOCHS):
            for batch in torch.randperm(len(y), generator=generator).split(BATCH_SIZE):
                optimiser.zero_grad()
                loss = loss_fn(self.model(x[batch]), y[batch])
                if mu > 0 and global_weights:
                    loss = loss + mu / 2 * proximal_term(self.model, global_weights)
                loss.backward()
                optimiser.step()
        return len(y)

    def evaluate_model(self) -> tuple[float, float, int]:
        assert self.test_data is not None, "call set_model_data() first"
        x, y = self.test_data
        self.model.eval()
        with torch.no_grad():
            logits = self.model(x)
            loss = float(nn.functional.cross_entropy(logits, y))
            accuracy = float((logits.argmax(dim=1) == y).float().mean())
        return loss, accuracy, len(y)
