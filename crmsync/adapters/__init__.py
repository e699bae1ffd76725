"""Adapters behind the ports of crmsync.ports: ``crm/`` (SQLAlchemy), ``exchange/`` (EWS),
``state/`` (the state store, SQLAlchemy), and ``database`` (engines and transactions they share)."""
