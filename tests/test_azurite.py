"""The Azurite launcher the tests, the demo, `make serve` and the bench start Azurite with (`dev.azurite`)."""

from __future__ import annotations

import socket

import dev.azurite as launcher
from shared.storage import StorageAccount


def test_free_ports_are_distinct():
    for _ in range(20):
        ports = launcher.free_ports(3)
        assert len(set(ports)) == 3


def test_azurite_starts_on_other_free_ports_when_one_it_was_given_is_taken_meanwhile(monkeypatch, tmp_path):
    """A free port is free when chosen, not when Azurite binds it: a test run once failed because Azurite's table
    port had been taken in between. The launcher chooses again."""
    real = launcher.free_ports
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))  # bound, not listening: Azurite's bind fails, a connect is refused
        taken = squatter.getsockname()[1]
        picks = iter([(*real(2), taken)])
        monkeypatch.setattr(launcher, "free_ports", lambda n: next(picks, None) or real(n))
        server = launcher.start_azurite(location=tmp_path / "azurite")
        try:
            assert taken not in server.ports
            account = StorageAccount.from_connection_string(server.connection_string)
            assert account.container("launcher").get_container_properties().name == "launcher"
        finally:
            server.stop()
    assert "EADDRINUSE" in (tmp_path / "azurite" / "azurite.log").read_text()


def test_azurite_on_ports_given_does_not_move(tmp_path):
    """`make serve` asks for Azurite's default ports: a taken one is an error that says so, not other ports."""
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        taken = other.getsockname()[1]
        try:
            launcher.start_azurite(location=tmp_path / "azurite", ports=(taken, *launcher.free_ports(2)))
        except RuntimeError as exc:
            assert f"port {taken} is taken" in str(exc)
        else:
            raise AssertionError("Azurite started on a taken port")
