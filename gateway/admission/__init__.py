"""Admission: the in-flight cap and the queue in front of it (``core.py``), the weighted fair
queue that orders it by scheduling class (``fairqueue.py``) and the headroom that keeps one key
from holding every slot while others wait (``headroom.py``). Pure cores with an injectable
clock; fleet-wide limits through Redis are in ``gateway/state/``."""
