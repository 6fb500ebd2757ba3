"""Shared fixtures. Tests never touch the network: the hub is forced offline before anything loads."""
import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402

import workbench as wb  # noqa: E402
from workbench.models import tiny_llama_config  # noqa: E402

torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(scope="session")
def tok():
    """The SmolLM2 tokenizer (ChatML template, <|im_end|> end-of-turn)."""
    return wb.load("tiny-random-llama", device="cpu")[1]


@pytest.fixture
def tiny(tok):
    """A fresh tiny random Llama (4 layers, hidden 64) for each test."""
    from transformers import LlamaForCausalLM

    torch.manual_seed(0)
    return LlamaForCausalLM(tiny_llama_config(len(tok))).eval()


@pytest.fixture(scope="session")
def smol():
    """The embedded SmolLM2-135M-Instruct, fp32 on CPU (shared: tests must revert their edits)."""
    return wb.load(device="cpu")


@pytest.fixture
def facts():
    return wb.data.load("facts-fixture")
