"""Latent Scaling: the closed form is least squares, and streaming changes nothing."""

from __future__ import annotations

import pytest
import torch

from sae_lens_crosscoder.analysis import latent_scaling as ls


def random_problem(n: int = 240, d_sae: int = 14, n_models: int = 3, d_model: int = 6, density: float = 0.3, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    decoder = torch.randn(d_sae, n_models, d_model, generator=gen)
    f = torch.rand(n, d_sae, generator=gen) * (torch.rand(n, d_sae, generator=gen) < density)
    f[:, 3] = 0.0  # a dead latent
    x = torch.randn(n, n_models, d_model, generator=gen)
    recon = torch.einsum("nj,jmd->nmd", f, decoder) + 0.1 * torch.randn(n_models, d_model, generator=gen)
    return decoder, f, x, recon


def lstsq_beta(f_j: torch.Tensor, d: torch.Tensor, y: torch.Tensor) -> float:
    """argmin_beta sum_n ||y_n - beta f_n d||^2 by torch.linalg.lstsq on the stacked system."""
    a = (f_j[:, None] * d[None, :]).reshape(-1, 1).double()
    return torch.linalg.lstsq(a, y.reshape(-1, 1).double()).solution.item()


@pytest.mark.parametrize("pair", [(0, 1), (2, 0)])
def test_closed_form_equals_lstsq(pair: tuple[int, int]) -> None:
    decoder, f, x, recon = random_problem()
    result = ls.compute_latent_scaling(decoder, f, x, recon, pair=pair)
    first, second = pair
    names = {"first": first, "second": second}
    checked = 0
    for j in range(f.shape[1]):
        if j == 3:
            continue
        for direction, recon_b, error_b in (
            (second, result.beta_reconstruction, result.beta_error),
            (first, result.beta_reconstruction_reverse, result.beta_error_reverse),
        ):
            d = decoder[j, direction]
            for role, m in names.items():
                y_recon = recon[:, m]
                y_error = x[:, m] - recon[:, m] + f[:, j, None] * decoder[j, m][None, :]
                assert recon_b[role][j].item() == pytest.approx(lstsq_beta(f[:, j], d, y_recon), rel=1e-5, abs=1e-6)
                assert error_b[role][j].item() == pytest.approx(lstsq_beta(f[:, j], d, y_error), rel=1e-5, abs=1e-6)
                checked += 2
    assert checked == (f.shape[1] - 1) * 8
    # a latent that never fired has no scale
    assert torch.isnan(result.nu_error[3]) and torch.isnan(result.nu_reconstruction_reverse[3])


@pytest.mark.parametrize("density", [0.02, 0.4])  # sparse and dense code paths
@pytest.mark.parametrize("chunk_size", [1, 5, 64])
def test_streamed_equals_one_shot(density: float, chunk_size: int) -> None:
    decoder, f, x, recon = random_problem(n=600, d_sae=20, density=density, seed=1)
    gen = torch.Generator().manual_seed(2)
    keep = torch.rand(600, generator=gen) > 0.2  # rows excluded (e.g. BOS) must not count
    one_shot = ls.compute_latent_scaling(decoder, f[keep], x[keep], recon[keep], pair=(1, 2))
    acc = ls.LatentScalingAccumulator(decoder, (1, 2), chunk_size=chunk_size)
    for lo in range(0, 600, 97):
        hi = min(lo + 97, 600)
        acc.update(f[lo:hi], x[lo:hi], recon[lo:hi], row_mask=keep[lo:hi])
    streamed = acc.result()
    for name in ("nu_error", "nu_reconstruction", "nu_error_reverse", "nu_reconstruction_reverse"):
        a, b = getattr(streamed, name), getattr(one_shot, name)
        assert torch.equal(torch.isnan(a), torch.isnan(b))
        torch.testing.assert_close(a[~torch.isnan(a)], b[~torch.isnan(b)], rtol=1e-5, atol=1e-6)


def test_sparse_and_dense_paths_agree(monkeypatch: pytest.MonkeyPatch) -> None:
    """Three implementations of sum_n f_n y_n: scipy CSR, torch sparse, dense matmul."""
    decoder, f, x, recon = random_problem(n=300, density=0.1, seed=3)
    monkeypatch.setattr(ls, "DENSE_DENSITY", 1.0)
    assert ls._scipy_sparse is not None
    scipy_csr = ls.compute_latent_scaling(decoder, f, x, recon, chunk_size=4)
    monkeypatch.setattr(ls, "_scipy_sparse", None)
    torch_sparse = ls.compute_latent_scaling(decoder, f, x, recon, chunk_size=4)
    monkeypatch.setattr(ls, "DENSE_DENSITY", 0.0)
    dense = ls.compute_latent_scaling(decoder, f, x, recon, chunk_size=4)
    ok = ~torch.isnan(dense.nu_error)
    for result in (scipy_csr, torch_sparse):
        torch.testing.assert_close(result.nu_error[ok], dense.nu_error[ok], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(result.nu_reconstruction[ok], dense.nu_reconstruction[ok], rtol=1e-5, atol=1e-6)


def test_planted_scales_are_recovered() -> None:
    """Model 0 carries each latent's direction at a known scale s_j of model 1's: the
    reconstruction target gives nu^r = s_j exactly, and nu^e = s_j when the crosscoder's
    first decoder is zero (Complete Shrinkage: the error holds the missing part)."""
    gen = torch.Generator().manual_seed(4)
    d_sae, d_model, n = 5, 8, 400
    directions = torch.linalg.qr(torch.randn(d_model, d_sae, generator=gen))[0].T  # orthonormal
    scales = torch.tensor([0.0, 0.1, 0.3, 0.7, 1.0])
    f = torch.rand(n, d_sae, generator=gen) * (torch.rand(n, d_sae, generator=gen) < 0.3)
    x = torch.stack([f @ (scales[:, None] * directions), f @ directions], dim=1)
    full = torch.stack([scales[:, None] * directions, directions], dim=1)
    shrunk = torch.stack([torch.zeros_like(directions), directions], dim=1)
    recon_full = torch.einsum("nj,jmd->nmd", f, full)
    recon_shrunk = torch.einsum("nj,jmd->nmd", f, shrunk)
    torch.testing.assert_close(ls.compute_latent_scaling(full, f, x, recon_full).nu_reconstruction.float(), scales)
    torch.testing.assert_close(ls.compute_latent_scaling(shrunk, f, x, recon_shrunk).nu_error.float(), scales)
