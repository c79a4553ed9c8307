"""The trainer's optimiser and EMA against their closed forms."""

import torch

from latentdit.config import Config
from latentdit.train import ema_update, make_optimizer


class _Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder = torch.nn.Linear(3, 2, bias=False)
        self.body = torch.nn.Linear(2, 2)
        self.register_buffer("stat", torch.zeros(2))


def test_ema_update_is_the_convex_combination_and_copies_buffers():
    torch.manual_seed(0)
    ema, model = _Net(), _Net()
    ema.requires_grad_(False)
    model.stat.fill_(3.0)
    before = {n: p.clone() for n, p in ema.named_parameters()}
    ema_update(ema, model, 0.9)
    for n, p in ema.named_parameters():
        want = 0.9 * before[n] + 0.1 * dict(model.named_parameters())[n]
        torch.testing.assert_close(p, want, rtol=0, atol=1e-7)
    assert torch.equal(ema.stat, model.stat)


def test_first_adamw_step_matches_the_closed_form_with_the_encoder_lr_scale():
    """Step 1 of AdamW: p <- p (1 - lr wd) - lr m_hat / (sqrt(v_hat) + eps), m_hat = g, v_hat = g^2."""
    torch.manual_seed(0)
    cfg = Config.from_dict({"optim": {"lr": 0.01, "weight_decay": 0.1}, "encoder": {"lr_scale": 5.0}})
    net = _Net()
    p0 = {n: p.detach().clone() for n, p in net.named_parameters()}
    opt = make_optimizer(net, cfg)
    grads = {n: torch.randn_like(p) for n, p in net.named_parameters()}
    for n, p in net.named_parameters():
        p.grad = grads[n].clone()
    opt.step()
    eps = opt.defaults["eps"]
    for n, p in net.named_parameters():
        lr = 0.01 * (5.0 if n.startswith("encoder.") else 1.0)
        g = grads[n]
        want = p0[n] * (1 - lr * 0.1) - lr * g / (g.abs() + eps)
        torch.testing.assert_close(p.detach(), want, rtol=1e-5, atol=1e-7)
