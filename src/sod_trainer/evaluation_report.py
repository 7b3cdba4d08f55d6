"""Old name of :mod:`sod_trainer.evaluation.report`: importing it gives that module, so old imports keep working."""

import sys

from .evaluation import report as _module

sys.modules[__name__] = _module
