"""Celery workers: thin tasks around crmsync.service.apply."""
