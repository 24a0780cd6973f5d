"""multiloc: find the few layers of a generative model that control a concept, and use them.

Example::

    import multiloc
    model = multiloc.load("tiny-sd")
    result = multiloc.scan(model, "colour", seeds=2, steps=10)
    print(result.table())
"""

from . import control
from .concepts import Concept, Pair
from .control import finetune, rewrite
from .control.edit import edit
from .control.steer import steering_vectors as steer
from .errors import UserError
from .interventions import Patch, StepWindow
from .localize import scan
from .localize.encoder_trace import EncoderTrace, trace_encoder
from .model import Model, load
from .registry import register_adapter
from .results import Result
from .scorers import Scorer, get_scorer, register_scorer
from .sites import Site

__all__ = [
    "Concept", "EncoderTrace", "Model", "control", "Pair", "Patch", "Result", "Scorer", "Site", "StepWindow", "UserError",
    "edit", "finetune", "get_scorer", "load", "register_adapter", "register_scorer", "rewrite", "scan",
    "steer", "trace_encoder",
]
__version__ = "0.1.0"
