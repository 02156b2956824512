"""Promotion: mine the llm log, propose lookups and scripts, review them, serve them at zero tokens,
demote them on drift. See `mining`, `proposals`, `verify`, `sandbox`, `artifacts`, `server`, `review`."""
