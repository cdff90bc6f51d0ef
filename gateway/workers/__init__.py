"""Several gateway worker processes on one port (``GATEWAY_WORKERS=N``): one host's cores.

Why: one Python process is one core, and the relay costs CPU per streamed chunk; a host that
serves a few hundred requests a second needs several processes behind one port. Why not
uvicorn's own ``workers=N``: its workers share one pre-bound socket (libuv accepts every pending
connection in whichever worker wakes first, so a burst lands on one core), a SIGHUP restarts
every worker (ours reloads the keys file), a worker that dies is restarted without backoff, and
its SIGTERM is uvicorn's, not our drain (``gateway/edge/drain.py``).

* ``supervisor.py``  the parent: starts N workers, restarts a dead one with backoff (logged),
                     forwards SIGHUP (keys reload) and SIGTERM (every worker drains; the parent
                     exits 0 when all did); it serves no requests.
* ``worker.py``      one worker: its own listening socket on the shared port (``SO_REUSEPORT``:
                     the kernel spreads connections over the workers by their addresses' hash),
                     the drain, a private socket for its siblings' ``/metrics`` scrapes, and
                     a drain of its own when the supervisor is gone.
* ``metrics.py``     ``/metrics`` of the whole host from whichever worker answers: every
                     worker's page, merged, each series labelled ``worker``.

What the workers share goes through ``GATEWAY_STATE_URL`` (``gateway/state``): limits, leases,
warm-up reports and replica drains; N > 1 without it refuses to start (one line).
"""
