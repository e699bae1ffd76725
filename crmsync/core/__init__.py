"""The pure sync core: normalization, the CRM field mapping and the three-way reconcile.

No I/O here (no database, network, broker or clock): data in, data out, so every rule is
tested as a table of cases and Hypothesis laws.
"""
