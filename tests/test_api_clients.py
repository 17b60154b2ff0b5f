"""One open API client per process and settings while a scope is open (real clients, a real local server)."""

from __future__ import annotations

import threading

import pytest
from helpers import doubled_plus
from prefect.client.orchestration import SyncPrefectClient
from prefect.settings import PREFECT_API_KEY, PREFECT_CLIENT_MAX_RETRIES, get_current_settings, temporary_settings

import scalegroups
from scalegroups.api_clients import borrowed_client, client_settings_key, shared_api_clients, shared_client


def is_closed(client: SyncPrefectClient) -> bool:
    return client._client.is_closed


def test_inside_a_scope_every_borrow_is_the_same_open_client(scalegroups_prefect_api):
    with shared_api_clients():
        with borrowed_client() as first:
            assert first.hello().status_code == 200
        with borrowed_client() as again:
            assert again is first and not is_closed(first)  # borrowing does not close it
        from_thread = []
        thread = threading.Thread(target=lambda: from_thread.append(shared_client()))
        thread.start()
        thread.join()
        assert from_thread == [first]
        with shared_api_clients():  # a nested scope (a second runner) shares it ...
            assert shared_client() is first
        assert not is_closed(first)  # ... and its end does not close it
    assert is_closed(first)  # the last scope closes it


def test_other_settings_get_a_client_of_their_own(scalegroups_prefect_api):
    with shared_api_clients():
        here = shared_client()
        with temporary_settings(updates={PREFECT_CLIENT_MAX_RETRIES: 1}):
            other = shared_client()
            assert other is not here and other.hello().status_code == 200
            assert shared_client() is other
        assert shared_client() is here
    assert is_closed(here) and is_closed(other)


def test_outside_a_scope_each_borrow_is_a_client_of_its_own(scalegroups_prefect_api):
    with borrowed_client() as first:
        assert first.hello().status_code == 200
    with borrowed_client() as second:
        assert second is not first
    assert is_closed(first) and is_closed(second)
    with pytest.raises(RuntimeError, match="shared_api_clients"):
        shared_client()


@scalegroups.flow
def three_maps() -> None:
    for _ in range(3):
        list(scalegroups.as_completed(doubled_plus.map(range(4))))


@pytest.mark.scalegroups_runners("thread")
def test_progress_artifacts_do_not_build_a_client_per_publish(scalegroups_runner, monkeypatch):
    built = []
    original = SyncPrefectClient.__init__

    def counting_init(self, *args, **kwargs):
        built.append(self)
        original(self, *args, **kwargs)

    monkeypatch.setattr(SyncPrefectClient, "__init__", counting_init)
    monkeypatch.setenv("SCALEGROUPS_PROGRESS", "0")
    three_maps()
    without_progress = len(built)
    built.clear()
    monkeypatch.setenv("SCALEGROUPS_PROGRESS", "1")
    three_maps()  # publishes 6 artifacts (a progress and a summary per map): one client for all of them
    assert len(built) - without_progress <= 1


def test_clients_are_told_apart_by_their_secrets_too():
    keys = []
    for api_key in ("key-one", "key-two"):
        with temporary_settings(updates={PREFECT_API_KEY: api_key}):
            keys.append(client_settings_key(get_current_settings()))
    assert keys[0] != keys[1]  # a masked dump ("**********") would let two credentials share a client
