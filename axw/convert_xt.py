"""x-transformers models into axw: `from_x_transformers(model)` reads the
options of an x-transformers `TransformerWrapper` or `AutoregressiveWrapper`
from the module itself, builds the axw `AutoregressiveWrapper` they describe
and copies the weights in, so the logits are the same; `from_x_transformers(
state_dict, num_tokens=..., max_seq_len=..., attn_layers=dict(dim=..., ...))`
does it for saved weights, given the arguments that built them.

Only the options axw implements convert (`XT_NET`, `XT_DECODER`, `XT_WRAPPER`:
x-transformers' names and defaults). A module is checked against one
x-transformers rebuilds from the options read (on the meta device, so nothing
is allocated): any attribute, submodule or weight that differs is an option
axw lacks and is refused by name, and the converted model's logits are
compared with the original's on a few tokens before it is returned.

The weights are renamed and reshaped, nothing is approximated: the query,
key and value projections are concatenated; x-transformers' interleaved rotary
pairs become axw's half-split layout and its grouped-query head order
(`(r kvh)`) axw's (`(kvh r)`), by permuting projection rows, which leaves
every attention score unchanged; norms stored as gamma - 1 (unit offset) get
their 1 back; absolute positions carry their dim ** -0.5 scale, and a tied
head's scale moves into the final norm; a GLU's halves swap (x-transformers
computes `up * act(gate)` from `(up, gate)`, axw from `(gate, up)`).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Mapping

import torch
from torch import Tensor, nn

from .transformer import Decoder, TransformerWrapper
from .utils import eval_mode
from .wrapper import AutoregressiveWrapper

# the options axw reads, by x-transformers' names, with x-transformers' defaults
XT_NET = dict(num_tokens=None, max_seq_len=None, emb_dropout=0.0, tie_embedding=False, tie_embedding_scale=None,
              use_abs_pos_emb=True, attn_z_loss_weight=1e-4, add_continuous_pred_head=False)
XT_DECODER = dict(dim=None, depth=None, heads=8, attn_dim_head=64, attn_kv_heads=None, attn_one_kv_head=False,
                  attn_dropout=0.0, attn_flash=False, attn_softclamp_logits=False, attn_logit_softclamp_value=50.0,
                  ff_mult=4, ff_glu=False, ff_swish=False, ff_no_bias=False, ff_dropout=0.0, use_rmsnorm=False,
                  norm_add_unit_offset=True, rotary_pos_emb=False, rotary_emb_dim=None, sandwich_norm=False,
                  disable_abs_pos_emb=None)
XT_WRAPPER = dict(ignore_index=-100, pad_value=0, mask_prob=0.0, add_attn_z_loss=False, next_embed_loss_weight=0.1)
RMS_EPS = 1e-12  # x-transformers' RMSNorm is F.normalize: x / max(|x|, 1e-12), no epsilon inside the root


def from_x_transformers(model_or_state_dict: nn.Module | Mapping[str, Tensor], **options) -> AutoregressiveWrapper:
    """An axw `AutoregressiveWrapper` with the weights and logits of an
    x-transformers `TransformerWrapper` or `AutoregressiveWrapper` (its
    `pad_value`, `mask_prob`, ... come along), in eval mode, on the source's
    device and dtype.

    For a module the options are read from it; an option axw does not
    implement is a ValueError naming it. For a state dict (keys as
    x-transformers saves them, with or without the wrapper's `net.`), give the
    arguments that built it, by x-transformers' names: `num_tokens`,
    `max_seq_len` and the other `TransformerWrapper` arguments, `attn_layers`
    as a dict of the `Decoder`'s, and the `AutoregressiveWrapper`'s
    (`pad_value`, `mask_prob`, ...)."""
    if isinstance(model_or_state_dict, nn.Module):
        if options:
            raise ValueError(f"the options are read from the module; pass them ({', '.join(sorted(options))}) "
                             "only with a state dict")
        source = model_or_state_dict
        net = _xt_net(source)
        options = read_options(source)
        check_rebuilt(net, options)
        state = net.state_dict()
    elif isinstance(model_or_state_dict, Mapping):
        net = None
        options = check_options(options)
        state = {k.removeprefix("net."): v for k, v in model_or_state_dict.items()}
    else:
        raise ValueError("from_x_transformers takes an x-transformers TransformerWrapper or AutoregressiveWrapper, "
                         f"or a state dict of one, got {type(model_or_state_dict).__name__}")
    model = build(options)
    weights = axw_state(state, options)
    missing, unexpected = model.net.load_state_dict(weights, strict=False)
    if missing or unexpected:
        raise ValueError(f"the weights do not match the options: missing {missing}, unexpected {unexpected}")
    like = state["token_emb.emb.weight"]
    model.to(device=like.device, dtype=like.dtype if like.is_floating_point() else None)
    if net is not None:
        check_logits(net, model.net)
    return model.eval()


def _xt_net(source: nn.Module) -> nn.Module:
    """The x-transformers TransformerWrapper of `source` (itself, or a wrapper's `net`)."""
    net = getattr(source, "net", source)
    if not (type(net).__name__ == "TransformerWrapper" and type(net).__module__.startswith("x_transformers")):
        raise ValueError(f"expected an x-transformers TransformerWrapper or AutoregressiveWrapper, got "
                         f"{type(source).__module__}.{type(source).__name__}")
    if type(net.attn_layers).__name__ != "Decoder":
        raise ValueError(f"axw implements x-transformers' Decoder (causal, decoder-only), not its "
                         f"{type(net.attn_layers).__name__}")
    return net


# --- the options ---


def read_options(source: nn.Module) -> dict:
    """The options of XT_NET / XT_DECODER / XT_WRAPPER an x-transformers model
    was built with, read from its modules (the first attention and
    feed-forward layers stand for all: `check_rebuilt` holds the others to them)."""
    from x_transformers.x_transformers import AbsolutePositionalEmbedding, Attention, FeedForward, GLU, RMSNorm

    net = _xt_net(source)
    layers = net.attn_layers
    attn = next((m for m in layers.modules() if isinstance(m, Attention)), None)
    ff = next((m for m in layers.modules() if isinstance(m, FeedForward)), None)
    if attn is None or ff is None:
        raise ValueError("axw layers have attention and a feed-forward: this model lacks one (only_attn, ...)")
    norm = layers.final_norm
    proj_in, proj_out = ff.ff[0], [m for m in ff.ff if isinstance(m, nn.Linear)][-1]
    activation = proj_in.act if isinstance(proj_in, GLU) else proj_in[-1]
    dropouts = [m.p for m in ff.ff if isinstance(m, nn.Dropout)]
    rotary = layers.rotary_pos_emb
    decoder = dict(
        dim=layers.dim, depth=layers.depth, heads=layers.attn_heads, attn_dim_head=layers.attn_dim_head,
        attn_kv_heads=attn.kv_heads, attn_dropout=attn.attend.dropout, attn_flash=attn.attend.flash,
        attn_softclamp_logits=attn.attend.softclamp_logits,
        attn_logit_softclamp_value=attn.attend.logit_softclamp_value,
        ff_mult=proj_out.in_features / layers.dim, ff_glu=isinstance(proj_in, GLU),
        ff_swish=isinstance(activation, nn.SiLU), ff_no_bias=proj_out.bias is None,
        ff_dropout=dropouts[0] if dropouts else 0.0, use_rmsnorm=isinstance(norm, RMSNorm),
        norm_add_unit_offset=bool(getattr(norm, "unit_offset", False)), rotary_pos_emb=rotary is not None,
        rotary_emb_dim=2 * rotary.inv_freq.numel() if rotary is not None else None,
        sandwich_norm=layers.sandwich_norm, disable_abs_pos_emb=layers.disable_abs_pos_emb)
    options = dict(
        num_tokens=net.num_tokens, max_seq_len=net.max_seq_len, emb_dropout=net.emb_dropout.p,
        tie_embedding=hasattr(net, "tie_embedding_scale"),
        tie_embedding_scale=getattr(net, "tie_embedding_scale", None),
        use_abs_pos_emb=isinstance(net.pos_emb, AbsolutePositionalEmbedding) or layers.disable_abs_pos_emb,
        add_continuous_pred_head=net.add_continuous_pred_head, attn_layers=decoder)
    if source is not net:
        options.update({name: getattr(source, name) for name in XT_WRAPPER})
    if rotary is not None:
        _check_rotary(rotary)
    return check_options(options)


def _check_rotary(rotary: nn.Module):
    """axw's rotary positions: base 10000, no xpos, no interpolation (what the rebuilt model cannot show: the
    frequencies are a buffer, and meta tensors hold no values)."""
    inv_freq = rotary.inv_freq.detach().cpu()
    dim = 2 * inv_freq.numel()
    expected = (1.0 / (10000 ** (torch.arange(0, dim, 2).float() / dim))).to(inv_freq.dtype)  # as cast with the model
    if not torch.allclose(inv_freq.float(), expected.float(), rtol=1e-6):
        raise ValueError("axw does not implement x-transformers' rotary_base_rescale_factor: the rotary "
                         "frequencies are not base 10000's")


def check_options(options: dict) -> dict:
    """x-transformers arguments (TransformerWrapper's and AutoregressiveWrapper's, `attn_layers` a dict of
    Decoder's) with every default filled in, or a ValueError naming those axw does not implement."""
    options = dict(options)
    decoder = options.pop("attn_layers", None)
    if not isinstance(decoder, Mapping):
        raise ValueError("give attn_layers, the x-transformers Decoder's arguments as a dict "
                         "(attn_layers=dict(dim=512, depth=6, heads=8, ...))")
    for given, known, owner in ((options, {**XT_NET, **XT_WRAPPER}, "TransformerWrapper / AutoregressiveWrapper"),
                                (decoder, XT_DECODER, "Decoder")):
        unknown = sorted(set(given) - set(known))
        if unknown:
            raise ValueError(f"axw does not implement the x-transformers {owner} option"
                             f"{'s' * (len(unknown) > 1)} {', '.join(unknown)}; it converts {', '.join(known)}")
    decoder = {**XT_DECODER, **decoder}
    options = {**XT_NET, **XT_WRAPPER, **options, "attn_layers": decoder}
    for group, names in ((options, ("num_tokens", "max_seq_len")), (decoder, ("dim", "depth"))):
        missing = [n for n in names if group[n] is None]
        if missing:
            raise ValueError(f"from_x_transformers needs {', '.join(missing)} with a state dict")
    return options


def check_rebuilt(net: nn.Module, options: dict):
    """Refuse, by name, whatever of `net` the options axw read do not describe: x-transformers rebuilds the
    model from those options (on the meta device), and every plain attribute, submodule class and weight shape
    must agree."""
    import x_transformers as xt

    decoder = {k: v for k, v in options["attn_layers"].items() if k != "attn_one_kv_head"}
    with torch.device("meta"):
        rebuilt = xt.TransformerWrapper(**{k: options[k] for k in XT_NET},
                                        attn_layers=xt.Decoder(**decoder, verbose=False))
    found = _differences(net, rebuilt)
    shapes = {k: tuple(v.shape) for k, v in rebuilt.state_dict().items()}
    for key, value in net.state_dict().items():
        if key not in shapes:
            found.append(("a weight axw has no place for", key))
        elif shapes[key] != tuple(value.shape):
            found.append((f"shape {tuple(value.shape)} (axw: {shapes[key]})", key))
    unique = {}
    for what, where in found:
        unique.setdefault(what, where or "the TransformerWrapper")  # each difference once, where it first shows
    if unique:
        text = "; ".join(f"{what} at {where}" for what, where in list(unique.items())[:6])
        more = f"; and {len(unique) - 6} more" if len(unique) > 6 else ""
        raise ValueError(f"this x-transformers model uses options axw does not implement: {text}{more}")


def _differences(net: nn.Module, rebuilt: nn.Module) -> list[tuple[str, str]]:
    """(what differs, where) between a model and the one rebuilt from the options axw read: submodules of
    another class (not their insides), then attributes, options by x-transformers' argument names first."""
    theirs = dict(rebuilt.named_modules())
    classes, attributes, skipped = [], [], ()
    for name, module in net.named_modules():
        ref = theirs.pop(name, None)
        if name.startswith(skipped):
            continue
        if ref is None or type(ref) is not type(module):
            classes.append((_a(type(module).__name__) + (f" where axw reads {_a(type(ref).__name__)}"
                                                          if ref is not None else ""), name))
            skipped += (name + ".",)  # what is inside it differs too: said once
            continue
        ours, reference = _plain(module), _plain(ref)
        arguments = inspect.signature(type(module).__init__).parameters
        for attr in sorted(ours, key=lambda a: a not in arguments):
            if attr in reference and not _same(ours[attr], reference[attr]):
                attributes.append((f"{_option_name(module, attr)}={_show(ours[attr])} (axw: "
                                   f"{_show(reference[attr])})", name))
    missing = [(f"no {n.rpartition('.')[2]}", n) for n in theirs if not n.startswith(skipped)]
    return classes + attributes + missing


def _plain(module: nn.Module) -> dict:
    """A module's attributes that are options: numbers, flags, strings, tuples of them, functions."""
    kinds = (bool, int, float, str, type(None), tuple, list, torch.dtype)
    return {k: v for k, v in vars(module).items()
            if not k.startswith("_") and k != "training" and (isinstance(v, kinds) or callable(v))
            and not isinstance(v, (nn.Module, Tensor))}


def _same(a, b) -> bool:
    if isinstance(a, functools.partial) and isinstance(b, functools.partial):
        return a.func is b.func and a.args == b.args and a.keywords == b.keywords
    if inspect.isfunction(a) and inspect.isfunction(b):
        return a.__code__ is b.__code__  # a lambda built by the same line (a tied head) is the same option
    if callable(a) or callable(b):
        # small helper objects (x-transformers' `always(0.5)`) holding the same values
        return a is b or (type(a) is type(b) and hasattr(a, "__dict__") and not inspect.isfunction(a)
                          and vars(a) == vars(b))
    return a == b


def _show(value) -> str:
    """A value for a message: a function by its name (and a partial's arguments)."""
    if isinstance(value, functools.partial):
        keywords = ", ".join(f"{k}={v!r}" for k, v in value.keywords.items())
        return f"{_show(value.func)}({keywords})"
    return value.__name__ if inspect.isfunction(value) else repr(value)


def _a(noun: str) -> str:
    return ("an " if noun[0].lower() in "aeiou" else "a ") + noun


def _option_name(module: nn.Module, attr: str) -> str:
    """x-transformers' argument name for an attribute: an Attention's (or its Attend's) `X` is `attn_X`, a
    FeedForward's `ff_X`, a RotaryEmbedding's `rotary_X`."""
    prefix = {"Attention": "attn_", "Attend": "attn_", "FeedForward": "ff_",
              "RotaryEmbedding": "rotary_"}.get(type(module).__name__, "")
    return prefix + attr


# --- the axw model and its weights ---


def build(options: dict) -> AutoregressiveWrapper:
    """The axw model the (checked) x-transformers options describe."""
    d = options["attn_layers"]
    dim_head = d["attn_dim_head"]
    kv_heads = 1 if d["attn_one_kv_head"] else d["attn_kv_heads"]
    rotary = d["rotary_pos_emb"]
    disable_abs = d["disable_abs_pos_emb"] if d["disable_abs_pos_emb"] is not None else rotary
    decoder = Decoder(
        dim=d["dim"], depth=d["depth"], heads=d["heads"], dim_head=dim_head, attn_kv_heads=kv_heads,
        attn_dropout=d["attn_dropout"], ff_inner_dim=int(d["dim"] * d["ff_mult"]), ff_glu=d["ff_glu"],
        ff_swish=d["ff_swish"],
        # x-transformers' GLU keeps its input bias under ff_no_bias: axw keeps both, the output one zero
        ff_no_bias=d["ff_no_bias"] and not d["ff_glu"], ff_dropout=d["ff_dropout"], use_rmsnorm=d["use_rmsnorm"],
        norm_eps=RMS_EPS if d["use_rmsnorm"] else 1e-5, rotary_pos_emb=rotary,
        rotary_emb_dim=(d["rotary_emb_dim"] or dim_head // 2) if rotary else None,
        post_branch_norm=d["sandwich_norm"],
        attn_softcap=d["attn_logit_softclamp_value"] if d["attn_softclamp_logits"] else None)
    net = TransformerWrapper(
        num_tokens=options["num_tokens"], max_seq_len=options["max_seq_len"], attn_layers=decoder,
        emb_dropout=options["emb_dropout"], tie_embedding=options["tie_embedding"],
        use_abs_pos_emb=options["use_abs_pos_emb"] and not disable_abs,
        attn_z_loss_weight=options["attn_z_loss_weight"], add_continuous_pred_head=options["add_continuous_pred_head"])
    return AutoregressiveWrapper(net, **{name: options[name] for name in XT_WRAPPER})


def axw_state(state: Mapping[str, Tensor], options: dict) -> dict[str, Tensor]:
    """x-transformers' weights (a TransformerWrapper's keys) as axw's; a ValueError lists any left unread."""
    d = options["attn_layers"]
    dim, depth = d["dim"], d["depth"]
    state = {k: v.detach() for k, v in state.items()}
    offset = 1.0 if d["norm_add_unit_offset"] else 0.0
    gain = "g" if d["use_rmsnorm"] else "gamma"

    def take(key):
        if key not in state:
            raise ValueError(f"the state dict has no {key}: it does not match the options given")
        return state.pop(key)

    def norm(prefix):
        return take(f"{prefix}.{gain}") + offset

    out = {"token_emb.weight": take("token_emb.emb.weight")}
    if "pos_emb.emb.weight" in state:
        out["pos_emb.weight"] = take("pos_emb.emb.weight") * dim ** -0.5
    final = norm("attn_layers.final_norm")
    if options["tie_embedding"]:
        final = final * (options["tie_embedding_scale"] or dim ** -0.5)  # h @ E.T * s = (h * s) @ E.T
    else:
        out["to_logits.weight"] = take("to_logits.weight")
    out["attn_layers.final_norm.weight"] = final
    for i in range(depth):
        out.update(_layer(i, take, norm, options))
    if options["add_continuous_pred_head"]:
        out.update({k: take(k) for k in ("to_next_embed_pred.0.weight", "to_next_embed_pred.2.weight")})
    state.pop("attn_layers.rotary_pos_emb.inv_freq", None)  # axw computes its own
    if state:
        raise ValueError(f"axw has no place for the x-transformers weights {', '.join(sorted(state)[:8])}: "
                         "they belong to an option axw does not implement")
    return out


def _layer(i: int, take, norm, options: dict) -> dict[str, Tensor]:
    """Block i's weights: x-transformers' layers 2i (attention) and 2i + 1 (feed-forward)."""
    d = options["attn_layers"]
    a, f, p = f"attn_layers.layers.{2 * i}", f"attn_layers.layers.{2 * i + 1}", f"attn_layers.layers.{i}"
    heads, dim_head = d["heads"], d["attn_dim_head"]
    kv_heads = 1 if d["attn_one_kv_head"] else (d["attn_kv_heads"] or heads)
    rot = (d["rotary_emb_dim"] or dim_head // 2) if d["rotary_pos_emb"] else 0
    q_order = _query_order(heads, kv_heads)
    q = _heads(take(f"{a}.1.to_q.weight"), heads, dim_head, rot)[q_order]
    k = _heads(take(f"{a}.1.to_k.weight"), kv_heads, dim_head, rot)
    v = take(f"{a}.1.to_v.weight")
    to_out = take(f"{a}.1.to_out.weight")
    to_out = to_out.view(to_out.shape[0], heads, dim_head)[:, q_order].reshape(to_out.shape)
    out = {f"{p}.attn_norm.weight": norm(f"{a}.0.0"),
           f"{p}.attn.to_qkv.weight": torch.cat([q.flatten(0, 1), k.flatten(0, 1), v]),
           f"{p}.attn.to_out.weight": to_out,
           f"{p}.ff_norm.weight": norm(f"{f}.0.0")}
    if d["sandwich_norm"]:
        out[f"{p}.attn_post_norm.weight"], out[f"{p}.ff_post_norm.weight"] = norm(f"{a}.0.1"), norm(f"{f}.0.1")
    if d["ff_glu"]:
        w, b = take(f"{f}.1.ff.0.proj.weight"), take(f"{f}.1.ff.0.proj.bias")
        out[f"{p}.ff.proj_in.weight"] = torch.cat(w.chunk(2)[::-1])  # (up, gate) -> (gate, up)
        out[f"{p}.ff.proj_in.bias"] = torch.cat(b.chunk(2)[::-1])
    else:
        out[f"{p}.ff.proj_in.weight"] = take(f"{f}.1.ff.0.0.weight")
        if not d["ff_no_bias"]:
            out[f"{p}.ff.proj_in.bias"] = take(f"{f}.1.ff.0.0.bias")
    out[f"{p}.ff.proj_out.weight"] = take(f"{f}.1.ff.2.weight")
    if not d["ff_no_bias"]:
        out[f"{p}.ff.proj_out.bias"] = take(f"{f}.1.ff.2.bias")
    elif d["ff_glu"]:
        out[f"{p}.ff.proj_out.bias"] = torch.zeros_like(out[f"{p}.ff.proj_out.weight"][:, 0])
    return out


def _heads(weight: Tensor, heads: int, dim_head: int, rot: int) -> Tensor:
    """A q or k projection (heads * dim_head, dim) as (heads, dim_head, dim), each head's first `rot` rows
    moved from interleaved rotary pairs (0, 1), (2, 3), ... to the half-split layout (0, rot/2), (1, rot/2 + 1)."""
    weight = weight.view(heads, dim_head, -1)
    if not rot:
        return weight
    order = torch.cat([torch.arange(0, rot, 2), torch.arange(1, rot, 2), torch.arange(rot, dim_head)])
    return weight[:, order]


def _query_order(heads: int, kv_heads: int) -> Tensor:
    """axw's query head j * groups + r reads key head j (repeat_interleave); x-transformers' query head
    r * kv_heads + j does (`(r kvh)`): axw's head order, as x-transformers' head indices."""
    groups = heads // kv_heads
    return torch.arange(heads).view(groups, kv_heads).t().reshape(-1)


def check_logits(theirs: nn.Module, ours: nn.Module):
    """The last safeguard: both models' logits on a few tokens agree, or the conversion missed an option."""
    n = min(8, ours.max_seq_len)
    x = torch.randint(0, ours.num_tokens, (1, n), generator=torch.Generator().manual_seed(0))
    x = x.to(ours.token_emb.weight.device)
    with torch.no_grad(), eval_mode(theirs, ours):
        a, b = theirs(x).float(), ours(x).float()
    tol = (1e-3 if ours.token_emb.weight.dtype == torch.float32 else 5e-2) * max(1.0, float(a.abs().max()))
    if a.shape != b.shape or not torch.allclose(a, b, atol=tol, rtol=0):
        diff = float((a - b).abs().max()) if a.shape == b.shape else "shape"
        raise ValueError(f"the converted model's logits differ from the x-transformers model's (by {diff}): it "
                         "uses an option axw does not implement that the conversion could not name")
