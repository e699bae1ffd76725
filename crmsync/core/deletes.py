"""Delete rules and the delete brake (pure): what a delete may do, and when to hold them all.

A delete crossing to the other side is dangerous (DESIGN.md §3): it crosses only by policy, and
the brake holds every delete of a mailbox when, in one window, they number more than
``max_count``, or more than ``max_percent`` of the mailbox's synced links while numbering at
least ``min_count_for_percent`` (rclone's --max-delete). Whatever the brake's limits, the
empty-folder guard holds every delete that comes from a sync folder that has disappeared, or
reads empty while more than one link remains (vdirsyncer's empty-side guard): that is a folder
emptied or deleted, not a person deleting contacts one by one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

#: A contact deleted in Outlook: deactivate its CRM account (default), delete the account row
#: (``delete``; its secondary contacts with it), or only unlink the pair.
OnExchangeDelete = Literal["deactivate", "delete", "unlink"]
#: A CRM account deactivated or deleted: move its contact to Deleted Items (default, recoverable),
#: delete it for good (``hard-delete``), or only unlink the pair.
OnCrmDelete = Literal["move-to-deleted-items", "hard-delete", "unlink"]
ON_EXCHANGE_DELETE: tuple[str, ...] = ("deactivate", "delete", "unlink")
ON_CRM_DELETE: tuple[str, ...] = ("move-to-deleted-items", "hard-delete", "unlink")
#: What the sync folder reads as when deletes come from it: contacts in it, none, or no folder.
FolderState = Literal["ok", "empty", "missing"]
#: Why a delete is held: the brake's limits, or the empty-folder guard.
HoldReason = Literal["brake", "folder-empty", "folder-missing"]

#: The reasons as ``crmsync deletes list`` and ``crmsync status`` say them.
REASONS: dict[str, str] = {
    "brake": "too many deletes in the window (the delete brake)",
    "folder-empty": "the sync folder reads empty (the empty-folder guard)",
    "folder-missing": "the sync folder has disappeared (the empty-folder guard)",
}


def folder_guard(state: FolderState, synced_links: int) -> HoldReason | None:
    """The empty-folder guard: deletes read from a sync folder that has disappeared, or that
    reads empty while the mailbox still has at least two synced links (a folder emptied, not its
    last contact deleted), are held whatever the brake's thresholds. None: the brake decides."""
    if state == "empty" and synced_links >= 2:
        return "folder-empty"
    if state == "missing":
        return "folder-missing"
    return None


def reason_text(reason: str | None) -> str:
    """A held delete's reason for people (rows held before reasons were kept: the brake)."""
    return REASONS.get(reason or "brake", reason or "")


@dataclass(frozen=True)
class DeleteRules:
    """What a delete on one side does on the other, and the brake's limits."""

    on_exchange_delete: OnExchangeDelete = "deactivate"
    on_crm_delete: OnCrmDelete = "move-to-deleted-items"
    max_count: int = 25
    max_percent: float = 10.0
    min_count_for_percent: int = 5
    window_s: float = 3600.0

    def __post_init__(self) -> None:
        if self.on_exchange_delete not in ON_EXCHANGE_DELETE:
            raise ValueError(f"on_exchange_delete {self.on_exchange_delete!r} is not one of {', '.join(ON_EXCHANGE_DELETE)}")
        if self.on_crm_delete not in ON_CRM_DELETE:
            raise ValueError(f"on_crm_delete {self.on_crm_delete!r} is not one of {', '.join(ON_CRM_DELETE)}")

    def crosses(self, side: Literal["crm", "exchange"]) -> bool:
        """Whether a delete may land on ``side`` at all (``unlink``: it never does)."""
        return (self.on_exchange_delete if side == "crm" else self.on_crm_delete) != "unlink"

    @property
    def deletes_crm_rows(self) -> bool:
        """A contact deleted in Outlook deletes its CRM account row (not only deactivates it)."""
        return self.on_exchange_delete == "delete"

    @property
    def hard_deletes_contacts(self) -> bool:
        """A CRM delete removes the Outlook contact for good (not to Deleted Items)."""
        return self.on_crm_delete == "hard-delete"

    def trips(self, deletes: int, links: int) -> bool:
        """Whether ``deletes`` in one window (those already crossed included) are too many for a
        mailbox with ``links`` synced links."""
        if deletes > self.max_count:
            return True
        return deletes >= self.min_count_for_percent and deletes * 100 > self.max_percent * max(links, 1)
