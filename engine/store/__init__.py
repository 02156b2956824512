"""The run log: one protocol (`Store`), SQLite embedded by default, PostgreSQL for scale-out.

Every SQL statement of the engine lives in this package: the backends (`sqlite`, `postgres`,
`writer`, `migrations`) and one module per group of tables, whose functions take the store:
`quality` (checks, tier states, feedback, the labelling queue), `promotions`, `cache` (exact and
semantic entries, lookup events), `ledger` (provider batches), `checkpoints` (batch runs),
`reports` (cost reports, budget sums, child runs) and `leases` (advisory locks: a batch run, a cache
key being filled).
"""

from engine.store.base import Store
from engine.store.sqlite import SQLiteStore

__all__ = ["SQLiteStore", "Store"]
