"""Entry points behind the ``sod`` command (``train``); each is also runnable with ``accelerate launch``."""
