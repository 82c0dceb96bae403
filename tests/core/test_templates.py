"""Property tests for the small languages integrators write: message templates, durations and
priorities."""

from __future__ import annotations

import operator
import re

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from annunciator.core.alarms import Priority, render_message
from annunciator.core.config import MAX_DURATION, parse_duration

NAMES = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,12}", fullmatch=True)
VALUES = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(),
                   st.sampled_from(list(Priority)))
VALUE_MAPS = st.dictionaries(NAMES, VALUES, max_size=6)


def shown(value: object) -> str:
    return "" if value is None else str(value)


# --- render_message ------------------------------------------------------------------------------

@given(st.text(), VALUE_MAPS)
@example("{", {})
@example("}", {})
@example("{{{a}}}", {"a": 1})
@example("{a}}", {"a": "{"})
def test_render_never_raises(template, values):
    assert isinstance(render_message(template, values), str)


@given(st.text().filter(lambda t: "{" not in t and "}" not in t), VALUE_MAPS)
def test_text_without_braces_is_unchanged(template, values):
    assert render_message(template, values) == template


@given(st.lists(st.one_of(st.text(alphabet=st.characters(blacklist_characters="{}")),
                          st.sampled_from(["{{", "}}"]))), VALUE_MAPS)
def test_doubled_braces_are_literal(parts, values):
    template = "".join(parts)
    expected = "".join({"{{": "{", "}}": "}"}.get(p, p) for p in parts)
    assert render_message(template, values) == expected


@given(NAMES, VALUE_MAPS)
def test_escaped_placeholder_is_not_expanded(name, values):
    values[name] = "VALUE"
    assert render_message("{{" + name + "}}", values) == "{" + name + "}"


@given(NAMES, VALUES, st.text(alphabet=st.characters(blacklist_characters="{}")),
       st.text(alphabet=st.characters(blacklist_characters="{}")))
def test_known_name_is_replaced(name, value, before, after):
    assert render_message(f"{before}{{{name}}}{after}", {name: value}) == before + shown(value) + after


@given(NAMES, VALUE_MAPS)
def test_unknown_name_stays_as_written(name, values):
    values.pop(name, None)
    assert render_message(f"alarm {{{name}}} here", values) == f"alarm {{{name}}} here"


@given(st.text(alphabet=".[]0a -", max_size=12))
def test_anything_but_a_bare_name_stays_as_written(inner):
    # only {name} is a placeholder: {a.b}, {a[0]}, { a } and friends are text
    template = "{" + inner + "}"
    if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", inner):
        return
    values = {"a": "X", "a.b": "X", "0": "X"}
    assert "X" not in render_message(template, values)


@given(st.dictionaries(NAMES, st.text(), min_size=1, max_size=6), st.data())
def test_values_are_never_expanded_again(values, data):
    # every value is itself a template naming other values: they must come out verbatim
    names = list(values)
    for name in names:
        other = data.draw(st.sampled_from(names))
        values[name] = data.draw(st.sampled_from(["{" + other + "}", "{{" + other + "}}",
                                                  values[name] + "{" + other + "}"]))
    template = " ".join("{" + n + "}" for n in names)
    assert render_message(template, values) == " ".join(values[n] for n in names)


def test_render_examples():
    values = {"displayPath": "Plant/Pump 1", "eventValue": 42, "empty": None, "x": "{y}", "y": "no"}
    assert render_message("{displayPath} = {eventValue}", values) == "Plant/Pump 1 = 42"
    assert render_message("[{empty}] {x} {{x}} {missing} {a.b} {0}", values) == "[] {y} {x} {missing} {a.b} {0}"


# --- parse_duration -------------------------------------------------------------------------------

@given(st.integers(0, 1000), st.integers(0, 10000), st.integers(0, 100000),
       st.sampled_from(["", " "]), st.booleans())
def test_duration_round_trip(h, m, s, sep, upper):
    text = sep.join([f"{h}h", f"{m}m", f"{s}s"])
    if upper:
        text = text.upper()
    assert parse_duration(text) == h * 3600 + m * 60 + s


@given(st.lists(st.tuples(st.integers(0, 10**4), st.sampled_from(["ms", "s", "m", "h", "d"])),
                min_size=1, max_size=5))
def test_duration_parts_add_up(parts):
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}
    text = "".join(f"{n}{u}" for n, u in parts)
    total = sum(n * units[u] for n, u in parts)
    if total > MAX_DURATION:
        with pytest.raises(ValueError, match="at most 100 years"):
            parse_duration(text)
    else:
        assert parse_duration(text) == pytest.approx(total)


@given(st.one_of(st.integers(0, 10**8), st.floats(0, 10**8, allow_nan=False)))
def test_bare_numbers_are_seconds(n):
    assert parse_duration(n) == float(n)
    assert parse_duration(repr(float(n))) == float(n)


GARBAGE = st.one_of(
    st.text(alphabet=st.characters(blacklist_categories=["Nd"]), min_size=0).filter(
        lambda t: t.strip().lower() not in ("nan", "inf", "infinity", "+inf", "-inf", "+nan", "-nan")),
    st.from_regex(r"[0-9]+(ms|s|m|h|d)[xyz!?/-][0-9]*", fullmatch=True),
    st.from_regex(r"(ms|s|m|h|d)[0-9]+", fullmatch=True),
    st.from_regex(r"-[0-9]+(ms|s|m|h|d)?", fullmatch=True).filter(lambda t: t.strip("-0") != ""),
    st.sampled_from(["nan", "inf", "-inf", "1e999", "1..5s", "5 parsecs", "soon", "1h30", "h", ""]),
    st.booleans(), st.none(), st.lists(st.integers()),
)


@given(GARBAGE)
def test_garbage_durations_raise_value_error(value):
    with pytest.raises(ValueError, match="expected a duration"):
        parse_duration(value)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -1, -0.5, "99999999999d", 10**12])
def test_unusable_numbers_are_refused(value):
    with pytest.raises(ValueError, match="expected a duration"):
        parse_duration(value)


# --- Priority -----------------------------------------------------------------------------------

def random_case(draw, text: str) -> str:
    return "".join(c.upper() if draw(st.booleans()) else c.lower() for c in text)


@given(st.sampled_from(list(Priority)), st.data(), st.sampled_from(["", " ", "\t"]))
def test_priority_parses_its_name_in_any_case(priority, data, pad):
    name = pad + data.draw(st.builds(lambda bits: "".join(
        c.upper() if b else c.lower() for c, b in zip(priority.name, bits, strict=False)),
        st.lists(st.booleans(), min_size=len(priority.name), max_size=len(priority.name)))) + pad
    assert Priority.parse(name) is priority
    assert Priority.parse(str(int(priority))) is priority
    assert Priority.parse(int(priority)) is priority
    assert Priority.parse(priority) is priority
    assert str(priority) == priority.label == priority.name.capitalize()


NOT_A_PRIORITY = st.text().filter(lambda t: t.strip().upper() not in Priority.__members__
                                  and t.strip() not in ("0", "1", "2", "3", "4"))


@given(st.one_of(NOT_A_PRIORITY, st.integers().filter(lambda n: not 0 <= n <= 4),
                 st.integers().filter(lambda n: not 0 <= n <= 4).map(str), st.booleans(), st.none(),
                 st.floats()))
@example("7")
@example(-1)
@example("²")
def test_priority_refuses_anything_else_saying_what_it_expects(value):
    with pytest.raises(ValueError, match=r"expected a priority \(Diagnostic, Low, Medium, High, Critical or 0-4\)"):
        Priority.parse(value)


COMPARISONS = [operator.lt, operator.le, operator.gt, operator.ge, operator.eq, operator.ne]


@given(st.sampled_from(list(Priority)), st.sampled_from(list(Priority)), st.sampled_from(COMPARISONS),
       st.sampled_from(["enum", "int", "label", "upper", "lower", "digits"]))
def test_priority_ordering_matches_ints(a, b, op, form):
    other = {"enum": b, "int": int(b), "label": b.label, "upper": b.name, "lower": b.name.lower(),
             "digits": str(int(b))}[form]
    assert op(a, other) == op(int(a), int(b))


@given(st.lists(st.sampled_from(list(Priority))))
def test_priorities_sort_like_ints(items):
    assert [int(p) for p in sorted(items)] == sorted(int(p) for p in items)


@given(st.sampled_from(list(Priority)), NOT_A_PRIORITY)
def test_priority_against_unknown_text(priority, text):
    assert (priority == text) is False
    assert (priority != text) is True
    with pytest.raises(TypeError, match="cannot compare priority"):
        _ = priority < text
