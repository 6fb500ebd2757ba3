"""One configuration for every edit: each ablation axis of both papers is a field.

``EditConfig`` is a frozen dataclass with one comment per field (nanoGPT style). Values are checked
when it is built: a bad choice raises a `ConfigError` listing the valid ones, an unknown key is an
error, and YAML's habit of reading ``1e-4`` as a string is undone by coercing numbers. Presets live as
YAML files in ``configs/`` (`preset("ft-uke")`); `to_dict()` is saved with every result and `hash()`
keys the results cache.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import types
import typing
import warnings
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Literal

import yaml

from .errors import ConfigError

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"

# SMOKE=1 (set by CI and `make smoke-notebooks`) shrinks notebook runs to seconds.
SMOKE = os.environ.get("WORKBENCH_SMOKE", "0") not in ("", "0", "false", "False")


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


# Fields added after runs were stored: left out of `to_dict()` (so of every hash) at these defaults,
# so the stored runs keep their hashes.
ADDED_LATER = {"skip_converged": False, "length_buckets": False, "prefix_cache_dtype": "auto", "parallel_edits": 1,
               "value_batch": 16,
               # issue 42 (the locate-and-edit baselines as their authors run them): what every run stored before
               # computed. The presets now say the official values, so a preset run names a new folder.
               "target_eot": True, "v_stop_loss": 5e-2, "key_mean": "flat", "preserve_set": "mmlu_fixed",
               "decay_norms": True}
# Fields that change how fast an edit runs, never what it computes beyond float rounding: not in `hash()`.
NOT_HASHED = ("parallel_edits", "value_batch")


@dataclass(frozen=True)
class EditConfig:
    # --- model (used by `wb.load_for(cfg)`, runs and notebooks; `wb.edit` takes the model it is given)
    model_name: str = "smollm2-135m-instruct"  # embedded default, "tiny-random-llama", an HF id or a local path
    device: str = "auto"  # "auto" (CUDA when present), "cpu", "cuda", "cuda:1", "dispatch" (spread over devices, models.load_for)
    dtype: str = "auto"  # "auto" (bf16 on CUDA, fp32 on CPU), "float32", "bfloat16", "float16"
    # --- where to edit
    # ft: fine-tune the selected weights; lora / adalora: a peft adapter on them; rome, memit, alphaedit, unke,
    # anyedit: the locate-and-edit baselines (methods/), which use `layers` and the fields of their section below
    method: Literal["ft", "lora", "adalora", "rome", "memit", "alphaedit", "unke", "anyedit"] = "ft"
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
    # --- optimiser
    optimizer: Literal["adam", "adamw", "sgd"] = "adam"
    lr: float = 5e-4
    weight_decay: float = 0.0
    max_grad_norm: float = 0.0  # clip the gradient norm of the trainable weights; 0 = off
    norm_constraint: float = 0.0  # FT-L: keep every edited weight within +-this of its original; 0 = off
    # --- adapters (method lora / adalora)
    lora_rank: int = 8  # LoRA r; AdaLoRA's target rank (it starts at 1.5x this and prunes)
    lora_alpha: float = 32.0
    lora_dropout: float = 0.1
    # AdaLoRA rank pruning as peft's (tinit, tfinal, deltaT); empty: no pruning, the rank stays at its start
    # (1.5 x lora_rank) as in EasyEdit's AdaLoRA, which never calls update_and_allocate
    adalora_schedule: tuple[int, ...] = ()
    adalora_orth_reg: float = 0.5  # weight of AdaLoRA's orthogonal regulariser on its A and B (peft's orth_reg_weight)
    merge_adapter: bool = False  # merge the adapter into the base weights after the edit (revert still exact)
    # --- locate-and-edit (methods rome, memit, alphaedit, unke, anyedit; methods/locate.py explains each)
    # the key token: the subject's last (ROME, MEMIT, AlphaEdit) or the prompt's last (UnKE, AnyEdit, and the
    # fallback for requests without a subject)
    key_position: Literal["subject_last", "prompt_last"] = "subject_last"
    v_lr: float = 0.5  # lr of the value optimisation (the vector δ added at the key token)
    v_steps: int = 25  # its most steps (it stops below v_stop_loss)
    # a request's value loop stops once its loss is below this (checked before a step, as the originals do); 0:
    # never early. Official: ROME/MEMIT/AlphaEdit 5e-2, UnKE none, AnyEdit 5e-3 (its MEMIT base 1e-2)
    v_stop_loss: float = 5e-2
    # the value's target ends with the end-of-turn (chat template) / EOS (plain), as fine-tuning's does. ROME's,
    # MEMIT's and AlphaEdit's code trains the target alone (false in their presets); UnKE and AnyEdit append it
    target_eot: bool = True
    v_weight_decay: float = 1e-3  # penalty weight on ||δ|| / ||h||²
    clamp_norm: float = 4.0  # ||δ|| is kept below clamp_norm x ||h||
    kl_factor: float = 0.0625  # ROME's KL term at "{subject} is a" (0: off)
    n_prefixes: int = 10  # model-generated prefixes the key and value average over, besides the bare prompt
    # the key over the bare prompt and the prefixes: "flat" (one mean over all rows: ROME's compute_u) or
    # "two_group" (the mean of the bare-prompt key and the prefixes' mean key: MEMIT's compute_ks, AlphaEdit)
    key_mean: Literal["flat", "two_group"] = "flat"
    prefix_tokens: int = 10  # tokens per prefix
    mom2_tokens: int = 100_000  # tokens of text behind C = E[kkᵀ] (0: no statistics; ROME then uses C = I)
    mom2_corpus: str = "mmlu"  # "mmlu" (the MMLU CSVs of the data folder) or a .txt / .jsonl file of passages
    mom2_weight: float = 15000.0  # MEMIT's λ: weight of the preserved keys' statistics in the solve
    nullspace_threshold: float = 2e-2  # AlphaEdit: eigenvalues of C below this span the null space
    alphaedit_l2: float = 10.0  # AlphaEdit's ridge term α
    unke_steps: int = 50  # UnKE / AnyEdit: optimiser steps (`optimizer`, `lr`) on the decoder layer
    n_preserve: int = 20  # UnKE / AnyEdit: unrelated passages whose layer outputs are kept
    # UnKE / AnyEdit: what they are. "mmlu_fixed": the same n_preserve MMLU questions (plain text) for every edit;
    # "chat_per_edit": n_preserve instruction samples in the chat template (an MMLU question with its choices, the
    # right choice as the reply), drawn afresh for each edit (UnKE's code draws 20 Alpaca samples per edit)
    preserve_set: Literal["mmlu_fixed", "chat_per_edit"] = "mmlu_fixed"
    decay_norms: bool = True  # UnKE / AnyEdit: weight decay on the layer norms too (false: exempt, as UnKE's code)
    chunk_tokens: int = 40  # AnyEdit: answer tokens per chunk
    anyedit_base: Literal["unke", "memit"] = "unke"  # AnyEdit: the method that writes the chunks' values
    # --- opt-in speed-ups that change the optimisation (off in the papers' presets; benchmarks/README.md measures them)
    skip_converged: bool = False  # breadth-first: an example whose own loss is below early_stop_loss leaves later epochs
    length_buckets: bool = False  # breadth-first: each epoch's batches drawn from length-sorted runs (less padding)
    # --- speed (the same edit up to float rounding)
    # run once per example, not every step, what the edit cannot change: the layers below the lowest edited (or
    # value) layer (prefix.py) and, for locate-and-edit values, every position before the key token (locate.Before)
    prefix_cache: bool = True
    prefix_cache_dtype: Literal["auto", "bfloat16"] = "auto"  # the cache's storage: "auto" = the model's dtype
    parallel_edits: int = 1  # single editing (`edit_each`, runs' protocol "single"): requests trained, then scored (`score_each`), at once, each alone
    value_batch: int = 16  # locate-and-edit: requests whose values (δ) are optimised in one batch, each alone (locate.optimize_deltas)
    # --- reproducibility
    seed: int = 0  # shuffling, adapter init and dropout

    def __post_init__(self):
        object.__setattr__(self, "loss_scope", loss_scope_name(self.loss_scope))  # deprecated aliases
        hints = typing.get_type_hints(type(self))
        for f in fields(self):
            object.__setattr__(self, f.name, _coerce(f.name, getattr(self, f.name), hints[f.name]))
        for name in ("batch_size", "epochs", "steps_per_edit", "lora_rank", "v_steps", "prefix_tokens", "unke_steps",
                     "chunk_tokens", "parallel_edits", "value_batch"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}={getattr(self, name)} must be >= 1")
        if self.max_length < 2:
            raise ConfigError(f"max_length={self.max_length} must be >= 2 (a prompt token and a target token)")
        if self.adalora_schedule and (len(self.adalora_schedule) != 3 or min(self.adalora_schedule) < 0
                                      or self.adalora_schedule[2] < 1):
            raise ConfigError(f"adalora_schedule={list(self.adalora_schedule)}: give [tinit, tfinal, deltaT] "
                              "(steps >= 0, deltaT >= 1), or [] for no rank pruning")
        for name in ("micro_batch_size", "lr", "weight_decay", "max_grad_norm", "norm_constraint", "early_stop_loss",
                     "lora_dropout", "adalora_orth_reg", "v_lr", "v_weight_decay", "v_stop_loss", "clamp_norm", "kl_factor", "n_prefixes",
                     "mom2_tokens", "mom2_weight", "nullspace_threshold", "alphaedit_l2", "n_preserve"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name}={getattr(self, name)} must be >= 0")
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

    # ------------------------------------------------------------------ derived
    @property
    def micro(self) -> int:
        """Edits per forward pass."""
        return self.micro_batch_size or self.batch_size

    # ------------------------------------------------------------------ (de)serialisation
    @classmethod
    def from_dict(cls, d: dict, source: str = "config") -> "EditConfig":
        valid = [f.name for f in fields(cls)]
        unknown = [k for k in d if k not in valid]
        if unknown:
            raise ConfigError(f"unknown option(s) {unknown} in {source}; valid options: {', '.join(valid)}")
        return cls(**d)

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
        """Plain JSON/YAML types (tuples as lists): what is saved with every result. Fields added after
        runs were stored are left out at their defaults (`ADDED_LATER`)."""
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        return {k: list(v) if isinstance(v, tuple) else v for k, v in out.items()
                if not (k in ADDED_LATER and v == ADDED_LATER[k])}

    def hash_dict(self) -> dict:
        """`to_dict()` without the speed-only fields (`NOT_HASHED`): what names the edit's outcome."""
        return {k: v for k, v in self.to_dict().items() if k not in NOT_HASHED}

    def hash(self) -> str:
        """12 hex digits of the sha256 of the canonical JSON of `hash_dict()` (the results cache key)."""
        blob = json.dumps(self.hash_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:12]

    def replace(self, **changes) -> "EditConfig":
        valid = {f.name for f in fields(self)}
        unknown = sorted(set(changes) - valid)
        if unknown:
            raise ConfigError(f"unknown option(s) {unknown}; valid options: {', '.join(sorted(valid))}")
        return dataclasses.replace(self, **changes)

    def smoke(self) -> "EditConfig":
        """A few-second version of this config for CI and nbval (fewer epochs and steps)."""
        return self.replace(epochs=min(self.epochs, 4), steps_per_edit=min(self.steps_per_edit, 8),
                            v_steps=min(self.v_steps, 5), unke_steps=min(self.unke_steps, 5),
                            n_prefixes=min(self.n_prefixes, 2), prefix_tokens=min(self.prefix_tokens, 4),
                            mom2_tokens=min(self.mom2_tokens, 2000), n_preserve=min(self.n_preserve, 4))


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
    return EditConfig.from_yaml(path).replace(**overrides)


def from_params(namespace: dict, base: EditConfig | str | None = None) -> EditConfig:
    """Build a config from a notebook's parameters: every name in `namespace` that is a config field
    overrides `base` (a config or a preset name; default `EditConfig()`)."""
    base = preset(base) if isinstance(base, str) else base or EditConfig()
    names = {f.name for f in fields(EditConfig)}
    return base.replace(**{k: v for k, v in namespace.items() if k in names})
