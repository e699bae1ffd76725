"""Test helpers shared by contract, e2e and reliability tests (real processes, no mocks)."""
