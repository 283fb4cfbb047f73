"""The endpoint value: one type, written by both runtimes, read back strictly."""

from __future__ import annotations

import pytest

from overlaysim.core.endpoint import ENDPOINTS, Endpoint


def test_round_trip_keeps_key_order_and_normalises() -> None:
    ep = Endpoint(name="web-1", ip="10.0.0.3", mac="02:42:0A:00:00:03", vtep="10.98.0.2")
    value = ep.to_value()
    assert list(value) == ["name", "ip", "mac", "vtep"]
    assert value["mac"] == "02:42:0a:00:00:03"
    assert Endpoint.from_value(value) == ep
    assert ep.remote == ("10.0.0.3", "02:42:0a:00:00:03", "10.98.0.2")
    assert ENDPOINTS == "endpoints"


def test_simulator_vtep_is_a_host_name_agent_vtep_must_be_an_ip() -> None:
    value = {"name": "a", "ip": "10.0.0.3", "mac": "02:42:0a:00:00:03", "vtep": "h3"}
    assert Endpoint.from_value(value).vtep == "h3"
    with pytest.raises(ValueError, match="vtep|IPv4"):
        Endpoint.from_value(value, vtep_ip=True)


def test_name_defaults_to_the_key() -> None:
    value = {"ip": "10.0.0.3", "mac": "02:42:0a:00:00:03", "vtep": "10.98.0.2"}
    assert Endpoint.from_value(value, key="db").name == "db"


@pytest.mark.parametrize(
    "value",
    [
        {"ip": "10.0.0.300", "mac": "02:42:0a:00:00:03", "vtep": "h1"},
        {"ip": "10.0.0.3", "mac": "zz", "vtep": "h1"},
        {"ip": "10.0.0.3", "mac": "02:42:0a:00:00:03", "vtep": ""},
        {"ip": "10.0.0.3", "mac": "02:42:0a:00:00:03"},
        {"ip": None, "mac": "02:42:0a:00:00:03", "vtep": "h1"},
    ],
)
def test_junk_is_one_value_error_naming_the_value(value: dict) -> None:
    with pytest.raises(ValueError, match="endpoint value"):
        Endpoint.from_value(value)
