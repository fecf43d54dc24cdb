"""Hot GL cache: one day of the ledger as Arrow — process memory, then Redis (LZ4 IPC), then PostgreSQL —
kept fresh from the statement stream. Start with ``GLCache`` (cache.py); the CLI is cli.py.

Nothing is imported here, so `fasterdata proxy` (which builds the whole CLI) does not pay for pyarrow.
"""
