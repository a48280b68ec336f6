"""Reading results.jsonl and CSV; which rows are fitted; compute C; input errors."""

import json

import numpy as np
import pytest

from scaling.rows import InputError, load_rows, recount, to_points


def _ok(i, **extra):
    return {"id": f"p{i}", "params": 1000 * (i + 1), "tokens": 10**6, "loss": 3.0 - 0.1 * i} | extra


def test_jsonl_failed_rows_are_kept_but_not_fitted(tmp_path):
    rows = [_ok(i) for i in range(5)]
    rows.insert(2, {"id": "bad", "params": 5, "tokens": 7, "status": "failed", "error": "OOM"})
    path = tmp_path / "results.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    loaded = load_rows(str(path))
    assert loaded == rows
    points = to_points(loaded)
    assert points.ids == ("p0", "p1", "p2", "p3", "p4")
    np.testing.assert_array_equal(points.loss, [3.0, 2.9, 2.8, 2.7, 2.6])


def test_compute_is_flops_when_present_else_6nd():
    rows = [_ok(i) for i in range(5)]
    rows[0]["flops"] = 1.5e10
    points = to_points(rows)
    assert points.compute[0] == 1.5e10
    assert points.compute[1] == 6 * 2000 * 10**6


def test_recount_fits_total_parameters_and_6nd_compute():
    rows = [_ok(i, params_total=1000 * (i + 1) + 500, flops=1e12) for i in range(5)]
    rows.append({"id": "bad", "status": "failed"})  # kept, untouched, never fitted
    assert recount(rows) == rows
    points = to_points(recount(rows, params="total", compute="6nd"))
    np.testing.assert_array_equal(points.params, [1500, 2500, 3500, 4500, 5500])
    np.testing.assert_array_equal(points.compute, 6 * points.params * 10**6)
    points = to_points(recount(rows, compute="6nd"))  # C = 6 N D with the non-embedding N
    np.testing.assert_array_equal(points.compute, 6 * np.arange(1, 6) * 1000 * 10**6)
    with pytest.raises(InputError, match="--params 'all' is unknown"):
        recount(rows, params="all")
    with pytest.raises(InputError, match="row 1 has no params_total"):
        recount([_ok(0)], params="total")


def test_a_torn_last_line_is_ignored_but_a_bad_middle_line_is_an_error(tmp_path):
    good = "".join(json.dumps(_ok(i)) + "\n" for i in range(5))
    path = tmp_path / "results.jsonl"
    path.write_text(good + '{"id": "p5", "par')
    assert len(load_rows(str(path))) == 5
    path.write_text('{"id": "p5", "par\n' + good)
    with pytest.raises(InputError, match="results.jsonl:1: not valid JSON"):
        load_rows(str(path))


def test_csv_with_optional_columns(tmp_path):
    path = tmp_path / "r.csv"
    path.write_text(
        "params,tokens,loss,flops,budget,status\n"
        "1000,1000000,3.0,,,\n"
        "2000,1000000,2.9,1.3e10,1e10,ok\n"
        "3000,1000000,,,,failed\n"
    )
    rows = load_rows(str(path))
    assert rows[0] == {"params": 1000, "tokens": 1000000, "loss": 3.0, "flops": None} | {
        "budget": None,
        "status": None,
    }
    assert rows[1]["flops"] == 1.3e10 and rows[1]["budget"] == 1e10
    assert rows[2]["status"] == "failed" and rows[2]["loss"] is None


def test_csv_without_a_required_column(tmp_path):
    path = tmp_path / "r.csv"
    path.write_text("params,loss\n1,2\n")
    with pytest.raises(InputError, match="lacks column.*tokens"):
        load_rows(str(path))


def test_missing_file():
    with pytest.raises(InputError, match="no such file"):
        load_rows("/nonexistent/results.jsonl")


def test_fewer_than_five_usable_points():
    rows = [_ok(i) for i in range(4)] + [_ok(9, status="failed")]
    with pytest.raises(InputError, match="only 4 usable point"):
        to_points(rows)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"loss": None}, "no 'loss'"),
        ({"loss": float("nan")}, "finite and positive"),
        ({"tokens": -5}, "finite and positive"),
        ({"params": "big"}, "not a number"),
    ],
)
def test_bad_values_in_a_usable_row(change, message):
    rows = [_ok(i) for i in range(6)]
    rows[3] |= change
    with pytest.raises(InputError, match=message):
        to_points(rows)
