"""Parity with x-transformers, the reference implementation of the seed: the
same weights give the same logits and the same losses."""

import pytest
import torch

from axw import AutoregressiveWrapper, from_x_transformers

xt = pytest.importorskip("x_transformers")


def xt_pair(num_tokens=131, max_seq_len=48, dim=64, depth=3, heads=4):
    torch.manual_seed(0)
    theirs = xt.TransformerWrapper(
        num_tokens=num_tokens, max_seq_len=max_seq_len, attn_layers=xt.Decoder(dim=dim, depth=depth, heads=heads)
    ).eval()
    ours = from_x_transformers(theirs).net
    assert sum(p.numel() for p in theirs.parameters()) == sum(p.numel() for p in ours.parameters())
    return theirs, ours


def test_same_weights_same_logits():
    theirs, ours = xt_pair()
    x = torch.randint(0, 131, (3, 40))
    assert torch.allclose(ours(x), theirs(x), atol=1e-5)


def test_same_weights_same_loss_and_key_mask():
    theirs, ours = xt_pair()
    seq = torch.randint(0, 131, (3, 33))
    their_loss = xt.AutoregressiveWrapper(theirs)(seq)
    assert torch.allclose(AutoregressiveWrapper(ours)(seq), their_loss, atol=1e-5)

    keep = torch.rand(3, 32) > 0.3
    keep[:, 0] = True
    their_logits = theirs(seq[:, :-1], self_attn_kv_mask=keep)
    assert torch.allclose(ours(seq[:, :-1], self_attn_kv_mask=keep), their_logits, atol=1e-5)


def test_same_weights_same_cached_decoding():
    theirs, ours = xt_pair()
    x = torch.randint(0, 131, (2, 20))
    _, their_cache = theirs(x[:, :12], return_intermediates=True)
    _, our_cache = ours(x[:, :12], return_intermediates=True)
    for end in range(13, 21):
        their_logits, their_cache = theirs(x[:, :end], cache=their_cache, return_intermediates=True)
        our_logits, our_cache = ours(x[:, :end], cache=our_cache, return_intermediates=True)
        assert torch.allclose(our_logits[:, -1], their_logits[:, -1], atol=1e-5)
