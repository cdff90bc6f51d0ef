"""Who calls and what they may do: API keys and the internal token (``auth.py``), the keys file
and its tenants (``tenants.py``: limits, models, scheduling class), per-key enforcement and token
accounting on the request path (``core.py``) and the GCRA rate limiter it charges
(``ratelimit.py``)."""
