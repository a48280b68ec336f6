"""scaling.compare: sweeps side by side, on rows from a known law."""

import json

from scaling import compare


def _rows(path):
    """A 4 x 4 grid following E + A/N^0.4 + B/D^0.3 exactly (the additive form is right)."""
    rows = []
    for n in (1e4, 3e4, 1e5, 3e5):
        for d in (1e6, 3e6, 1e7, 3e7):
            loss = 1.5 + 40 / n**0.4 + 200 / d**0.3
            rows.append({"params": n, "params_total": 2 * n, "tokens": d, "loss": loss})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_compare_prints_one_row_per_sweep_with_the_extrapolation_errors(tmp_path, capsys):
    path = _rows(tmp_path / "results.jsonl")
    assert compare.main([f"exact={path}", f"N = total={path}@total,6nd"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 4 and lines[2].startswith("| exact |")
    cells = [c.strip() for c in lines[2].strip("|").split("|")]
    assert cells[2] == "0.0%"  # the additive form extrapolates its own law exactly
    assert (float(cells[5]), float(cells[6])) == (0.4, 0.3)
    assert lines[3].startswith("| N = total |")  # the label may hold '='


def test_compare_bad_argument_exits_2_with_one_line(tmp_path, capsys):
    path = _rows(tmp_path / "results.jsonl")
    assert compare.main([f"x={path}@total,flopz"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--compute 'flopz' is unknown" in err
    assert compare.main(["no-label"]) == 2
    assert "LABEL=RESULTS" in capsys.readouterr().err
