"""Abstract component names resolve to real modules for each family; bad ones error clearly."""
import pytest
import torch.nn as nn
from transformers import (AutoModelForCausalLM, GemmaConfig, GPT2Config, LlamaConfig, MistralConfig,
                          Qwen2Config)

from workbench.components import COMPONENTS, resolve
from workbench.errors import ConfigError

SMALL = dict(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=64)
CONFIGS = {
    "llama": LlamaConfig(**SMALL),
    "qwen2": Qwen2Config(**SMALL),
    "mistral": MistralConfig(**SMALL),
    "gemma": GemmaConfig(**SMALL, head_dim=8),
    "gpt2": GPT2Config(vocab_size=128, n_embd=32, n_layer=3, n_head=4, n_positions=64),
}


@pytest.fixture(scope="module", params=list(CONFIGS))
def family_model(request):
    return request.param, AutoModelForCausalLM.from_config(CONFIGS[request.param])


def test_every_component_resolves(family_model):
    family, model = family_model
    for comp in COMPONENTS:
        if family == "gpt2" and comp == "gate":
            with pytest.raises(ConfigError, match="'gate' does not exist in gpt2; it has: q, k, v, o, up, down"):
                resolve(model, [comp], [0])
            continue
        targets = resolve(model, [comp], [0, -1])
        assert [t.layer for t in targets] == [0, 2]
        for t in targets:
            module = model.get_submodule(t.name)  # really exists
            if comp in ("q", "k", "v", "o", "gate", "up", "down"):
                assert any(isinstance(m, nn.Module) and len(list(m.parameters(recurse=False))) for m in [module])
        if comp == "block":
            assert targets[0].name.endswith(".0") and targets[1].name.endswith(".2")


def test_llama_down_and_gpt2_fused_q():
    llama = AutoModelForCausalLM.from_config(CONFIGS["llama"])
    assert resolve(llama, ["down"], [1])[0].name == "model.layers.1.mlp.down_proj"
    gpt2 = AutoModelForCausalLM.from_config(CONFIGS["gpt2"])
    k = resolve(gpt2, ["k"], [1])[0]
    assert (k.name, k.fused_slice) == ("transformer.h.1.attn.c_attn", 1)
    assert len(resolve(llama, ["q", "v"], "all")) == 6


def test_bad_component_layer_and_family():
    llama = AutoModelForCausalLM.from_config(CONFIGS["llama"])
    with pytest.raises(ConfigError, match="components='ffn' is not valid; choose one of: 'q'"):
        resolve(llama, ["ffn"], [0])
    with pytest.raises(ConfigError, match="layer 3 is out of range for a 3-layer model"):
        resolve(llama, ["down"], [3])
    llama.config.model_type = "mamba"
    with pytest.raises(ConfigError, match="model_type 'mamba' has no component table; known families:"):
        resolve(llama, ["down"], [0])
