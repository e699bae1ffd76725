"""The state database adapter (SqlStateStore): links, event log, cursors, conflicts."""
