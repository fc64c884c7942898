"""Feedback is accepted only for cards the service issued: tests that post feedback register their cards first."""

from __future__ import annotations

from typing import Any

SIGN_SERVICE = "everolimus-order-sign"


def issue_cards(store_or_url: Any, *cards: str, service_id: str = SIGN_SERVICE) -> None:
    """Record ``cards`` as issued by ``service_id`` (a Store, or a database URL opened and closed here)."""
    from cds_service.store import Store

    store = Store(store_or_url) if isinstance(store_or_url, str) else store_or_url
    try:
        store.record_response(service_id=service_id, hook_instance="test-issued", card_uuids=list(cards),
                              assertions=[])
    finally:
        if isinstance(store_or_url, str):
            store.dispose()
