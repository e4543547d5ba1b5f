"""Ports for planned listeners: free, outside what the kernel hands to outgoing connections, never an excluded one."""

from __future__ import annotations

import socket
from pathlib import Path

from flops_utils.process_groups import ephemeral_range, planned_port, port_is_free


def test_a_planned_port_is_free_and_below_the_kernels_ephemeral_range() -> None:
    low, high = ephemeral_range()
    assert 1024 < low < high
    ports = {planned_port("127.0.0.1", seed=seed) for seed in range(20)}
    assert all(port < low and port_is_free("127.0.0.1", port) for port in ports), (low, sorted(ports))
    assert len(ports) > 10  # spread over the range, not one fixed port


def test_a_planned_port_skips_excluded_and_listening_ports() -> None:
    first = planned_port("127.0.0.1", seed=7)
    assert planned_port("127.0.0.1", exclude=[first], seed=7) != first
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        # as servers do: an earlier connection of the suite's left in TIME_WAIT on this port must not stop the bind
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", first))
        listener.listen()
        assert not port_is_free("127.0.0.1", first)
        assert planned_port("127.0.0.1", seed=7) != first


def test_an_unreadable_range_falls_back_to_linuxs_default(tmp_path: Path) -> None:
    (tmp_path / "range").write_text("not numbers\n")
    assert ephemeral_range(tmp_path / "range") == (32768, 60999)
    (tmp_path / "range").write_text("40000\t50000\n")
    assert ephemeral_range(tmp_path / "range") == (40000, 50000)
