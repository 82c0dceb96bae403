"""``Retry-After`` as providers send it: seconds or an HTTP date (RFC 9110), from outside input."""

from __future__ import annotations

import email.utils
from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from annunciator.core.profiles import parse_retry_after

NOW = datetime(2026, 12, 2, 5, 0, 0, tzinfo=UTC)


@given(st.text(max_size=80))
def test_any_header_text_gives_seconds_or_none_and_never_raises(value):
    seconds = parse_retry_after(value, NOW)
    assert seconds is None or seconds >= 0


@given(st.integers(min_value=0, max_value=10**7))
def test_the_delay_form(seconds):
    assert parse_retry_after(str(seconds), NOW) == seconds
    assert parse_retry_after(f"  {seconds} ", NOW) == seconds


@given(st.integers(min_value=-10**6, max_value=10**7))
def test_the_http_date_forms_give_the_seconds_until_then(offset):
    when = NOW + timedelta(seconds=offset)
    expected = max(0, offset)
    imf = email.utils.format_datetime(when, usegmt=True)  # Wed, 02 Dec 2026 05:00:00 GMT
    rfc850 = when.strftime("%A, %d-%b-%y %H:%M:%S GMT")
    asctime = when.strftime("%a %b %d %H:%M:%S %Y").replace(" 0", "  ", 1) if when.day < 10 else \
        when.strftime("%a %b %d %H:%M:%S %Y")
    for form in (imf, rfc850, asctime):
        assert parse_retry_after(form, NOW) == expected, form


def test_nonsense_is_none():
    for value in (None, "", "soon", "nan", "inf", "-inf", "Wed, 99 Dec 2026 05:00:00 GMT"):
        assert parse_retry_after(value, NOW) is None, value
