"""Old name of :mod:`sod_trainer.evaluation.metrics`: importing it gives that module, so old imports keep working."""

import sys

from .evaluation import metrics as _module

sys.modules[__name__] = _module
