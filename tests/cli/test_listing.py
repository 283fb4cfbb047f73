"""The testbed commands' listings: a header and rows in the same columns."""

from __future__ import annotations

import pytest

from overlaysim.listing import print_table


def test_columns_line_up_and_the_last_is_not_padded(capsys: pytest.CaptureFixture[str]) -> None:
    print_table([("NAME", 6), ("N", 3), ("CMD", 0)], [("web", 3, "a b"), ("db", 10, "")])
    assert capsys.readouterr().out.splitlines() == ["NAME  N  CMD", "web   3  a b", "db    10 "]
