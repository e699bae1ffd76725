"""Producers: change feeds (CRM changelog, Exchange SyncFolderItems) → event rows → Celery messages.

They decide nothing about the other side (DESIGN.md §1): a change becomes a durable, deduplicated
event row in the state database, its id is published as a Celery task, and the row is marked
published. Imports ``crmsync`` and ``schemas`` only, never ``workers``.
"""

from producers.crm_feed import CrmProducer
from producers.doorbells import CombinedDoorbell, NullDoorbell, PostgresListenDoorbell, SqliteFileDoorbell
from producers.exchange_feed import ExchangeProducer
from producers.loop import ProducerLoop
from producers.publisher import CeleryPublisher
from producers.redrive import redrive

__all__ = [
    "CeleryPublisher",
    "CombinedDoorbell",
    "CrmProducer",
    "ExchangeProducer",
    "NullDoorbell",
    "PostgresListenDoorbell",
    "ProducerLoop",
    "SqliteFileDoorbell",
    "redrive",
]
