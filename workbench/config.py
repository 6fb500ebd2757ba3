"""One configuration for every edit: each ablation axis of both papers is a field.

``EditConfig`` is a frozen dataclass with one comment per field (nanoGPT style). Its fields are what every
method shares (model, where to edit, loss, schedule, optimiser, seed); a method's own parameters are a
`MethodParams` dataclass next to the method's code, registered with it (`register_method`, as peft registers
each method with its config class), and held in ``params``; settings that only change speed are ``speed``.
Both read and write by name as if they were fields (``preset("rome", v_lr=0.3).v_lr``), so presets stay flat.

Values are checked when a config is built: a bad choice raises a `ConfigError` listing the valid ones, an
unknown key is an error (naming the method it belongs to, if any), and YAML's habit of reading ``1e-4`` as a
string is undone by coercing numbers. Presets live as YAML files in ``configs/`` (`preset("ft-uke")`).

A config's identity (`identity()`: the schema version, the shared fields, the method's parameters, never
``speed``) names its results: `hash()` keys caches and, through `RunSpec`, the results store. Adding a
parameter with a default to one method changes no other method's identity.

One module at ~550 lines, since what a config is (its fields, their checks and coercion, the method registry
it routes parameters through, the presets and the readers of EasyEdit's and LocFT's hyper-parameter files)
is read together and sits on the lowest floor, below everything that takes a config.
"""
from __future__ import annotations

import dataclasses
import functools
import importlib
import math
import os
import types
import typing
import warnings
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Literal

import yaml

from .errors import ConfigError
from .files import flag, short_hash

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"

# SMOKE=1 (set by CI and `make smoke-notebooks`) shrinks notebook runs to seconds.
SMOKE = flag("WORKBENCH_SMOKE")


LOSS_SCOPES = ("prompt_last", "first_token", "target", "prompt_target")  # see prompts.encode
DEPRECATED_SCOPES = {"last_token": "first_token"}  # old name -> what it always meant


def loss_scope_name(scope: str) -> str:
    """`scope`, with a deprecated alias mapped to its name (and a warning); anything else unchanged."""
    if isinstance(scope, str) and scope in DEPRECATED_SCOPES:
        new = DEPRECATED_SCOPES[scope]
        warnings.warn(f"loss_scope={scope!r} is deprecated: it supervises only the first target token; call it "
                      f"{new!r}. EasyEdit's FT-L objective (every target token from the last prompt position) is "
                      "'prompt_last'", FutureWarning, stacklevel=3)
        return new
    return scope


SCHEMA = 3  # the version of a config's identity, so of every run's hash; runs/migrate.py moved runs stored before


class Options:
    """What the frozen option dataclasses share (`EditConfig`, `Speed`, each method's `MethodParams`):
    every value coerced to its field's type when built (YAML reads ``1e-4`` as a string; notebooks pass
    "3"), range checks declared by name, and plain-type (de)serialisation."""

    AT_LEAST_ONE: typing.ClassVar[tuple[str, ...]] = ()  # fields that must be >= 1
    NON_NEGATIVE: typing.ClassVar[tuple[str, ...]] = ()  # fields that must be >= 0

    @classmethod
    @functools.cache  # per class: a report builds thousands of configs, and fields() walks the class each time
    def names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))

    def _validate(self, skip: tuple[str, ...] = ()) -> None:
        hints = _hints(type(self))
        for f in fields(self):
            if f.name not in skip:
                object.__setattr__(self, f.name, _coerce(f.name, getattr(self, f.name), hints[f.name]))
        for name in self.AT_LEAST_ONE:
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}={getattr(self, name)} must be >= 1")
        for name in self.NON_NEGATIVE:
            if getattr(self, name) < 0:
                raise ConfigError(f"{name}={getattr(self, name)} must be >= 0")

    def to_dict(self) -> dict:
        """Every field in plain JSON/YAML types (tuples as lists)."""
        return {f.name: _plain(getattr(self, f.name)) for f in fields(self)}

    @classmethod
    def from_dict(cls, d: dict, source: str = "config"):
        unknown = [k for k in d if k not in cls.names()]
        if unknown:
            raise ConfigError(f"unknown option(s) {unknown} in {source}; valid options: {', '.join(cls.names())}")
        return cls(**d)


@functools.cache
def _hints(cls) -> dict:
    """A class's resolved field types (`typing.get_type_hints` evaluates every annotation string anew on each call)."""
    return typing.get_type_hints(cls)


def _plain(value):
    return [_plain(v) for v in value] if isinstance(value, (tuple, list)) else value


@dataclass(frozen=True)
class MethodParams(Options):
    """A method's own parameters: a frozen dataclass next to the method's code, registered with it
    (`register_method`). Only a config of that method carries them, so only its runs are named by them:
    a new parameter (with its default) of one method leaves every other method's runs where they are."""

    # caps for a few-second version (CI and nbval): field -> its largest value in `smoke()`
    SMOKE: typing.ClassVar[dict[str, int]] = {}

    def __post_init__(self):
        self._validate()

    def smoke(self) -> "MethodParams":
        """A few-second version for CI and nbval: every field named in ``SMOKE`` at most its cap."""
        return dataclasses.replace(self, **{k: min(getattr(self, k), cap) for k, cap in self.SMOKE.items()})


@dataclass(frozen=True)
class Speed(Options):
    """Settings that change how fast an edit runs, never what it computes beyond float rounding. Saved with
    every run, but not part of its identity: `EditConfig.identity()` leaves this part out by structure."""

    # run once per example, not every step, what the edit cannot change: the layers below the lowest edited (or
    # value) layer (prefix.py) and, for locate-and-edit values, every position before the key token (locate.Before)
    prefix_cache: bool = True
    parallel_edits: int = 1  # single editing (`edit_each`, runs' protocol "single"): requests trained, then scored (`score_each`), at once, each alone
    value_batch: int = 16  # locate-and-edit: requests whose values (δ) are optimised in one batch, each alone (locate.optimize_deltas)

    AT_LEAST_ONE = ("parallel_edits", "value_batch")

    def __post_init__(self):
        self._validate()


@dataclass(frozen=True)
class Method:
    """A registered editing method: its name, its parameters' dataclass, and its edit function
    ``edit(model, tok, requests, cfg, progress=True, **extra) -> EditResult`` (methods/__init__.py)."""

    name: str
    params: type[MethodParams]
    edit: typing.Callable


# The built-in methods, each with the module of workbench.methods whose import registers it (at the bottom of
# that module, with `register_method`). Found by name and imported when first asked for, as transformers finds
# its model classes: the one place a lower floor names a higher one, as a string. A method that is not built in
# registers itself when its own module is imported; nothing here changes for it.
BUILTIN_METHODS = {"ft": "ft", "lora": "ft", "adalora": "ft", "rome": "rome", "memit": "memit", "alphaedit": "memit",
                   "unke": "unke", "anyedit": "unke"}
_METHODS: dict[str, Method] = {}


def register_method(name: str, params: type[MethodParams], edit: typing.Callable) -> Method:
    """Make `name` a value of ``EditConfig.method``: configs of it carry a `params` (a `MethodParams`
    dataclass) and `workbench.edit` calls `edit`. Call it at the bottom of the method's module."""
    if not (isinstance(params, type) and issubclass(params, MethodParams) and dataclasses.is_dataclass(params)):
        raise ConfigError(f"method {name!r}: params must be a frozen dataclass subclassing MethodParams")
    clash = sorted(set(params.names()) & (set(EditConfig.shared_names()) | set(Speed.names())))
    if clash:
        raise ConfigError(f"method {name!r}: parameter(s) {clash} are already EditConfig fields of every method")
    _METHODS[name] = Method(name, params, edit)
    return _METHODS[name]


def method(name: str) -> Method:
    """The registered method `name` (a built-in one is imported the first time it is asked for)."""
    if name not in _METHODS and name in BUILTIN_METHODS:
        importlib.import_module(f"workbench.methods.{BUILTIN_METHODS[name]}")  # its module registers it
    if name not in _METHODS:
        raise ConfigError.bad_choice("method", name, methods())
    return _METHODS[name]


def methods() -> list[str]:
    """The names ``EditConfig.method`` takes: the built-in ones, then those registered since."""
    return list(dict.fromkeys([*BUILTIN_METHODS, *_METHODS]))


def _part(kind: type, value, name: str, source: str):
    """A config's ``params`` or ``speed`` given whole: a `kind` itself, a mapping of its fields, or None (its
    defaults)."""
    if value is None:
        return kind()
    if type(value) is kind:
        return value
    if not isinstance(value, dict):
        raise ConfigError(f"{name}={value!r}: expected a mapping of {kind.__name__}'s fields")
    try:
        return kind.from_dict(value, source)
    except ConfigError as e:
        raise ConfigError(f"{name}: {e}") from None


def applicable(method_name: str, options: dict) -> dict:
    """The entries of `options` that a config of method `method_name` takes (shared fields, its parameters,
    speed settings): settings written once for several methods, such as a smoke size or a sweep's fixed values."""
    names = options_of(method_name)
    return {k: v for k, v in options.items() if k in names}


def options_of(method_name: str) -> tuple[str, ...]:
    """Every name a config of method `method_name` takes: the shared fields, its parameters, the speed settings."""
    return (*EditConfig.shared_names(), *method(method_name).params.names(), *Speed.names())


def _owners(name: str) -> list[str]:
    """The methods whose parameters include `name` (for an error message)."""
    return [m for m in methods() if name in method(m).params.names()]


@dataclass(frozen=True, init=False)
class EditConfig(Options):
    """Every choice of an edit. The fields below are shared by every method; the method's own parameters
    are ``params`` (its `MethodParams`), the speed-only settings ``speed``. Both also read and write as if
    they were fields: ``EditConfig(method="rome", v_lr=0.3)``, ``cfg.v_lr``, ``cfg.replace(value_batch=4)``."""

    # --- model (used by `wb.load_for(cfg)`, runs and notebooks; `wb.edit` takes the model it is given)
    model_name: str = "smollm2-135m-instruct"  # embedded default, "tiny-random-llama", an HF id or a local path
    device: str = "auto"  # "auto" (CUDA when present), "cpu", "cuda", "cuda:1", "dispatch" (spread over devices, models.load_for)
    dtype: str = "auto"  # "auto" (bf16 on CUDA, fp32 on CPU), "float32", "bfloat16", "float16"
    # --- where to edit
    # ft: fine-tune the selected weights; lora / adalora: a peft adapter on them; rome, memit, alphaedit, unke,
    # anyedit: the locate-and-edit baselines (methods/); or a method registered since (`register_method`)
    method: str = "ft"
    components: tuple[str, ...] = ("down",)  # abstract names: q k v o gate up down mlp attn block (components.py)
    layers: tuple[int, ...] | str = (15,)  # layer indices (negative counts from the end), or "all"
    # --- what the loss sees (applied only as a label mask, prompts.encode)
    # FT-UKE / LocFT-BF: target; EasyEdit's FT-L: prompt_last (all target tokens from the last prompt position);
    # first_token: only the first target token ("last_token" is its deprecated alias); prompt_target: every token
    loss_scope: Literal["prompt_last", "first_token", "target", "prompt_target"] = "target"
    chat_template: bool = True  # wrap the prompt in the tokenizer's own chat template; close the target with its end-of-turn
    max_length: int = 512  # longer examples are truncated (prompt first) with a warning and counted
    # --- schedule
    schedule: Literal["depth_first", "breadth_first"] = "breadth_first"  # DF: each batch to convergence, then the next; BF: epochs over all edits
    batch_size: int = 1  # edits per optimiser step (the batch-size ablation)
    micro_batch_size: int = 0  # edits per forward pass, gradients accumulated up to batch_size; 0 = batch_size
    epochs: int = 25  # breadth-first: passes over all edits
    steps_per_edit: int = 25  # depth-first: most optimiser steps per edit (or per batch of edits)
    early_stop_loss: float = 1e-2  # DF: stop an edit below it; BF: skip a batch below it, stop when an epoch's mean is below it
    shuffle: bool = True  # breadth-first: reshuffle the edits every epoch
    # opt-in speed-ups that change the optimisation (off in the papers' presets; benchmarks/README.md measures them)
    skip_converged: bool = False  # breadth-first: an example whose own loss is below early_stop_loss leaves later epochs
    length_buckets: bool = False  # breadth-first: each epoch's batches drawn from length-sorted runs (less padding)
    # --- optimiser
    optimizer: Literal["adam", "adamw", "sgd"] = "adam"
    lr: float = 5e-4
    weight_decay: float = 0.0
    max_grad_norm: float = 0.0  # clip the gradient norm of the trainable weights; 0 = off
    # --- precision of the prefix cache (`speed.prefix_cache`): "auto" = the model's dtype. bfloat16 rounds
    # the cached activations, so it is part of what an edit computes
    prefix_cache_dtype: Literal["auto", "bfloat16"] = "auto"
    # --- reproducibility
    seed: int = 0  # shuffling, adapter init, dropout, prefixes and preserved samples
    # --- the method's own parameters (its `MethodParams`: methods/<family>.py) and the speed-only settings
    params: MethodParams | None = None  # None: the method's defaults
    speed: Speed = field(default_factory=Speed)

    AT_LEAST_ONE = ("batch_size", "epochs", "steps_per_edit")
    NON_NEGATIVE = ("micro_batch_size", "lr", "weight_decay", "max_grad_norm", "early_stop_loss")

    def __init__(self, _source: str = "config", **options):
        """Shared fields by name; the method's parameters and the speed settings by name too (or whole, as
        ``params=`` / ``speed=``, a dataclass or a dict). An option no part has is an error naming the valid
        ones (and, when it is another method's parameter, that method)."""
        name = options.get("method", "ft")
        if not isinstance(name, str):
            raise ConfigError(f"method={name!r}: expected a string")
        kind = method(name).params
        params = _part(kind, options.pop("params", None), "params", _source)
        speed = _part(Speed, options.pop("speed", None), "speed", _source)
        own = {k: options.pop(k) for k in list(options) if k in kind.names()}
        fast = {k: options.pop(k) for k in list(options) if k in Speed.names()}
        unknown = [k for k in options if k not in self.shared_names()]
        if unknown:
            others = {k: _owners(k) for k in unknown}
            hint = "".join(f"; {k} is a parameter of {', '.join(v)}, not of {name!r}" for k, v in others.items() if v)
            raise ConfigError(f"unknown option(s) {unknown} in {_source}{hint}; valid options: "
                              f"{', '.join([*self.shared_names(), *kind.names(), *Speed.names()])}")
        for f in fields(self):
            if f.name not in ("params", "speed"):
                object.__setattr__(self, f.name, options.get(f.name, f.default))
        object.__setattr__(self, "params", dataclasses.replace(params, **own) if own else params)
        object.__setattr__(self, "speed", dataclasses.replace(speed, **fast) if fast else speed)
        self.__post_init__()

    def __post_init__(self):
        object.__setattr__(self, "loss_scope", loss_scope_name(self.loss_scope))  # deprecated aliases
        self._validate(skip=("method", "params", "speed"))
        if self.max_length < 2:
            raise ConfigError(f"max_length={self.max_length} must be >= 2 (a prompt token and a target token)")
        if self.micro_batch_size > self.batch_size:
            raise ConfigError(f"micro_batch_size={self.micro_batch_size} exceeds batch_size={self.batch_size}")
        if not self.components or not self.layers:
            raise ConfigError("components and layers must each name at least one entry")
        from .components import COMPONENTS

        for c in self.components:
            if c not in COMPONENTS:
                raise ConfigError.bad_choice("components", c, COMPONENTS)
        if self.dtype not in ("auto", "float32", "bfloat16", "float16"):
            raise ConfigError.bad_choice("dtype", self.dtype, ("auto", "float32", "bfloat16", "float16"))

    def __getattr__(self, name: str):
        """The method's parameters and the speed settings read as fields (``cfg.v_lr``, ``cfg.value_batch``)."""
        if name.startswith("__") or name in ("params", "speed"):
            raise AttributeError(name)
        for part in (self.params, self.speed):
            if name in type(part).names():
                return getattr(part, name)
        owners = _owners(name) if name in _all_params() else []
        raise AttributeError(f"{name!r}: a parameter of {', '.join(owners)}, not of method {self.method!r}" if owners
                             else f"EditConfig has no option {name!r}")

    @classmethod
    @functools.cache
    def shared_names(cls) -> tuple[str, ...]:
        """The fields every method has (all but ``params`` and ``speed``)."""
        return tuple(n for n in cls.names() if n not in ("params", "speed"))

    def options(self) -> tuple[str, ...]:
        """Every name this config takes: the shared fields, its method's parameters, the speed settings."""
        return options_of(self.method)

    # ------------------------------------------------------------------ derived
    @property
    def micro(self) -> int:
        """Edits per forward pass."""
        return self.micro_batch_size or self.batch_size

    # ------------------------------------------------------------------ (de)serialisation
    @classmethod
    def from_dict(cls, d: dict, source: str = "config") -> "EditConfig":
        """From `to_dict()`'s nested form or the flat form of presets (every option at the top level)."""
        unnamed = [k for k in d if not isinstance(k, str)]  # YAML reads "?" or "1: x" as such keys
        if unnamed:
            raise ConfigError(f"unknown option(s) {unnamed} in {source}: options are names, e.g. lr, layers")
        return cls(_source=source, **d)

    @classmethod
    def from_yaml(cls, path: str | os.PathLike) -> "EditConfig":
        return cls.from_dict(_read_mapping(path, "the preset", "options"), source=str(path))

    @classmethod
    def from_easyedit(cls, path: str | os.PathLike, **overrides) -> "EditConfig":
        """An EasyEdit hparams YAML (``alg_name`` FT, FT_uns, FT-L, FT-M, LoRA with ``lora_type`` lora or
        adalora) as our config. Every field that has no counterpart, or a value we do not support, is
        named in one warning; `overrides` are applied last."""
        raw = _read_mapping(path)
        alg = str(raw.get("alg_name", "")).upper().replace("-", "_")
        if alg not in ("FT", "FT_UNS", "FT_L", "FT_M", "LORA", "LORA_UNS"):
            raise ConfigError(f"{path}: alg_name={raw.get('alg_name')!r}; supported: FT, FT_uns, FT-L, FT-M, LoRA")
        out: dict = {"schedule": "depth_first", "chat_template": bool(raw.get("use_chat_template", False))}
        used = {"alg_name", "use_chat_template"}

        def take(src, dst, convert=lambda v: v):
            if src in raw:
                used.add(src)
                out[dst] = convert(raw[src])

        take("model_name", "model_name", str)
        take("device", "device", lambda v: f"cuda:{v}" if isinstance(v, int) else str(v))
        take("num_steps", "steps_per_edit")
        take("batch_size", "batch_size")
        take("max_length", "max_length")
        take("lr", "lr")
        take("weight_decay", "weight_decay")
        if raw.get("model_parallel"):
            used.add("model_parallel")
            out["device"] = "dispatch"
        elif "model_parallel" in raw:
            used.add("model_parallel")
        if alg.startswith("FT"):
            out["method"] = "ft"
            take("layers", "layers")
            scope = raw.get("objective_optimization", "prompt_last" if alg in ("FT", "FT_L", "FT_UNS") else "target_new")
            if scope not in ("prompt_last", "target_new"):
                raise ConfigError(f"{path}: objective_optimization={scope!r}; EasyEdit's are prompt_last, target_new")
            used.add("objective_optimization")
            out["loss_scope"] = "prompt_last" if scope == "prompt_last" else "target"
            if raw.get("norm_constraint") not in (None, False):
                out["norm_constraint"] = raw["norm_constraint"]
            used.add("norm_constraint")
            if "rewrite_module_tmp" in raw:
                used.add("rewrite_module_tmp")
                out["components"] = [_component_of(raw["rewrite_module_tmp"], path)]
            for name in ("layer_module_tmp", "mlp_module_tmp", "attn_module_tmp", "ln_f_module", "lm_head_module"):
                used.add(name)  # module paths of the family: our components table knows them
        else:
            out["method"] = "adalora" if str(raw.get("lora_type", "lora")).lower() == "adalora" else "lora"
            used.add("lora_type")
            take("rank", "lora_rank")
            take("lora_alpha", "lora_alpha")
            take("lora_dropout", "lora_dropout")
            if "target_modules" in raw:
                used.add("target_modules")
                out["components"] = [_component_of(m, path) for m in raw["target_modules"]]
            layers = raw.get("layers")
            used.add("layers")
            out["layers"] = layers if layers else "all"  # EasyEdit: [] means every layer
            if raw.get("norm_constraint") in (None, False):
                used.add("norm_constraint")
        if not raw.get("kl_factor"):
            used.add("kl_factor")  # 0: no KL term, as ours
        _warn_unmapped(path, raw, used, "EasyEdit")
        return cls.from_dict({**out, **overrides}, source=str(path))

    @classmethod
    def from_locft(cls, path: str | os.PathLike, **overrides) -> "EditConfig":
        """A LocFT hparams YAML (ICT-STAR/LocFT: ``model_name_or_path``, ``layer``, ``rewrite_module``,
        ``lr``, ``batch_size``, ``num_steps`` = epochs, ``weight_decay``) as our LocFT-BF config: the
        official loop's fixed choices (Adam, shuffled breadth-first epochs, the 1e-2 skip/stop rule,
        target-only loss without a template, fp32) are set too. Unmapped fields are named in a warning."""
        raw = _read_mapping(path)
        missing = [k for k in ("layer", "rewrite_module") if k not in raw]
        if missing:
            raise ConfigError(f"{path}: a LocFT hparams file needs {missing}")
        out = {"method": "ft", "schedule": "breadth_first", "shuffle": True, "loss_scope": "target",
               "chat_template": False, "early_stop_loss": 1e-2, "optimizer": "adam", "dtype": "float32",
               "layers": [raw["layer"]], "components": [_component_of(raw["rewrite_module"], path)]}
        used = {"layer", "rewrite_module"}
        for src, dst in (("model_name_or_path", "model_name"), ("lr", "lr"), ("batch_size", "batch_size"),
                         ("num_steps", "epochs"), ("weight_decay", "weight_decay")):
            if src in raw:
                used.add(src)
                out[dst] = raw[src]
        if "device" in raw:
            used.add("device")
            out["device"] = f"cuda:{raw['device']}" if isinstance(raw["device"], int) else str(raw["device"])
        _warn_unmapped(path, raw, used, "LocFT")
        return cls.from_dict({**out, **overrides}, source=str(path))

    def to_dict(self) -> dict:
        """Every field in plain JSON/YAML types, the method's parameters under ``params`` and the speed settings
        under ``speed``: what is saved with every result, and reads back with `from_dict`."""
        out = {n: _plain(getattr(self, n)) for n in self.shared_names()}
        return {**out, "params": self.params.to_dict(), "speed": self.speed.to_dict()}

    def identity(self) -> dict:
        """What names the edit's outcome: the schema version, the shared fields and the method's parameters
        (not ``speed``)."""
        out = self.to_dict()
        del out["speed"]
        return {"schema": SCHEMA, **out}

    def hash(self) -> str:
        """12 hex digits naming `identity()` (`files.short_hash`): the results cache key."""
        return short_hash(self.identity())

    def replace(self, **changes) -> "EditConfig":
        """A copy with `changes` (shared fields, the method's parameters or speed settings, by name). A change
        of ``method`` keeps the parameters the new method has too, at their values here."""
        if "method" in changes and changes["method"] != self.method and "params" not in changes:
            kind = method(changes["method"]).params
            changes["params"] = {k: v for k, v in self.params.to_dict().items() if k in kind.names()}
        return EditConfig(**{**{n: getattr(self, n) for n in self.names()}, **changes})

    def smoke(self) -> "EditConfig":
        """A few-second version of this config for CI and nbval (fewer epochs and steps)."""
        return self.replace(epochs=min(self.epochs, 4), steps_per_edit=min(self.steps_per_edit, 8),
                            params=self.params.smoke())


def _all_params() -> set[str]:
    """Every parameter name of every method."""
    return {n for m in methods() for n in method(m).params.names()}


def _read_mapping(path, what: str = "it", of: str = "hyper-parameters") -> dict:
    """A YAML file's top-level mapping, or a ConfigError naming the file."""
    try:
        with open(path, encoding="utf-8") as f:
            raw = yaml.safe_load(f) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read {what}: {e.strerror}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of {of}, got {type(raw).__name__}")
    return raw


def _component_of(template: str, path) -> str:
    """``model.layers.{}.mlp.down_proj.weight`` / ``q_proj`` / ``model.layers.{}`` -> our component name."""
    from .components import FAMILIES

    tail = str(template).removesuffix(".weight").split("{}")[-1].strip(".")
    for table in FAMILIES.values():
        for comp, where in table.items():
            module = where if isinstance(where, str) else where[0]
            if comp != "layers" and (module == tail or (tail and module.endswith("." + tail))):
                return comp
    raise ConfigError(f"{path}: cannot map module {template!r} to a component; ours: q k v o gate up down mlp attn block")


def _warn_unmapped(path, raw: dict, used: set, toolkit: str) -> None:
    rest = {k: raw[k] for k in raw if k not in used}
    if rest:
        import warnings

        warnings.warn(f"{path}: {toolkit} field(s) without a counterpart here, not used: "
                      + ", ".join(f"{k}={v!r}" for k, v in rest.items()), stacklevel=3)


def _coerce(name: str, value, hint):
    """Coerce YAML / notebook literals to the field's type, or raise naming the field."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):  # only `layers`: a tuple of ints or "all"
        if value == "all":
            return value
        try:
            return _coerce(name, value, typing.get_args(hint)[0])
        except ConfigError:
            raise ConfigError(f"{name}={value!r}: expected a list of integers or \"all\"") from None
    if origin is Literal:
        if value not in typing.get_args(hint):
            raise ConfigError.bad_choice(name, value, typing.get_args(hint))
        return value
    if origin is tuple:
        inner = typing.get_args(hint)[0]
        items = (value,) if isinstance(value, (str, int)) else value
        if not isinstance(items, (list, tuple)):
            raise ConfigError(f"{name}={value!r}: expected a list of {inner.__name__}")
        return tuple(_coerce(name, v, inner) for v in items)
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{name}={value!r}: expected true or false")
        return value
    if hint in (int, float):
        kind = "an integer" if hint is int else "a number"
        number = value
        if isinstance(value, str):  # YAML reads 1e-4 as a string; notebooks pass "3"
            try:
                number = float(value)
            except ValueError:
                raise ConfigError(f"{name}={value!r}: expected {kind}") from None
        if isinstance(number, bool) or not isinstance(number, (int, float)):
            raise ConfigError(f"{name}={value!r}: expected {kind}")
        if isinstance(number, float) and not math.isfinite(number):
            raise ConfigError(f"{name}={value!r}: expected a finite number")
        if hint is int:
            if isinstance(number, float) and not number.is_integer():
                raise ConfigError(f"{name}={value!r}: expected an integer")
            return int(number)
        try:
            return float(number)
        except OverflowError:
            raise ConfigError(f"{name}={value!r}: too large") from None
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{name}={value!r}: expected a string")
        return value
    return value


def presets() -> list[str]:
    """Names of the YAML presets in ``configs/``."""
    return sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))


def preset(name: str, **overrides) -> EditConfig:
    """Load ``configs/<name>.yaml`` and apply `overrides` (``preset("ft-uke", layers=[12])``)."""
    path = CONFIG_DIR / f"{name}.yaml"
    if not path.exists():
        raise ConfigError.bad_choice("preset", name, presets())
    base = _preset_file(path, path.stat().st_mtime_ns)
    return base.replace(**overrides) if overrides else base


@functools.lru_cache(maxsize=64)
def _preset_file(path: Path, mtime_ns: int) -> EditConfig:
    """A preset file read once per version (the config is frozen, so one object serves every caller): a
    report asks for presets thousands of times, and parsing the YAML each time was most of its minute."""
    return EditConfig.from_yaml(path)


def from_params(namespace: dict, base: EditConfig | str | None = None) -> EditConfig:
    """Build a config from a notebook's parameters: every name in `namespace` that is a config field
    overrides `base` (a config or a preset name; default `EditConfig()`)."""
    base = preset(base) if isinstance(base, str) else base or EditConfig()
    names = set(base.options()) | set(method(namespace.get("method", base.method)).params.names())
    return base.replace(**{k: v for k, v in namespace.items() if k in names})
