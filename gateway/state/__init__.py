"""Shared state for a fleet of gateways (``GATEWAY_STATE_URL``: Redis).

Why: every number the gateway enforces (a key's rpm/tpm, its concurrency, the in-flight cap)
lived in one Python process, so N gateway processes or pods enforced N times every limit. With a
state URL those numbers live in Redis, changed only by atomic Lua scripts that read the server's
clock (``TIME``), so every gateway agrees on them; without one nothing here is imported and the
gateway keeps everything in memory exactly as before.

Parts, each small and consumed through a Protocol its consumer defines:

* ``url.py``     the URL (or a file holding it, for a password), checked before start-up;
* ``store.py``   the connection: scripts in one round trip, an ordered outbox for what must not
                 block a request (settlements, releases, lease renewals, the membership
                 heartbeat), and the failure policy (``link.py``, pure);
* ``limits.py``  ``RedisLimitStore``: ``ratelimit.LimitStore`` over Lua GCRA (``scripts.py``);
* ``leases.py``  ``Leases``: per-key concurrency and the in-flight cap as leases with a TTL the
                 holder renews, freed slots going to the fleet's waiters in the fair queue's
                 order (``admission.SharedSlots``).
"""
