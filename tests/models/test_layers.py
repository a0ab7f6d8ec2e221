"""Shared layers and losses against hand-computed values and independent implementations."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from bgmrec.models import layers as L


def t(x) -> torch.Tensor:
    return torch.tensor(x, dtype=torch.float64)


# ---- product of experts ---------------------------------------------------------------------------

def test_poe_by_hand():
    # N(0, 1) x N(2, 1/3): precisions 1 + 3 = 4 -> var 1/4; mean (1*0 + 3*2) / 4 = 1.5
    mus = t([[[0.0]], [[2.0]]])  # [E=2, B=1, d=1]
    lvs = t([[[0.0]], [[math.log(1 / 3)]]])
    mu, lv = L.product_of_experts(mus, lvs)
    assert mu.item() == pytest.approx(1.5)
    assert lv.item() == pytest.approx(math.log(0.25))


def test_poe_three_experts_two_dims_by_hand():
    # dim 0: N(1, 1), N(-1, 1), N(4, 2) -> precision 1 + 1 + 0.5 = 2.5, mean (1 - 1 + 2) / 2.5 = 0.8
    # dim 1: N(0, 0.5), N(0, 0.5), N(3, 1) -> precision 2 + 2 + 1 = 5, mean 3 / 5 = 0.6
    mus = t([[[1.0, 0.0]], [[-1.0, 0.0]], [[4.0, 3.0]]])
    lvs = torch.log(t([[[1.0, 0.5]], [[1.0, 0.5]], [[2.0, 1.0]]]))
    mu, lv = L.product_of_experts(mus, lvs)
    torch.testing.assert_close(mu, t([[0.8, 0.6]]))
    torch.testing.assert_close(lv, torch.log(t([[1 / 2.5, 1 / 5]])))


def test_poe_uncertain_expert_barely_moves_the_others():
    # a prior N(0,1) and an expert at the clamp (logvar = +8, precision e^-8) with mean 5
    mus = t([[[0.0]], [[5.0]]])
    lvs = t([[[0.0]], [[L.LOGVAR_MAX]]])
    mu, lv = L.product_of_experts(mus, lvs)
    p = math.exp(-8.0)
    assert mu.item() == pytest.approx(5 * p / (1 + p))
    assert abs(mu.item()) < 2e-3
    assert lv.item() == pytest.approx(-math.log(1 + p))
    assert abs(lv.item()) < 1e-3


def test_poe_mask_removes_expert_exactly():
    torch.manual_seed(0)
    mus, lvs = torch.randn(3, 4, 5), torch.randn(3, 4, 5)
    mask = torch.ones(3, 4, dtype=torch.bool)
    mask[2, 1] = False  # sample 1 has no third expert
    mu, lv = L.product_of_experts(mus, lvs, mask)
    mu2, lv2 = L.product_of_experts(mus[:2, 1:2], lvs[:2, 1:2])
    assert torch.equal(mu[1:2], mu2) and torch.equal(lv[1:2], lv2)
    mu3, lv3 = L.product_of_experts(mus[:, [0, 2, 3]], lvs[:, [0, 2, 3]])
    assert torch.equal(mu[[0, 2, 3]], mu3) and torch.equal(lv[[0, 2, 3]], lv3)


def test_gaussian_encoder_clamps_logvar():
    enc = L.GaussianEncoder(3, (4,), 2)
    with torch.no_grad():
        enc.net[-1].bias[2:] = 100.0  # huge log-variance
        enc.net[-1].bias[:2] = 0.0
    _, lv = enc(torch.zeros(5, 3))
    assert torch.all(lv <= L.LOGVAR_MAX) and torch.allclose(lv, torch.full_like(lv, L.LOGVAR_MAX))
    with torch.no_grad():
        enc.net[-1].bias[2:] = -100.0
    _, lv = enc(torch.zeros(5, 3))
    assert torch.allclose(lv, torch.full_like(lv, L.LOGVAR_MIN))


# ---- KL ------------------------------------------------------------------------------------------

def test_kl_of_identical_gaussians_is_zero():
    torch.manual_seed(1)
    mu, lv = torch.randn(7, 4), torch.randn(7, 4)
    kl = L.kl_normal(mu, lv, mu, lv)
    assert kl.shape == (7,)
    torch.testing.assert_close(kl, torch.zeros(7), atol=1e-6, rtol=0)


def test_kl_by_hand():
    # KL(N(0,1) || N(1,1)) = 1/2; KL(N(0,1) || N(0,4)) = 1/2 (log 4 + 1/4 - 1)
    assert L.kl_normal(t([0.0]), t([0.0]), t([1.0]), t([0.0])).item() == pytest.approx(0.5)
    want = 0.5 * (math.log(4) + 0.25 - 1)
    assert L.kl_normal(t([0.0]), t([0.0]), t([0.0]), t([math.log(4)])).item() == pytest.approx(want)
    # summed over the last dimension
    assert L.kl_normal(t([0.0, 0.0]), t([0.0, 0.0]), t([1.0, 0.0]), t([0.0, math.log(4)])).item() == (
        pytest.approx(0.5 + want))


def test_kl_matches_torch_distributions_and_monte_carlo():
    mu_q, var_q = t([0.5, -1.0, 0.0]), t([0.5, 2.0, 1.3])
    mu_p, var_p = t([0.0, 0.5, -0.7]), t([1.0, 0.7, 3.0])
    kl = L.kl_normal(mu_q, torch.log(var_q), mu_p, torch.log(var_p))
    q = torch.distributions.Normal(mu_q, var_q.sqrt())
    p = torch.distributions.Normal(mu_p, var_p.sqrt())
    ref = torch.distributions.kl_divergence(q, p).sum(-1)
    assert kl.item() == pytest.approx(ref.item(), rel=1e-10)
    # Monte Carlo: E_q[log q(z) - log p(z)] over 200k samples (standard error about 0.005 here)
    gen = torch.Generator().manual_seed(0)
    z = mu_q + var_q.sqrt() * torch.randn(200_000, 3, generator=gen, dtype=torch.float64)
    mc = (q.log_prob(z) - p.log_prob(z)).sum(-1).mean().item()
    assert kl.item() == pytest.approx(mc, abs=0.03)
    assert kl.item() > 0.5  # not a degenerate case


def test_kl_standard_normal_is_kl_to_unit_gaussian():
    torch.manual_seed(2)
    mu, lv = torch.randn(6, 3), torch.randn(6, 3)
    torch.testing.assert_close(L.kl_standard_normal(mu, lv),
                               L.kl_normal(mu, lv, torch.zeros_like(mu), torch.zeros_like(lv)))
    assert L.kl_standard_normal(torch.zeros(2, 3), torch.zeros(2, 3)).abs().max().item() == 0.0


def test_reparameterize_moments():
    gen = torch.Generator().manual_seed(0)
    mu, lv = torch.full((100_000, 1), 2.0), torch.full((100_000, 1), math.log(0.25))
    z = L.reparameterize(mu, lv, gen)
    assert z.mean().item() == pytest.approx(2.0, abs=0.01)
    assert z.std().item() == pytest.approx(0.5, abs=0.01)


# ---- matching losses -----------------------------------------------------------------------------

def test_hinge_is_zero_once_the_margin_holds():
    # every positive beats every negative of its row and column by more than 0.2
    sim = t([[0.9, 0.1], [0.2, 0.8]])
    assert L.hardest_negative_hinge(sim, 0.2).item() == 0.0
    # with margin 0.7 row 1: 0.7 + 0.2 - 0.8 = 0.1 and column 0: 0.7 + 0.2 - 0.9 = 0, column 1: 0.7 + 0.1 - 0.8 = 0
    # row 0: 0.7 + 0.1 - 0.9 = -0.1 -> 0. mean over rows 0.05 + mean over columns 0
    assert L.hardest_negative_hinge(sim, 0.7).item() == pytest.approx(0.05)


SIM3 = [[0.5, 0.6, 0.1],
        [0.0, 0.9, 0.3],
        [0.2, 0.85, 0.7]]


def test_hinge_by_hand_3x3():
    # rows (video i vs its hardest track): 0.2+0.6-0.5 = 0.3; 0.2+0.3-0.9 < 0; 0.2+0.85-0.7 = 0.35
    # columns (track j vs its hardest video): 0.2+0.2-0.5 < 0; 0.2+0.85-0.9 = 0.15; 0.2+0.3-0.7 < 0
    loss = L.hardest_negative_hinge(t(SIM3), 0.2)
    assert loss.item() == pytest.approx((0.3 + 0.35) / 3 + 0.15 / 3)


def test_hinge_counts_only_the_hardest_of_several_violating_negatives():
    # 2 x 2: row 0's one negative within the margin, 0.2+0.45-0.5 = 0.15; row 1: 0.2+0.3-0.9 < 0. Column 0:
    # 0.2+0.3-0.5 = 0; column 1: 0.2+0.45-0.9 < 0
    sim = t([[0.5, 0.45], [0.3, 0.9]])
    assert L.hardest_negative_hinge(sim, 0.2).item() == pytest.approx(0.15 / 2)
    sim3 = t([[0.5, 0.45, 0.4], [0.0, 0.9, 0.0], [0.0, 0.0, 0.9]])
    # row 0 has two negatives within the margin: only the hardest counts, max(0.45, 0.4) -> 0.15 (the sum of
    # both hinges, VSE0's loss, would be 0.15 + 0.1); rows 1, 2 and every column satisfied
    assert L.hardest_negative_hinge(sim3, 0.2).item() == pytest.approx(0.15 / 3)


def test_hinge_same_item_mask_removes_false_negatives():
    # rows 0 and 1 share their track: (0,1) and (1,0) are not negatives.
    # rows: 0.2+0.1-0.5 < 0; 0.2+0.3-0.9 < 0; 0.35. columns: 0.2+0.2-0.5 < 0; 0.2+0.85-0.9 = 0.15; < 0
    same = torch.tensor([[True, True, False], [True, True, False], [False, False, True]])
    loss = L.hardest_negative_hinge(t(SIM3), 0.2, same)
    assert loss.item() == pytest.approx(0.35 / 3 + 0.15 / 3)
    # a batch where every row is the same track has no negatives at all: loss 0
    assert L.hardest_negative_hinge(t(SIM3), 0.2, torch.ones(3, 3, dtype=torch.bool)).item() == 0.0


def test_hinge_is_minimised_by_raising_positives():
    sim = t(SIM3).requires_grad_(True)
    L.hardest_negative_hinge(sim, 0.2).backward()
    assert sim.grad[0, 0] < 0 and sim.grad[2, 2] < 0  # gradient descent raises the active positives
    assert sim.grad[0, 1] > 0 and sim.grad[2, 1] > 0  # and lowers the hardest negatives


def _ce(row: list[float], target: int) -> float:
    return -row[target] + math.log(sum(math.exp(x) for x in row))


def test_info_nce_by_hand_2x2():
    # rows: CE([2,0], 0) = log(1 + e^-2), CE([1,3], 1) = log(1 + e^-2)
    # columns: CE([2,1], 0) = log(1 + e^-1), CE([0,3], 1) = log(1 + e^-3)
    logits = t([[2.0, 0.0], [1.0, 3.0]])
    rows = math.log(1 + math.exp(-2))
    cols = 0.5 * (math.log(1 + math.exp(-1)) + math.log(1 + math.exp(-3)))
    assert L.symmetric_info_nce(logits).item() == pytest.approx(0.5 * (rows + cols))
    # rows 0 and 1 the same track: nothing left to contrast, each cross-entropy is over one entry
    assert L.symmetric_info_nce(logits, torch.ones(2, 2, dtype=torch.bool)).item() == pytest.approx(0.0)


def test_info_nce_masked_entry_is_excluded():
    lg = [[1.0, 2.0, 0.5], [0.3, 1.5, -1.0], [0.0, 0.7, 2.5]]
    same = torch.tensor([[True, False, True], [False, True, False], [True, False, True]])  # rows 0, 2 share
    got = L.symmetric_info_nce(t(lg), same).item()
    rows = [_ce([lg[0][0], lg[0][1]], 0), _ce(lg[1], 1), _ce([lg[2][1], lg[2][2]], 1)]
    cols = [_ce([lg[0][0], lg[1][0]], 0), _ce([lg[0][1], lg[1][1], lg[2][1]], 1), _ce([lg[1][2], lg[2][2]], 1)]
    assert got == pytest.approx(0.5 * (np.mean(rows) + np.mean(cols)))
    unmasked = [_ce(lg[i], i) for i in range(3)]
    unmasked_cols = [_ce([lg[r][j] for r in range(3)], j) for j in range(3)]
    assert L.symmetric_info_nce(t(lg)).item() == pytest.approx(0.5 * (np.mean(unmasked) + np.mean(unmasked_cols)))
    assert got < L.symmetric_info_nce(t(lg)).item()


def test_gaussian_nll_by_hand():
    # 1/2 * ((1-0)^2 + (2-4)^2) = 2.5
    assert L.gaussian_nll(t([[1.0, 2.0]]), t([[0.0, 4.0]])).item() == pytest.approx(2.5)


# ---- schedules and reductions --------------------------------------------------------------------

@pytest.mark.parametrize(("step", "warmup", "want"), [(0, 10, 0.0), (5, 10, 0.5), (10, 10, 1.0), (25, 10, 1.0),
                                                      (3, 0, 1.0), (3, -1, 1.0)])
def test_linear_anneal(step, warmup, want):
    assert L.linear_anneal(step, warmup) == pytest.approx(want)


def test_mlp_and_standardizer():
    net = L.mlp(4, (8, 6), 3)
    assert net(torch.zeros(2, 4)).shape == (2, 3)
    s = L.Standardizer(2)
    x = t([[1.0, 10.0], [3.0, 10.0], [100.0, 0.0]]).float()
    s.fit(x, weights=torch.tensor([1.0, 1.0, 0.0]))  # the third row is excluded
    torch.testing.assert_close(s.mean, torch.tensor([2.0, 10.0]))
    torch.testing.assert_close(s.std, torch.tensor([1.0, 1e-4]))  # constant feature clamped
    torch.testing.assert_close(s(torch.tensor([[4.0, 10.0]])), torch.tensor([[2.0, 0.0]]))
    # a new value of the feature constant in training is 0 too, as in every training row: divided by the floor,
    # 10.5 was 5,000 standard deviations out (a frame feature no training video activated)
    torch.testing.assert_close(s(torch.tensor([[4.0, 10.5], [2.0, -3.0]])), torch.tensor([[2.0, 0.0], [0.0, 0.0]]))
    assert s.fitted_on_rows and L.Standardizer(2).fitted_on_rows  # fitted; not yet fitted (the initial spread of 1)
    # fitted on no rows (the captions of a dataset without any): it kept mean 0, spread 1, and passed new values on
    s.fit(x, weights=torch.zeros(3))
    assert not s.fitted_on_rows
    torch.testing.assert_close(s(torch.tensor([[4.0, 10.5]])), torch.tensor([[0.0, 0.0]]))
    s.fit(x[:1])  # one row, every feature constant: fitted on it all the same (a model trained with that caption)
    assert s.fitted_on_rows
    s.fit(torch.zeros(5, 2))  # rows of zeros (captions that embed to 0): fitted on them too
    assert s.fitted_on_rows
    torch.testing.assert_close(s(torch.tensor([[4.0, 10.5]])), torch.tensor([[0.0, 0.0]]))


# ---- the backdoor adjustment -----------------------------------------------------------------------

def test_backdoor_genre_offsets_by_hand():
    # tracks 0, 1 of genre 0 and track 2 of genre 1, scores 0, log 2, 0; two tastes: neutral, and genre 0 x3
    # Z(k=0) = 1 + 2 + 1 = 4; Z(k=1) = 3 + 6 + 1 = 10
    # h(g=0) = log (1/2)(1/4 + 3/10) = log 0.275; h(g=1) = log (1/2)(1/4 + 1/10) = log 0.175
    # a second video with the scores of tracks 0 and 1 swapped: Z and h are the same
    scores = t([[0.0, math.log(2.0), 0.0], [math.log(2.0), 0.0, 0.0]])
    taste = t([[0.0, 0.0], [math.log(3.0), 0.0]])
    h = L.backdoor_genre_offsets(scores, torch.tensor([0, 0, 1]), taste)
    torch.testing.assert_close(h, torch.log(t([[0.275, 0.175], [0.275, 0.175]])))
    # the marginal exp(score + h(genre)) is a distribution over the tracks: 0.275 + 0.55 + 0.175 = 1
    assert torch.exp(scores[0] + h[0, [0, 0, 1]]).sum().item() == pytest.approx(1.0)


def test_backdoor_marginal_is_the_mean_of_the_per_taste_softmaxes():
    gen = torch.Generator().manual_seed(0)
    scores = torch.randn(4, 9, generator=gen, dtype=torch.float64)
    genre = torch.tensor([0, 1, 2, 0, 1, 2, 0, 0, 1])
    taste = torch.randn(5, 3, generator=gen, dtype=torch.float64)
    h = L.backdoor_genre_offsets(scores, genre, taste)
    # P(m | do(v)) = (1/K) sum_k softmax_m(scores_vm + taste_k[g_m])
    want = torch.stack([torch.softmax(scores + taste[k, genre], dim=1) for k in range(5)]).mean(0)
    torch.testing.assert_close(torch.exp(scores + h[:, genre]), want)
    assert L.backdoor_genre_offsets(scores[:, :0], genre[:0], taste).abs().sum().item() == 0.0


def _offsets_by_definition(scores, genre, taste):
    """h(v, g) = log (1/K) sum_k exp(taste_k[g] - log Z(v, k)), each log-sum-exp taken as written, in float64."""
    scores, taste = scores.double(), taste.double()
    log_z = torch.stack([torch.logsumexp(scores + taste[k, genre], dim=1) for k in range(len(taste))], 1)  # [n, K]
    return torch.logsumexp(taste[None, :, :] - log_z[:, :, None], dim=1) - math.log(len(taste))


def test_backdoor_offsets_hold_at_extreme_scores_and_for_a_genre_without_tracks():
    # computed as matrix products of exponentials less their largest terms: scores 600 nats apart (float32's exp
    # spans 87), tastes far apart, and genre 3 with no reference track (its offset as the definition gives it)
    gen = torch.Generator().manual_seed(1)
    genre = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    scores = torch.randn(6, 8, generator=gen) * 3
    scores[:, 0] += 300.0
    scores[:, 5] -= 300.0
    taste = torch.randn(7, 4, generator=gen) * 40
    h = L.backdoor_genre_offsets(scores, genre, taste)
    assert h.dtype == scores.dtype and torch.isfinite(h).all()
    torch.testing.assert_close(h.double(), _offsets_by_definition(scores, genre, taste), rtol=1e-6, atol=1e-4)
    many = torch.randn(300, 50, generator=gen, dtype=torch.float64)  # and a batch as the models score them
    g50 = torch.randint(0, 5, (50,), generator=gen)
    tastes = torch.randn(2000, 5, generator=gen, dtype=torch.float64)
    torch.testing.assert_close(L.backdoor_genre_offsets(many, g50, tastes), _offsets_by_definition(many, g50, tastes))
    # where a product's two largest terms fall at different genres 800 nats apart, its sum underflows: such an
    # entry is taken again exactly (it was nan and inf, a review); and a genre whose every score is -inf
    scores, genre = t([[0.0, -800.0]]).double(), torch.tensor([0, 1])
    taste = t([[-800.0, 0.0], [0.0, 0.0]]).double()
    torch.testing.assert_close(L.backdoor_genre_offsets(scores, genre, taste),
                               _offsets_by_definition(scores, genre, taste))
    scores = torch.tensor([[0.0, -torch.inf, 1.0]], dtype=torch.float64)
    taste = torch.randn(3, 2, generator=gen, dtype=torch.float64)
    torch.testing.assert_close(L.backdoor_genre_offsets(scores, torch.tensor([0, 1, 0]), taste),
                               _offsets_by_definition(scores, torch.tensor([0, 1, 0]), taste))
    # float32 factors: the underflow is met at 87 nats there, and taken again all the same (it was -inf; a review)
    a, b = torch.tensor([[0.0, -110.0]]), torch.tensor([[-110.0], [0.0]])
    torch.testing.assert_close(L.log_sum_exp_product(a, b), torch.logsumexp(a[:, :, None] + b[None], dim=1))
    assert L.log_sum_exp_product(a, b).dtype == torch.float32
    wide = torch.randn(40, 9, generator=gen, dtype=torch.float64) * 400  # spreads of hundreds of nats, at random
    g9, tastes = torch.randint(0, 3, (9,), generator=gen), torch.randn(5, 3, generator=gen, dtype=torch.float64) * 400
    torch.testing.assert_close(L.backdoor_genre_offsets(wide, g9, tastes), _offsets_by_definition(wide, g9, tastes))
