"""Coming from x-transformers: its models converted by `from_x_transformers` give its logits and its greedy and
beam tokens, its options axw lacks are refused by name, its weights loaded the plain way point to the converter,
and its module names import from axw."""

import pytest
import torch

import axw
from axw import AutoregressiveWrapper, from_x_transformers
from conftest import tiny_model

xt = pytest.importorskip("x_transformers")

# (Decoder options, TransformerWrapper options): what each conversion rule has to get right
CONFIGS = [
    ({}, {}),
    (dict(rotary_pos_emb=True, attn_kv_heads=2, rotary_emb_dim=12), {}),  # rotary pairs, grouped-query head order
    (dict(ff_glu=True, ff_no_bias=True, use_rmsnorm=True), dict(tie_embedding=True)),
    (dict(sandwich_norm=True, ff_glu=True, ff_swish=True, attn_one_kv_head=True, norm_add_unit_offset=False), {}),
    (dict(attn_softclamp_logits=True, attn_logit_softclamp_value=4.0, rotary_pos_emb=True),
     dict(add_continuous_pred_head=True)),
    (dict(rotary_pos_emb=True, disable_abs_pos_emb=False), dict(tie_embedding=True, tie_embedding_scale=0.5)),
    ({}, dict(use_abs_pos_emb=False)),
]


def their_model(decoder=None, net=None, seed=0, **wrapper):
    """An x-transformers AutoregressiveWrapper with random weights, norms and biases included (x-transformers
    starts its norms at one, which would hide a norm converted wrongly)."""
    torch.manual_seed(seed)
    decoder = dict(dim=64, depth=2, heads=4, attn_dim_head=16, verbose=False, **(decoder or {}))
    theirs = xt.TransformerWrapper(num_tokens=131, max_seq_len=48, attn_layers=xt.Decoder(**decoder), **(net or {}))
    with torch.no_grad():
        for p in theirs.parameters():
            if p.ndim == 1:
                p.add_(torch.randn_like(p) * 0.3)
    return xt.AutoregressiveWrapper(theirs, **wrapper).eval()


@pytest.mark.parametrize("decoder,net", CONFIGS)
def test_their_model_gives_their_logits_and_tokens(decoder, net):
    theirs = their_model(decoder, net, pad_value=3, mask_prob=0.15, ignore_index=-1)
    ours = from_x_transformers(theirs)
    assert isinstance(ours, AutoregressiveWrapper) and not ours.training
    assert (ours.pad_value, ours.mask_prob, ours.ignore_index) == (3, 0.15, -1)
    x = torch.randint(0, 131, (2, 40))
    with torch.no_grad():
        assert torch.allclose(ours.net(x), theirs.net(x), atol=1e-5)
    prompt = torch.randint(0, 131, (2, 5))
    assert torch.equal(ours.generate(prompt, 12, temperature=0.0)[:, 5:], theirs.generate(prompt, 12, temperature=0.0))
    assert torch.equal(ours.beam_search(prompt, 8, beams=3)[:, 5:], theirs.beam_search(prompt, 8, beams=3))


def test_a_state_dict_with_the_arguments_that_built_it():
    decoder = dict(rotary_pos_emb=True, attn_kv_heads=2, ff_glu=True)
    theirs = their_model(decoder, pad_value=3)
    args = dict(num_tokens=131, max_seq_len=48, attn_layers=dict(dim=64, depth=2, heads=4, attn_dim_head=16, **decoder))
    x = torch.randint(0, 131, (2, 40))
    for state in (theirs.state_dict(), theirs.net.state_dict()):  # the wrapper's keys (net.) or the net's
        ours = from_x_transformers(state, **args, pad_value=3)
        assert ours.pad_value == 3
        with torch.no_grad():
            assert torch.allclose(ours.net(x), theirs.net(x), atol=1e-5)
    state = theirs.state_dict()
    bad = [(dict(args, attn_layers={**args["attn_layers"], "attn_qk_norm": True}), "attn_qk_norm"),
           (dict(args, l2norm_embed=True), "l2norm_embed"),
           ({k: v for k, v in args.items() if k != "num_tokens"}, "num_tokens"),
           ({k: v for k, v in args.items() if k != "attn_layers"}, "attn_layers"),
           (dict(args, attn_layers={**args["attn_layers"], "depth": 3}), "attn_layers.layers.4"),
           (dict(args, attn_layers={**args["attn_layers"], "ff_glu": False}), "ff.0.0.weight")]
    for kwargs, match in bad:
        with pytest.raises(ValueError, match=match):
            from_x_transformers(state, **kwargs)
    with pytest.raises(ValueError, match="only with a state dict"):
        from_x_transformers(theirs, pad_value=3)
    for wrong in (tiny_model(), "model.pt", 3):
        with pytest.raises(ValueError, match="x-transformers"):
            from_x_transformers(wrong)


@pytest.mark.parametrize("decoder,net,match", [
    (dict(attn_qk_norm=True), {}, "attn_qk_norm=True"),
    (dict(residual_attn=True), {}, "residual_attn=True"),
    (dict(attn_num_mem_kv=2), {}, "attn_num_mem_kv=2"),
    (dict(softclamp_output=True), {}, "softclamp_output=True"),
    (dict(alibi_pos_bias=True), {}, "AlibiPositionalBias"),
    (dict(ff_relu_squared=True), {}, "ReluSquared"),
    (dict(use_scalenorm=True), {}, "ScaleNorm"),
    (dict(macaron=True), {}, "FeedForward"),
    (dict(layer_dropout=0.1), {}, "layer_dropouts"),
    (dict(rotary_pos_emb=True, rotary_xpos=True), {}, "rotary_pos_emb.scale"),
    (dict(rotary_pos_emb=True, rotary_base_rescale_factor=2.0), {}, "rotary_base_rescale_factor"),
    ({}, dict(l2norm_embed=True), "l2norm_embed=True"),
    ({}, dict(num_memory_tokens=2), "num_memory_tokens=2"),
    ({}, dict(emb_frac_gradient=0.1), "emb_frac_gradient=0.1"),
])
def test_options_axw_lacks_are_refused_by_name(decoder, net, match):
    with pytest.raises(ValueError, match=match):
        from_x_transformers(their_model(decoder, net))


def test_what_no_option_shows_is_caught_by_the_logits():
    theirs = their_model()
    theirs.net.register_forward_hook(lambda module, args, out: out + 1.0)  # no attribute, no weight: a hook
    with pytest.raises(ValueError, match="logits differ"):
        from_x_transformers(theirs)
    encoder = xt.TransformerWrapper(num_tokens=131, max_seq_len=48, attn_layers=xt.Encoder(dim=64, depth=1))
    with pytest.raises(ValueError, match="Decoder"):
        from_x_transformers(encoder)


def test_dtype_and_mode_follow_the_source():
    theirs = their_model(dict(rotary_pos_emb=True)).to(torch.bfloat16).train()
    ours = from_x_transformers(theirs)
    assert ours.net.token_emb.weight.dtype == torch.bfloat16 and not ours.training
    assert theirs.training  # the source's mode is left as it was


def test_loading_their_weights_the_plain_way_points_to_the_converter():
    theirs = their_model()
    ours = from_x_transformers(theirs)
    for module, state in ((ours, theirs.state_dict()), (ours.net, theirs.net.state_dict())):
        with pytest.raises(ValueError, match=r"axw\.from_x_transformers"):
            module.load_state_dict(state)
        with pytest.raises(ValueError, match="from_x_transformers"):
            module.load_state_dict(state, strict=False)
    # axw's own weights load as ever, strict or not
    other = tiny_model(num_tokens=131, max_seq_len=48, dim=64, depth=2, heads=4)
    fresh = tiny_model(seed=1, num_tokens=131, max_seq_len=48, dim=64, depth=2, heads=4)
    fresh.load_state_dict(other.state_dict())
    assert torch.equal(fresh.net.token_emb.weight, other.net.token_emb.weight)
    partial = {k: v for k, v in other.net.state_dict().items() if k != "to_logits.weight"}
    assert fresh.net.load_state_dict(partial, strict=False).missing_keys == ["to_logits.weight"]
    with pytest.raises(RuntimeError, match="to_logits"):
        fresh.net.load_state_dict(partial)


def test_their_module_names_import_from_axw():
    from axw.autoregressive_wrapper import FILTER_LOGITS_FN, AutoregressiveWrapper, min_p, top_a, top_k, top_p
    from axw.x_transformers import Decoder, TransformerWrapper
    from axw.x_transformers import AutoregressiveWrapper as AW

    assert (top_p, top_k, top_a, min_p) == (axw.top_p, axw.top_k, axw.top_a, axw.min_p)
    assert AutoregressiveWrapper is AW is axw.AutoregressiveWrapper
    assert (Decoder, TransformerWrapper) == (axw.Decoder, axw.TransformerWrapper)
    assert set(xt.autoregressive_wrapper.FILTER_LOGITS_FN) <= set(FILTER_LOGITS_FN)
    # each name the installed x-transformers offers there is provided, or listed as not provided
    import types

    from axw import autoregressive_wrapper, x_transformers

    for theirs, ours in ((xt.autoregressive_wrapper, autoregressive_wrapper), (xt, x_transformers)):
        names = {n for n, v in vars(theirs).items() if not n.startswith("_") and not isinstance(v, types.ModuleType)
                 and (theirs is xt or getattr(v, "__module__", None) == theirs.__name__ or n == "FILTER_LOGITS_FN")}
        assert names - set(ours.__all__) - set(ours.NOT_PROVIDED) == set(), theirs.__name__
        assert all(hasattr(ours, n) for n in ours.__all__)
    # and they behave as x-transformers' do
    logits = torch.randn(3, 131)
    for name, kwargs in (("top_k", dict(k=7)), ("top_p", dict(thres=0.8)), ("top_a", {}), ("min_p", dict(min_p=0.2))):
        ours_kept = torch.isfinite(getattr(autoregressive_wrapper, name)(logits, **kwargs))
        theirs_kept = getattr(xt.autoregressive_wrapper, name)(logits, **kwargs) > -1e30
        assert torch.equal(ours_kept, theirs_kept), name
