"""FT-Edit Workbench: edit the knowledge of language models by plain fine-tuning.

    import workbench as wb
    model, tok = wb.load()                      # embedded SmolLM2-135M-Instruct, offline
    facts = wb.data.load("unkebench", n=10)
    result = wb.edit(model, tok, facts, wb.config.preset("ft-uke"))
    result.revert()                              # bitwise back to the original
"""
from . import components, config, data, errors, locality, metrics, models, plots, prefix, resources, runs, widgets
from .config import SMOKE, EditConfig, preset
from .data import Request
from .evaluate import EvalConfig, EvalReport, evaluate, pre_edit
from .generate import generate
from .errors import ConfigError, DataError, DataNotFound, EditError, WorkbenchError
from .models import load
from .train import EditResult, apply_delta, edit

__all__ = ["components", "config", "data", "errors", "locality", "metrics", "models", "plots", "prefix", "resources", "runs", "widgets", "generate", "EvalConfig", "EvalReport", "evaluate", "pre_edit", "SMOKE", "EditConfig", "preset", "Request",
           "ConfigError", "DataError", "DataNotFound", "EditError", "WorkbenchError", "load", "EditResult",
           "apply_delta", "edit"]
__version__ = "0.1.0"
