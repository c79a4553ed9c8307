"""Closed forms of the rate sweeps: the block-product law, memorisation."""

from __future__ import annotations

import math

import pytest
import torch

from latentdit.data.empirical import memorisation_fraction, nearest_distances
from latentdit.data.gmm import BlockProductLaw, SubspaceGMM


@pytest.mark.parametrize("coupled", [False, True])
def test_block_law_score_is_the_gradient_of_its_log_density(coupled):
    law = BlockProductLaw.random(12, 3, 2, 2, seed=4, coupled=coupled)
    g = torch.Generator().manual_seed(1)
    for t in (1e-3, 0.5):
        x = law.sample(30, t, generator=g).requires_grad_()
        (grad,) = torch.autograd.grad(law.log_prob(x, t).sum(), x)
        assert torch.allclose(law.score(x.detach(), t), grad, rtol=1e-8, atol=1e-8)


def test_block_law_is_a_product_of_its_blocks():
    """One block is the block's own mixture (checked against SubspaceGMM's density); L blocks are L
    independent copies: the log density is the sum over blocks, and sample moments factorise."""
    law = BlockProductLaw.random(8, 1, 2, 3, seed=2)
    ref = SubspaceGMM(law.B, law.block.weights, law.block.means, law.block.eigvecs, law.block.eigvals)
    x = ref.sample(50, 0.2, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(law.log_prob(x, 0.2), ref.log_prob(x, 0.2), rtol=1e-10)
    many = BlockProductLaw.random(32, 4, 2, 3, seed=2)
    h = many.sample_latent(40000, 0.0, generator=torch.Generator().manual_seed(3))
    C = torch.cov(h.T)
    m1 = law.block.sample_latent(40000, 0.0, generator=torch.Generator().manual_seed(4))
    C1 = torch.cov(m1.T)
    for i in range(4):  # each block has the one-block covariance, distinct blocks are uncorrelated
        assert torch.allclose(C[2 * i:2 * i + 2, 2 * i:2 * i + 2], C1, atol=0.03)
    off = C.clone()
    for i in range(4):
        off[2 * i:2 * i + 2, 2 * i:2 * i + 2] = 0
    assert off.abs().max() < 0.03
    u = torch.randn(5, 8, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    per = sum(law.block.latent_log_prob(u[:, 2 * i:2 * i + 2], 0.3) for i in range(4))
    assert torch.allclose(many.latent_log_prob(u, 0.3), per, rtol=1e-12)


def test_memorisation_fraction_separates_a_memoriser_from_a_true_sampler():
    g = torch.Generator().manual_seed(0)
    train = torch.randn(200, 3, generator=g, dtype=torch.float64)
    fresh = torch.randn(4000, 3, generator=g, dtype=torch.float64)
    true_samples = torch.randn(4000, 3, generator=g, dtype=torch.float64)
    copies = train[torch.randint(0, 200, (1000,), generator=g)] + 1e-3 * torch.randn(1000, 3, generator=g,
                                                                                      dtype=torch.float64)
    assert memorisation_fraction(copies, train, fresh) == 1.0
    assert memorisation_fraction(true_samples, train, fresh, quantile=0.1) == pytest.approx(0.1, abs=0.03)
    d = nearest_distances(torch.zeros(1, 3, dtype=torch.float64), train, chunk=7)
    assert float(d) == pytest.approx(float(train.norm(dim=1).min()))
