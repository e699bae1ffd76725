"""The apply protocol, written against the ports only (crmsync.ports)."""
