"""Executors of batch runs: `threads` (the default: one process, up to N runs at once on one
event loop, see `engine.batch`) and `ray` (items as Ray tasks on a local Ray or a cluster, see
`engine.executors.ray`). Both give the same output file, order and resume semantics."""

EXECUTORS = ("threads", "ray")
