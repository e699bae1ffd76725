"""The matcher: which unlinked CRM records and unlinked Exchange contacts are the same person.

Pure: records in, candidates out; no I/O, no clock, no randomness. The result does not depend on
the order of the inputs (candidates come out sorted by key, ties are broken by key).

Two steps, two functions:

* ``find_candidates(crm, exchange, policy)`` scores the pairs that share a *blocking key*
  (a normalized email address, a normalized phone number, a name key, the stamped CRM key), so
  the work grows with the number of plausible pairs, never with ``len(crm) * len(exchange)``.
  A block holding more than ``policy.max_block_size`` records on either side (a name like
  "J. Smith" in a huge book, a switchboard number on everybody) is too common to tell anyone
  apart and is skipped; its records still meet their match through their other keys.
* ``auto_links(candidates, min_score, margin)`` decides which candidates may be linked without
  a person: only unambiguous pairs; everything else with a good candidate is returned as
  needing a person, with the reason.

The score (``Candidate.score``) is on a 0..1 scale. It is the logistic of a sum of evidence
weights in log-odds (Fellegi-Sunter style): ``score = 1 / (1 + exp(-(offset + sum(weights))))``,
rounded to 4 decimals and capped at 0.9999 for anything but a stamp. A stamp (the Exchange
contact carries this record's CRM key in its extended property, DESIGN.md §3) is certain: score
1.0 and ``certain=True``. Every weight is data in ``MatchPolicy``. With the default weights:

==================================================  ======
evidence (nothing else known on either side)        score
==================================================  ======
stamp                                               1.0
same email + same name                              0.9998
same mobile number + same name                      0.9959
same name + same company                            0.9241
same email, no name on one side                     0.9241
typo in the last name + same company                0.6971
same name only (no company on a side)               0.3775
an initial for the first name + same company        0.3775
colleague: other name, same company and phone       0.0067
==================================================  ======

With ``auto_links``' defaults (``min_score`` 0.85, ``margin`` 0.05) the rows above 0.85 link when
unambiguous; the rest are left to a person.

Evidence, each pair once:

* ``email``: any address on one side equals any on the other (``email``, ``email2``), compared
  in ``normalize``'s form (case-insensitive). An address that people with different names carry
  on one side (``info@...``) is *shared* and weak; copies of one person share nothing (they stay
  strong, and so ambiguous). Addresses on both sides and none shared: a disagreement.
* ``phone``: any number equal in E.164 (``phone_business``, ``phone_mobile``, ``phone_home``,
  ``fax``; national numbers read in ``policy.region``). A number that people with different
  names carry on one side is a *shared* (office) number and weak; a business number or fax is a
  little weaker than a mobile or home number. Numbers on both sides and none shared: a small
  disagreement.
* ``name``: first + last name, folded (case, accents: Müller = Muller, José = Jose, ß = ss), in
  any token order (swapped first/last), an initial matching a name ("J. Smith" ~ "John Smith"),
  typos (rapidfuzz Jaro-Winkler per token, the worst aligned token counts). Similarity 0..1 mapped
  to a weight by ``policy.name_curve``; a name this different (``name_conflict_below``: another
  last name) caps the score at ``name_conflict_cap``, below automatic linking.
* ``company``: folded, legal forms dropped ("Acme Inc." = "ACME"), rapidfuzz token-sort; mapped
  by ``policy.company_curve``. Only meaningful with a name: it cannot tell colleagues apart.
* ``stamp``: the Exchange contact's stamp names this record (certain), or names another record:
  a disagreement that caps the score at ``policy.foreign_stamp_cap``.

Each candidate lists the evidence that agrees (weight > 0) and that disagrees (weight < 0).
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from itertools import pairwise

from rapidfuzz import fuzz
from rapidfuzz.distance import JaroWinkler

# The one import of the normalize module: rewrite this line when it moves to crmsync.core.
from crmsync.core import normalize
from schemas.canonical import CanonicalContact

EMAIL_FIELDS: tuple[str, ...] = ("email", "email2")
PHONE_FIELDS: tuple[str, ...] = ("phone_business", "phone_mobile", "phone_home", "fax")
#: Numbers that people at one company tend to share.
OFFICE_PHONE_FIELDS = frozenset({"phone_business", "fax"})

#: The score of a candidate proven by the stamp; nothing else reaches it.
CERTAIN = 1.0
#: The highest score evidence other than a stamp can give.
MAX_UNCERTAIN = 0.9999


# ---------------------------------------------------------------------------------------------
# Data in, data out


@dataclass(frozen=True)
class CrmRecord:
    """An unlinked CRM record (an account's primary person or a secondary contact)."""

    key: str  # the CRM key, "account:<account_no>" or "contact:<id>" (schemas.canonical.crm_key)
    contact: CanonicalContact


@dataclass(frozen=True)
class ExchangeRecord:
    """An unlinked Exchange contact of one mailbox."""

    key: str  # the ItemId (any id that is stable for the contact while matching)
    contact: CanonicalContact
    stamp: str | None = None  # the CRM key in the contact's extended property, if it has one


@dataclass(frozen=True)
class MatchPolicy:
    """How evidence is weighed. Weights are log-odds; ``offset`` is the prior (no evidence).

    Curves are ``(similarity, weight)`` points, interpolated linearly, flat outside the ends.
    """

    region: str = "US"  # default region for national phone numbers
    offset: float = -6.5
    email_agree: float = 9.0
    email_shared_agree: float = 2.0  # an address people with different names carry on one side (info@)
    email_disagree: float = -1.5
    phone_agree: float = 6.0  # mobile or home number
    office_phone_agree: float = 4.5  # business number or fax, carried by nobody else
    phone_shared_agree: float = 1.0  # a number people with different names carry on one side (office line)
    phone_disagree: float = -1.0
    # name similarity is Jaro-Winkler: typos score ~0.93-0.98, "Mark"/"Mary" 0.88, "Jane"/"John" 0.67
    name_curve: tuple[tuple[float, float], ...] = ((0.7, -6.0), (0.85, 0.0), (0.92, 3.0), (0.95, 4.5), (1.0, 6.0))
    company_curve: tuple[tuple[float, float], ...] = ((0.5, -3.0), (0.75, 0.0), (0.9, 2.5), (1.0, 3.0))
    initial_similarity: float = 0.92  # "J" against "John"
    middle_name_factor: float = 0.95  # per extra name token on one side ("Mary Ann Smith")
    partial_name_factor: float = 0.85  # one side has a single name token, or only initials agree
    foreign_stamp_cap: float = 0.5  # the contact is stamped with another CRM key
    # names this different (a different last name) are a person's call, whatever else agrees
    # (a shared mailbox, a colleague's number, or a married name): the score is capped
    name_conflict_below: float = 0.8
    name_conflict_cap: float = 0.8
    min_candidate_score: float = 0.1  # pairs scoring lower are not candidates
    max_block_size: int = 200  # records per side in one block; larger blocks are skipped


@dataclass(frozen=True)
class Evidence:
    """One comparison behind a score. ``crm_field``/``exchange_field`` name canonical fields, or
    ``"name"`` (first_name + last_name) and ``"stamp"``."""

    signal: str  # "stamp" | "email" | "phone" | "name" | "company"
    crm_field: str
    exchange_field: str
    similarity: float  # 0..1
    weight: float  # log-odds contribution to the score
    note: str = ""


@dataclass(frozen=True)
class Candidate:
    """A possible (CRM record, Exchange contact) pair with its score (0..1) and evidence."""

    crm_key: str
    exchange_key: str
    score: float
    certain: bool  # proven by the stamp
    agree: tuple[Evidence, ...]
    disagree: tuple[Evidence, ...]


@dataclass(frozen=True)
class Candidates:
    """What ``find_candidates`` found, sorted by (crm_key, exchange_key)."""

    candidates: tuple[Candidate, ...]
    pairs_scored: int
    blocks_skipped: int  # blocks larger than ``max_block_size`` on a side


class Reason(StrEnum):
    AMBIGUOUS = "ambiguous"  # two candidates of this record score within the margin
    CONTESTED = "contested"  # its best candidate is also another record's best, or it is the best of two
    COUNTERPART_PREFERS_ANOTHER = "counterpart_prefers_another"  # its best candidate's best is someone else
    COUNTERPART_AMBIGUOUS = "counterpart_ambiguous"  # its best candidate has two close candidates
    COUNTERPART_LINKED = "counterpart_linked"  # its best candidate is linked (by stamp) to another record


@dataclass(frozen=True)
class NeedsPerson:
    """A record with a good candidate that may not be linked automatically."""

    side: str  # "crm" | "exchange"
    key: str
    reason: Reason
    detail: str
    candidates: tuple[Candidate, ...]  # its candidates, best first


@dataclass(frozen=True)
class LinkDecision:
    links: tuple[Candidate, ...]  # sorted by crm_key
    needs_person: tuple[NeedsPerson, ...]  # sorted by (side, key)


# ---------------------------------------------------------------------------------------------
# Folding and features

_TRANSLIT = str.maketrans(
    {
        "ß": "ss",
        "ẞ": "ss",
        "æ": "ae",
        "Æ": "ae",
        "ø": "o",
        "Ø": "o",
        "œ": "oe",
        "Œ": "oe",
        "ł": "l",
        "Ł": "l",
        "đ": "d",
        "Đ": "d",
        "þ": "th",
        "Þ": "th",
        "ı": "i",
        "'": "",
        "’": "",
        "`": "",
    }
)
_NON_ALNUM = re.compile(r"[^0-9a-z]+")
_UMLAUT_DIGRAPH = re.compile(r"([aou])e")
_TITLES = frozenset({"mr", "mrs", "ms", "miss", "dr", "prof", "sir", "jr", "sr", "ii", "iii", "iv"})
_LEGAL_FORMS = frozenset(
    {
        "inc",
        "incorporated",
        "ltd",
        "limited",
        "llc",
        "llp",
        "lp",
        "plc",
        "corp",
        "corporation",
        "co",
        "company",
        "gmbh",
        "mbh",
        "ag",
        "kg",
        "ohg",
        "ug",
        "ev",
        "sa",
        "sas",
        "sarl",
        "sl",
        "srl",
        "spa",
        "bv",
        "nv",
        "oy",
        "ab",
        "as",
        "asa",
        "aps",
        "pty",
        "pte",
        "kk",
        "the",
        "und",
        "and",
    }
)
# normalize gives E.164, or the digits of a number it cannot place: both can match the same.
_PHONE_VALUE = re.compile(r"^\+?\d{7,15}(;ext=\d+)?$")


def fold(text: str | None) -> tuple[str, ...]:
    """Lowercase ASCII tokens of ``text``: accents dropped (é -> e, ü -> u, ß -> ss), punctuation
    splits tokens, apostrophes vanish (O'Brien -> obrien)."""
    if not text:
        return ()
    text = unicodedata.normalize("NFKD", text.translate(_TRANSLIT))
    text = "".join(ch for ch in text if not unicodedata.combining(ch)).casefold()
    return tuple(t for t in _NON_ALNUM.split(text) if t)


def name_tokens(contact: CanonicalContact) -> tuple[str, ...]:
    """The folded tokens of first + last name, titles dropped, each once, in order."""
    seen: dict[str, None] = {}
    for token in fold(contact.first_name) + fold(contact.last_name):
        if token not in _TITLES:
            seen.setdefault(token)
    return tuple(seen)


def company_tokens(name: str | None) -> tuple[str, ...]:
    """The folded tokens of a company name without its legal form; the full tokens if that
    leaves nothing ("Inc.")."""
    tokens = fold(name)
    core = tuple(t for t in tokens if t not in _LEGAL_FORMS)
    return core or tokens


@dataclass(frozen=True, slots=True)
class _Features:
    key: str
    emails: tuple[tuple[str, str], ...]  # (field, normalized address)
    phones: tuple[tuple[str, str], ...]  # (field, E.164)
    names: tuple[str, ...]
    company: str  # folded tokens without legal form, sorted, joined by spaces
    company_set: frozenset[str]


class _Normalizer:
    """Normalizes emails and phones once per distinct raw value (a memo for one call)."""

    def __init__(self, region: str) -> None:
        self.region = region
        self.memo: dict[tuple[str, str], str | None] = {}

    def email(self, raw: str | None) -> str | None:
        if not raw:
            return None
        got = self.memo.get(("e", raw), "")
        if got == "":
            got = normalize.normalize_field("email", raw, region=self.region)
            got = got if got and "@" in got else None
            self.memo[("e", raw)] = got
        return got

    def phone(self, raw: str | None) -> str | None:
        if not raw:
            return None
        got = self.memo.get(("p", raw), "")
        if got == "":
            got = normalize.normalize_field("phone_business", raw, region=self.region)
            got = got if got and _PHONE_VALUE.match(got) else None  # words or junk never match anything
            self.memo[("p", raw)] = got
        return got


def _features(key: str, contact: CanonicalContact, norm: _Normalizer) -> _Features:
    emails: dict[str, str] = {}
    for f in EMAIL_FIELDS:
        value = norm.email(getattr(contact, f))
        if value is not None:
            emails.setdefault(value, f)
    phones: dict[str, str] = {}
    for f in PHONE_FIELDS:
        value = norm.phone(getattr(contact, f))
        if value is not None:
            phones.setdefault(value, f)
    company = tuple(sorted(company_tokens(contact.company_name)))
    return _Features(
        key=key,
        emails=tuple((f, v) for v, f in emails.items()),
        phones=tuple((f, v) for v, f in phones.items()),
        names=name_tokens(contact),
        company=" ".join(company),
        company_set=frozenset(company),
    )


def _name_keys(tokens: tuple[str, ...]) -> list[str]:
    """Blocking keys of a name: each full token with the initial of each other token (finds
    swapped names, initials, a typo in one token), and the sorted three-letter prefixes of the
    full tokens (finds a typo in each token past its third letter). Tokens are taken in their
    umlaut-free spelling ("mueller" -> "muller") so Müller, Mueller and Muller share keys."""
    tokens = tuple(_UMLAUT_DIGRAPH.sub(r"\1", t) for t in tokens)
    full = [t for t in tokens if len(t) >= 2]
    keys = [f"n:{t}/{u[0]}" for t in full for u in tokens if u != t]
    if len(full) >= 2:
        keys.append("p:" + "|".join(sorted(t[:3] for t in full)))
    elif len(tokens) == 1 and full:
        keys.append(f"o:{full[0]}")
    return keys


def _blocking_keys(feat: _Features, stamp: str | None = None) -> set[str]:
    keys = {f"e:{v}" for _, v in feat.emails}
    keys.update(f"t:{v}" for _, v in feat.phones)
    keys.update(_name_keys(feat.names))
    if stamp:
        keys.add(f"s:{stamp}")
    return keys


# ---------------------------------------------------------------------------------------------
# Similarities


def _token_similarity(a: str, b: str, initial: float) -> float:
    """Jaro-Winkler of two folded tokens; an initial against a token with that initial gives
    ``initial``; "mueller" = "muller" (the German spelling of an umlaut)."""
    if a == b:
        return 1.0
    if len(a) == 1 or len(b) == 1:
        return initial if a[0] == b[0] else 0.0
    sim = JaroWinkler.similarity(a, b)
    if sim < 1.0 and ("e" in a or "e" in b):
        sim = max(sim, JaroWinkler.similarity(_UMLAUT_DIGRAPH.sub(r"\1", a), _UMLAUT_DIGRAPH.sub(r"\1", b)))
    return sim


def name_similarity(a: Sequence[str], b: Sequence[str], policy: MatchPolicy) -> float | None:
    """0..1 for two folded name token lists, ``None`` when a side has no name.

    Tokens are aligned in any order (swapped first/last names), best pairs first, each token
    compared by Jaro-Winkler (typos) or as an initial ("J" ~ "John": ``initial_similarity``).
    The similarity is that of the *worst* aligned pair, so a matching first name never hides a
    different last name; each token one side has more costs ``middle_name_factor``. A name that
    is only partly there (one token, or only initials matching) is at most
    ``partial_name_factor``: neither for nor against.
    """
    if not a or not b:
        return None
    if len(a) == len(b) and sorted(a) == sorted(b):
        return 1.0
    pairs = sorted(
        ((_token_similarity(x, y, policy.initial_similarity), i, j) for i, x in enumerate(a) for j, y in enumerate(b)),
        key=lambda p: (-p[0], p[1], p[2]),
    )
    used_a: set[int] = set()
    used_b: set[int] = set()
    sims: list[float] = []
    full_match = False
    for sim, i, j in pairs:
        if i in used_a or j in used_b:
            continue
        used_a.add(i)
        used_b.add(j)
        sims.append(sim)
        full_match = full_match or (sim >= 0.8 and len(a[i]) >= 2 and len(b[j]) >= 2)
    if len(a) == 1 or len(b) == 1 or not full_match:
        return min(sims) * policy.partial_name_factor
    return min(sims) * policy.middle_name_factor ** abs(len(a) - len(b))


def company_similarity(a: _Features, b: _Features) -> float | None:
    if not a.company or not b.company:
        return None
    if a.company == b.company:
        return 1.0
    sim = fuzz.token_sort_ratio(a.company, b.company) / 100.0
    if a.company_set <= b.company_set or b.company_set <= a.company_set:  # "Acme" ~ "Acme Widgets"
        sim = max(sim, 0.9)
    return sim


def _curve(points: tuple[tuple[float, float], ...], x: float) -> float:
    if x <= points[0][0]:
        return points[0][1]
    for (x0, y0), (x1, y1) in pairwise(points):
        if x <= x1:
            return y0 + (y1 - y0) * (x - x0) / (x1 - x0)
    return points[-1][1]


# ---------------------------------------------------------------------------------------------
# Scoring


@dataclass(frozen=True)
class _Side:
    """The email addresses and phone numbers that people with different names share on one side
    (an ``info@`` address, an office line). Copies of one person (same name) share nothing."""

    shared_emails: frozenset[str]
    shared_phones: frozenset[str]


def _side(features: Iterable[_Features]) -> _Side:
    emails: dict[str, set[tuple[str, ...]]] = defaultdict(set)
    phones: dict[str, set[tuple[str, ...]]] = defaultdict(set)
    for feat in features:
        name = tuple(sorted(feat.names))
        for _, v in feat.emails:
            emails[v].add(name)
        for _, v in feat.phones:
            phones[v].add(name)
    return _Side(
        frozenset(v for v, names in emails.items() if len(names) > 1),
        frozenset(v for v, names in phones.items() if len(names) > 1),
    )


def _score_pair(
    c: _Features, x: _Features, stamp: str | None, crm_side: _Side, ex_side: _Side, policy: MatchPolicy
) -> Candidate:
    agree: list[Evidence] = []
    disagree: list[Evidence] = []

    def add(ev: Evidence) -> None:
        if ev.weight > 0:
            agree.append(ev)
        elif ev.weight < 0:
            disagree.append(ev)

    certain = stamp is not None and stamp == c.key
    if certain:  # the stamp decides the score on its own: its weight is not added up
        agree.append(Evidence("stamp", "stamp", "stamp", 1.0, 0.0, "the contact carries this record's CRM key"))
    elif stamp:
        disagree.append(Evidence("stamp", "stamp", "stamp", 0.0, 0.0, f"the contact carries another CRM key, {stamp}"))

    total = policy.offset
    # email
    x_emails = {v: f for f, v in x.emails}
    shared_email = [(f, x_emails[v], v) for f, v in c.emails if v in x_emails]
    if shared_email:
        weights = []
        for cf, xf, v in shared_email:
            shared = v in crm_side.shared_emails or v in ex_side.shared_emails
            weights.append((policy.email_shared_agree if shared else policy.email_agree, cf, xf, shared))
        w, cf, xf, shared = max(weights, key=lambda t: (t[0], t[1], t[2]))
        add(Evidence("email", cf, xf, 1.0, w, "address shared by several people" if shared else ""))
        total += w
    elif c.emails and x.emails:
        add(Evidence("email", c.emails[0][0], x.emails[0][0], 0.0, policy.email_disagree))
        total += policy.email_disagree
    # phone
    x_phones = {v: f for f, v in x.phones}
    shared_phone = [(f, x_phones[v], v) for f, v in c.phones if v in x_phones]
    if shared_phone:
        phone_weights: list[tuple[float, str, str, str]] = []
        for cf, xf, v in shared_phone:
            if v in crm_side.shared_phones or v in ex_side.shared_phones:
                phone_weights.append((policy.phone_shared_agree, cf, xf, "number shared by several people (office line)"))
            elif cf in OFFICE_PHONE_FIELDS and xf in OFFICE_PHONE_FIELDS:
                phone_weights.append((policy.office_phone_agree, cf, xf, ""))
            else:
                phone_weights.append((policy.phone_agree, cf, xf, ""))
        pw, pcf, pxf, note = max(phone_weights, key=lambda t: (t[0], t[1], t[2]))
        add(Evidence("phone", pcf, pxf, 1.0, pw, note))
        total += pw
    elif c.phones and x.phones:
        add(Evidence("phone", c.phones[0][0], x.phones[0][0], 0.0, policy.phone_disagree))
        total += policy.phone_disagree
    # name
    name_sim = name_similarity(c.names, x.names, policy)
    if name_sim is not None:
        w = _curve(policy.name_curve, name_sim)
        add(Evidence("name", "name", "name", round(name_sim, 4), w))
        total += w
    # company
    company_sim = company_similarity(c, x)
    if company_sim is not None:
        w = _curve(policy.company_curve, company_sim)
        add(Evidence("company", "company_name", "company_name", round(company_sim, 4), w))
        total += w

    if certain:
        score = CERTAIN
    else:
        score = min(MAX_UNCERTAIN, round(1.0 / (1.0 + math.exp(-total)), 4))
        if name_sim is not None and name_sim < policy.name_conflict_below:
            score = min(score, policy.name_conflict_cap)
        if stamp:
            score = min(score, policy.foreign_stamp_cap)
    return Candidate(c.key, x.key, score, certain, tuple(agree), tuple(disagree))


def _unique(keys: Iterable[str], side: str) -> None:
    seen: set[str] = set()
    for key in keys:
        if key in seen:
            raise ValueError(f"matching: {side} key {key!r} is given twice; each record must appear once")
        seen.add(key)


def find_candidates(
    crm: Iterable[CrmRecord], exchange: Iterable[ExchangeRecord], policy: MatchPolicy = MatchPolicy()
) -> Candidates:
    """Score the pairs that share a blocking key; keep those scoring ``min_candidate_score`` or
    more. Raises ValueError naming a key given twice on one side."""
    crm_records = sorted(crm, key=lambda r: r.key)
    ex_records = sorted(exchange, key=lambda r: r.key)
    _unique((r.key for r in crm_records), "CRM")
    _unique((r.key for r in ex_records), "Exchange")
    norm = _Normalizer(policy.region)
    crm_feat = [_features(r.key, r.contact, norm) for r in crm_records]
    ex_feat = [_features(r.key, r.contact, norm) for r in ex_records]
    stamps = [r.stamp for r in ex_records]

    crm_index: dict[str, list[int]] = defaultdict(list)
    for i, feat in enumerate(crm_feat):
        for key in _blocking_keys(feat, feat.key):
            crm_index[key].append(i)
    ex_index: dict[str, list[int]] = defaultdict(list)
    for j, feat in enumerate(ex_feat):
        for key in _blocking_keys(feat, stamps[j]):
            ex_index[key].append(j)

    width = len(ex_feat)
    pairs: set[int] = set()
    skipped = 0
    for key, rows in crm_index.items():
        cols = ex_index.get(key)
        if cols is None:
            continue
        if key.startswith("s:"):
            pass  # a stamp is never too common to look at
        elif len(rows) > policy.max_block_size or len(cols) > policy.max_block_size:
            skipped += 1
            continue
        for i in rows:
            base = i * width
            pairs.update(base + j for j in cols)

    crm_side = _side(crm_feat)
    ex_side = _side(ex_feat)
    found = []
    for pair in sorted(pairs):
        i, j = divmod(pair, width)
        cand = _score_pair(crm_feat[i], ex_feat[j], stamps[j], crm_side, ex_side, policy)
        if cand.score >= policy.min_candidate_score:
            found.append(cand)
    return Candidates(tuple(found), len(pairs), skipped)


# ---------------------------------------------------------------------------------------------
# Automatic linking


def _rank(cands: list[Candidate], side: str) -> list[Candidate]:
    def other(c: Candidate) -> str:
        return c.exchange_key if side == "crm" else c.crm_key

    return sorted(cands, key=lambda c: (not c.certain, -c.score, other(c)))


#: Defaults for ``auto_links``: name + company alone (0.92) links, an initial + company (0.82) does not.
DEFAULT_MIN_SCORE = 0.85
DEFAULT_MARGIN = 0.05


def auto_links(
    candidates: Iterable[Candidate], min_score: float = DEFAULT_MIN_SCORE, margin: float = DEFAULT_MARGIN
) -> LinkDecision:
    """Which candidates may be linked without a person (``min_score`` and ``margin`` on the
    0..1 score scale).

    Each record's candidates are ranked (a stamp first, then by score). A record *claims* its
    best candidate when that scores ``min_score`` or more, and is *ambiguous* when its second
    candidate scores within ``margin`` of its best (a stamp is only ambiguous against another
    stamp). A pair is linked iff each side claims the other, neither side is ambiguous, and no
    other record claims either of them. A pair proven by a stamp is linked even when another
    record claims one of its sides (that claim is reported instead). Every record that claims a
    candidate or is ambiguous above ``min_score`` but is not linked needs a person, with the
    reason. Candidates below ``min_score - margin`` cannot change the outcome, so the input may
    omit them.
    """
    if margin < 0:
        raise ValueError(f"auto_links: margin must not be negative, got {margin}")
    by_crm: dict[str, list[Candidate]] = defaultdict(list)
    by_ex: dict[str, list[Candidate]] = defaultdict(list)
    for cand in candidates:
        by_crm[cand.crm_key].append(cand)
        by_ex[cand.exchange_key].append(cand)
    ranked = {("crm", k): _rank(v, "crm") for k, v in by_crm.items()}
    ranked.update({("exchange", k): _rank(v, "exchange") for k, v in by_ex.items()})

    def counterpart(side: str, cand: Candidate) -> tuple[str, str]:
        return ("exchange", cand.exchange_key) if side == "crm" else ("crm", cand.crm_key)

    ambiguous: set[tuple[str, str]] = set()
    claims: dict[tuple[str, str], tuple[str, str]] = {}
    claimed_by: dict[tuple[str, str], list[tuple[str, str]]] = defaultdict(list)
    for rec, cands in ranked.items():
        top = cands[0]
        if top.score < min_score:
            continue
        if len(cands) > 1 and cands[1].certain == top.certain and cands[1].score >= top.score - margin:
            ambiguous.add(rec)
        claims[rec] = counterpart(rec[0], top)
        claimed_by[claims[rec]].append(rec)

    links: list[Candidate] = []
    linked: dict[tuple[str, str], tuple[str, str]] = {}
    for rec, other in sorted(claims.items()):
        if rec[0] != "crm" or claims.get(other) != rec or rec in ambiguous or other in ambiguous:
            continue
        top = ranked[rec][0]
        if not top.certain and (len(claimed_by[rec]) > 1 or len(claimed_by[other]) > 1):
            continue
        links.append(top)
        linked[rec] = other
        linked[other] = rec

    needs: list[NeedsPerson] = []
    for rec, other in sorted(claims.items()):
        if rec in linked:
            continue
        cands = ranked[rec]
        top = cands[0]
        name = "CRM record" if other[0] == "crm" else "Exchange contact"
        if rec in ambiguous:
            reason = Reason.AMBIGUOUS
            detail = f"best candidates {top.score:.4f} and {cands[1].score:.4f} are within the margin {margin}"
        elif other in linked:
            reason = Reason.COUNTERPART_LINKED
            detail = f"its best candidate, {name} {other[1]!r}, is linked to {linked[other][1]!r}"
        elif other in ambiguous:
            reason = Reason.COUNTERPART_AMBIGUOUS
            detail = f"its best candidate, {name} {other[1]!r}, has two candidates within the margin"
        elif len(claimed_by[other]) > 1:
            rivals = sorted(r[1] for r in claimed_by[other] if r != rec)
            reason = Reason.CONTESTED
            detail = f"its best candidate, {name} {other[1]!r}, is also the best candidate of {', '.join(rivals)}"
        elif len(claimed_by[rec]) > 1:
            rivals = sorted(r[1] for r in claimed_by[rec])
            reason = Reason.CONTESTED
            detail = f"it is the best candidate of several records: {', '.join(rivals)}"
        else:
            best_of_other = counterpart(other[0], ranked[other][0])
            reason = Reason.COUNTERPART_PREFERS_ANOTHER
            detail = f"its best candidate, {name} {other[1]!r}, matches {best_of_other[1]!r} better"
        needs.append(NeedsPerson(rec[0], rec[1], reason, detail, tuple(cands)))
    links.sort(key=lambda c: (c.crm_key, c.exchange_key))
    return LinkDecision(tuple(links), tuple(needs))


__all__ = [
    "CERTAIN",
    "DEFAULT_MARGIN",
    "DEFAULT_MIN_SCORE",
    "MAX_UNCERTAIN",
    "Candidate",
    "Candidates",
    "CrmRecord",
    "Evidence",
    "ExchangeRecord",
    "LinkDecision",
    "MatchPolicy",
    "NeedsPerson",
    "Reason",
    "auto_links",
    "company_similarity",
    "find_candidates",
    "fold",
    "name_similarity",
    "name_tokens",
]


# ----------------------------------------------------------------------------- text search

_PHONE_FIELDS = ("phone_business", "phone_mobile", "phone_home", "fax")
_DIGITS = re.compile(r"\D+")


def search_fields(query: str, contact: CanonicalContact, region: str = "US") -> tuple[str, ...]:
    """Which of name, company, email, phone of ``contact`` match a person's search ``query``
    (`crmsync link search`): every folded word of the query begins a word of the name (or of
    the company); an e-mail address contains the query, in any case; or a phone number is the
    query's number once both are normalized (national numbers read in ``region``), or its digits
    contain the query's digits (7 or more: "555-1020 4" is not a phone, "415 555 1020" is)."""
    words = fold(query)
    found: list[str] = []
    if words:
        names = fold(contact.first_name) + fold(contact.last_name)
        if all(any(t.startswith(w) for t in names) for w in words):
            found.append("name")
        company = fold(contact.company_name)
        if all(any(t.startswith(w) for t in company) for w in words):
            found.append("company")
    needle = query.strip().casefold()
    if needle and any(needle in (e or "").casefold() for e in (contact.email, contact.email2)):
        found.append("email")
    digits = _DIGITS.sub("", query)
    if len(digits) >= 7 and len(digits) * 2 >= len(query.replace(" ", "")):
        norm = _Normalizer(region)
        wanted = norm.phone(query)
        values = [getattr(contact, f) for f in _PHONE_FIELDS if getattr(contact, f)]
        if any((wanted is not None and norm.phone(v) == wanted) or digits in _DIGITS.sub("", v) for v in values):
            found.append("phone")
    return tuple(found)


@dataclass(frozen=True)
class SearchTerms:
    """A person's search ``query`` as the bounded look-ups of both sides ask for it (a SQL query,
    an EWS restriction, a Graph ``$filter``): a superset of what :func:`search_fields` accepts,
    which then decides. ``words``: the query's words as typed, lowercased (each begins a word of
    the name or of the company); ``text``: the whole query, trimmed and lowercased (an e-mail
    address contains it); ``digits``: the query's digits when it is a phone number (7 or more,
    as for :func:`search_fields`), else ""."""

    words: tuple[str, ...]
    text: str
    digits: str

    @property
    def phone_tail(self) -> str:
        """The last 7 digits of a phone query: every number :func:`search_fields` accepts as the
        query's (same digits, or the same number written nationally) contains them."""
        return self.digits[-7:]


def search_terms(query: str) -> SearchTerms:
    """The look-up terms of a person's search ``query`` (see :class:`SearchTerms`)."""
    text = query.strip().casefold()
    digits = _DIGITS.sub("", query)
    if not (len(digits) >= 7 and len(digits) * 2 >= len(query.replace(" ", ""))):
        digits = ""
    return SearchTerms(tuple(w for w in text.split() if w), text, digits)
