"""The relational store: one data layer (SQLAlchemy Core) over SQLite and PostgreSQL.

``INSPECT_DATABASE_URL`` chooses the engine. Without it the history is an SQLite file in the
workspace, as on one PC; with ``postgresql://...`` the history, thumbnails, users, API keys and
job records of every line station and the dashboard live in one PostgreSQL database. The schema is
the same on both and is versioned by Alembic (:mod:`core.db.migrate`).
"""
