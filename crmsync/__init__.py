"""crmsync: two-way sync of CRM accounts with Exchange contacts."""

__version__ = "0.1.0"
