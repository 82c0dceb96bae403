"""Alembic environment: the gateway passes its connection in ``config.attributes``."""

from alembic import context

from annunciator.core.schema import metadata

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations through annunciator.core.store.migrate()")

context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
