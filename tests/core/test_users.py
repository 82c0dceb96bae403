"""PINs: keyed hashes only, constant-time checks, lockout after wrong tries."""

from __future__ import annotations

from datetime import timedelta

import sqlalchemy as sa

from annunciator.core import schema
from annunciator.core.alarms import utcnow
from annunciator.core.users import PinResult, User, check_pin, load_secret, set_pin


def test_pin_is_stored_only_as_keyed_hash(pipeline_gateway, annunciator_database_url):
    gw = pipeline_gateway({})
    engine = sa.create_engine(gw.gateway.store.url)
    with engine.connect() as conn:
        row = conn.execute(sa.select(schema.users).where(schema.users.c.username == "maria")).one()
    engine.dispose()
    assert row.pin_hash and "1234" not in row.pin_hash and len(row.pin_hash) == 64
    assert row.pin_salt and row.pin_salt not in row.pin_hash
    # the secret lives in a file outside the database
    assert gw.gateway.secret not in row.pin_hash.encode()


def test_same_pin_different_users_different_hashes(tmp_path):
    secret = load_secret(tmp_path / "secret.key")
    a, b = User("a"), User("b")
    set_pin(a, secret, "1234")
    set_pin(b, secret, "1234")
    assert a.pin_hash != b.pin_hash
    assert oct((tmp_path / "secret.key").stat().st_mode)[-3:] == "600"


def test_wrong_pins_lock_out_then_expire(tmp_path):
    secret = load_secret(tmp_path / "secret.key")
    u = User("maria")
    set_pin(u, secret, "1234")
    now = utcnow()
    assert check_pin(u, secret, "0000", now) == PinResult.WRONG
    assert check_pin(u, secret, "1111", now) == PinResult.WRONG
    assert check_pin(u, secret, "2222", now) == PinResult.LOCKED
    # locked: even the right PIN is refused
    assert check_pin(u, secret, "1234", now + timedelta(minutes=1)) == PinResult.LOCKED
    assert check_pin(u, secret, "1234", now + timedelta(minutes=16)) == PinResult.OK
    assert u.pin_failures == 0


def test_other_secret_does_not_verify(tmp_path):
    u = User("maria")
    set_pin(u, load_secret(tmp_path / "one.key"), "1234")
    assert check_pin(u, load_secret(tmp_path / "two.key"), "1234") == PinResult.WRONG


def test_set_pin_over_the_cli_and_api(pipeline_gateway, tmp_path):
    import os
    import subprocess
    import sys

    gw = pipeline_gateway({})
    env = {**os.environ, "ANNUNCIATOR_URL": gw.url, "ANNUNCIATOR_TOKEN": "test-token"}

    def cli(*args, stdin=""):
        return subprocess.run([sys.executable, "-m", "annunciator", "user", *args], input=stdin,
                              capture_output=True, text=True, env=env, timeout=60)

    r = cli("pin", "li", "--pin-stdin", stdin="98765\n")
    assert r.returncode == 0 and "PIN set for li" in r.stdout
    li = gw.gateway.directory.users["li"]
    assert check_pin(li, gw.gateway.secret, "98765") == PinResult.OK
    r = cli("pin", "li", "--pin-stdin", stdin="12ab\n")
    assert r.returncode == 1 and "pin" in r.stderr
    r = cli("pin", "nobody", "--pin-stdin", stdin="1234\n")
    assert r.returncode == 1 and "no user 'nobody'" in r.stderr

    async def three_wrong_pins():  # on the gateway's loop, which owns the store's queue
        for wrong in ("0000", "1111", "2222"):
            check_pin(li, gw.gateway.secret, wrong)
        gw.gateway.directory.save(li)

    gw.call(three_wrong_pins)
    listing = cli("list").stdout
    assert "LOCKED until" in next(line for line in listing.splitlines() if " li " in line)
    assert "98765" not in listing and li.pin_hash not in listing
    assert cli("unlock", "li").returncode == 0
    assert "LOCKED" not in cli("list").stdout
    assert check_pin(li, gw.gateway.secret, "98765") == PinResult.OK


def test_wrong_pins_are_counted_within_a_window(tmp_path):
    """Five within fifteen minutes lock out (the SMS profile's figures); older mistakes are forgotten."""
    secret = load_secret(tmp_path / "secret.key")
    u = User("maria")
    set_pin(u, secret, "1234")
    now = utcnow()
    rules = {"max_failures": 5, "lockout": timedelta(minutes=15)}
    for i in range(4):
        assert check_pin(u, secret, "0000", now + timedelta(minutes=i), **rules) == PinResult.WRONG
    # the fifth comes after the window of the first: the count starts again, no lockout
    later = now + timedelta(minutes=16)
    assert check_pin(u, secret, "0000", later, **rules) == PinResult.WRONG
    assert u.pin_failures == 1
    for i in range(1, 4):
        assert check_pin(u, secret, "0000", later + timedelta(minutes=i), **rules) == PinResult.WRONG
    assert check_pin(u, secret, "0000", later + timedelta(minutes=5), **rules) == PinResult.LOCKED
