"""FT-Edit Workbench: edit the knowledge of language models by plain fine-tuning.

    import workbench as wb
    model, tok = wb.load()                      # embedded SmolLM2-135M-Instruct, offline
    facts = wb.data.load("facts-fixture")        # or wb.data.load_json("mine.json", fields={...})
    result = wb.edit(model, tok, facts, wb.config.preset("locft-bf-chat"), check=True)
    print(result.check.to_text())                # each fact and 8 unrelated questions, before and after
    result.revert()                              # bitwise back to the original

The package is built in floors, each module importing only from the floors below it (a test walks
the imports): errors, config, components | data, models, resources | prompts | generation, scoring,
metrics | methods/, checks, editing | evaluation, locality | runs/, plots, widgets | cli. Names are resolved
lazily here, so ``import workbench.metrics`` loads only what metrics needs. (The modules behind
``wb.evaluate`` and ``wb.generate`` are `evaluation` and `generation`: a submodule named like the
function would replace it in this namespace once imported.)
"""
import importlib

__version__ = "0.1.0"

# public name -> the module that defines it (modules themselves are reached as wb.<module>)
_NAMES = {
    "SMOKE": "config", "EditConfig": "config", "preset": "config",
    "Request": "data",
    "ConfigError": "errors", "DataError": "errors", "DataNotFound": "errors", "EditError": "errors",
    "WorkbenchError": "errors", "OverwriteWarning": "errors", "FormatWarning": "errors", "CappedWarning": "errors",
    "load": "models", "load_for": "models",
    "generate": "generation",
    "EditResult": "editing", "apply_delta": "editing", "edit": "editing", "edit_each": "editing",
    "EvalConfig": "evaluation", "EvalReport": "evaluation", "evaluate": "evaluation", "pre_edit": "evaluation",
    "score_each": "runs.protocols",
}
_MODULES = ("checks", "cli", "components", "config", "data", "errors", "evaluation", "generation", "locality", "mechanism", "methods", "metrics",
            "models", "placement", "plots", "prompts", "resources", "runs", "scoring", "editing", "widgets")
__all__ = [*_NAMES, *_MODULES]


def __getattr__(name: str):
    if name in _NAMES:
        value = getattr(importlib.import_module(f".{_NAMES[name]}", __name__), name)
    elif name in _MODULES:
        value = importlib.import_module(f".{name}", __name__)
    else:
        raise AttributeError(f"module 'workbench' has no attribute {name!r}")
    globals()[name] = value  # resolved once
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))
