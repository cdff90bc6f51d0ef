"""What a request is and whether this deployment takes it: the request schemas (``schema.py``,
``schema_errors.py`` for OpenAI-shaped 400s), this deployment's policy on top (``policy.py``:
served models, media limits, what a TPU engine cannot do), validation and the streaming and
context policy (``validation.py``), and the prompt's token count from the engine
(``tokens.py``). Pure apart from ``tokens.py``."""
