"""The autoregressive training loss: teacher forcing, key masking, z-loss and
the continuous next-embedding loss."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .utils import exists


def random_key_mask(batch: int, n: int, mask_prob: float, device, generator=None) -> Tensor:
    """Keys to keep (True) when `mask_prob` of the n input positions are hidden.

    Forgetful causal masking (Liu et al. 2022, arXiv:2210.13432; the seed
    calls it "Filling in the blanks"), as x-transformers does it: int(n * mask_prob) positions per row, chosen
    uniformly, never the first, are hidden from attention as keys; the tokens
    themselves stay in place and every position is still predicted."""
    num_mask = min(int(n * mask_prob), n - 1)
    keep = torch.ones((batch, n), dtype=torch.bool, device=device)
    if num_mask <= 0:
        return keep
    scores = torch.rand((batch, n), device=device, generator=generator)
    scores[:, 0] = -1.0  # the first token is never masked
    hidden = scores.topk(num_mask, dim=-1).indices
    return keep.scatter(1, hidden, False)


def autoregressive_loss(
    net,
    seq: Tensor,
    *,
    ignore_index: int = -100,
    pad_value: int = 0,
    mask_prob: float = 0.0,
    add_attn_z_loss: bool = False,
    next_embed_loss_weight: float = 0.1,
    lens: Tensor | None = None,
    prepend_embeds: Tensor | None = None,
    return_outputs: bool = False,
    generator: torch.Generator | None = None,
    **kwargs,
):
    """Mean next-token cross-entropy of `seq` (batch, n): the net reads
    `seq[:, :-1]` and is scored on `seq[:, 1:]`, so n = max_seq_len + 1 trains
    the full context. With `mask_prob`, keys are hidden at random unless the
    caller gives `self_attn_kv_mask` (the trainer draws a whole batch's and
    hands each rank its rows)."""
    b, n = seq.shape
    if exists(lens):
        positions = torch.arange(n, device=seq.device)
        seq = seq.masked_fill(positions[None, :] >= lens[:, None], ignore_index)

    inp, target = seq[:, :-1], seq[:, 1:]
    inp = torch.where(inp == ignore_index, pad_value, inp)

    if mask_prob > 0.0 and net.training and "self_attn_kv_mask" not in kwargs:  # a caller's mask stands
        kwargs["self_attn_kv_mask"] = random_key_mask(b, inp.shape[1], mask_prob, seq.device, generator)

    add_next_embed = net.add_continuous_pred_head
    logits, inter = net(
        inp,
        return_intermediates=True,
        return_cache=False,
        return_attn_z_loss=add_attn_z_loss,
        return_next_embed_pred=add_next_embed,
        prepend_embeds=prepend_embeds,
        **kwargs,
    )
    if exists(prepend_embeds):
        logits = logits[:, prepend_embeds.shape[1]:]

    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), target.reshape(-1), ignore_index=ignore_index)

    if add_attn_z_loss:
        loss = loss + inter.attn_z_loss

    if add_next_embed:
        # predict the (detached) input embedding of the next position
        pred = inter.next_embed_pred
        if exists(prepend_embeds):
            pred = pred[:, prepend_embeds.shape[1]:]
        keep = target != ignore_index
        next_tokens = torch.where(keep, target, pad_value)
        goal = net.token_emb(next_tokens)
        if exists(net.pos_emb):
            goal = goal + net.pos_emb(torch.arange(1, n, device=seq.device))
        cont = F.l1_loss(pred.float(), goal.detach().float(), reduction="none").mean(dim=-1)
        loss = loss + cont[keep].mean() * next_embed_loss_weight

    if not return_outputs:
        return loss
    return loss, (logits, inter)


def distillation_loss(logits: Tensor, teacher_logits: Tensor, temperature: float = 1.0) -> Tensor:
    """Mean over positions of T^2 * KL(p_teacher || p_student), both softmaxes
    of the logits divided by T (Hinton et al. 2015, arXiv:1503.02531: the
    T^2 keeps the gradients' scale as T changes)."""
    t = temperature
    student = F.log_softmax(logits.float() / t, dim=-1)
    teacher = F.log_softmax(teacher_logits.float() / t, dim=-1)
    kl = F.kl_div(student, teacher, log_target=True, reduction="none").sum(dim=-1)
    return kl.mean() * t * t
