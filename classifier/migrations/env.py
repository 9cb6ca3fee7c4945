"""Alembic's environment for the feedback store: run by :meth:`classifier.feedback.FeedbackStore.migrate`, which
passes the connection (inside its transaction, under its lock) as ``config.attributes["connection"]``.

To write a new migration (a developer's step, not a deployment's): add a file to ``versions/`` by hand or with
``alembic -c classifier/migrations/alembic.ini revision -m "what changes"``, change ``classifier.feedback.events``
to match, and run tests/test_feedback.py (it checks that the two agree, on SQLite and PostgreSQL).
"""

from __future__ import annotations

from alembic import context

from classifier.feedback import metadata

connection = context.config.attributes.get("connection")
if connection is None:  # the alembic command line: a URL from alembic.ini or -x url=...
    import sqlalchemy as sa

    url = context.get_x_argument(as_dictionary=True).get("url") or context.config.get_main_option("sqlalchemy.url")
    if not url:
        raise SystemExit("give the database: alembic -c classifier/migrations/alembic.ini -x url=sqlite:///PATH ...")
    engine = sa.create_engine(url)
    with engine.begin() as connection:
        context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
        context.run_migrations()
else:
    # render_as_batch: SQLite alters a table by copying it; Alembic's batch mode does that where needed.
    context.configure(connection=connection, target_metadata=metadata, render_as_batch=True,
                      transaction_per_migration=False)
    with context.begin_transaction():
        context.run_migrations()
