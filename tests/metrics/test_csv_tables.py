"""Deterministic CSV encoding of record tables and typed reading back."""

from __future__ import annotations

import io

import pandas as pd
import pytest

from overlaysim.metrics.records import TABLES, EventLog
from overlaysim.metrics.tables import frame, read_csv, schema_for, write_csv
from overlaysim.metrics.traffic import TrafficCounter


def encode(name, rows):
    f = io.StringIO()
    write_csv(f, TABLES[name], rows)
    return f.getvalue()


def test_floats_round_trip_exactly_and_missing_floats_are_empty():
    rows = [(0.1 + 0.2, "a", "n", "k", "add", 3, None, float("nan"), "unconverged")]
    text = encode("convergence", rows)
    assert text.splitlines()[1] == "0.30000000000000004,a,n,k,add,3,,,unconverged"
    df = read_csv(io.StringIO(text), TABLES["convergence"])
    assert df["t_commit"].iloc[0] == 0.1 + 0.2
    assert df["converged_t"].isna().all() and df["latency_s"].isna().all()
    assert df["targets"].dtype == "int64"


def test_ints_given_for_float_columns_are_written_as_floats():
    text = encode("events", [(3, "", "node_start", "h1", "", "", "", "")])
    assert text.splitlines()[1].startswith("3.0,")


def test_strings_keep_empty_cells_and_are_quoted_only_when_needed():
    log = EventLog()
    log.add(1.0, "partition", detail={"groups": [["a", "b"], ["c"]]})
    log.add(2.0, "entry_commit", node="h1", network="n,1", key="10.0.0.2", op="add")
    text = encode("events", log.rows)
    lines = text.splitlines()
    assert lines[1] == '1.0,,partition,,,,,"{""groups"":[[""a"",""b""],[""c""]]}"'
    assert lines[2] == '2.0,h1,entry_commit,,"n,1",10.0.0.2,add,'
    df = read_csv(io.StringIO(text), TABLES["events"])
    assert df["node"].tolist() == ["", "h1"]  # not NaN
    assert df["network"].tolist() == ["", "n,1"]
    assert df["detail"].iloc[0] == '{"groups":[["a","b"],["c"]]}'


def test_numeric_looking_keys_stay_strings():
    text = encode("events", [(1.0, "h1", "entry_commit", "", "n", "007", "add", "")])
    df = read_csv(io.StringIO(text), TABLES["events"])
    assert df["key"].iloc[0] == "007"


def test_bools_are_lowercase_words_and_read_as_bool():
    text = encode(
        "reachability",
        [
            (1.0, "c1", "c2", "n", True, 0, "", None),
            (1.0, "c1", "c3", "n", "true", False, "", None),
        ],
    )
    assert text.splitlines()[1:] == ["1.0,c1,c2,n,true,false,,", "1.0,c1,c3,n,true,false,,"]
    df = read_csv(io.StringIO(text), TABLES["reachability"])
    assert df["expected"].dtype == bool and df["reachable"].tolist() == [False, False]


def test_rows_are_stably_sorted_by_the_schema_keys():
    rows = [
        (2.0, "b", "member_join", "x", "", "", "", ""),
        (1.0, "z", "member_join", "x", "", "", "", ""),
        (2.0, "a", "member_join", "x", "", "", "", ""),
    ]
    lines = encode("events", rows).splitlines()[1:]
    # sorted by t only; ties keep the given order (b before a)
    assert [line.split(",")[1] for line in lines] == ["z", "b", "a"]


def test_dataframe_mapping_and_tuple_rows_encode_identically():
    tc = TrafficCounter()
    tc.sent(0.5, "h2", 100)
    tc.sent(1.2, "h1", 50)
    tc.recv(0.7, "h1", 70)
    as_dicts = tc.rows()
    as_frame = pd.DataFrame(as_dicts)
    as_tuples = [tuple(r.values()) for r in as_dicts]
    assert (
        encode("traffic", as_dicts) == encode("traffic", as_frame) == encode("traffic", as_tuples)
    )


def test_bad_rows_are_rejected():
    with pytest.raises(ValueError):
        encode("traffic", [(0, "h1", 1, 1, 1)])  # one field short
    with pytest.raises(ValueError):
        encode("traffic", [(0, "h1", 1.5, 1, 1, 1)])  # non-integer bytes
    with pytest.raises(ValueError):
        schema_for("traffic", ["t", "node"])  # wrong columns for a known table
    with pytest.raises(ValueError):
        schema_for("mystery")  # unknown table without columns


def test_extra_table_with_given_columns():
    f = io.StringIO()
    write_csv(f, schema_for("probes", ["node", "rtt_s", "ok"]), [("h1", 0.25, True)])
    assert f.getvalue() == "node,rtt_s,ok\nh1,0.25,true\n"


def test_frame_matches_what_read_csv_gives():
    rows = [
        (1.0, "a", "n", "k", "add", 2, 1.5, 0.5, "converged"),
        (2.0, "b", "n", "j", "delete", 1, None, None, "unconverged"),
    ]
    schema = TABLES["convergence"]
    f = io.StringIO()
    write_csv(f, schema, rows)
    pd.testing.assert_frame_equal(frame(schema, rows), read_csv(io.StringIO(f.getvalue()), schema))
    empty = frame("convergence")
    assert empty.empty and list(empty.dtypes) == list(frame(schema, rows).dtypes)
