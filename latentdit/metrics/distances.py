"""Distances that make the paper's statistical claims measurable (Thm 3.1-3.2, Cor. 3.2.1)."""

from __future__ import annotations

import numpy as np
import ot
import torch

from latentdit.schedule import ScoreFn, sigma


def subspace_error(W: torch.Tensor, B: torch.Tensor) -> float:
    """||W W^T - B B^T||_F^2, Cor. 3.2.1 (i). Both D x d0 with orthonormal columns."""
    W, B = W.double(), B.double()
    d0 = W.shape[1]
    # ||WW^T - BB^T||_F^2 = 2 d0 - 2 ||W^T B||_F^2 without forming D x D matrices
    # clamp the O(1e-16) round-off that can make an exact match come out slightly negative
    return max(0.0, float(2 * d0 - 2 * (W.T @ B).pow(2).sum()))


def best_alignment(W: torch.Tensor, B: torch.Tensor) -> torch.Tensor:
    """The orthogonal U (d0 x d0) minimising ||W U - B||_F (orthogonal Procrustes), Cor. 3.2.1 (ii)."""
    P, _, Qh = torch.linalg.svd(W.double().T @ B.double())
    return P @ Qh


def aligned_latent(x: torch.Tensor, W: torch.Tensor, B: torch.Tensor) -> torch.Tensor:
    """Map generated samples to the true latent coordinates: (W U)^T x with U = best_alignment(W, B)."""
    U = best_alignment(W, B)
    return x.double() @ (W.double() @ U)


def w2(a: torch.Tensor | np.ndarray, b: torch.Tensor | np.ndarray, *, num_iter_max: int = 2_000_000) -> float:
    """Exact 2-Wasserstein distance between two empirical laws (uniform weights), via POT's EMD."""
    a = np.asarray(a.detach().cpu() if isinstance(a, torch.Tensor) else a, dtype=np.float64)
    b = np.asarray(b.detach().cpu() if isinstance(b, torch.Tensor) else b, dtype=np.float64)
    M = ot.dist(a, b, metric="sqeuclidean")
    wa = np.full(len(a), 1.0 / len(a))
    wb = np.full(len(b), 1.0 / len(b))
    return float(np.sqrt(max(ot.emd2(wa, wb, M, numItermax=num_iter_max), 0.0)))


def off_subspace_variance(x: torch.Tensor, W: torch.Tensor) -> float:
    """Mean per-direction variance of (I - W W^T) x over the D - d0 orthogonal directions, Cor. 3.2.1 (iii)."""
    x, W = x.double(), W.double()
    perp = x - (x @ W) @ W.T
    perp = perp - perp.mean(0, keepdim=True)
    return float(perp.pow(2).sum(1).mean() / (W.shape[0] - W.shape[1]))


def expected_off_subspace_variance(T0: float) -> float:
    """sigma(T0) = 1 - exp(-T0): the orthogonal variance of the exact law at the stopping time."""
    return float(sigma(torch.tensor(T0, dtype=torch.float64)))


@torch.no_grad()
def score_errors(score_fn: ScoreFn, true_score: ScoreFn, sample_xt, ts: torch.Tensor, n: int) -> dict:
    """Score errors on x_t ~ p_t for each t in ``ts`` (``sample_xt(n, t)`` draws from the true p_t).

    - ``sigma_err``: sigma(t) ||s - grad log p_t||_{L2(P_t)}, the quantity Thm 3.1 bounds by
      eps sqrt(d0) (independent of D);
    - ``rel_err``: ||s - grad log p_t||_{L2(P_t)} / ||grad log p_t||_{L2(P_t)}.
    Both are also averaged over ``ts`` (``*_mean``).
    """
    out = {"t": [], "sigma_err": [], "rel_err": []}
    for t in ts.tolist():
        x = sample_xt(n, t)
        tt = torch.full((n,), t, dtype=x.dtype)
        s_true = true_score(x, tt).double()
        s_hat = score_fn(x.float(), tt.float()).double()
        diff2 = (s_hat - s_true).pow(2).sum(1).mean()
        sig = float(sigma(torch.tensor(t, dtype=torch.float64)))
        out["t"].append(t)
        out["sigma_err"].append(float(sig * diff2.sqrt()))
        out["rel_err"].append(float((diff2 / s_true.pow(2).sum(1).mean()).sqrt()))
    out["sigma_err_mean"] = float(np.mean(out["sigma_err"]))
    out["rel_err_mean"] = float(np.mean(out["rel_err"]))
    return out


def tv_to_density(q_samples: np.ndarray, log_p, p_samples: np.ndarray) -> float:
    """TV(p, q) between an exact density p (``log_p`` maps (n, d) points to log p) and a Gaussian KDE
    q of ``q_samples`` (n, d), Cor. 3.2.1 (ii).

    Uses TV = E_{h ~ p} [(1 - q(h) / p(h))_+] with ``p_samples`` drawn from p: q is needed only at
    points of p, with no integration grid. The estimate has a floor (KDE bias and Monte Carlo
    error): compare with the same estimator applied to true samples of the same size.
    """
    from scipy.stats import gaussian_kde

    q_samples = np.asarray(q_samples, dtype=np.float64)
    p_samples = np.asarray(p_samples, dtype=np.float64)
    if q_samples.ndim != 2 or p_samples.ndim != 2 or q_samples.shape[1] != p_samples.shape[1]:
        raise ValueError(f"tv_to_density: q_samples {q_samples.shape} and p_samples {p_samples.shape} must be "
                         "(n, d) arrays of the same d")
    kde = gaussian_kde(q_samples.T)
    log_q = kde.logpdf(p_samples.T)
    ratio = np.exp(np.clip(log_q - np.asarray(log_p(p_samples), dtype=np.float64), -50, 50))
    return float(np.mean(np.clip(1.0 - ratio, 0.0, None)))


@torch.no_grad()
def erm_score(x_train: torch.Tensor, x: torch.Tensor, t: torch.Tensor, *, chunk: int = 1024) -> torch.Tensor:
    """The score of the noised empirical law p_t^n(x) = (1/n) sum_i N(x; beta x_i, sigma I), the
    empirical risk minimiser of denoising score matching on the n points ``x_train`` (it memorises
    them): sum_i w_i(x) (beta x_i - x) / sigma with w = softmax_i(-|x - beta x_i|^2 / (2 sigma)).

    x (N, D), t (N,) or a scalar; float64 throughout, ``chunk`` rows of x at a time ((chunk, n) weights).
    """
    xt = x_train.double()
    x64 = x.double()
    t = torch.as_tensor(t, dtype=torch.float64).expand(x64.shape[0])
    b, s = torch.exp(-0.5 * t), -torch.expm1(-t)
    sq = xt.pow(2).sum(1)
    out = torch.empty_like(x64)
    for a in range(0, x64.shape[0], chunk):
        xa, ba, sa = x64[a:a + chunk], b[a:a + chunk, None], s[a:a + chunk, None]
        # -|x - b x_i|^2 / (2 s) up to the row constant |x|^2, which softmax ignores
        logits = (2 * ba * (xa @ xt.T) - ba ** 2 * sq[None]) / (2 * sa)
        mean = torch.softmax(logits, dim=1) @ xt
        out[a:a + chunk] = (ba * mean - xa) / sa
    return out.to(x.dtype)
