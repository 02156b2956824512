"""Scripts of the invoice_lines example: find the item lines, total the extracted items."""

from __future__ import annotations

import re
from typing import Any

_AMOUNT = re.compile(r"\d+(?:[.,]\d+)?")
_SKIP = re.compile(r"^\s*(invoice|date|bill to|ship to|subtotal|total|tax|vat|due|thank)", re.IGNORECASE)
_CURRENCY = re.compile(r"\b(EUR|USD|GBP|CHF)\b|([€$£])")


def item_lines(text: str) -> dict[str, Any]:
    """Lines that look like items: they hold a number and are not a header or a total."""
    lines = [ln.strip(" -*\t") for ln in text.splitlines()]
    items = [ln for ln in lines if ln and _AMOUNT.search(ln) and not _SKIP.match(ln)]
    found = _CURRENCY.search(text)
    symbols = {"€": "EUR", "$": "USD", "£": "GBP"}
    currency = (found.group(1) or symbols[found.group(2)]) if found else None
    return {"lines": items, "currency": currency}


def total(items: list[dict[str, Any] | None], currency: str | None) -> dict[str, Any]:
    read = [i for i in items if i is not None]
    amount = round(sum(i["quantity"] * i["unit_price"] for i in read), 2)
    return {"amount": amount, "currency": currency, "lines": len(read), "unreadable": len(items) - len(read)}
