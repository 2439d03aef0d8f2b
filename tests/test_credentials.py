from __future__ import annotations

from harness.auth.credentials import CredentialStore


def test_static_and_temporary_keys() -> None:
    store = CredentialStore()
    static = store.add_static(principal="alice")
    assert static.access_key_id.startswith("AKIA") and len(static.access_key_id) == 20
    assert not static.temporary and not static.expired(now=1e12)

    temp = store.mint_temporary(now=1000.0, lifetime=0.5, principal="us-east-1:abc")
    assert temp.access_key_id.startswith("ASIA") and temp.temporary
    assert not temp.expired(1000.4) and temp.expired(1000.5)
    assert store.lookup(temp.access_key_id) == temp

    store.expire(static.access_key_id, now=5.0)
    expired = store.lookup(static.access_key_id)
    assert expired is not None and expired.expired(5.0)
    assert len(store) == 2


def test_secrets_not_in_repr() -> None:
    cred = CredentialStore().mint_temporary(now=0, lifetime=60, principal="p")
    assert cred.secret_access_key not in repr(cred)
    assert cred.session_token is not None and cred.session_token not in repr(cred)
