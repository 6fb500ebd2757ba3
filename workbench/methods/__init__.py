"""Editing methods: one module per method family, each registering its methods at its own door.

A method is a name, a parameters dataclass and an edit function ``edit(model, tok, requests, cfg, progress)
-> EditResult``, registered together by `config.register_method` at the bottom of the module that implements
it; `workbench.edit` (editing.py) checks the requests and calls the registered function. The result always
carries what reverts the edit bitwise (`result.py`).

* ``ft`` (`ft.py`, `FtParams`): gradient fine-tuning of the selected weights, with the prefix-activation
  cache (`prefix.py`): FT-UKE, LocFT-BF, FT-M and FT-L are all this, differing only in config fields.
* ``lora``, ``adalora`` (`ft.py` with `adapters.py`, `AdapterParams`): the same loop, training a peft adapter.
* ``rome`` (`rome.py`), ``memit`` and ``alphaedit`` (`memit.py`), ``unke`` and ``anyedit`` (`unke.py`): the
  locate-and-edit baselines, sharing keys, values, statistics, solves and projectors from the `locate`
  package, and the parameters of `locate/params.py`.
* `parallel.py`: `edit_each`, K single edits of method ``ft`` trained at once, each with its own copy
  of the trained weights (single editing, sooner); its results are applied one at a time.
* `weights.py`: restoring touched weights bitwise and training them in float32, for every family.

Adding a method is one new module (its parameters dataclass, its ``edit``, one ``register_method`` line) and,
for a built-in one, its name in `config.BUILTIN_METHODS`; no other method changes, nor any stored run of one.
"""
