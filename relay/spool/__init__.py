"""The spool: the durable queue between ingest and delivery.

The contract is :mod:`relay.spool.base` (records in :mod:`relay.spool.records`); the backends
are chosen by name in :mod:`relay.spool.backends`. This package imports nothing itself, so the
spool's writer process (:mod:`relay.spool.writer`) starts without the relay's event loop code.
"""
