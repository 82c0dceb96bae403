"""Database tables (SQLAlchemy Core). Alembic migrations in ``migrations/`` create them."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.types import TypeDecorator

metadata = sa.MetaData()


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC on every backend (SQLite hands back naive datetimes)."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("naive datetime given to the store")
        return value.astimezone(UTC) if value is not None else None

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value


ID = sa.String(32)


def narrow(q: Any, table: sa.Table, since: datetime | None, until: datetime | None, **equal: Any) -> Any:
    """A query limited to rows whose ``ts`` is in [since, until] and whose named columns equal the
    values given (a None or empty value adds no condition): the journal and audit filters."""
    for name, value in equal.items():
        if value not in (None, ""):
            q = q.where(table.c[name] == value)
    if since:
        q = q.where(table.c.ts >= since)
    if until:
        q = q.where(table.c.ts <= until)
    return q

users = sa.Table(
    "users", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("username", sa.String(200), nullable=False, unique=True),
    sa.Column("name", sa.String(200), nullable=False, default=""),
    sa.Column("language", sa.String(40), nullable=False, default="en-US"),
    sa.Column("contacts", sa.JSON, nullable=False, default=dict),
    sa.Column("pin_hash", sa.String(64)),
    sa.Column("pin_salt", sa.String(64)),
    sa.Column("pin_failures", sa.Integer, nullable=False, default=0),
    sa.Column("locked_until", UTCDateTime),
    sa.Column("pin_failed_at", UTCDateTime),  # the first wrong PIN of the current window
    sa.Column("pin_expires", UTCDateTime),  # None: the PIN does not expire (gateway.pins.expire_after)
    sa.Column("pin_reminded", UTCDateTime),  # the expiry the person was last reminded of
)

alarm_events = sa.Table(
    "alarm_events", metadata,
    sa.Column("id", ID, primary_key=True),
    sa.Column("source", sa.String(500), nullable=False, index=True),
    sa.Column("display_path", sa.String(500), nullable=False),
    sa.Column("name", sa.String(500), nullable=False),
    sa.Column("label", sa.String(500), nullable=False),
    sa.Column("priority", sa.Integer, nullable=False),
    sa.Column("event_value", sa.JSON),
    sa.Column("notes", sa.Text, nullable=False, default=""),
    sa.Column("ack_mode", sa.String(10), nullable=False),
    sa.Column("ack_notes_required", sa.Boolean, nullable=False),
    sa.Column("properties", sa.JSON, nullable=False),
    sa.Column("pipelines", sa.JSON, nullable=False),
    sa.Column("active_time", UTCDateTime, nullable=False, index=True),
    sa.Column("clear_time", UTCDateTime),
    sa.Column("ack_time", UTCDateTime),
    sa.Column("ack_user", sa.String(200)),
    sa.Column("ack_notes", sa.Text),
    sa.Column("shelved", sa.Boolean, nullable=False, default=False),
    sa.Column("ack_code", sa.Integer),
    # cleared and acknowledged: loaded no more at start
    sa.Column("done", sa.Boolean, nullable=False, default=False, index=True),
)

# The last line of defence when two gateways ever both think they are active (each node's memory
# is fenced first, by the cluster lease): one open event per source, one open event per ack code.
sa.Index("uq_open_event_per_source", alarm_events.c.source, unique=True,
         sqlite_where=alarm_events.c.clear_time.is_(None), postgresql_where=alarm_events.c.clear_time.is_(None))
sa.Index("uq_open_ack_code", alarm_events.c.ack_code, unique=True,
         sqlite_where=sa.and_(alarm_events.c.done.is_(False), alarm_events.c.ack_code.isnot(None)),
         postgresql_where=sa.and_(alarm_events.c.done.is_(False), alarm_events.c.ack_code.isnot(None)))

journal = sa.Table(
    "journal", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("event_id", ID, index=True),
    sa.Column("source", sa.String(500), nullable=False),
    sa.Column("ts", UTCDateTime, nullable=False, index=True),
    sa.Column("action", sa.String(40), nullable=False),
    sa.Column("user", sa.String(200)),
    sa.Column("notes", sa.Text),
)

shelves = sa.Table(
    "shelves", metadata,
    sa.Column("source", sa.String(500), primary_key=True),
    sa.Column("expires_at", UTCDateTime, nullable=False),
    sa.Column("user", sa.String(200)),
    sa.Column("notes", sa.Text),
    sa.Column("created", UTCDateTime, nullable=False),
)

pipeline_instances = sa.Table(
    "pipeline_instances", metadata,
    sa.Column("id", ID, primary_key=True),
    sa.Column("event_id", ID, nullable=False, index=True),
    sa.Column("pipeline", sa.String(200), nullable=False),
    sa.Column("status", sa.String(20), nullable=False, index=True),
    sa.Column("branches", sa.JSON, nullable=False),
    sa.Column("properties", sa.JSON, nullable=False),
    sa.Column("created", UTCDateTime, nullable=False),
    sa.Column("updated", UTCDateTime, nullable=False),
    sa.Column("ended", UTCDateTime),
    sa.Column("end_reason", sa.Text),
)

# The trace: what the engine did, line by line (block entered, left, why). Lines are stored one
# row per instance per commit ("run"), not one row per line: a single alarm's pass through a
# pipeline writes five lines, and per-line rows were a third of all rows written.
trace_runs = sa.Table(
    "trace_runs", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("instance_id", ID, nullable=False, index=True),
    sa.Column("event_id", ID, nullable=False, index=True),
    sa.Column("ts", UTCDateTime, nullable=False),
    # [[iso time, branch, block, action, why], ...]
    sa.Column("lines", sa.JSON, nullable=False),
)

notifications = sa.Table(
    "notifications", metadata,
    sa.Column("id", ID, primary_key=True),
    sa.Column("idempotency_key", sa.String(200), nullable=False, unique=True),
    sa.Column("event_ids", sa.JSON, nullable=False),
    sa.Column("instance_id", ID, index=True),
    sa.Column("pipeline", sa.String(200)),
    sa.Column("block", sa.String(200)),
    sa.Column("username", sa.String(200), nullable=False),
    sa.Column("profile", sa.String(200), nullable=False),
    sa.Column("contact_type", sa.String(40)),
    sa.Column("contact", sa.String(500)),
    sa.Column("message", sa.Text, nullable=False),
    sa.Column("status", sa.String(20), nullable=False, index=True),
    sa.Column("attempts", sa.Integer, nullable=False, default=0),
    sa.Column("last_error", sa.Text),
    sa.Column("provider_id", sa.String(200), index=True),  # delivery callbacks find it by this
    sa.Column("created", UTCDateTime, nullable=False),
    sa.Column("updated", UTCDateTime, nullable=False),
    sa.Column("sent_at", UTCDateTime),
    # consolidation: a "held" notification collects events under batch_key until due_at
    sa.Column("batch_key", sa.String(600), index=True),
    sa.Column("due_at", UTCDateTime),
    # channel fallback: chain_id is the first notification of the chain, chain the profiles left
    sa.Column("chain_id", ID, index=True),
    sa.Column("chain", sa.JSON),
    # [{"at": iso, "ok": bool, "error": str|None, "providerId": str|None, "status": str}, ...]
    sa.Column("attempt_log", sa.JSON),
    sa.Column("delivery_status", sa.String(40)),
    # durable retries: the next attempt of a waiting notification (re-armed at start), and when
    # it is given up if its channel never recovers (inherited along its fallback chain)
    sa.Column("next_attempt_at", UTCDateTime),
    sa.Column("expires_at", UTCDateTime),
)

# Temporary on-call overrides made at run time ("maria covers for li until Monday 08:00");
# overrides written in the config file are not stored here.
oncall_overrides = sa.Table(
    "oncall_overrides", metadata,
    sa.Column("id", ID, primary_key=True),
    sa.Column("roster", sa.String(200)),  # None: every roster the covered user is in
    sa.Column("username", sa.String(200), nullable=False),  # who is on call
    sa.Column("covers", sa.String(200)),  # whom they replace; None: added to the roster
    sa.Column("starts", UTCDateTime, nullable=False),
    sa.Column("ends", UTCDateTime, nullable=False, index=True),
    sa.Column("created", UTCDateTime, nullable=False),
    sa.Column("created_by", sa.String(200)),
    sa.Column("notes", sa.Text),
    sa.Column("deleted", sa.Boolean, nullable=False, default=False),
)

# The audit log: one row per thing that happened to a person's notification or reply, with an
# event code (NotificationSent, NotificationFailed, SMSReply, ReplyWithPIN, ...).
audit = sa.Table(
    "audit", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("ts", UTCDateTime, nullable=False, index=True),
    sa.Column("code", sa.String(60), nullable=False, index=True),
    sa.Column("username", sa.String(200), index=True),
    sa.Column("channel", sa.String(200)),
    sa.Column("contact", sa.String(500)),
    sa.Column("text", sa.Text),
    sa.Column("event_ids", sa.JSON),
    sa.Column("notification_id", ID, index=True),
    sa.Column("details", sa.JSON),
)


# Two-way messaging: every inbound and outbound text (SMS today) per (our number, their number),
# so conversations can be shown and replayed webhooks recognised by their provider id.
messages = sa.Table(
    "messages", metadata,
    sa.Column("id", sa.String(64), primary_key=True),  # the provider's id (Twilio SM…) when it has one
    sa.Column("channel", sa.String(20), nullable=False),  # "sms"
    sa.Column("direction", sa.String(3), nullable=False),  # "in" | "out"
    sa.Column("provider_id", sa.String(64), unique=True),  # Twilio MessageSid
    sa.Column("account", sa.String(200)),
    sa.Column("pool", sa.String(200)),
    sa.Column("our_number", sa.String(40), index=True),
    sa.Column("their_number", sa.String(40), nullable=False, index=True),
    sa.Column("username", sa.String(200), index=True),
    sa.Column("body", sa.Text, nullable=False),
    sa.Column("status", sa.String(20)),
    sa.Column("error", sa.Text),
    sa.Column("event_ids", sa.JSON),
    sa.Column("notification_id", ID),
    sa.Column("duration", sa.Integer),  # seconds, for calls
    sa.Column("created", UTCDateTime, nullable=False, index=True),
    sa.Column("updated", UTCDateTime, nullable=False),
    sa.Column("read", sa.Boolean, nullable=False, default=False),
    sa.Column("deleted", sa.Boolean, nullable=False, default=False),
)

# Numbers that opted out (STOP) of one sender pool, or of all ("*": STOPALL, or the provider said so).
opt_outs = sa.Table(
    "opt_outs", metadata,
    sa.Column("id", sa.String(250), primary_key=True),  # "<number>|<scope>"
    sa.Column("number", sa.String(40), nullable=False, index=True),
    sa.Column("scope", sa.String(200), nullable=False),
    sa.Column("active", sa.Boolean, nullable=False),  # False once the number sent START
    sa.Column("source", sa.String(40), nullable=False),  # "keyword" | "provider" | "admin"
    sa.Column("created", UTCDateTime, nullable=False),
    sa.Column("updated", UTCDateTime, nullable=False),
)

# After a correct PIN a person may act by SMS without it until the session expires.
pin_sessions = sa.Table(
    "pin_sessions", metadata,
    sa.Column("username", sa.String(200), primary_key=True),
    sa.Column("expires", UTCDateTime, nullable=False),
)


# --- several gateways on one PostgreSQL database (core.cluster, docs/ha.md) -------------------

# One row (id 1): who is active, since which epoch, and when the lease was last renewed (in the
# database's clock, so nodes' clocks never matter). Every write transaction of the active checks
# it (fencing): an old active that wakes after another took over can commit nothing.
cluster_lease = sa.Table(
    "cluster_lease", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("epoch", sa.BigInteger, nullable=False),
    sa.Column("holder", sa.String(64)),  # cluster_nodes.id of the active; None: released
    sa.Column("holder_name", sa.String(200)),
    sa.Column("address", sa.String(500)),  # where the other nodes forward writes to
    sa.Column("renewed", UTCDateTime),
    sa.Column("lease", sa.Float, nullable=False),  # seconds
)

# Every node (one row per process start), with its heartbeat: what `annunciator cluster` lists.
cluster_nodes = sa.Table(
    "cluster_nodes", metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("address", sa.String(500), nullable=False),
    sa.Column("public_url", sa.String(500), nullable=False),  # what Twilio signs webhooks to it with
    sa.Column("host", sa.String(200), nullable=False),
    sa.Column("pid", sa.Integer, nullable=False),
    sa.Column("identity", sa.String(300)),  # host|boot|pid namespace|pid|start: is it gone? (same host)
    sa.Column("version", sa.String(40), nullable=False),
    sa.Column("role", sa.String(20), nullable=False),  # standby | active | stopped
    sa.Column("epoch", sa.BigInteger),  # of its latest term as active
    sa.Column("started", UTCDateTime, nullable=False),
    sa.Column("heartbeat", UTCDateTime, nullable=False, index=True),
)

# Secrets every node must share (PIN hashes and console cookies are keyed by "gateway"): on
# PostgreSQL the first node stores its secret file's key here and every node uses it.
shared_secrets = sa.Table(
    "shared_secrets", metadata,
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("value", sa.Text, nullable=False),
    sa.Column("created", UTCDateTime, nullable=False),
)

# Console sessions signed out before their cookie expires: kept so another node (after a
# failover or a restart) refuses the cookie too.
console_revocations = sa.Table(
    "console_revocations", metadata,
    sa.Column("sid", sa.String(64), primary_key=True),
    sa.Column("until", UTCDateTime, nullable=False, index=True),
)
