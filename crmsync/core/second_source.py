"""A second source of accounts: what to do with a record new on one side (pure).

A record is *new* when it has no link in the mailbox and no stamp: a contact added in Outlook,
or an account that reached the CRM from another system (an accounting package's import). When
the other side already holds the same person, unlinked, creating it there again is a duplicate.
``decide`` looks at the new record's candidates among the other side's unlinked records (the
caller finds them by blocking keys, never by scanning everything) and says what happens:

==================================  ===========================  =========================
candidates (score = matcher's)      on_new_record = match-then-  on_new_record = review
                                    create
==================================  ===========================  =========================
none at or above ``REVIEW_FLOOR``   create                       create
one strong, no close second         link it                      wait for a person
strong ones within ``margin``       wait (ambiguous)             wait for a person
best between floor and strong       create                       wait for a person
==================================  ===========================  =========================

``on_new_record = "create"`` always creates (the behaviour before issue 8). A person's decision
on a waiting record (``review_decision``) wins over all of this: rejected creates, accepted
links to the chosen candidate.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from crmsync.core.matching import (
    DEFAULT_MARGIN,
    DEFAULT_MIN_SCORE,
    Candidate,
    CrmRecord,
    ExchangeRecord,
    MatchPolicy,
    find_candidates,
)

OnNewRecord = Literal["match-then-create", "create", "review"]
ON_NEW_RECORD: tuple[OnNewRecord, ...] = ("match-then-create", "create", "review")
#: Below this score a candidate is nobody's business: the record is created even in "review" mode.
REVIEW_FLOOR = 0.5

Action = Literal["create", "link", "review"]
_DEFAULT_POLICY = MatchPolicy()


@dataclass(frozen=True)
class NewRecordDecision:
    action: Action
    candidates: tuple[Candidate, ...]     # at or above REVIEW_FLOOR, best first
    chosen: Candidate | None = None       # the one to link (action "link")
    reason: str = ""                      # why it waits, for the review queue and the log


def _best_first(cands: Iterable[Candidate], side: str) -> list[Candidate]:
    def other(c: Candidate) -> str:
        return c.exchange_key if side == "crm" else c.crm_key

    return sorted(cands, key=lambda c: (not c.certain, -c.score, other(c)))


def decide(side: str, candidates: Iterable[Candidate], mode: OnNewRecord = "match-then-create",
           min_score: float = DEFAULT_MIN_SCORE, margin: float = DEFAULT_MARGIN) -> NewRecordDecision:
    """What to do with one new record on ``side`` ("crm" | "exchange") given its candidates on
    the other side (each naming it; a candidate already linked or stamped for another record
    must not be among them)."""
    if mode not in ON_NEW_RECORD:
        raise ValueError(f"on_new_record {mode!r} is not one of {', '.join(ON_NEW_RECORD)}")
    ranked = [c for c in _best_first(candidates, side) if c.score >= REVIEW_FLOOR]
    if mode == "create" or not ranked:
        return NewRecordDecision("create", tuple(ranked))
    top = ranked[0]
    if mode == "review":
        return NewRecordDecision("review", tuple(ranked), reason=f"on_new_record = review; best score {top.score:.4f}")
    if top.score < min_score:
        return NewRecordDecision("create", tuple(ranked))
    if len(ranked) > 1 and ranked[1].certain == top.certain and ranked[1].score >= top.score - margin:
        return NewRecordDecision("review", tuple(ranked), reason=(
            f"ambiguous: best candidates score {top.score:.4f} and {ranked[1].score:.4f} "
            f"(within the margin {margin})"))
    return NewRecordDecision("link", tuple(ranked), chosen=top)


def candidates_for_crm(record: CrmRecord, pool: Iterable[ExchangeRecord],
                       policy: MatchPolicy = _DEFAULT_POLICY) -> tuple[Candidate, ...]:
    """The candidates of one new CRM record among unlinked Exchange contacts (a small pool)."""
    return find_candidates([record], list(pool), policy).candidates


def candidates_for_exchange(record: ExchangeRecord, pool: Iterable[CrmRecord],
                            policy: MatchPolicy = _DEFAULT_POLICY) -> tuple[Candidate, ...]:
    """The candidates of one new Exchange contact among unlinked CRM records (a small pool)."""
    return find_candidates(list(pool), [record], policy).candidates


__all__ = ["ON_NEW_RECORD", "REVIEW_FLOOR", "NewRecordDecision", "OnNewRecord", "candidates_for_crm",
           "candidates_for_exchange", "decide"]
