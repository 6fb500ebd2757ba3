"""A run's specification: the config, the data, the editing protocol and the evaluation.

A run is one `RunSpec`: an `EditConfig`, the data (benchmark, how many edits, from where), the
editing protocol, and the evaluation. Protocols are explicit, because "sequential" means different
things in different papers:

* ``batch``: all edits go to one `wb.edit` call (the config's schedule and batch size decide how
  they are visited: LocFT-BF's breadth-first, or depth-first sequential editing), and everything is
  scored **after the last edit**;
* ``single``: each edit alone on the unedited model, scored, then reverted (FT-UKE's single editing).

A sequence (``chunk_size`` > 0: `sweep.lifelong`) applies the requests in chunks, each on top of the
ones before, and scores every edit so far after each chunk.

A run's identity (`RunSpec.identity()`) is every field here, with the config's `EditConfig.identity()` (the
schema version, the shared fields and the method's parameters, never the speed settings); `RunSpec.hash()`, its
`files.short_hash`, names the run's folder in the results store (`store.py`). ``spec.json`` holds `to_dict()`:
every field, so a stored spec reads back with `from_dict` and hashes to its folder (a test).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Literal

from ..config import SCHEMA, EditConfig, options_of, preset
from ..errors import ConfigError
from ..files import short_hash
from ..evaluation import EvalConfig

LONG_FORM = ("unkebench", "mquake-cf", "unkebench-loc", "akew-loc")  # scored the FT-UKE way


@dataclass(frozen=True)
class RunSpec:
    edit: EditConfig = field(default_factory=EditConfig)
    benchmark: str = "zsre"  # a registry name, or "unkebench-loc" / "akew-loc" (with our locality sets)
    n_edits: int = 10  # requests edited (and scored)
    offset: int = 0  # skip this many requests first
    protocol: Literal["batch", "single"] = "batch"  # see the module docstring
    eval: str = "auto"  # "uke", "locft", or "auto" (uke for long-form benchmarks, locft otherwise)
    splits: tuple[str, ...] = ("ori", "para", "loc")
    max_new_tokens: int = 0  # 0 = the eval preset's
    capability: tuple[str, ...] = ()  # "mmlu", "perplexity" (after the edit)
    n_mmlu: int = 570
    smoke_run: bool = False  # CI-sized: tiny 30-layer random model, the config's smoke() steps (see `smoke()`)
    eval_chat_template: bool | None = None  # probe through the chat template (True) or not (False); None: as edited
    # a benchmark whose requests are held apart: requests whose prompt (case and spaces aside) occurs in it are
    # dropped before `offset` applies (calibrating on KnowEdit's ZsRE without touching LocFT's zsre_3k)
    exclude: str | None = None
    # version of the scorers and locality sets: 2 = the UnKE lineage's scorers, FT-L's prompt_last, locality sets
    # that exclude the edit set. In the hash, so runs scored the old way are never read back as new ones.
    scoring: int = 2
    chunk_size: int = 0  # a sequence (`sweep.lifelong`): edits arrive this many at a time; 0: not a sequence
    score_every: int = 1  # a sequence scores after every k-th chunk and the last (the stages between: steps, seconds)

    def __post_init__(self):
        if self.protocol not in ("batch", "single"):
            raise ConfigError.bad_choice("protocol", self.protocol, ("batch", "single"))
        if self.eval not in ("auto", "uke", "locft"):
            raise ConfigError.bad_choice("eval", self.eval, ("auto", "uke", "locft"))
        object.__setattr__(self, "splits", tuple(self.splits))
        object.__setattr__(self, "capability", tuple(self.capability))
        if self.chunk_size < 0 or self.score_every < 1 or (self.score_every > 1 and not self.chunk_size):
            raise ConfigError(f"chunk_size={self.chunk_size}, score_every={self.score_every}: a sequence needs "
                              "chunk_size >= 1 and score_every >= 1 (score_every only with chunk_size)")
        if self.chunk_size and self.protocol != "batch":
            raise ConfigError("a sequence (chunk_size > 0) edits each chunk on top of the ones before: protocol='batch'")
        if self.protocol == "single" and self.capability:
            raise ConfigError("capability is measured after the edits of a 'batch' run; with protocol='single' "
                              "each edit is reverted before the next, so there is no edited model to measure")

    def run_config(self) -> EditConfig:
        """The EditConfig this run trains with: `edit`, or for a smoke run its smoke() on the tiny
        30-layer model (applied here, so that a preset swapped in by a sweep is smoked too)."""
        if not self.smoke_run:
            return self.edit
        return self.edit.smoke().replace(model_name="tiny-random-smollm2", device="cpu", dtype="float32")

    def eval_config(self) -> EvalConfig:
        name = self.eval if self.eval != "auto" else "uke" if self.benchmark in LONG_FORM else "locft"
        template = self.edit.chat_template if self.eval_chat_template is None else self.eval_chat_template
        cfg = EvalConfig.preset(name).replace(splits=self.splits, capability=self.capability, n_mmlu=self.n_mmlu,
                                              chat_template=template)  # by default, probe as it was edited
        return cfg.replace(max_new_tokens=self.max_new_tokens) if self.max_new_tokens else cfg

    def to_dict(self) -> dict:
        """Every field in plain types, the config as `EditConfig.to_dict()`: what ``spec.json`` holds."""
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        d["edit"] = self.edit.to_dict()
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    def identity(self) -> dict:
        """What names the run: the schema version, every field, the config's identity (no speed settings)."""
        return {**self.to_dict(), "schema": SCHEMA, "edit": self.edit.identity()}

    def hash(self) -> str:
        """12 hex digits naming `identity()`: the run's folder in the store."""
        return short_hash(self.identity())

    def replace(self, **changes) -> "RunSpec":
        """Change spec fields or, by name, EditConfig fields (``spec.replace(lr=1e-3, n_edits=50)``).

        ``preset="lora"`` swaps in that preset's config, keeping this spec's model, device and dtype
        and its speed-only settings (``parallel_edits``, ...).
        """
        own = {f.name for f in dataclasses.fields(self)}
        edit = self.edit
        if "preset" in changes:
            name = changes.pop("preset")
            edit = preset(name, model_name=edit.model_name, device=edit.device, dtype=edit.dtype, speed=edit.speed)
        edit_changes = {k: v for k, v in changes.items() if k not in own}
        spec_changes = {k: v for k, v in changes.items() if k in own}
        edit = edit.replace(**edit_changes) if edit_changes else edit
        return dataclasses.replace(self, edit=edit, **spec_changes)

    def smoke(self) -> "RunSpec":
        """Seconds-long version for CI and nbval: a tiny random model with SmolLM2's 30 layers, 3
        edits, 16 new tokens, the config's smoke(). A smoke run checks that a notebook runs, not what
        it finds."""
        return dataclasses.replace(self, smoke_run=True, n_edits=min(self.n_edits, 3),
                                   max_new_tokens=min(self.max_new_tokens or 16, 16), n_mmlu=min(self.n_mmlu, 20))

    @classmethod
    def from_params(cls, namespace: dict, names: list[str] | None = None) -> "RunSpec":
        """Build a spec from a notebook's parameters.

        `names` are the parameter names (default: every name in `namespace` that is a spec or config
        field, plus ``preset``). ``preset`` picks the base config; every other name must be a spec or
        EditConfig field, so a typo in a parameters cell fails here instead of being ignored.
        """
        spec_fields = {f.name for f in dataclasses.fields(cls)} - {"edit"}
        chosen = list(namespace) if names is None else names
        base = preset(namespace["preset"]) if "preset" in chosen else EditConfig()
        edit_fields = set(options_of(namespace["method"] if "method" in chosen else base.method))
        if names is None:
            names = [k for k in namespace if k in spec_fields | edit_fields | {"preset"}]
        unknown = sorted(set(names) - spec_fields - edit_fields - {"preset"})
        if unknown:
            raise ConfigError(f"parameters {unknown} are neither run-spec fields nor options of method "
                              f"{namespace.get('method', base.method)!r}")
        edit = base.replace(**{k: namespace[k] for k in names if k in edit_fields})
        return cls(edit=edit, **{k: namespace[k] for k in names if k in spec_fields})

    @classmethod
    def from_dict(cls, d: dict) -> "RunSpec":
        d = dict(d)
        d["edit"] = EditConfig.from_dict(d.get("edit", {}))
        return cls(**d)


