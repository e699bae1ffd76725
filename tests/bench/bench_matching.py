"""Benchmark: the matcher on N synthetic CRM records against N synthetic Exchange contacts.

Synthetic people are generated deterministically (seeded): names (Zipf-like, with accents and
a long tail of surnames), companies with a domain and a shared office line, emails, phones in
several national formats. The Exchange side holds perturbed copies of a share of the CRM people
(swapped names, an initial, a typo, accents dropped, email case, another phone format, a field
missing, another legal form) and new people, many of them colleagues of CRM people (same company,
same office line). Prints, for each N: the time of ``find_candidates`` and of ``auto_links``, the
peak memory of the process (each N runs in its own process), the growth factor per 10x of N, and
the precision/recall of the automatic links and the recall of the candidates against the truth.
Not a test: no timed assertions. Run it as a script:

    python tests/bench/bench_matching.py                # N = 1000, 10000, 50000
    python tests/bench/bench_matching.py --n 2000 --n 20000
"""

from __future__ import annotations

import argparse
import json
import math
import random
import resource
import subprocess
import sys
import time
from itertools import pairwise

from crmsync.core.matching import (
    DEFAULT_MARGIN,
    DEFAULT_MIN_SCORE,
    CrmRecord,
    ExchangeRecord,
    MatchPolicy,
    auto_links,
    find_candidates,
)
from schemas.canonical import CanonicalContact


def _words(text: str) -> list[str]:
    return text.split()


FIRST = _words(
    "James John Robert Michael William David Richard Joseph Thomas Charles Christopher Daniel Matthew Anthony "
    "Mark Donald Steven Paul Andrew Joshua Kenneth Kevin Brian George Timothy Ronald Edward Jason Jeffrey Ryan "
    "Mary Patricia Jennifer Linda Elizabeth Barbara Susan Jessica Sarah Karen Lisa Nancy Betty Margaret Sandra "
    "Ashley Kimberly Emily Donna Michelle Carol Amanda Dorothy Melissa Deborah Stephanie Rebecca Sharon Laura "
    "José María Jürgen Jörg Günther Björn Søren Zoë Chloé Renée François Hélène Łukasz Małgorzata Ángel "
    "Mónica Inés Raúl Jesús Müge Çağla Anaïs Noémie Élodie Sébastien Jérôme Dörte Käthe Ulrich Wolfgang "
    "Hans Klaus Dieter Sabine Ursula Petra Anna Lena Lukas Felix Jonas Leon Paul Emma Mia Sofia Hannah "
    "Olivia Liam Noah Ethan Lucas Mateo Hugo Louis Arthur Jules Gabriel Raphaël Chiara Giulia Francesco "
    "Alessandro Lorenzo Matteo Giovanni Aiko Hiroshi Yuki Wei Li Chen Priya Rahul Arjun Ananya Fatima Omar"
)
LAST = _words(
    "Smith Johnson Williams Brown Jones Garcia Miller Davis Rodriguez Martinez Hernandez Lopez Gonzalez Wilson "
    "Anderson Thomas Taylor Moore Jackson Martin Lee Perez Thompson White Harris Sanchez Clark Ramirez Lewis "
    "Robinson Walker Young Allen King Wright Scott Torres Nguyen Hill Flores Green Adams Nelson Baker Hall "
    "Müller Schmidt Schneider Fischer Weber Meyer Wagner Becker Schulz Hoffmann Schäfer Koch Bauer Richter "
    "Klein Wolf Schröder Neumann Schwarz Zimmermann Braun Krüger Hofmann Hartmann Lange Schmitt Werner "
    "García Fernández González Rodríguez López Martínez Sánchez Pérez Gómez Martín Jiménez Ruiz Hernández "
    "Dubois Durand Lefèvre Moreau Laurent Lefebvre Leroy Roux Fournier Girard Bonnet Dupont Lambert Fontaine "
    "Rossi Russo Ferrari Esposito Bianchi Romano Colombo Ricci Marino Greco Bruno Gallo Conti Costa Giordano "
    "O'Brien O'Connor McCarthy Murphy Kelly Walsh Byrne Ryan Nowak Kowalski Wiśniewski Wójcik Kowalczyk "
    "Kamiński Lewandowski Zieliński Szymański Søndergaard Jørgensen Ødegård Åberg Sato Suzuki Takahashi "
    "Tanaka Watanabe Wang Zhang Liu Chen Yang Patel Sharma Singh Kumar Gupta Khan Ali Hussain Yılmaz Kaya"
)
ONSETS = _words("b c d f g h j k l m n p r s t v w z br ch cr dr fr gr kr pr sch sh st str th tr")
SYLLABLES = [o + v for o in ONSETS for v in _words("a e i o u ai au ei ie ou")] + _words(
    "berg ston ley man son sen ez ski"
)
WORDS = _words(
    "Acme Global United Northern Southern Eastern Western Pacific Atlantic Alpine Blue Green Red Silver Golden "
    "Summit Pioneer Vertex Apex Nova Stellar Quantum Fusion Dynamic Prime Core Bright Clear Swift Solid True "
    "Metro Urban Rural Coastal River Lake Forest Mountain Valley Harbor Bridge Tower Castle Crown Royal Union"
)
TRADES = _words(
    "Logistics Consulting Systems Software Foods Motors Energy Pharma Media Partners Holdings Industries "
    "Trading Engineering Construction Finance Insurance Labs Design Robotics Textiles Chemicals Analytics"
)
LEGAL = ["Inc.", "Ltd", "GmbH", "LLC", "AG", "S.A.", "Corp.", "plc", ""]
REGIONS = ["US", "GB", "DE"]


def _zipf_choice(rng: random.Random, items: list[str], skew: float = 1.0) -> str:
    # rank r is chosen with weight 1/(r+20)^skew (the most common surname ~1%, as Smith in the US)
    table = _ZIPF_TABLES.get((id(items), skew))
    if table is None:
        weights = [1.0 / (r + 20) ** skew for r in range(len(items))]
        total = sum(weights)
        acc, table = 0.0, []
        for w in weights:
            acc += w / total
            table.append(acc)
        _ZIPF_TABLES[(id(items), skew)] = table
    x = rng.random()
    lo, hi = 0, len(table) - 1
    while lo < hi:
        mid = (lo + hi) // 2
        if table[mid] < x:
            lo = mid + 1
        else:
            hi = mid
    return items[lo]


_ZIPF_TABLES: dict[tuple[int, float], list[float]] = {}


def _ascii(text: str) -> str:
    import unicodedata

    text = text.replace("ß", "ss").replace("ø", "o").replace("Ø", "O").replace("ł", "l").replace("Ł", "L")
    return "".join(c for c in unicodedata.normalize("NFKD", text) if not unicodedata.combining(c))


def _phone(rng: random.Random, region: str) -> str:
    """A number, as an E.164 string; formatted later."""
    if region == "US":
        return f"+1{rng.choice(['212', '415', '312', '617', '646'])}{rng.randint(200, 999)}{rng.randint(0, 9999):04d}"
    if region == "GB":
        return f"+4420{rng.randint(7000, 8999)}{rng.randint(0, 9999):04d}"
    return f"+4930{rng.randint(1000000, 9999999)}"


def _format(e164: str, style: int) -> str:
    """One of several ways people write the same number: national formats only for the default
    region (US), as people in a US office write foreign numbers with their country code."""
    if e164.startswith("+1"):
        a, b, c = e164[2:5], e164[5:8], e164[8:]
        return [f"+1 ({a}) {b}-{c}", f"{a}.{b}.{c}", f"({a}) {b}-{c}", f"+1{a}{b}{c}"][style % 4]
    if e164.startswith("+44"):
        rest = e164[3:]
        return [f"+44 {rest[:2]} {rest[2:6]} {rest[6:]}", f"+44 ({rest[:2]}) {rest[2:6]}-{rest[6:]}", e164][style % 3]
    rest = e164[3:]
    return [f"+49 {rest[:2]} {rest[2:]}", f"+49 ({rest[:2]}) {rest[2:]}", e164][style % 3]


def _typo(rng: random.Random, word: str) -> str:
    if len(word) < 4:
        return word
    i = rng.randint(2, len(word) - 2)  # keep the first two letters, as most typos do
    kind = rng.randint(0, 2)
    if kind == 0:
        return word[:i] + word[i + 1] + word[i] + word[i + 2 :]
    if kind == 1:
        return word[:i] + word[i + 1 :]
    return word[:i] + word[i] + word[i:]


def make_world(n: int, seed: int = 7, duplicate_share: float = 0.6):
    """N CRM records, N Exchange contacts, and the truth: the set of (crm key, exchange key)."""
    rng = random.Random(seed)
    # the real surnames are the most common ones; then a long tail of made-up ones, in random order
    tail = sorted({"".join(rng.choice(SYLLABLES) for _ in range(rng.randint(2, 3))).capitalize() for _ in range(20000)})
    rng.shuffle(tail)
    surnames = list(LAST) + tail
    companies = []
    for c in range(max(10, n // 4)):
        name = f"{rng.choice(WORDS)} {rng.choice(WORDS)} {rng.choice(TRADES)}"
        region = rng.choice(REGIONS)
        domain = f"{name.split()[0].lower()}{name.split()[1].lower()}{c}.example"
        companies.append((name, rng.choice(LEGAL), domain, region, _phone(rng, region)))

    def person(company_index: int) -> dict:
        name, legal, domain, region, office = companies[company_index]
        first, last = rng.choice(FIRST), _zipf_choice(rng, surnames)
        local = rng.choice([f"{first}.{last}", f"{first[0]}{last}", f"{first}"])
        local = _ascii(local).lower().replace("'", "")
        p = {
            "first_name": first,
            "last_name": last,
            "company_name": f"{name} {legal}".strip(),
            "email": f"{local}@{domain}",
            "phone_business": office if rng.random() < 0.5 else _phone(rng, region),
            "region": region,
        }
        if rng.random() < 0.7:
            p["phone_mobile"] = _phone(rng, region)
        return p

    def render(p: dict, style: int) -> CanonicalContact:
        fields = {k: v for k, v in p.items() if k != "region"}
        for f in ("phone_business", "phone_mobile"):
            if f in fields:
                fields[f] = _format(fields[f], style)
        return CanonicalContact(**fields)

    def perturb(p: dict) -> tuple[dict, int]:
        q = dict(p)
        for _ in range(rng.choice([1, 1, 2, 2, 3])):
            k = rng.randint(0, 10)
            if k == 0:
                q["first_name"], q["last_name"] = q["last_name"], q["first_name"]
            elif k == 1:
                q["first_name"] = q["first_name"][0] + "."
            elif k == 2 and q["last_name"]:
                q["last_name"] = _typo(rng, q["last_name"])
            elif k == 3:
                q["first_name"], q["last_name"] = _ascii(q["first_name"]), _ascii(q["last_name"])
            elif k == 4 and q.get("email"):
                q["email"] = q["email"].upper() if rng.random() < 0.5 else q["email"].capitalize()
            elif k == 5:
                q.pop("email", None)
            elif k == 6:
                q.pop("phone_mobile", None)
            elif k == 7 and q.get("company_name"):
                q["company_name"] = q["company_name"].split(" ")[0] + " " + " ".join(q["company_name"].split(" ")[1:3])
            elif k == 8:
                q.pop("company_name", None)
            elif k == 9:
                q["first_name"] = _typo(rng, q["first_name"])
            else:
                q["email2"], q["email"] = q.get("email"), None
        return q, rng.randint(0, 3)

    crm_people = [person(rng.randrange(len(companies))) for _ in range(n)]
    crm = [CrmRecord(f"account:{i:07d}", render(p, rng.randint(0, 3))) for i, p in enumerate(crm_people)]
    exchange: list[ExchangeRecord] = []
    truth: set[tuple[str, str]] = set()
    dup_of = rng.sample(range(n), int(n * duplicate_share))
    for j, i in enumerate(dup_of):
        q, style = perturb(crm_people[i])
        key = f"ex:{j:07d}"
        exchange.append(ExchangeRecord(key, render(q, style)))
        truth.add((crm[i].key, key))
    for j in range(len(dup_of), n):
        # a new person: most of them colleagues of a CRM person (same company, often the same office line)
        company = crm_people[rng.randrange(n)] if rng.random() < 0.7 else None
        p = person(rng.randrange(len(companies)))
        if company is not None:
            p["company_name"] = company["company_name"]
            p["email"] = p["email"].split("@")[0] + "@" + company["email"].split("@")[1]
            p["phone_business"] = company["phone_business"] if rng.random() < 0.5 else p["phone_business"]
        exchange.append(ExchangeRecord(f"ex:{j:07d}", render(p, rng.randint(0, 3))))
    rng.shuffle(exchange)
    return crm, exchange, truth


def run_one(n: int, seed: int, region: str) -> dict:
    crm, exchange, truth = make_world(n, seed)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    c0, t0 = time.process_time(), time.perf_counter()
    found = find_candidates(crm, exchange, MatchPolicy(region=region))
    t1 = time.perf_counter()
    decision = auto_links(found.candidates, DEFAULT_MIN_SCORE, DEFAULT_MARGIN)
    c2, t2 = time.process_time(), time.perf_counter()
    rss_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    linked = {(c.crm_key, c.exchange_key) for c in decision.links}
    candidate_pairs = {(c.crm_key, c.exchange_key) for c in found.candidates}
    true_links = len(linked & truth)
    return {
        "n": n,
        "find_s": t1 - t0,
        "link_s": t2 - t1,
        "cpu_s": c2 - c0,
        "rss_before_mb": rss_before / 1024,
        "rss_peak_mb": rss_peak / 1024,
        "pairs_scored": found.pairs_scored,
        "candidates": len(found.candidates),
        "blocks_skipped": found.blocks_skipped,
        "truth": len(truth),
        "links": len(linked),
        "wrong_links": len(linked - truth),
        "needs_person": len(decision.needs_person),
        "precision": true_links / len(linked) if linked else 1.0,
        "recall": true_links / len(truth) if truth else 1.0,
        "candidate_recall": len(candidate_pairs & truth) / len(truth) if truth else 1.0,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, action="append", help="records per side (repeatable)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--region", default="US", help="default region for national phone numbers")
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)  # child mode: one N, JSON out
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_one(args.one, args.seed, args.region)))
        return
    sizes = args.n or [1000, 10000, 50000]
    rows = []
    for n in sizes:
        out = subprocess.run(
            [sys.executable, __file__, "--one", str(n), "--seed", str(args.seed), "--region", args.region],
            check=True,
            capture_output=True,
            text=True,
        )
        rows.append(json.loads(out.stdout))
        r = rows[-1]
        print(
            f"N={r['n']:>6} per side: find_candidates {r['find_s']:6.2f} s, auto_links {r['link_s']:5.2f} s "
            f"(wall; CPU {r['cpu_s']:6.2f} s), "
            f"peak RSS {r['rss_peak_mb']:6.0f} MB (data alone {r['rss_before_mb']:5.0f} MB); "
            f"pairs scored {r['pairs_scored']:>8}, candidates {r['candidates']:>7}, "
            f"blocks skipped {r['blocks_skipped']}",
            flush=True,
        )
        print(
            f"          truth {r['truth']}, auto-links {r['links']} ({r['wrong_links']} wrong), "
            f"needs a person {r['needs_person']}; precision {r['precision']:.4f}, recall {r['recall']:.4f}, "
            f"candidate recall {r['candidate_recall']:.4f}",
            flush=True,
        )
    for a, b in pairwise(rows):
        ta, tb = a["cpu_s"], b["cpu_s"]  # CPU time: other processes on the machine do not count
        growth = (tb / ta) ** (1 / math.log10(b["n"] / a["n"])) if ta > 0 else float("nan")
        pairs = b["pairs_scored"] / a["pairs_scored"] if a["pairs_scored"] else float("nan")
        print(
            f"growth {a['n']} -> {b['n']}: CPU time x{tb / ta:.2f}, i.e. x{growth:.2f} per 10x of N "
            f"(pairs scored x{pairs:.1f})"
        )


if __name__ == "__main__":
    main()
