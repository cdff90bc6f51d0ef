"""Talking to an engine: the measured raw HTTP/1.1 client pool on the token path (``wire.py``)
and the SSE relay with its counts and error mapping (``relay.py``)."""
