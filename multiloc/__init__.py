"""multiloc: find the few layers of a generative model that control a concept, and use them.

Example::

    import multiloc
    model = multiloc.load("tiny-sd")
    result = multiloc.scan(model, "colour", seeds=2, steps=10)
    print(result.table())
"""

import importlib
from typing import Any

# Imported on first use (PEP 562), so `multiloc --help`, `multiloc models` and shell completion start
# without torch: name -> (module, attribute; None = the module itself).
_LAZY = {
    "control": (".control", None), "Concept": (".concepts", "Concept"), "Pair": (".concepts", "Pair"),
    "finetune": (".control", "finetune"), "rewrite": (".control", "rewrite"), "edit": (".control.edit", "edit"),
    "steer": (".control.steer", "steering_vectors"), "UserError": (".errors", "UserError"),
    "Patch": (".interventions", "Patch"), "StepWindow": (".interventions", "StepWindow"),
    "scan": (".localize", "scan"), "Model": (".model", "Model"), "load": (".model", "load"),
    "register_adapter": (".registry", "register_adapter"), "Result": (".results", "Result"),
    "Scorer": (".scorers", "Scorer"), "get_scorer": (".scorers", "get_scorer"),
    "register_scorer": (".scorers", "register_scorer"), "Site": (".sites", "Site"),
    "trace_encoder": (".localize.encoder_trace", "trace_encoder"),
    "EncoderTrace": (".localize.encoder_trace", "EncoderTrace"),
}


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'multiloc' has no attribute {name!r}")
    module, attr = _LAZY[name]
    value = importlib.import_module(module, __name__)
    value = value if attr is None else getattr(value, attr)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})


__all__ = [
    "Concept", "EncoderTrace", "Model", "control", "Pair", "Patch", "Result", "Scorer", "Site", "StepWindow", "UserError",
    "edit", "finetune", "get_scorer", "load", "register_adapter", "register_scorer", "rewrite", "scan",
    "steer", "trace_encoder",
]
__version__ = "0.1.0"
