"""Editing methods: one module per method family, behind one small interface.

A family module exposes ``edit(model, tok, requests, cfg, progress) -> EditResult``; `workbench.edit`
(the one entry point, `train.py`) checks the requests and calls the family that `cfg.method` names.
The result always carries what reverts the edit bitwise (`result.py`).

* ``ft`` (`ft.py`): gradient fine-tuning of the selected weights, with the prefix-activation cache
  (`prefix.py`): FT-UKE, LocFT-BF, FT-M and FT-L are all this, differing only in config fields.
* ``lora``, ``adalora`` (`ft.py` with `adapters.py`): the same loop, training a peft adapter instead.
* ``rome`` (`rome.py`), ``memit`` and ``alphaedit`` (`memit.py`), ``unke`` and ``anyedit`` (`unke.py``):
  the locate-and-edit baselines, sharing keys, values, statistics, solves and projectors from
  `locate.py`.
* `parallel.py`: `edit_each`, K single edits of method ``ft`` trained at once, each with its own copy
  of the trained weights (single editing, sooner); its results are applied one at a time.
* `weights.py`: restoring touched weights bitwise and training them in float32, for every family.

Adding a method is a new module here and a line in `FAMILIES`; it never touches another family.
"""
from __future__ import annotations

import importlib

from ..errors import ConfigError

# EditConfig.method -> the module (in this package) that implements it
FAMILIES = {"ft": "ft", "lora": "ft", "adalora": "ft", "rome": "rome", "memit": "memit", "alphaedit": "memit",
            "unke": "unke", "anyedit": "unke"}


def family(method: str):
    """The module that edits with `method`."""
    if method not in FAMILIES:
        raise ConfigError.bad_choice("method", method, FAMILIES)
    return importlib.import_module(f".{FAMILIES[method]}", __name__)
