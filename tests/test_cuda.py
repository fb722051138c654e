"""CUDA: the same results on the GPU, and bf16 autocast. Skipped without one."""

import pytest
import torch
from conftest import tiny_model

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def test_logits_and_cache_match_cpu():
    cpu = tiny_model(rotary=True).eval()
    gpu = tiny_model(rotary=True).eval().to("cuda")
    x = torch.randint(0, 97, (2, 30))
    assert torch.allclose(gpu.net(x.cuda()).cpu(), cpu.net(x), atol=1e-4)
    logits, inter = gpu.net(x[:, :10].cuda(), return_intermediates=True)
    pieces = [logits]
    for end in range(11, 31):
        logits, inter = gpu.net(x[:, :end].cuda(), cache=inter, return_intermediates=True)
        pieces.append(logits)
    assert torch.allclose(torch.cat(pieces, 1), gpu.net(x.cuda()), atol=1e-4)


def test_greedy_generation_matches_cpu():
    cpu = tiny_model().eval()
    gpu = tiny_model().eval().to("cuda")
    prompt = torch.randint(0, 97, (3, 5))
    assert torch.equal(gpu.generate(prompt.cuda(), 20, temperature=0.0).cpu(), cpu.generate(prompt, 20, temperature=0.0))


def test_bf16_autocast_training_step():
    model = tiny_model(wrapper_kwargs=dict(add_attn_z_loss=True, mask_prob=0.15)).cuda().train()
    seq = torch.randint(0, 97, (4, 33), device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss = model(seq)
    loss.backward()
    reference = model.eval()(seq)
    assert torch.isfinite(loss) and abs(loss.item() - reference.item()) < 0.1
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_bf16_generation_runs():
    model = tiny_model(rotary=True).eval().to("cuda", torch.bfloat16)
    prompt = torch.randint(0, 97, (2, 5), device="cuda")
    for kwargs in (dict(), dict(beams=3), dict(penalty_alpha=0.5)):
        out = model.generate(prompt, 12, **kwargs)
        assert out.shape == (2, 17) and ((out >= 0) & (out < 97)).all()
