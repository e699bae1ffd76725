"""The state database: links, the event log, cursors and conflicts (SQLAlchemy)."""
