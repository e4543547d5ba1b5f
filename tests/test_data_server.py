"""The data server as a real process, spoken to over Arrow Flight."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.flight as flight
import pytest

from flops_utils.data_client import (
    DataServerClient,
    DataServerError,
    DataServerUnavailable,
    NoDataError,
    from_numpy,
    load_dataset,
    to_numpy,
)
from flops_utils.process_groups import free_port, signal_group, stop_group
from services.data_server.main import OPEN_NAMESPACE
from services.data_server.storage import namespace_dir

MAX_UPLOAD_BYTES = 200_000
OPEN_DIR = namespace_dir(OPEN_NAMESPACE)  # without a token key every caller shares this namespace
LISTENING = re.compile(r"serving node \S+ on [\d.]+:(\d+)")


@dataclass
class RunningServer:
    process: subprocess.Popen[bytes]
    address: str
    log_file: Path

    def stop(self) -> None:
        if self.process.poll() is None:
            stop_group(self.process.pid, 15, reap=self.process.poll)
            self.process.wait(timeout=15)


def start_server(
    storage: Path,
    log_file: Path,
    security: dict[str, Any] | None = None,
    ca_pem: str | None = None,
    node: str = "test-node",
) -> RunningServer:
    """``security``: DataServerConfig fields (tls, token_public_key_pem); ``ca_pem`` to reach it over TLS."""
    config = {
        "node": node,
        "host": "127.0.0.1",
        "port": 0,
        "storage_dir": str(storage),
        "max_upload_bytes": MAX_UPLOAD_BYTES,
        **(security or {}),
    }
    env = {**os.environ, "FLOPS_CONFIG": json.dumps(config)}
    earlier = log_file.read_text() if log_file.exists() else ""
    with log_file.open("ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "services.data_server.main"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            ports = LISTENING.findall(log_file.read_text()[len(earlier) :])
            if process.poll() is not None:
                raise AssertionError(f"data server exited: {log_file.read_text()}")
            if ports:
                server = RunningServer(process, f"127.0.0.1:{ports[-1]}", log_file)
                DataServerClient(server.address, ca_pem=ca_pem).wait_ready(timeout=30)
                return server
            time.sleep(0.05)
        raise AssertionError(f"data server did not start: {log_file.read_text()}")
    except BaseException:
        signal_group(process.pid, signal.SIGKILL)
        process.wait(timeout=15)
        raise


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RunningServer]:
    running = start_server(tmp_path / "storage", tmp_path / "server.log")
    try:
        yield running
    finally:
        running.stop()


def sample(rows: int, width: int = 8, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.random((rows, width), dtype=np.float32), rng.integers(0, 10, rows)


def raw_put(address: str, path: list[str], table: pa.Table) -> None:
    client = flight.FlightClient(f"grpc://{address}")
    writer, _ = client.do_put(flight.FlightDescriptor.for_path(*path), table.schema)
    writer.write_table(table)
    writer.close()


def test_numpy_round_trip_keeps_values_and_types() -> None:
    x, y = sample(5, width=3)
    back_x, back_y = to_numpy(from_numpy(x, y))
    assert back_x.dtype == np.float32 and back_x.shape == (5, 3)
    assert back_y.dtype == np.int64
    np.testing.assert_array_equal(back_x, x)
    np.testing.assert_array_equal(back_y, y)


def test_put_list_get_delete(server: RunningServer) -> None:
    client = DataServerClient(server.address)
    x1, y1 = sample(100, seed=1)
    x2, y2 = sample(30, seed=2)
    assert client.put("digits", from_numpy(x1, y1)) == 100
    assert client.put("digits", from_numpy(x2, y2)) == 30
    assert client.put("other.tag_1", from_numpy(*sample(7))) == 7

    assert client.list_tags() == {"digits": 130, "other.tag_1": 7}
    assert client.list_tags(["digits", "missing"]) == {"digits": 130}

    x, y = to_numpy(client.get(["digits"]))
    np.testing.assert_array_equal(x, np.concatenate([x1, x2]))  # fragments stream oldest first
    np.testing.assert_array_equal(y, np.concatenate([y1, y2]))
    assert client.get(["digits", "other.tag_1", "missing"]).num_rows == 137

    assert client.delete_tag("digits") == 2
    assert client.delete_tag("digits") == 0
    assert client.list_tags() == {"other.tag_1": 7}
    with pytest.raises(NoDataError, match="digits"):
        client.get(["digits"])

    log = server.log_file.read_text()
    assert "put customer=open tag=digits rows=100" in log and "delete customer=open tag=digits fragments=2" in log


def test_load_dataset_reads_address_and_tags_from_environment(
    server: RunningServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = DataServerClient(server.address)
    client.put("a", from_numpy(*sample(4)))
    client.put("b", from_numpy(*sample(6)))
    client.put("c", from_numpy(*sample(9)))
    monkeypatch.setenv("FLOPS_DATA_SERVER", server.address)
    monkeypatch.setenv("FLOPS_DATA_TAGS", "a, c")
    assert load_dataset().num_rows == 13
    assert load_dataset(tags=["b"]).num_rows == 6
    monkeypatch.setenv("FLOPS_DATA_TAGS", "nothing-here,nor-here")
    with pytest.raises(NoDataError, match="nothing-here, nor-here") as caught:
        load_dataset()
    assert caught.value.tags == ["nothing-here", "nor-here"]
    monkeypatch.setenv("FLOPS_DATA_TAGS", "")
    with pytest.raises(NoDataError, match="no data tags"):
        load_dataset()


def test_malformed_uploads_are_refused_with_a_clear_error(server: RunningServer) -> None:
    client = DataServerClient(server.address)
    wrong_schema = pa.table({"pixels": pa.array([[1.0, 2.0]], pa.list_(pa.float64())), "label": [1]})
    with pytest.raises(flight.FlightServerError, match=r"wrong schema for tag 'bad'.*features: list<float32>"):
        raw_put(server.address, ["bad"], wrong_schema)
    with pytest.raises(flight.FlightServerError, match="invalid tag"):
        raw_put(server.address, ["../escape"], from_numpy(*sample(2)))
    ragged = pa.table(
        {"features": pa.array([[1.0, 2.0], [3.0]], pa.list_(pa.float32())), "label": pa.array([0, 1], pa.int64())}
    )
    with pytest.raises(flight.FlightServerError, match="same length"):
        raw_put(server.address, ["bad"], ragged)
    with_nulls = pa.table(
        {"features": pa.array([[1.0], None], pa.list_(pa.float32())), "label": pa.array([0, 1], pa.int64())}
    )
    with pytest.raises(flight.FlightServerError, match="nulls"):
        raw_put(server.address, ["bad"], with_nulls)

    client.put("bad", from_numpy(*sample(3, width=8)))
    with pytest.raises(
        DataServerError,
        match=r"holds \(n, 8\) float32 features, int64 labels; this upload has "
        r"\(n, 4\) float32 features",
    ):
        client.put("bad", from_numpy(*sample(3, width=4)))
    assert client.list_tags() == {"bad": 3}
    assert not list((Path(server.log_file).parent / "storage" / "ns" / OPEN_DIR / ".incoming").iterdir())


def test_oversized_upload_is_refused_and_leaves_nothing(server: RunningServer) -> None:
    client = DataServerClient(server.address)
    big_x, big_y = sample(MAX_UPLOAD_BYTES // 8, width=16)  # ~4x the limit
    with pytest.raises(DataServerError, match=f"over the limit of {MAX_UPLOAD_BYTES} bytes"):
        client.put("big", from_numpy(big_x, big_y))
    assert client.list_tags() == {}
    assert client.put("big", from_numpy(big_x[:100], big_y[:100])) == 100  # the server still works


def test_fragments_survive_a_restart(tmp_path: Path) -> None:
    storage, log_file = tmp_path / "storage", tmp_path / "server.log"
    first = start_server(storage, log_file)
    try:
        DataServerClient(first.address).put("kept", from_numpy(*sample(12)))
    finally:
        first.stop()
    (storage / "ns" / OPEN_DIR / ".incoming" / "kept-half-written.parquet").write_bytes(b"PAR1 truncated")
    second = start_server(storage, log_file)
    try:
        client = DataServerClient(second.address)
        assert client.list_tags() == {"kept": 12}
        np.testing.assert_array_equal(to_numpy(client.get(["kept"]))[0], sample(12)[0])
        assert not (storage / "ns" / OPEN_DIR / ".incoming" / "kept-half-written.parquet").exists()
    finally:
        second.stop()


def test_unreachable_server_gives_one_line_error(monkeypatch: pytest.MonkeyPatch) -> None:
    address = f"127.0.0.1:{free_port()}"  # nothing listens there
    client = DataServerClient(address)
    with pytest.raises(DataServerUnavailable) as caught:
        client.list_tags()
    assert "\n" not in str(caught.value) and address in str(caught.value)
    started = time.monotonic()
    with pytest.raises(DataServerUnavailable, match="not ready after 0.5 s"):
        client.wait_ready(timeout=0.5)
    assert time.monotonic() - started < 10
    monkeypatch.delenv("FLOPS_DATA_SERVER", raising=False)
    with pytest.raises(DataServerUnavailable, match="set FLOPS_DATA_SERVER"):
        load_dataset(tags=["x"])
