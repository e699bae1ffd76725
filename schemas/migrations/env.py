"""Alembic environment for the state database, driven programmatically (no alembic.ini).

``crmsync.adapters.database.init_state`` passes an open connection in ``config.attributes["connection"]``
so that migrations run on the engine crmsync configured (WAL, busy timeout, psycopg 3). The
version table is crmsync's own, so a state database shared with another Alembic project (or the
CRM database itself) does not collide with its ``alembic_version``.
"""

from __future__ import annotations

from alembic import context

from schemas.state_tables import state_metadata

VERSION_TABLE = "crmsync_alembic_version"

config = context.config


def _run(connection) -> None:  # type: ignore[no-untyped-def]
    context.configure(
        connection=connection,
        target_metadata=state_metadata,
        version_table=VERSION_TABLE,
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    context.configure(
        url=config.get_main_option("sqlalchemy.url"),
        target_metadata=state_metadata,
        version_table=VERSION_TABLE,
        literal_binds=True,
    )
    with context.begin_transaction():
        context.run_migrations()
else:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
    else:
        from sqlalchemy import create_engine  # only for the plain alembic CLI with sqlalchemy.url

        engine = create_engine(config.get_main_option("sqlalchemy.url"))
        try:
            with engine.connect() as conn:
                _run(conn)
                conn.commit()
        finally:
            engine.dispose()
