"""The graded judge (prefs/judge.py `grade`): each part pinned by a hand-written body."""

import pytest

from prefs.judge import MAX_LINES, WEIGHTS, grade

HEADER = "def area(width, height):\n"
DOC = "Return the area of a rectangle."


def test_a_complete_body_earns_every_part():
    g = grade(HEADER, "    return width * height\n", DOC)
    assert {k: g[k] for k in WEIGHTS} == dict.fromkeys(WEIGHTS, 1.0)
    assert g["score"] == pytest.approx(1.0)


def test_parameters_count_by_the_fraction_read():
    g = grade(HEADER, "    return width * 2\n", DOC)
    assert g["params"] == 0.5
    assert g["score"] == pytest.approx(1.0 - 0.5 * WEIGHTS["params"])
    # self and cls are not parameters the body must read; no parameter at all: full marks
    assert grade("def f(self, x):\n", "    return x\n")["params"] == 1.0
    assert grade("def f():\n", "    return 1\n")["params"] == 1.0
    # a parameter that is only assigned, never read, does not count
    assert grade("def f(x):\n", "    x = 1\n    return 2\n")["params"] == 0.0


@pytest.mark.parametrize(
    "body", ["    pass\n", "    ...\n", "    'todo'\n", "    raise NotImplementedError\n"]
)
def test_a_placeholder_body_is_trivial(body):
    g = grade(HEADER, body, DOC)
    assert g["parses"] == 1.0 and g["nontrivial"] == 0.0 and g["returns"] == 0.0
    # parses 0.4 + length 0.1; no parameter read, nothing done, nothing returned
    assert g["score"] == pytest.approx(WEIGHTS["parses"] + WEIGHTS["length"])


def test_a_value_is_required_only_where_one_is_promised():
    body = "    print(width, height)\n"
    assert grade(HEADER, body, DOC)["returns"] == 0.0  # the docstring promises a value
    assert grade(HEADER, body, "Print the sides.")["returns"] == 1.0
    assert grade("def f(x) -> int:\n", "    print(x)\n")["returns"] == 0.0  # the annotation
    assert grade("def f(x) -> None:\n", "    print(x)\n", "Return nothing.")["returns"] == 1.0
    assert grade(HEADER, "    print(width, height)\n    return\n", DOC)["returns"] == 0.0


def test_length_within_reason():
    assert grade(HEADER, "", DOC)["length"] == 0.0
    long = "".join(f"    v{i} = width\n" for i in range(MAX_LINES)) + "    return height\n"
    assert grade(HEADER, long, DOC)["length"] == 0.0
    assert grade(HEADER, long, DOC)["parses"] == 1.0


def test_a_body_that_breaks_is_judged_on_its_longest_parsing_prefix():
    g = grade(HEADER, "    w = width * height\n    return w +\n", DOC)
    assert g["parses"] == 0.0
    # the prefix `w = width * height` reads both parameters and does something, returns nothing
    assert (g["params"], g["nontrivial"], g["returns"], g["length"]) == (1.0, 1.0, 0.0, 1.0)
    assert g["score"] == pytest.approx(0.2 + 0.15 + 0.1)
    nothing = grade(HEADER, "    return (\n", DOC)  # no prefix parses
    assert nothing["score"] == pytest.approx(WEIGHTS["length"])  # one non-blank line
