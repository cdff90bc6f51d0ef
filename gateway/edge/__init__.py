"""The HTTP edge: the application (``app.py``: FastAPI, the raw token path dispatched ahead of
it), ASGI helpers (``asgi.py``, ``types.py``), the FastAPI glue for dependencies and error
rendering (``web.py``), the HTTP/1.1 protocol with its head and body limits (``httpproto.py``),
the draining server (``drain.py``) and the access log (``accesslog.py``). The routes themselves
are in ``gateway/routes/``; nothing here decides anything about a request."""
