"""The Exchange side's adapters (port ``ExchangeSide`` in crmsync.ports): ``ews/`` through
exchangelib. Nothing is imported here, so importing the package loads no client library."""
