"""overlayd's gossip-key options: clear errors naming the file, line and problem."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from overlaysim.agent.options import parse_args, read_keyfile

K1, K2 = bytes(range(32)), bytes(range(16))


def test_keyfile_and_flag_give_keys_primary_first(tmp_path: Path) -> None:
    f = tmp_path / "cluster.key"
    f.write_text(f"# run key\n\n{base64.b64encode(K1).decode()}\n{base64.b64encode(K2).decode()}\n")
    assert read_keyfile(f) == (K1, K2)
    cfg = parse_args(["--name", "h1", "--bind", "10.0.0.1",
                      "--gossip-key", base64.b64encode(K2).decode(), "--gossip-keyfile", str(f)])  # fmt: skip
    assert cfg.gossip_keys == (K2, K1, K2)
    assert parse_args(["--name", "h1", "--bind", "10.0.0.1"]).gossip_keys == ()


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("", "no key in the file"),
        ("not base64!\n", ":1: not base64"),
        (
            "# c\n" + base64.b64encode(b"short").decode() + "\n",
            ":2: key is 5 bytes; expected 16, 24 or 32",
        ),
    ],
)
def test_bad_keyfiles_say_where_and_what(tmp_path: Path, text: str, why: str) -> None:
    f = tmp_path / "k"
    f.write_text(text)
    with pytest.raises(SystemExit, match=why):
        read_keyfile(f)


def test_missing_keyfile_and_bad_flag(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="No such file"):
        read_keyfile(tmp_path / "absent")
    with pytest.raises(SystemExit, match="--gossip-key: key is 3 bytes"):
        parse_args(["--name", "h", "--bind", "10.0.0.1", "--gossip-key", "YWJj"])


def test_esp_seq_limit_option() -> None:
    from overlaysim.core.esp import MAX_SEQ

    base = ["--name", "h1", "--bind", "10.0.0.1"]
    assert parse_args(base).esp_seq_limit == MAX_SEQ
    assert parse_args([*base, "--esp-seq-limit", "2000"]).esp_seq_limit == 2000
    for bad in ("0", "x", str(MAX_SEQ + 1)):
        with pytest.raises(SystemExit):
            parse_args([*base, "--esp-seq-limit", bad])


def test_gossip_trace_is_off_unless_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    base = ["--name", "h1", "--bind", "10.0.0.1"]
    monkeypatch.delenv("OVERLAYSIM_TRACE_GOSSIP", raising=False)
    assert parse_args(base).trace_gossip is False
    assert parse_args([*base, "--trace-gossip"]).trace_gossip is True
    # the runner's environment reaches every agent it starts
    monkeypatch.setenv("OVERLAYSIM_TRACE_GOSSIP", "1")
    assert parse_args(base).trace_gossip is True
