"""Each example's ModelManager trains on digits served by a real data server (Arrow Flight)."""

from __future__ import annotations

import importlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
from sklearn.datasets import load_digits

from flops_utils.data_client import DATA_SERVER_ENV, DATA_TAGS_ENV, DataServerClient, from_numpy
from flops_utils.process_groups import free_port, stop_group
from tests.example_repos import EXAMPLES_DIR

EXAMPLES = ["sklearn_digits", "pytorch_digits", "keras_digits"]
USER_MODULES = ("model_manager", "data_manager")
FIT_ROUNDS = 3


@pytest.fixture(scope="module")
def data_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real data server holding all digits under ``digits`` and digits 0-4 only under ``digits-low``."""
    work = tmp_path_factory.mktemp("examples-data")
    address = f"127.0.0.1:{free_port()}"
    config = {
        "node": "examples",
        "host": "127.0.0.1",
        "port": int(address.split(":")[1]),
        "storage_dir": str(work / "storage"),
    }
    log = (work / "server.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "services.data_server.main"],
        env={**os.environ, "FLOPS_CONFIG": json.dumps(config)},
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        with DataServerClient(address) as client:
            client.wait_ready(timeout=60)
            digits = load_digits()
            x, y = digits.data / 16.0, digits.target
            client.put("digits", from_numpy(x, y))
            client.put("digits-low", from_numpy(x[y < 5], y[y < 5]))
        yield address
    finally:
        if process.poll() is None:
            stop_group(process.pid, 15, reap=process.poll)
            process.wait(timeout=15)
        log.close()


@contextmanager
def example_module(name: str, tmp_path: Path) -> Iterator[ModuleType]:
    """Import a copy of ``examples/<name>/model_manager.py`` the way the runtime does: from its folder."""
    folder = tmp_path / name
    shutil.copytree(EXAMPLES_DIR / name, folder)
    saved = {key: sys.modules.pop(key) for key in USER_MODULES if key in sys.modules}
    sys.path.insert(0, str(folder))
    try:
        yield importlib.import_module("model_manager")
    finally:
        sys.path.remove(str(folder))
        for key in USER_MODULES:
            sys.modules.pop(key, None)
        sys.modules.update(saved)


def _use_data(monkeypatch: pytest.MonkeyPatch, address: str, tag: str) -> None:
    monkeypatch.setenv(DATA_SERVER_ENV, address)
    monkeypatch.setenv(DATA_TAGS_ENV, tag)
    monkeypatch.setenv("KERAS_BACKEND", "torch")


@pytest.mark.parametrize("name", EXAMPLES)
def test_example_trains_and_round_trips_parameters(
    name: str, data_server: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _use_data(monkeypatch, data_server, "digits")
    with example_module(name, tmp_path) as module:
        # The aggregator's view: a fresh manager, no data, parameters available at once.
        initial = module.ModelManager().get_model_parameters()
        assert initial and all(isinstance(array, np.ndarray) for array in initial)

        manager = module.ModelManager()
        manager.set_model_data()
        examples = [manager.fit_model() for _ in range(FIT_ROUNDS)]
        loss, accuracy, test_examples = manager.evaluate_model()
        assert examples == [1437] * FIT_ROUNDS  # 80 % of the 1,797 digits
        assert test_examples == 360
        assert accuracy > 0.5, (name, loss, accuracy)
        assert np.isfinite(loss)

        trained = manager.get_model_parameters()
        assert [array.shape for array in trained] == [array.shape for array in initial]
        other = module.ModelManager()
        other.set_model_data()
        other.set_model_parameters(trained)
        for received, sent in zip(other.get_model_parameters(), trained, strict=True):
            np.testing.assert_allclose(received, sent, rtol=1e-6)
        assert other.evaluate_model()[1] == pytest.approx(accuracy, abs=1e-6)
        assert manager.get_model() is not None


def test_sklearn_example_keeps_all_classes_when_a_node_lacks_some(
    data_server: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _use_data(monkeypatch, data_server, "digits-low")
    with example_module("sklearn_digits", tmp_path) as module:
        manager = module.ModelManager()
        manager.set_model_data()
        manager.fit_model()
        coef, intercept = manager.get_model_parameters()
        assert (coef.shape, intercept.shape) == ((10, 64), (10,))
        assert manager.evaluate_model()[1] > 0.5
        assert set(manager.get_model().predict(manager.x_test)) <= set(range(5))
