"""The inspection history, as the first SQLite histories had it plus every column added since.

A history written before schema versions existed (an ``inspections`` table, no ``alembic_version``)
is adopted in place: the columns it lacks are added, nullable, and nothing is rewritten.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

_ID = sa.BigInteger().with_variant(sa.Integer, "sqlite")


def _columns() -> list[sa.Column]:
    return [
        sa.Column("id", _ID, primary_key=True, autoincrement=True),
        sa.Column("created_at", sa.Text, nullable=False),
        sa.Column("file_name", sa.Text, nullable=False),
        sa.Column("sha256", sa.Text, nullable=False),
        sa.Column("category", sa.Text, nullable=False),
        sa.Column("model", sa.Text, nullable=False),
        sa.Column("score", sa.Float, nullable=False),
        sa.Column("threshold", sa.Float, nullable=False),
        sa.Column("verdict", sa.Text, sa.CheckConstraint("verdict IN ('GOOD', 'DEFECT')"), nullable=False),
        sa.Column("raw_score", sa.Float),
        sa.Column("thumbnail_path", sa.Text),
        sa.Column(
            "feedback",
            sa.Text,
            sa.CheckConstraint("feedback IS NULL OR feedback IN ('correct', 'false_alarm', 'missed_defect')"),
        ),
        sa.Column("comment", sa.Text),
        sa.Column("defect_type", sa.Text),
        sa.Column("point_id", sa.Text),
        sa.Column("model_version", sa.Text),
        sa.Column("wrong_category", sa.Integer),
        sa.Column("station", sa.Text),
        sa.Column("request_key", sa.Text),
    ]


def upgrade() -> None:
    inspector = sa.inspect(op.get_bind())
    if "inspections" not in inspector.get_table_names():
        op.create_table("inspections", *_columns(), sqlite_autoincrement=True)
        indexes: set[str] = set()
    else:  # an older history: add what it lacks (nullable: its rows have no value for it)
        existing = {c["name"] for c in inspector.get_columns("inspections")}
        for column in _columns():
            if column.name not in existing:
                op.add_column("inspections", sa.Column(column.name, column.type, nullable=True))
        indexes = {ix["name"] for ix in inspector.get_indexes("inspections")}
    if "ix_inspections_created" not in indexes:
        op.create_index("ix_inspections_created", "inspections", ["created_at"])
    if "ix_inspections_cat_model" not in indexes:
        op.create_index("ix_inspections_cat_model", "inspections", ["category", "model"])
    if "ux_inspections_request_key" not in indexes:
        where = sa.text("request_key IS NOT NULL")
        op.create_index(
            "ux_inspections_request_key",
            "inspections",
            ["request_key"],
            unique=True,
            sqlite_where=where,
            postgresql_where=where,
        )


def downgrade() -> None:
    op.drop_table("inspections")
