"""Adapters of the two sides (ports in crmsync.ports): crm/ (SQLAlchemy) and exchange/ (EWS)."""
