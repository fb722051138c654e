import os

import pytest
import torch

from axw import AutoregressiveWrapper, Decoder, TransformerWrapper

# tests never reach the network
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
torch.set_num_threads(min(2, torch.get_num_threads()))


def tiny_net(num_tokens=97, max_seq_len=64, rotary=False, dim=32, depth=2, heads=4, **decoder_kwargs):
    return TransformerWrapper(
        num_tokens=num_tokens,
        max_seq_len=max_seq_len,
        use_abs_pos_emb=not rotary,
        attn_layers=Decoder(dim=dim, depth=depth, heads=heads, dim_head=dim // heads, rotary_pos_emb=rotary,
                            **decoder_kwargs),
    )


def tiny_model(seed=0, wrapper_kwargs=None, **kwargs):
    torch.manual_seed(seed)
    return AutoregressiveWrapper(tiny_net(**kwargs), **(wrapper_kwargs or {}))


@pytest.fixture
def model():
    return tiny_model().eval()


@pytest.fixture
def rotary_model():
    return tiny_model(rotary=True).eval()
