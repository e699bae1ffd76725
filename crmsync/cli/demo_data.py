"""Seed data for ``crmsync demo`` and for tests: realistic, deterministic, no I/O.

Why: the demo must look like a real CRM (companies in the US, the UK and Germany, people with
accents and apostrophes, notes with markup-like text, national and international phone formats)
so that a user sees mapping and escaping work on data like theirs; and tests need the same rows
every run, so everything comes from one seeded ``random.Random``. Phone numbers use ranges
reserved for fiction where they exist (US 555-01xx, UK 020 7946 0xxx), otherwise numbers
libphonenumber accepts as valid; domains are invented.
"""

from __future__ import annotations

import random
import unicodedata
from typing import Any

import phonenumbers

DEFAULT_SEED = 20261127

# (company name, web domain, country) -- the CRM's companies.
_COMPANIES: tuple[tuple[str, str, str], ...] = (
    ("Northwind Traders", "northwind-traders.com", "US"),
    ("Contoso Pharmaceuticals", "contoso-pharma.com", "US"),
    ("Fabrikam Industries", "fabrikam-ind.com", "US"),
    ("O'Brien & Sons", "obrien-sons.co.uk", "GB"),
    ("Bergmann Maschinenbau GmbH", "bergmann-maschinenbau.de", "DE"),
    ("Blue Yonder Airlines", "blueyonder-air.com", "US"),
    ("Alpine Ski House", "alpineskihouse.com", "US"),
    ("Tailspin Toys", "tailspintoys.com", "US"),
    ("Thames Valley Logistics Ltd", "tv-logistics.co.uk", "GB"),
    ("Wingtip Software", "wingtipsoftware.com", "US"),
    ("Adventure Works Cycles", "adventure-works.com", "US"),
    ("Kessler & Vogt Steuerberatung", "kessler-vogt.de", "DE"),
    ("Lakeshore Dental Group", "lakeshoredental.com", "US"),
    ("Pennine Stone & Slate", "penninestone.co.uk", "GB"),
    ("Rheinland Solartechnik AG", "rheinland-solar.de", "DE"),
    ("Coho Winery", "cohowinery.com", "US"),
    ("Margie's Travel", "margiestravel.com", "US"),
    ("Hargreaves Architects LLP", "hargreaves-arch.co.uk", "GB"),
    ("Litware Inc.", "litware.com", "US"),
    ("Proseware Analytics", "proseware.com", "US"),
    ("Weißenburg Feinkost KG", "weissenburg-feinkost.de", "DE"),
    ("Graphic Design Institute", "graphicdesigninstitute.com", "US"),
    ("Humongous Insurance", "humongousinsurance.com", "US"),
    ("Clyde Marine Engineering", "clyde-marine.co.uk", "GB"),
    ("Trey Research", "treyresearch.net", "US"),
    ("Nordlicht Medien GmbH", "nordlicht-medien.de", "DE"),
    ("Southridge Video", "southridgevideo.com", "US"),
    ("Fourth Coffee", "fourthcoffee.com", "US"),
    ("Baxter & Finch Solicitors", "baxterfinch.co.uk", "GB"),
    ("Sonnenhof Hotels", "sonnenhof-hotels.de", "DE"),
    ("City Power & Light", "citypowerlight.com", "US"),
    ("Wide World Importers", "wideworldimporters.com", "US"),
    ("Lucerne Publishing", "lucernepublishing.com", "US"),
    ("Greenock Distillers Ltd", "greenock-distillers.co.uk", "GB"),
    ("Adatum Corporation", "adatum.com", "US"),
    ("Elbtal Bau GmbH", "elbtal-bau.de", "DE"),
)

# Companies used only by the Exchange mailbox, never by the CRM.
_EXCHANGE_COMPANIES: tuple[tuple[str, str, str], ...] = (
    ("Cedar Hill Veterinary", "cedarhillvet.com", "US"),
    ("Maple Street Bakery", "maplestreetbakery.com", "US"),
    ("Harbourside Estates", "harbourside-estates.co.uk", "GB"),
    ("Falkenstein Optik", "falkenstein-optik.de", "DE"),
    ("Redwood Legal Partners", "redwoodlegal.com", "US"),
    ("Quayside Print Works", "quaysideprint.co.uk", "GB"),
    ("Isar Software GmbH", "isar-software.de", "DE"),
    ("Summit Peak Outfitters", "summitpeak.com", "US"),
    ("Bramble & Thorn Florists", "brambleandthorn.co.uk", "GB"),
    ("Osprey Aerial Surveys", "ospreyaerial.com", "US"),
    ("Lindenhof Weingut", "lindenhof-weingut.de", "DE"),
    ("Golden Gate Dental Lab", "ggdentallab.com", "US"),
)

_FIRST = {
    "US": ("James", "Maria", "Robert", "Jennifer", "Michael", "Linda", "David", "Patricia", "Daniel",
           "Aisha", "Kevin", "Emily", "Marcus", "Priya", "Tyrone", "Hannah", "Wei", "Rachel"),
    "GB": ("Oliver", "Amelia", "Harry", "Isla", "George", "Poppy", "Callum", "Freya", "Rhys", "Imogen",
           "Alistair", "Niamh", "Tom", "Eleanor"),
    "DE": ("Lukas", "Anna", "Jonas", "Lea", "Felix", "Sophie", "Maximilian", "Marie", "Tobias",
           "Katharina", "Jürgen", "Ute", "Stefan", "Sabine"),
}
_LAST = {
    "US": ("Smith", "Johnson", "Williams", "Brown", "Garcia", "Miller", "Davis", "Martinez", "Lee",
           "Walker", "Nguyen", "Patel", "Robinson", "Clark", "Lewis", "Young"),
    "GB": ("Taylor", "Davies", "Evans", "Thomas", "Roberts", "Wright", "Hughes", "Edwards", "Green",
           "Wood", "Campbell", "Fletcher", "Ashworth"),
    "DE": ("Schneider", "Fischer", "Weber", "Meyer", "Wagner", "Becker", "Hoffmann", "Schulz",
           "Koch", "Richter", "Klein", "Wolf", "Neumann"),
}
# People whose names exercise Unicode and punctuation; placed at fixed account positions.
_SPECIAL_PEOPLE = {
    1: ("José", "Núñez"),
    4: ("Zoë", "Müller"),
    8: ("Siobhán", "O'Connell"),
    11: ("Björn", "Großmann"),
    13: ("François", "Lefèvre-Dubois"),
}
_TITLES = (
    ("Chief Executive Officer", "Management"), ("Managing Director", "Management"),
    ("Head of Procurement", "Purchasing"), ("Purchasing Manager", "Purchasing"),
    ("IT Director", "IT"), ("Systems Administrator", "IT"), ("Office Manager", "Administration"),
    ("Finance Director", "Finance"), ("Accounts Payable Clerk", "Finance"),
    ("Sales Manager", "Sales"), ("Account Executive", "Sales"), ("Operations Manager", "Operations"),
    ("Facilities Coordinator", "Operations"), ("Marketing Lead", "Marketing"),
    ("HR Business Partner", "Human Resources"),
)
_TITLES_DE = (("Geschäftsführer", "Geschäftsleitung"), ("Einkaufsleiterin", "Einkauf"),
              ("Leiter Vertrieb", "Vertrieb"))
_STREETS = {
    "US": ("Main Street", "Oak Avenue", "Market Street", "Lakeview Drive", "Industrial Parkway",
           "Commerce Blvd", "Elm Street", "Sunset Road"),
    "GB": ("High Street", "Station Road", "Church Lane", "Victoria Road", "Mill Lane", "Kings Road"),
    "DE": ("Hauptstraße", "Bahnhofstraße", "Schillerstraße", "Goethestraße", "Industriestraße",
           "Am Marktplatz"),
}
_CITIES = {
    "US": (("Seattle", "WA", "981"), ("Chicago", "IL", "606"), ("Austin", "TX", "787"),
           ("Boston", "MA", "021"), ("Denver", "CO", "802"), ("New York", "NY", "100")),
    "GB": (("London", "", "EC1A"), ("Manchester", "", "M1"), ("Leeds", "", "LS1"), ("Bristol", "", "BS1"),
           ("Glasgow", "", "G1"), ("Edinburgh", "", "EH1")),
    "DE": (("Berlin", "BE", "10"), ("München", "BY", "80"), ("Hamburg", "HH", "20"), ("Köln", "NW", "50"),
           ("Frankfurt am Main", "HE", "60"), ("Düsseldorf", "NW", "40")),
}
_AREA = {"Seattle": "206", "Chicago": "312", "Austin": "512", "Boston": "617", "Denver": "303",
         "New York": "212", "Berlin": "30", "München": "89", "Hamburg": "40", "Köln": "221",
         "Frankfurt am Main": "69", "Düsseldorf": "211"}
_COUNTRY_NAME = {"US": "United States", "GB": "United Kingdom", "DE": "Germany"}
_NOTES = (
    "Prefers email over phone.",
    "Annual contract renewal in March.",
    "Met at the regional trade fair; interested in the premium tier.",
    "Invoices go to the accounts payable mailbox, not to this contact.",
    "Call before 11:00 local time.",
    "Key account. Escalations go to the account manager.",
    "Referred by an existing customer.",
    "Asked for a quote for 25 additional licences.",
)
_TAGS_NOTE = "Imported from old CRM: <Tags> & ampersands, \"quotes\" and 'apostrophes' must survive."
_TAGS_AT = 2


def _ascii(text: str) -> str:
    """Transliterate a name for an email local part: Zoë -> zoe, Großmann -> grossmann."""
    text = text.replace("ß", "ss").replace("'", "")
    folded = unicodedata.normalize("NFKD", text)
    return "".join(ch for ch in folded if ch.isascii() and (ch.isalnum() or ch in "-")).lower()


def _phone(rng: random.Random, country: str, city: str, international: bool) -> str:
    """A fictional number in the city's format; sometimes E.164-ish, sometimes national."""
    if country == "US":
        area, line = _AREA.get(city, "212"), f"01{rng.randrange(100):02d}"
        return f"+1 {area}-555-{line}" if international else f"({area}) 555-{line}"
    if country == "GB":
        line = f"0{rng.randrange(1000):03d}"
        return f"+44 20 7946 {line}" if international else f"020 7946 {line}"
    area = _AREA.get(city, "30")
    return _valid(lambda: (f"+49 {area} " if international else f"0{area} ") + str(rng.randrange(1000000, 9999999)), "DE")


def _valid(make: Any, region: str) -> str:
    """The first candidate from ``make()`` that libphonenumber accepts as a real number plan
    entry (so the demo exercises normalization, not rejection)."""
    for _ in range(200):
        candidate = make()
        if phonenumbers.is_valid_number(phonenumbers.parse(candidate, region)):
            return candidate
    raise RuntimeError(f"no valid {region} number generated")  # unreachable in practice


def _mobile(rng: random.Random, country: str) -> str:
    if country == "US":
        return f"+1 {rng.choice(('425', '646', '773'))}-555-01{rng.randrange(100):02d}"
    if country == "GB":
        return _valid(lambda: f"+44 7{rng.randrange(400, 999)} {rng.randrange(100000, 999999)}", "GB")
    return _valid(lambda: f"+49 15{rng.choice('1279')} {rng.randrange(10000000, 99999999)}", "DE")


def _address(rng: random.Random, country: str) -> dict[str, str]:
    city, state, zip_prefix = rng.choice(_CITIES[country])
    street = rng.choice(_STREETS[country])
    number = rng.randrange(1, 240)
    if country == "US":
        return {"street": f"{number} {street}", "city": city, "state": state,
                "postal_code": f"{zip_prefix}{rng.randrange(10, 99)}"}
    if country == "GB":
        return {"street": f"{number} {street}", "city": city, "state": "",
                "postal_code": f"{zip_prefix} {rng.randrange(1, 9)}{rng.choice('ABDEFGHJLNPQRSTUWXYZ')}"
                               f"{rng.choice('ABDEFGHJLNPQRSTUWXYZ')}"}
    return {"street": f"{street} {number}", "city": city, "state": state,
            "postal_code": f"{zip_prefix}{rng.randrange(100, 999)}"}


def _companies(pool: tuple[tuple[str, str, str], ...], n: int) -> list[tuple[str, str, str]]:
    """``n`` distinct companies; beyond the pool, numbered branches with their own domains."""
    out = []
    for i in range(n):
        name, domain, country = pool[i % len(pool)]
        branch = i // len(pool)
        if branch:
            stem, _, tld = domain.partition(".")
            name, domain = f"{name} (Branch {branch + 1})", f"{stem}-{branch + 1}.{tld}"
        out.append((name, domain, country))
    return out


def _person(rng: random.Random, country: str, taken: set[str]) -> tuple[str, str]:
    for _ in range(1000):
        first, last = rng.choice(_FIRST[country]), rng.choice(_LAST[country])
        if f"{_ascii(first)}.{_ascii(last)}" not in taken:
            return first, last
    raise RuntimeError("name pool exhausted")  # unreachable with the pools above


def demo_accounts(n: int = 30, seed: int = DEFAULT_SEED) -> list[dict[str, Any]]:
    """``n`` rows for the ``accounts`` table (no ``id``/``updated_at``), account_no ACC-1001...

    The same ``n`` and ``seed`` always give the same rows."""
    rng = random.Random(seed)
    rows = []
    for i, (company, domain, country) in enumerate(_companies(_COMPANIES, n)):
        if i in _SPECIAL_PEOPLE:
            first, last = _SPECIAL_PEOPLE[i]
        else:
            first, last = _person(rng, country, set())
        title, department = rng.choice(_TITLES_DE if country == "DE" and rng.random() < 0.5 else _TITLES)
        address = _address(rng, country)
        international = rng.random() < 0.5
        local = f"{_ascii(first)}.{_ascii(last)}"
        notes = _TAGS_NOTE if i == _TAGS_AT else (rng.choice(_NOTES) if rng.random() < 0.7 else None)
        rows.append({
            "account_no": f"ACC-{1001 + i}",
            "company_name": company,
            "first_name": first,
            "last_name": last,
            "job_title": title,
            "department": department,
            "email": f"{local}@{domain}",
            "email2": f"info@{domain}" if rng.random() < 0.3 else None,
            "phone_business": _phone(rng, country, address["city"], international),
            "phone_mobile": _mobile(rng, country) if rng.random() < 0.6 else None,
            "phone_home": None,
            "fax": _phone(rng, country, address["city"], international) if rng.random() < 0.2 else None,
            **{k: (v or None) for k, v in address.items()},
            "country": _COUNTRY_NAME[country],
            "website": f"https://www.{domain}",
            "notes": notes,
            "is_active": True,
        })
    return rows


def demo_secondary_contacts(accounts: list[dict[str, Any]], seed: int = DEFAULT_SEED) -> list[dict[str, Any]]:
    """Rows for the ``contacts`` table: a third of the accounts get 1-3 colleagues each.

    Each row carries ``account_no`` (not a column) so the caller can look up ``account_id``."""
    rng = random.Random(seed + 1)
    chosen = sorted(rng.sample(range(len(accounts)), len(accounts) // 3)) if accounts else []
    rows = []
    country_of = {name: code for code, name in _COUNTRY_NAME.items()}
    for index in chosen:
        account = accounts[index]
        domain = account["email"].rpartition("@")[2]
        country = country_of.get(account.get("country") or "", "US")
        taken = {account["email"].partition("@")[0]}
        for _ in range(rng.randint(1, 3)):
            first, last = _person(rng, country, taken)
            local = f"{_ascii(first)}.{_ascii(last)}"
            taken.add(local)
            title, _department = rng.choice(_TITLES)
            rows.append({
                "account_no": account["account_no"],
                "first_name": first,
                "last_name": last,
                "job_title": title,
                "email": f"{local}@{domain}",
                "phone_business": _phone(rng, country, account.get("city") or "", rng.random() < 0.5),
                "phone_mobile": _mobile(rng, country) if rng.random() < 0.5 else None,
                "notes": None,
            })
    return rows


def demo_exchange_contacts(n: int = 10, seed: int = DEFAULT_SEED) -> list[dict[str, Any]]:
    """Canonical field dicts (``schemas.canonical`` names) for contacts already in the demo
    mailbox, at companies the CRM does not have. One carries ``"private": True`` (Sensitivity
    Private: it must never reach the CRM); pop that key before building a CanonicalContact."""
    rng = random.Random(seed + 2)
    rows = []
    taken: set[str] = set()
    for i, (company, domain, country) in enumerate(_companies(_EXCHANGE_COMPANIES, n)):
        first, last = _person(rng, country, taken)
        taken.add(f"{_ascii(first)}.{_ascii(last)}")
        title, department = rng.choice(_TITLES)
        address = _address(rng, country)
        row: dict[str, Any] = {
            "first_name": first,
            "last_name": last,
            "company_name": company,
            "job_title": title,
            "department": department,
            "email": f"{_ascii(first)}.{_ascii(last)}@{domain}",
            "phone_business": _phone(rng, country, address["city"], True),
            "phone_mobile": _mobile(rng, country) if rng.random() < 0.5 else None,
            **{k: (v or None) for k, v in address.items()},
            "country": _COUNTRY_NAME[country],
            "website": f"https://{domain}",
            "notes": "Added in Outlook." if rng.random() < 0.5 else None,
        }
        if i == 3:
            row["notes"] = "Personal contact -- do not share."
            row["private"] = True
        rows.append(row)
    return rows
