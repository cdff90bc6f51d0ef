"""The engine replicas: one replica's client, lease and monitor (``replica.py``), the set that
starts them, follows DNS and picks one through ``gateway/routing/`` (``core.py``), each
engine's health state machine gated on warm-up (``health.py``), the background polling of its
``/health`` and ``/metrics`` (``monitor.py``) and the saturation read from them
(``saturation.py``)."""
