"""The network and the training contract, checked against hand computations
and full recomputes."""

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_model, tiny_net

from axw import AutoregressiveWrapper, Decoder, TransformerWrapper
from axw.loss import random_key_mask

VARIANTS = {
    "abs": dict(),
    "rotary": dict(rotary=True),
    "llama-like": dict(rotary=True, use_rmsnorm=True, ff_glu=True, ff_swish=True, ff_no_bias=True,
                       attn_kv_heads=2, rotary_emb_base=500000.0, ff_inner_dim=40),
    "gpt2-like": dict(attn_bias=True, norm_bias=True, ff_activation="gelu_tanh"),
    "partial-rotary": dict(rotary=True, rotary_emb_dim=4),
}


def test_logits_shape(model):
    x = torch.randint(0, 97, (3, 11))
    assert model.net(x).shape == (3, 11, 97)
    logits, inter = model.net(x, return_intermediates=True)
    assert logits.shape == (3, 11, 97) and inter.cache.seen == 11


def test_loss_is_cross_entropy_by_hand(model):
    seq = torch.randint(0, 97, (2, 17))
    logits = model.net(seq[:, :-1])
    log_probs = logits.log_softmax(-1)
    by_hand = -log_probs.gather(-1, seq[:, 1:, None]).mean()
    assert torch.allclose(model(seq), by_hand, atol=1e-6)


def test_return_outputs_gives_logits_of_inputs(model):
    seq = torch.randint(0, 97, (2, 9))
    loss, (logits, inter) = model(seq, return_outputs=True)
    assert logits.shape == (2, 8, 97)
    assert torch.allclose(logits, model.net(seq[:, :-1]), atol=1e-6)


def test_lens_and_ignore_index_drop_padding_from_the_loss():
    model = tiny_model(wrapper_kwargs=dict(pad_value=3)).eval()
    seq = torch.randint(0, 97, (2, 12))
    lens = torch.tensor([12, 7])
    loss = model(seq, lens=lens)

    # by hand: row 1 has 6 valid targets (positions 1..6), padding read as pad_value
    padded = seq.clone()
    padded[1, 7:] = 3
    log_probs = model.net(padded[:, :-1]).log_softmax(-1)
    nll = -log_probs.gather(-1, padded[:, 1:, None])[..., 0]
    valid = torch.ones_like(nll, dtype=torch.bool)
    valid[1, 6:] = False
    assert torch.allclose(loss, nll[valid].mean(), atol=1e-6)

    # the same through ignore_index in the sequence itself
    ignored = seq.clone()
    ignored[1, 7:] = -100
    assert torch.allclose(model(ignored), loss, atol=1e-6)


@pytest.mark.parametrize("variant", VARIANTS)
def test_masked_keys_are_hidden(variant):
    net = tiny_model(**VARIANTS[variant]).net.eval()
    x = torch.randint(0, 97, (1, 16))
    keep = torch.ones(1, 16, dtype=torch.bool)
    keep[0, [3, 8, 9]] = False
    base = net(x, self_attn_kv_mask=keep)

    changed = x.clone()
    changed[0, 8] = (x[0, 8] + 1) % 97
    out = net(changed, self_attn_kv_mask=keep)
    others = [i for i in range(16) if i != 8]
    assert torch.allclose(out[0, others], base[0, others], atol=1e-6)
    assert not torch.allclose(out[0, 8], base[0, 8])

    # control: an unmasked token does change later positions
    changed[0, 8] = x[0, 8]
    changed[0, 5] = (x[0, 5] + 1) % 97
    out = net(changed, self_attn_kv_mask=keep)
    assert not torch.allclose(out[0, 12], base[0, 12], atol=1e-4)


def test_random_key_mask_counts_and_first_token():
    g = torch.Generator().manual_seed(0)
    for n, p in [(10, 0.15), (128, 0.15), (50, 0.5), (5, 0.99)]:
        keep = random_key_mask(64, n, p, "cpu", g)
        assert keep[:, 0].all()
        assert ((~keep).sum(-1) == min(int(n * p), n - 1)).all()
    # every position but the first gets masked sometimes
    keep = random_key_mask(2000, 10, 0.3, "cpu", g)
    assert (~keep[:, 1:]).any(0).all()


def test_mask_prob_loss_equals_loss_with_that_key_mask():
    model = tiny_model(wrapper_kwargs=dict(mask_prob=0.25)).train()
    seq = torch.randint(0, 97, (3, 21))
    loss = model(seq, generator=torch.Generator().manual_seed(5))
    keep = random_key_mask(3, 20, 0.25, "cpu", torch.Generator().manual_seed(5))
    logits = model.net(seq[:, :-1], self_attn_kv_mask=keep)
    expected = F.cross_entropy(logits.reshape(-1, 97), seq[:, 1:].reshape(-1))
    assert torch.allclose(loss, expected, atol=1e-6)
    # the mask changes the loss, and eval mode trains nothing so it is off
    assert not torch.allclose(loss, model.eval()(seq))


def _attention_logsumexp_by_hand(net, x):
    """Recompute each layer's attention logits from the weights."""
    captured = []
    hooks = [blk.attn_norm.register_forward_hook(lambda m, i, o: captured.append(o)) for blk in net.attn_layers.layers]
    net(x)
    for h in hooks:
        h.remove()
    total = 0.0
    n = x.shape[1]
    causal = torch.ones(n, n, dtype=torch.bool).tril()
    for blk, normed in zip(net.attn_layers.layers, captured):
        a = blk.attn
        qkv = normed @ a.to_qkv.weight.t()
        q, k, _ = qkv.split((a.heads * a.dim_head, a.kv_heads * a.dim_head, a.kv_heads * a.dim_head), -1)
        q = q.view(1, n, a.heads, a.dim_head).transpose(1, 2)
        k = k.view(1, n, a.kv_heads, a.dim_head).transpose(1, 2)
        scores = q @ k.transpose(-1, -2) / math.sqrt(a.dim_head)
        lse = scores.masked_fill(~causal, -math.inf).logsumexp(-1)
        total = total + lse.square().sum(1)  # heads
    return total.mean()


def test_attn_z_loss_matches_the_formula():
    model = tiny_model(wrapper_kwargs=dict(add_attn_z_loss=True)).eval()
    seq = torch.randint(0, 97, (1, 13))
    inp = seq[:, :-1]
    _, inter = model.net(inp, return_intermediates=True, return_attn_z_loss=True)
    by_hand = _attention_logsumexp_by_hand(model.net, inp)
    assert torch.allclose(inter.attn_z_loss, by_hand * model.net.attn_z_loss_weight, rtol=1e-5)
    ce = F.cross_entropy(model.net(inp)[0], seq[0, 1:])
    assert torch.allclose(model(seq), ce + by_hand * 1e-4, rtol=1e-5)
    # only computed when asked
    _, inter = model.net(inp, return_intermediates=True)
    assert inter.attn_z_loss is None


def test_next_embed_loss_by_hand():
    torch.manual_seed(0)
    net = TransformerWrapper(num_tokens=97, max_seq_len=64, add_continuous_pred_head=True,
                             attn_layers=Decoder(dim=32, depth=2, heads=4, dim_head=8))
    model = AutoregressiveWrapper(net, next_embed_loss_weight=0.3).eval()
    seq = torch.randint(0, 97, (2, 10))
    inp = seq[:, :-1]
    hidden = net(inp, return_embeddings=True)
    pred = net.to_next_embed_pred(hidden)
    goal = net.state_dict()["token_emb.weight"][seq[:, 1:]] + net.pos_emb.weight[1:10]
    ce = F.cross_entropy(net(inp).reshape(-1, 97), seq[:, 1:].reshape(-1))
    expected = ce + 0.3 * (pred - goal).abs().mean()
    assert torch.allclose(model(seq), expected, atol=1e-6)


@pytest.mark.parametrize("variant", VARIANTS)
def test_cache_equals_full_recompute(variant):
    net = tiny_model(**VARIANTS[variant]).net.eval()
    x = torch.randint(0, 97, (3, 30))
    full = net(x)
    logits, inter = net(x[:, :7], return_intermediates=True)
    pieces = [logits]
    for end in [8, 9, 13, 14, 30]:  # single tokens and chunks
        logits, inter = net(x[:, :end], cache=inter, return_intermediates=True)
        pieces.append(logits)
    assert torch.allclose(torch.cat(pieces, 1), full, atol=1e-5)


def test_cache_with_left_padding_equals_each_row_alone():
    net = tiny_model(rotary=True).net.eval()
    a, b = torch.randint(0, 97, (9,)), torch.randint(0, 97, (5,))
    batch = torch.stack([a, torch.cat([torch.zeros(4, dtype=torch.long), b])])
    start = torch.tensor([0, 4])
    logits, inter = net(batch, return_intermediates=True, seq_start_pos=start)
    nxt = torch.tensor([[11], [12]])
    step, _ = net(nxt, cache=inter, return_intermediates=True, input_not_include_cache=True)
    alone_b = net(torch.cat([b, torch.tensor([12])])[None])
    alone_a = net(torch.cat([a, torch.tensor([11])])[None])
    assert torch.allclose(logits[1, 4:], alone_b[0, :5], atol=1e-5)
    assert torch.allclose(step[1, 0], alone_b[0, -1], atol=1e-5)
    assert torch.allclose(step[0, 0], alone_a[0, -1], atol=1e-5)
    assert not torch.isnan(logits).any()


def test_rotary_cache_slides_past_max_seq_len():
    """Past max_seq_len each query sees the last max_seq_len keys: decoding
    with the sliding cache equals a full forward, which applies the same
    window as a band mask."""
    net = tiny_model(rotary=True, max_seq_len=16).net.eval()
    x = torch.randint(0, 97, (2, 40))
    full = net(x)
    logits, inter = net(x[:, :10], return_intermediates=True)
    pieces = [logits]
    for end in list(range(11, 30)) + [34, 40]:  # single steps, then chunks past the window
        logits, inter = net(x[:, :end], cache=inter, return_intermediates=True)
        pieces.append(logits)
    assert torch.allclose(torch.cat(pieces, 1), full, atol=1e-5)
    assert inter.cache.capacity <= 2 * 16  # the buffer stays bounded


def test_sliding_window_of_one_layer_equals_recomputing_the_window():
    """With one layer nothing older than the window can leak in through deeper
    keys, so position t equals a fresh run on the last max_seq_len tokens."""
    net = tiny_model(rotary=True, max_seq_len=8, depth=1).net.eval()
    x = torch.randint(0, 97, (1, 30))
    full = net(x)
    for t in range(8, 30):
        assert torch.allclose(full[0, t], net(x[:, t - 7: t + 1])[0, -1], atol=1e-5)
    deep = tiny_model(rotary=True, max_seq_len=8, depth=2).net.eval()
    assert not torch.allclose(deep(x)[0, 20], deep(x[:, 13:21])[0, -1], atol=1e-4)


def test_absolute_positions_refuse_to_go_past_max_seq_len():
    net = tiny_model(max_seq_len=16).net.eval()
    x = torch.randint(0, 97, (1, 17))
    _, inter = net(x[:, :16], return_intermediates=True)
    with pytest.raises(ValueError, match="max_seq_len"):
        net(x, cache=inter)
    with pytest.raises(ValueError, match="max_seq_len"):
        net(x)


def test_training_step_reduces_loss():
    model = tiny_model().train()
    seq = torch.randint(0, 97, (4, 33))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    first = model(seq).item()
    for _ in range(30):
        loss = model(seq)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < first * 0.7


@pytest.mark.parametrize(
    "build, match",
    [
        (lambda: AutoregressiveWrapper(tiny_net(), mask_prob=1.0), "mask_prob"),
        (lambda: AutoregressiveWrapper(tiny_net(), mask_prob=-0.1), "mask_prob"),
        (lambda: AutoregressiveWrapper(tiny_net(), pad_value=97), "pad_value"),
        (lambda: tiny_net(heads=3, dim=32, attn_kv_heads=2), "kv_heads"),
        (lambda: Decoder(dim=0, depth=2), "dim"),
        (lambda: Decoder(dim=8, depth=1, ff_activation="swoosh"), "activation"),
        (lambda: Decoder(dim=8, depth=1, attn_dropout=1.0), "attn_dropout"),
        (lambda: TransformerWrapper(num_tokens=0, max_seq_len=8, attn_layers=Decoder(dim=8, depth=1)), "num_tokens"),
        (lambda: TransformerWrapper(num_tokens=8, max_seq_len=8, attn_layers=torch.nn.Linear(2, 2)), "Decoder"),
        (lambda: Decoder(dim=8, depth=1, heads=1, dim_head=8, rotary_pos_emb=True, rotary_emb_dim=16), "rotary"),
    ],
)
def test_bad_arguments_raise_value_error(build, match):
    with pytest.raises(ValueError, match=match):
        build()


def test_bad_inputs_to_the_loss(model):
    with pytest.raises(ValueError, match="vocabulary"):
        model(torch.tensor([[1, 2, 97]]))
    with pytest.raises(ValueError, match="at least 2"):
        model(torch.tensor([[1]]))
    with pytest.raises(ValueError, match="integer"):
        model(torch.rand(2, 5))
    with pytest.raises(ValueError, match="lens"):
        model(torch.tensor([[1, 2, 3]]), lens=torch.tensor([4]))


@pytest.mark.parametrize("rows", [1, 3, 700])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_linear_matches_float64_reference_with_gradients(rows, dtype):
    from axw import kernels

    torch.manual_seed(0)
    x = torch.randn(rows, 768, dtype=dtype)
    w = (torch.randn(1024, 768) * 0.03).to(dtype)
    b = torch.randn(1024, dtype=dtype)
    goal = F.linear(x.double(), w.double(), b.double())
    tol = dict(atol=1e-4, rtol=1e-4) if dtype == torch.float32 else dict(atol=0.1, rtol=0.02)
    with torch.no_grad():
        torch.testing.assert_close(kernels.linear(x, w, b).double(), goal, **tol)
        # a strided row view, as decoding passes the last position
        wide = torch.randn(rows, 3, 768, dtype=dtype)
        torch.testing.assert_close(kernels.linear(wide[:, -1], w).double(),
                                   F.linear(wide[:, -1].double(), w.double()), **tol)

    xg, wg, bg = (t.clone().requires_grad_() for t in (x, w, b))
    out = kernels.linear(xg.view(rows, 1, 768), wg, bg)
    if kernels._ONEDNN_LINEAR is not None and dtype in kernels._ONEDNN_DTYPES:  # the CPU builds we ship on have it
        assert type(out.grad_fn).__name__ == "_OneDNNLinearBackward"
    up = torch.randn(rows, 1, 1024, dtype=dtype)
    out.backward(up)
    x64, w64, b64 = (t.double().requires_grad_() for t in (x, w, b))
    F.linear(x64.view(rows, 1, 768), w64, b64).backward(up.double())
    for ours, ref in ((xg, x64), (wg, w64), (bg, b64)):
        torch.testing.assert_close(ours.grad.double(), ref.grad, **tol)


def test_linear_refuses_a_second_derivative_rather_than_getting_it_wrong():
    from axw import kernels

    if kernels._ONEDNN_LINEAR is None:
        pytest.skip("no oneDNN in this build")
    x = torch.randn(600, 256, requires_grad=True)
    w = torch.randn(1024, 256, requires_grad=True)
    (grad_x,) = torch.autograd.grad(kernels.linear(x, w).square().sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="once_differentiable|twice"):
        grad_x.sum().backward()
    assert kernels.linear(torch.randn(3, 0), torch.randn(5, 0)).shape == (3, 5)  # empty rows of nothing


def test_linear_small_products_and_autocast_take_f_linear(monkeypatch):
    from axw import kernels

    def refuse(*args):
        raise AssertionError("oneDNN was called")

    monkeypatch.setattr(kernels, "_ONEDNN_LINEAR", refuse)
    x, w = torch.randn(2, 16), torch.randn(8, 16)
    assert torch.equal(kernels.linear(x, w), F.linear(x, w))  # 256 multiply-adds
    big = torch.randn(4096, 256)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert kernels.linear(torch.randn(600, 256), big).dtype == torch.bfloat16
    assert kernels.linear(x.double(), w.double()).dtype == torch.float64
    with pytest.raises(AssertionError, match="oneDNN was called"):
        kernels.linear(torch.randn(600, 256), big)


def test_linear_and_embedding_keep_torch_layouts():
    from axw.kernels import Linear, TokenEmbedding

    ref_emb, emb = torch.nn.Embedding(11, 4), TokenEmbedding(11, 4)
    emb.load_state_dict(ref_emb.state_dict())
    ids = torch.randint(0, 11, (3, 5))
    assert torch.equal(emb(ids), ref_emb(ids))
    h = torch.randn(2, 4)
    assert torch.allclose(emb.logits(h), h @ ref_emb.weight.t(), atol=1e-6)
    ref, ours = torch.nn.Linear(5, 3), Linear(5, 3)
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(2, 4, 5)
    assert torch.allclose(ours(x), ref(x), atol=1e-6)


def test_onednn_can_be_switched_off_from_the_environment():
    import os
    import subprocess
    import sys

    probe = "from axw import kernels; print(kernels._ONEDNN_LINEAR is None)"
    for value, off in (("0", "True"), ("1", str(not torch.backends.mkldnn.is_available()))):
        out = subprocess.run([sys.executable, "-c", probe], env=dict(os.environ, AXW_ONEDNN=value),
                             capture_output=True, text=True, check=True).stdout.strip()
        assert out == off, value


def _stand_in_op(calls, fail=lambda: False):
    """Stands in for torch.ops.mkldnn._linear_pointwise: F.linear's result,
    or the error a PyTorch with a changed signature would raise."""

    def op(x, weight, bias, *args):
        calls.append(x.dtype)
        if fail():
            raise RuntimeError("_linear_pointwise() expected 7 arguments but got 6")
        return F.linear(x, weight, bias)

    return op


def _onednn_warnings(record):
    return [w for w in record if "_linear_pointwise" in str(w.message)]


@pytest.mark.parametrize("fails_in", ["forward", "backward"])
def test_linear_falls_back_to_f_linear_for_good_when_onednn_fails(monkeypatch, fails_in):
    import warnings

    from axw import kernels

    calls = []
    # the forward is the first call; the backward's products come after
    monkeypatch.setattr(kernels, "_ONEDNN_LINEAR",
                        _stand_in_op(calls, lambda: fails_in == "forward" or len(calls) > 1))
    torch.manual_seed(0)
    x, w, b = torch.randn(600, 256), torch.randn(1024, 256) * 0.05, torch.randn(1024)
    up = torch.randn(600, 1024)
    ref = [t.clone().requires_grad_() for t in (x, w, b)]
    F.linear(*ref).backward(up)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        for _ in range(3):
            ours = [t.clone().requires_grad_() for t in (x, w, b)]
            out = kernels.linear(*ours)
            assert torch.equal(out, F.linear(x, w, b))
            out.backward(up)
            for mine, theirs in zip(ours, ref):
                torch.testing.assert_close(mine.grad, theirs.grad)
            with torch.no_grad():
                assert torch.equal(kernels.linear(x, w, b), F.linear(x, w, b))
    assert len(calls) == (1 if fails_in == "forward" else 2)  # nothing after the failure
    (warning,) = _onednn_warnings(record)
    assert "expected 7 arguments" in str(warning.message) and "AXW_ONEDNN=0" in str(warning.message)


def test_linear_keeps_onednn_when_the_inputs_are_wrong(monkeypatch):
    """Inputs F.linear refuses too are the caller's mistake: its error, and
    oneDNN stays on."""
    import warnings

    from axw import kernels

    calls = []
    op = _stand_in_op(calls)
    monkeypatch.setattr(kernels, "_ONEDNN_LINEAR", op)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        with pytest.raises(RuntimeError, match="cannot be multiplied"):
            kernels.linear(torch.randn(600, 256), torch.randn(1024, 255))
    assert calls and kernels._ONEDNN_LINEAR is op and not _onednn_warnings(record)


@pytest.mark.filterwarnings("ignore:TF32 acceleration")
def test_linear_follows_mkldnn_switched_off_at_call_time(monkeypatch):
    from axw import kernels

    calls = []
    monkeypatch.setattr(kernels, "_ONEDNN_LINEAR", _stand_in_op(calls))
    x, w = torch.randn(600, 256), torch.randn(1024, 256)
    built_before = kernels.linear(x.clone().requires_grad_(), w).sum()
    calls.clear()
    with torch.backends.mkldnn.flags(enabled=False):
        assert torch.equal(kernels.linear(x, w), F.linear(x, w))
        kernels.linear(x.clone().requires_grad_(), w).sum().backward()
        built_before.backward()
    assert calls == []
    kernels.linear(x, w)  # switched back on, oneDNN serves again
    assert calls == [torch.float32]


def test_linear_sends_bf16_to_onednn_only_where_the_cpu_has_it(monkeypatch):
    import types

    from axw import kernels

    for supported, dtypes in ((False, (torch.float32,)), (True, (torch.float32, torch.bfloat16))):
        monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: supported)
        assert kernels._onednn_dtypes() == dtypes
    with monkeypatch.context() as m:  # a build without the probe
        m.setattr(torch.ops, "mkldnn", types.SimpleNamespace())
        assert kernels._onednn_dtypes() == (torch.float32,)

    calls = []
    monkeypatch.setattr(kernels, "_ONEDNN_LINEAR", _stand_in_op(calls))
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: False)
    monkeypatch.setattr(kernels, "_ONEDNN_DTYPES", kernels._onednn_dtypes())
    x, w = torch.randn(600, 256, dtype=torch.bfloat16), torch.randn(1024, 256, dtype=torch.bfloat16)
    assert torch.equal(kernels.linear(x, w), F.linear(x, w))
    assert calls == []
    kernels.linear(x.float(), w.float())
    assert calls == [torch.float32]


def test_one_fp32_row_takes_pytorchs_own_product_on_intel(monkeypatch):
    """With ONE_ROW_BLAS (an Intel CPU, where MKL reads one row's weights faster), one fp32 row at inference is
    F.linear's bit for bit and never reaches oneDNN; several rows, a row needing gradients, and a column-major
    weight (which PyTorch's product reads slowly) still go to oneDNN. Without it every one of them does."""
    from axw import kernels

    assert kernels.ONE_ROW_BLAS == (kernels._cpu_vendor() == "GenuineIntel")
    calls = []
    monkeypatch.setattr(kernels, "_ONEDNN_LINEAR", _stand_in_op(calls))
    w, b = torch.randn(2048, 512), torch.randn(2048)
    one, rows = torch.randn(1, 1, 512), torch.randn(4, 512)
    for blas in (True, False):
        monkeypatch.setattr(kernels, "ONE_ROW_BLAS", blas)
        calls.clear()
        with torch.no_grad():
            assert torch.equal(kernels.linear(one, w, b), F.linear(one, w, b))
            assert calls == ([] if blas else [torch.float32])
            kernels.linear(rows, w, b)
            kernels.linear(one, w.t().contiguous().t(), b)
        kernels.linear(one, w.clone().requires_grad_(), b)
        assert len(calls) == (3 if blas else 4)


@pytest.mark.parametrize("columns", [True, False])
def test_one_fp32_row_of_a_widening_matrix_reads_the_column_major_copy_on_amd(columns, monkeypatch):
    """With ONE_ROW_COLUMNS (an AMD CPU, where PyTorch's product reads one row 2 to 3x faster from a column-major
    copy of a matrix with more outputs than inputs), one fp32 row at inference through a widening Linear is
    F.linear's from that copy bit for bit; a narrowing one, several rows, a row needing gradients or under
    autocast, and with several threads a matrix above ONE_ROW_COLUMNS_THREADED_MAX leave the copy alone. Every
    way is the same product (float64 reference), and several runs' single rows together (`shared_rows`) each get
    the bits of their row alone, on the first call (the check) and after."""
    from axw import kernels

    assert kernels.ONE_ROW_COLUMNS == (kernels._cpu_vendor() == "AuthenticAMD")
    monkeypatch.setattr(kernels, "ONE_ROW_COLUMNS", columns)
    torch.manual_seed(0)
    for layer in (kernels.Linear(256, 768), kernels.Linear(768, 256)):
        wide = layer.out_features > layer.in_features
        rows = torch.randn(4, 1, layer.in_features)
        reference = F.linear(rows.double(), layer.weight.double(), layer.bias.double())
        with torch.no_grad():
            alone = torch.cat([layer(row) for row in rows.split(1)])
            torch.testing.assert_close(alone.double(), reference, atol=1e-4, rtol=1e-4)
            assert (layer._column_major is not None) == (columns and wide)
            way = layer.column_major() if columns and wide else layer.weight
            assert torch.equal(alone, torch.cat([F.linear(row, way, layer.bias) for row in rows.split(1)]))
            for _ in range(2):
                with kernels.shared_rows([1, 1, 1, 1]):
                    assert torch.equal(layer(rows), alone)
            assert [key for key in layer._batched_exact if "columns" in key] == ([(4, 1, torch.float32,
                                                                                    torch.device("cpu"), "columns")]
                                                                                  if columns and wide else [])
    fresh = kernels.Linear(256, 768)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):  # autocast's own product keeps the weight
        fresh(torch.randn(1, 256))
    assert fresh._column_major is None
    x = torch.randn(1, 256, requires_grad=True)
    fresh(x).sum().backward()
    assert fresh._column_major is None
    torch.testing.assert_close(x.grad, fresh.weight.detach().sum(0, keepdim=True), atol=1e-5, rtol=1e-5)
    # a larger widening matrix: from columns on one thread, but not with several (oneDNN splits it between them)
    threads = torch.get_num_threads()
    try:
        for n in (2, 1):
            torch.set_num_threads(n)
            large = kernels.Linear(512, 1536)
            with torch.no_grad():
                large(torch.randn(1, 512))
            assert (large._column_major is not None) == (columns and n == 1)
    finally:
        torch.set_num_threads(threads)


def test_one_bf16_row_takes_pytorchs_own_product_and_the_programs_onednn_setting_stays(monkeypatch):
    """Where oneDNN computes bf16, one bf16 row goes through PyTorch's own product (bit for bit F.linear with
    oneDNN switched off) while several rows still go to oneDNN; the switch is off only while some thread is
    inside `native_bf16` and comes back to the program's own setting, on or off; inside, axw's own choice of
    oneDNN (for fp32 in another thread) still reads the program's setting."""
    import threading

    from axw import kernels

    monkeypatch.setattr(kernels, "_ONEDNN_DTYPES", (torch.float32, torch.bfloat16))
    calls = []
    monkeypatch.setattr(kernels, "_ONEDNN_LINEAR", _stand_in_op(calls))
    torch.manual_seed(0)
    w = torch.randn(1024, 768, dtype=torch.bfloat16)
    row = torch.randn(1, 1, 768, dtype=torch.bfloat16)
    with torch.backends.mkldnn.flags(enabled=False):
        expected = F.linear(row, w)
    assert torch.equal(kernels.linear(row, w), expected) and calls == []
    kernels.linear(torch.randn(4, 768, dtype=torch.bfloat16), w)
    assert calls == [torch.bfloat16]
    assert torch.backends.mkldnn.enabled

    inside, leave, seen = threading.Event(), threading.Event(), []

    def hold():
        with kernels.native_bf16():
            inside.set()
            leave.wait(10)

    for program in (True, False):
        with torch.backends.mkldnn.flags(enabled=program):
            thread = threading.Thread(target=hold)
            thread.start()
            inside.wait(10)
            with kernels.native_bf16():  # a second thread overlaps the first
                seen.append((torch.backends.mkldnn.enabled, kernels._mkldnn_on()))
            seen.append((torch.backends.mkldnn.enabled, kernels._mkldnn_on()))  # the first still inside
            leave.set()
            thread.join()
            assert torch.backends.mkldnn.enabled is program
            inside.clear(), leave.clear()
    assert seen == [(False, True), (False, True), (False, False), (False, False)]


def test_linear_takes_a_few_rows_from_a_column_major_copy_made_again_when_the_weight_changes(monkeypatch):
    """2 to 16 rows at inference run through oneDNN from a column-major copy of the weight: the same product
    (float64 reference), a copy made again after an in-place update (an optimizer step) or a load, and oneDNN
    never takes it for training, one row, small or huge matrices."""
    from axw import kernels
    from axw.kernels import SMALL_MATRIX, Linear

    if kernels._ONEDNN_LINEAR is None:
        pytest.skip("no oneDNN in this build")
    torch.manual_seed(0)
    layer = Linear(256, 768)
    calls = []
    real = kernels._onednn
    monkeypatch.setattr(kernels, "_onednn", lambda x, w, b=None: calls.append(w.stride()) or real(x, w, b))

    def check(x):
        goal = F.linear(x.double(), layer.weight.double(), layer.bias.double())
        torch.testing.assert_close(layer(x).double(), goal, atol=1e-4, rtol=1e-4)

    with torch.no_grad():
        for rows in (2, 5, 16):
            calls.clear()
            check(torch.randn(1, rows, 256))
            assert calls == [(1, 768)]  # column-major: the copy
        copy = layer.column_major()
        assert layer.column_major() is copy  # kept while the weight is unchanged
        layer.weight.mul_(-2)  # in place, as an optimizer step
        check(torch.randn(5, 256))
        assert layer.column_major() is not copy
        layer.load_state_dict(Linear(256, 768).state_dict())
        check(torch.randn(5, 256))
        calls.clear()
        check(torch.randn(1, 256))  # one row: from the weight itself
        check(torch.randn(17, 256))
        assert (1, 768) not in calls
    # training: the autograd path, gradients as F.linear's
    x = torch.randn(5, 256, requires_grad=True)
    calls.clear()
    layer(x).sum().backward()
    assert (1, 768) not in calls and x.grad is not None
    torch.testing.assert_close(x.grad, layer.weight.detach().sum(0).expand(5, -1), atol=1e-5, rtol=1e-5)
    # only the bias trains (the weight frozen): its gradient still flows
    layer.weight.requires_grad_(False)
    layer.bias.grad = None
    calls.clear()
    layer(torch.randn(5, 256)).sum().backward()
    assert (1, 768) not in calls
    torch.testing.assert_close(layer.bias.grad, torch.full((768,), 5.0))
    # small and huge matrices never take the copy
    for shape in ((64, 64), (SMALL_MATRIX[1] // 256 + 1, 256)):
        other = Linear(shape[1], shape[0])
        with torch.no_grad():
            other(torch.randn(5, shape[1]))
        assert other._column_major is None


@pytest.mark.parametrize("tied", [True, False])
def test_a_large_vocabularys_head_is_stored_column_major_where_it_reads_faster_with_the_same_values(tied, tmp_path,
                                                                                                   monkeypatch):
    """The output head above HEAD_COLUMN_MAJOR_MIN elements lives column-major on CPU in fp32 with oneDNN (a decode
    step's logits stream it faster on AVX2 CPUs: HEAD_COLUMN_MAJOR, set here whatever this CPU is), row-major after
    a cast or a move elsewhere, back after one home; the values, the logits (float64 reference), training's
    gradients and a saved checkpoint are those of the row-major head. Where HEAD_COLUMN_MAJOR is off, it keeps its
    rows."""
    from axw import kernels

    if kernels._ONEDNN_LINEAR is None:
        pytest.skip("no oneDNN in this build")
    monkeypatch.setattr(kernels, "HEAD_COLUMN_MAJOR", True)
    dim, vocab = 64, kernels.HEAD_COLUMN_MAJOR_MIN // 64 + 64

    def build():
        torch.manual_seed(0)
        return AutoregressiveWrapper(TransformerWrapper(
            num_tokens=vocab, max_seq_len=32, tie_embedding=tied, attn_layers=Decoder(dim=dim, depth=1, heads=2)))

    def head(m):
        return m.net.token_emb.weight if tied else m.net.to_logits.weight

    model = build().eval()
    net = model.net
    param = head(model)
    assert param.stride() == (1, vocab)
    assert net.token_emb.weight.is_contiguous() != tied  # an untied embedding keeps its rows
    rows = param.detach().contiguous()
    hidden = torch.randn(1, 1, dim)
    with torch.no_grad():
        goal = hidden.double() @ rows.double().t()
        torch.testing.assert_close(net.logits(hidden).double(), goal, atol=1e-5, rtol=1e-5)
        ids = torch.randint(0, vocab, (2, 7))
        assert torch.equal(net.token_emb(ids), F.embedding(ids, net.token_emb.weight.contiguous()))

    model.to(torch.bfloat16)
    assert head(model) is param and param.is_contiguous() and torch.equal(param, rows.bfloat16())
    model.float()
    assert head(model) is param and param.stride() == (1, vocab)

    # training: the same gradients as a row-major copy of the model
    model.load_state_dict({k: v.contiguous() for k, v in model.state_dict().items()})
    twin = build()
    twin.load_state_dict(model.state_dict())
    twin_head = head(twin)
    twin_head.data = twin_head.data.contiguous()
    model.train()
    x = torch.randint(0, vocab, (2, 9))
    for m in (model, twin):
        m(x).backward()
    assert head(model).stride() == (1, vocab) and twin_head.is_contiguous()
    torch.testing.assert_close(head(model).grad, twin_head.grad, atol=1e-6, rtol=1e-5)

    # a checkpoint holds the same tensor, and loads back into the column-major head
    loaded = AutoregressiveWrapper.from_pretrained(model.save_pretrained(tmp_path / "m"))
    again = head(loaded)
    assert again.stride() == (1, vocab) and torch.equal(again, param.detach())

    small = tiny_model(num_tokens=97)  # a head that fits in cache keeps its rows
    assert small.net.token_emb.weight.is_contiguous()

    monkeypatch.setattr(kernels, "HEAD_COLUMN_MAJOR", False)  # a CPU that reads the rows faster (AVX-512)
    assert head(build()).is_contiguous()
    model.float()  # laid out again: back to rows, the same values
    assert head(model) is param and param.is_contiguous() and torch.equal(param, again)


def test_a_column_major_weights_gradient_comes_in_its_layout_with_the_values_of_a_row_major_one():
    """Training through a column-major weight (`lay_out_head`): its gradient is computed in that layout (autograd
    then copies nothing into it), equal to a row-major weight's; a broadcast upstream gradient (0 strides) too."""
    from axw import kernels

    torch.manual_seed(0)
    x = torch.randn(3, 5, 256)
    rows = (torch.randn(1024, 256) * 0.05).requires_grad_()
    columns = rows.detach().t().contiguous().t().requires_grad_()
    up = torch.randn(3, 5, 1024)
    for loss in (lambda w: (kernels.linear(x, w) * up).sum(), lambda w: kernels.linear(x, w).sum()):
        rows.grad = columns.grad = None
        loss(rows).backward()
        loss(columns).backward()
        torch.testing.assert_close(columns.grad, rows.grad, atol=1e-4, rtol=1e-5)
        (computed,) = torch.autograd.grad(loss(columns), columns)  # as the backward made it, before any copy
        assert computed.stride() == (1, 1024)
        torch.testing.assert_close(computed, rows.grad, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(columns.grad, x.sum((0, 1)).expand(1024, -1), atol=1e-4, rtol=1e-5)
