"""Shared click parameter types: counts are positive integers, intervals positive."""

from __future__ import annotations

import click

COUNT = click.IntRange(min=1)
"""A count (items at once, rows to show, a limit): 1 or more; 0 and negatives are refused."""

SECONDS = click.FloatRange(min=0, min_open=True)
"""A positive number of seconds."""
