"""Alembic's environment for Inspect's schema: run on the connection core.db.migrate hands over."""

from alembic import context
from sqlalchemy import create_engine

from core.db.schema import metadata

config = context.config
connection = config.attributes.get("connection")


def _run(con) -> None:  # noqa: ANN001 - a SQLAlchemy Connection
    # batch mode: SQLite cannot ALTER most things in place; Alembic copies the table instead
    context.configure(connection=con, target_metadata=metadata, render_as_batch=con.dialect.name == "sqlite")
    with context.begin_transaction():
        context.run_migrations()


if connection is not None:
    _run(connection)
else:  # `alembic -x` use from a shell: the URL from alembic's own configuration
    with create_engine(config.get_main_option("sqlalchemy.url")).connect() as con:
        _run(con)
