"""The CRM side: the SQLAlchemy adapter (SqlCrm) and the changelog reader (Changelog)."""
