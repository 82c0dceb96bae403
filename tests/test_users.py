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
