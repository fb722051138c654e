"""The picker's list of today's small Hub models: labels with parameters and memory, the amateur that shares a
model's tokenizer, the precision Hub models are served in, and the refusals before any download (gated, pickle
only, over the cap)."""

from types import SimpleNamespace

import pytest
import torch

pytest.importorskip("gradio")
import playground as pg  # noqa: E402


def test_labels_give_parameters_memory_and_the_cap():
    model = pg.HubModel("org/tiny-chat", 360e6, instruct=True, tokenizer="t")
    assert model.label(cap_bytes=10**9) == "org/tiny-chat · 360M parameters · 720 MB in bf16 · chat"
    big = pg.HubModel("org/big", 3.08e9, gated=True)
    assert big.label(cap_bytes=2 * 10**9) == ("org/big · 3.1B parameters · 6.2 GB in bf16 (over this server's cap) · "
                                              "gated: needs a token")
    listed = {m.repo_id for m in pg.HUB_MODELS}
    for repo in ("HuggingFaceTB/SmolLM2-135M-Instruct", "Qwen/Qwen3-0.6B", "Qwen/Qwen2.5-0.5B-Instruct",
                 "google/gemma-3-270m-it", "meta-llama/Llama-3.2-1B-Instruct", "HuggingFaceTB/SmolLM3-3B",
                 "openai-community/gpt2"):
        assert repo in listed
    assert pg.HUB_EXAMPLES == [m.repo_id for m in pg.HUB_MODELS]


def test_the_amateur_is_the_smallest_listed_model_sharing_the_tokenizer():
    assert pg.smallest_sibling("HuggingFaceTB/SmolLM2-360M-Instruct") == "HuggingFaceTB/SmolLM2-135M"
    assert pg.smallest_sibling("meta-llama/Llama-3.2-1B-Instruct") is None  # its base is as large
    assert pg.smallest_sibling("HuggingFaceTB/SmolLM2-135M") is None
    assert pg.smallest_sibling("someone/unlisted") is None


def test_hub_models_are_served_in_bf16_on_a_cpu_that_has_it(monkeypatch):
    cpu = torch.device("cpu")
    assert pg.hub_dtype(cpu, torch.float32, env={"AXW_HUB_DTYPE": "bfloat16"}) == torch.bfloat16
    assert pg.hub_dtype(cpu, torch.float32, env={"AXW_HUB_DTYPE": "float32"}) == torch.float32
    monkeypatch.setattr(pg.models, "cpu_has_bf16", lambda: True)
    assert pg.hub_dtype(cpu, torch.float32, env={}) == torch.bfloat16
    monkeypatch.setattr(pg.models, "cpu_has_bf16", lambda: False)
    assert pg.hub_dtype(cpu, torch.float32, env={}) == torch.float32
    assert pg.hub_dtype(torch.device("cuda"), torch.bfloat16, env={"AXW_HUB_DTYPE": "float32"}) == torch.bfloat16
    with pytest.raises(ValueError, match="AXW_HUB_DTYPE"):
        pg.hub_dtype(cpu, torch.float32, env={"AXW_HUB_DTYPE": "fp8"})


@pytest.fixture
def hub(monkeypatch):
    """The Hub's answers about a few repos (its model_info), with the network on as far as the checks know."""
    import huggingface_hub
    from huggingface_hub.errors import GatedRepoError

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", False)

    def model_info(self, repo_id, files_metadata=False):
        if repo_id == "meta-llama/Llama-3.2-1B":
            raise GatedRepoError("403 Client Error: Cannot access gated repo", response=SimpleNamespace(
                headers={}, status_code=403, request=None, json=lambda: {}))
        if repo_id == "old/pickles":
            return SimpleNamespace(siblings=[SimpleNamespace(rfilename="pytorch_model.bin", size=10**6),
                                             SimpleNamespace(rfilename="config.json", size=100)])
        return SimpleNamespace(siblings=[SimpleNamespace(rfilename="model.safetensors", size=2_470_000_000)])

    monkeypatch.setattr(huggingface_hub.HfApi, "model_info", model_info)


def test_refusals_before_any_download(hub, monkeypatch):
    with pytest.raises(ValueError, match="is gated on the Hub: accept its license"):
        pg.check_hub_size("meta-llama/Llama-3.2-1B")
    with pytest.raises(ValueError, match=r"has no safetensors weights \(only pytorch_model\.bin.*never done here\)"):
        pg.check_hub_size("old/pickles")
    with pytest.raises(ValueError, match=r"2\.5 GB of weights; this playground loads at most 2\.0 GB"):
        pg.check_hub_size("meta-llama/Llama-3.2-1B-Instruct")
    monkeypatch.setenv("AXW_HUB_MODEL_BYTES", "3000000000")  # a bigger machine raises the cap
    pg.check_hub_size("meta-llama/Llama-3.2-1B-Instruct")
    monkeypatch.setenv("AXW_HUB_MODEL_BYTES", "lots")
    with pytest.raises(ValueError, match="AXW_HUB_MODEL_BYTES"):
        pg.check_hub_size("meta-llama/Llama-3.2-1B-Instruct")
