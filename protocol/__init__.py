"""The ground floor: what the roles agree on and read from each other, and nothing of any
role's internals. The gateway, the warm-up sidecar, the ops server and ``make up`` all import
from here; this package imports none of them (``tests/test_structure.py`` checks both).

- ``prometheus``: reading Prometheus text (the engine's ``/metrics``, the gateway's);
- ``identity``: which engine process answers (the key warm-up results are filed under);
- ``handshake``: the warm-up report contract between the sidecar and the gateway;
- ``engine_errors``: the message of an engine's error answer, whatever its shape.
"""
