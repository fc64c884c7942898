"""The worker moves its loaded heap out of the cyclic collector's reach (``server.freeze_loaded_heap``, issue 18)."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from cds_service.app import create_app
from cds_service.server import freeze_loaded_heap


@pytest.fixture
def unfrozen() -> Iterator[None]:
    gc.unfreeze()
    yield
    gc.unfreeze()


def test_the_loaded_app_is_frozen_and_no_longer_scanned(unfrozen: None) -> None:
    app = create_app()
    tracked_before = len(gc.get_objects())
    freeze_loaded_heap()
    assert gc.get_freeze_count() >= 10_000, "the code tables and policy are frozen"
    assert len(gc.get_objects()) < tracked_before // 10, "a full collection no longer walks them"
    assert gc.is_tracked(app.config) and not any(obj is app.config for obj in gc.get_objects())


def test_garbage_made_before_the_freeze_is_collected_not_kept(unfrozen: None) -> None:
    class Cycle:
        other: Cycle

    first, second = Cycle(), Cycle()
    first.other, second.other = second, first
    gone = weakref.ref(first)
    del first, second
    freeze_loaded_heap()
    assert gone() is None, "a cycle left from start-up was freed, not frozen for the worker's life"


def test_the_worker_freezes_after_loading(monkeypatch: pytest.MonkeyPatch) -> None:
    from gunicorn.workers.gthread import ThreadWorker

    from cds_service import server

    calls: list[str] = []
    monkeypatch.setattr(ThreadWorker, "load_wsgi", lambda self: calls.append("load") or setattr(self, "wsgi", None))
    monkeypatch.setattr(server, "freeze_loaded_heap", lambda: calls.append("freeze"))
    worker = server.BufferedThreadWorker.__new__(server.BufferedThreadWorker)
    worker.load_wsgi()
    assert calls == ["load", "freeze"]
