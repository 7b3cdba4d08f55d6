"""``python -m sod_trainer.evaluation``: the ``sod eval`` command."""

from .cli import main

main()
