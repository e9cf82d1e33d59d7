# %% [markdown]
# # Step 2: the aggregated posterior, and the split of its KL (Eqs. 6, 8, 10, 15)
#
# Averaged over the data, the prior term of the ELBO is −H(q(z), p(z)), largest when the prior
# is the *aggregated posterior* (Eqs. 5-6)
#
#     q(z) = ∫ p_D(x) q_φ(z|x) dx  ≈  (1/N) Σ_n q_φ(z|x_n)          (Eq. 8, the training set).
#
# Its KL, KL(q(z|x) ‖ q(z)) (Eq. 7), has no closed form. Inserting p(z) = N(0, I) splits it
# (Eq. 10) into the closed form of step 1 minus the mean of a log density ratio of z alone:
#
#     KL(q(z|x) ‖ q(z)) = KL(q(z|x) ‖ N(0, I)) − E_q(z|x)[ln q(z)/N(z)].
#
# Eq. (15) is the same with T*(z) = ln q(z)/N(z) (step 3 learns it). Here we take step 1's
# encoder (same settings and seed, so the same weights) and compute every term exactly.
#
#     python steps/step2_aggregated_posterior.py [--quick] [--out out/steps]

# %%
import math
import os
import sys

import numpy as np
from matplotlib.figure import Figure

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(globals().get("__file__", "."))))
sys.path.insert(0, ROOT)
import autograd_lite as ag  # noqa: E402
import datasets  # noqa: E402
import iopvae  # noqa: E402
from autograd_lite.files import atomic_write  # noqa: E402
from autograd_lite.optim import Adam  # noqa: E402
from steps.checks import check, report, summary  # noqa: E402
from steps.options import step_options  # noqa: E402

args = step_options("Step 2: the aggregated posterior on OneHot",
                    "step2_aggregated_posterior.png")

# %% Step 1's settings and loop (model.loss is minus Eq. 3, checked there)
HIDDEN, EPOCHS, WARMUP, LR, K, SEED = 64, 200, 20, 1e-3, 100, 0
if args.quick:
    HIDDEN, EPOCHS, WARMUP = 8, 3, 1
ag.set_backend("numpy")
train_x = datasets.load("onehot").train
rng = ag.default_rng(SEED)
model = iopvae.StandardVAE(4, "bernoulli", latent=2, hidden=HIDDEN, rng=rng)
opt = Adam(model.vae_parameters(), lr=LR)
for epoch in range(1, EPOCHS + 1):
    for idx in iopvae.minibatches(len(train_x), K, rng):
        loss = model.loss(ag.Tensor(train_x[idx]), rng, iopvae.warmup_beta(epoch, WARMUP))
        opt.zero_grad()
        loss.backward()
        opt.step()

# %% [markdown]
# ## The new idea: Eq. (8) as a log-sum-exp over the N training points
# Checked against `iopvae.log_aggregated_posterior`. OneHot has four distinct vectors, so the
# 1,000-component mixture is the 4-component one of `iopvae.log_normal_mixture`: we use that
# (equal up to float32 rounding: BLAS may round one row differently at another place).

# %%
components = iopvae.aggregated_posterior_components(model, train_x)   # (mu_n, logvar_n)
mu_n, logvar_n = (c.astype(np.float64) for c in components)
z = np.random.default_rng(1).normal(size=(6, 2))
log_n = -0.5 * ((z[:, None] - mu_n) ** 2 / np.exp(logvar_n) + logvar_n + math.log(2 * math.pi))
ours = np.logaddexp.reduce(log_n.sum(axis=2), axis=1) - math.log(len(mu_n))
lib = iopvae.log_aggregated_posterior(z, components)
first = [int(np.flatnonzero(train_x[:, k])[0]) for k in range(4)]   # a row of each e_k
mu_k, logvar_k = mu_n[first], logvar_n[first]
four = iopvae.log_normal_mixture(ag.Tensor(z), ag.Tensor(mu_k), ag.Tensor(logvar_k)).data
check("NumPy against log_aggregated_posterior", abs(ours - lib).max(), 0, 1e-9,
      "the log-sum-exp above is Eq. (8)", fmt=".1e")
check("1,000 against 4 components", abs(four - lib).max(), 0, 1e-6, "the 1,000 rows hold "
      "four vectors; BLAS may round a row's float32 code differently elsewhere", fmt=".1e")


def log_q(z):                                        # ln q(z), the 4-component mixture
    return iopvae.log_normal_mixture(ag.Tensor(z), ag.Tensor(mu_k), ag.Tensor(logvar_k)).data


def log_normal(z):                                   # ln N(z | 0, I)
    return iopvae.log_standard_normal(ag.Tensor(z)).data


# %% [markdown]
# ## Eq. (10) for each x, exactly: an integral over q(z|x) on a grid
# E_q(z|x)[f(z)] = ∫ N(u) f(μ + σu) du, a sum over a fine grid of u (exact to ~1e-10).

# %%
u_axis = np.linspace(-9, 9, 601)
U = np.stack(np.meshgrid(u_axis, u_axis), axis=-1).reshape(-1, 2)
weight = np.exp(log_normal(U)) * (u_axis[1] - u_axis[0]) ** 2
kl_normal = iopvae.kl_standard_normal(ag.Tensor(mu_k), ag.Tensor(logvar_k)).data
split = []
for k in range(4):
    z = mu_k[k] + np.exp(0.5 * logvar_k[k]) * U
    log_q_x = iopvae.log_normal_diag(ag.Tensor(z), ag.Tensor(mu_k[k]), ag.Tensor(logvar_k[k])).data
    lhs = weight @ (log_q_x - log_q(z))                           # KL(q(z|x) || q(z))
    ratio = weight @ (log_q(z) - log_normal(z))                   # E_q(z|x)[ln q(z)/N(z)]
    split.append((lhs, ratio))
    print(f"x = e{k + 1}: KL(q(z|x) || q(z)) = {lhs:.7f} = {kl_normal[k]:.7f} - {ratio:.7f}")
    report(f"E_q(z|e{k + 1})[ln q(z)/N(z)]", ratio)
check("Eq. (10), the two sides' largest difference over x",
      max(abs(lhs - (kl - ratio)) for (lhs, ratio), kl in zip(split, kl_normal)), 0, 1e-6,
      "the split is an identity: insert ln N(z) into KL(q(z|x) || q(z))", fmt=".1e")

# %% The same averaged over x: step 1's KL bill = information + KL(q(z) || N(0, I))
information, kl_q = np.mean(split, axis=0)
print(f"E_x KL(q(z|x) || N(0, I)) = {kl_normal.mean():.4f} = information {information:.4f} "
      f"+ KL(q(z) || N(0, I)) {kl_q:.4f};  ln 4 = {math.log(4):.4f}")
check("information E_x KL(q(z|x) || q(z))", information, math.log(4), 0, "the information z "
      "holds about x is at most the entropy of x, ln 4", side="<")
check("information of a full run", information, 1.15, 0.07, "step 1's posteriors overlap, "
      "so z tells x apart less than perfectly (ln 4 = 1.386)", skip=args.quick)
check("KL(q(z) || N(0, I))", kl_q, 0, 0, "a KL is never negative; the rest of step 1's KL bill",
      side=">")
check("KL(q(z) || N(0, I)) of a full run", kl_q, 0.15, 0.04, "small: q(z) nearly fills "
      "N(0, I), so the ratio step 3 learns is weak", skip=args.quick)

# %% Eq. (6) by ancestral sampling: a random training point, then z ~ q(z|x) (what T will see)
rng_np = np.random.default_rng(2)
idx = rng_np.integers(0, len(train_x), 100_000)
z1 = mu_n[idx] + np.exp(0.5 * logvar_n[idx]) * rng_np.standard_normal((len(idx), 2))
values = log_q(z1) - log_normal(z1)
check("sampled E_q[ln q/N]", values.mean(), kl_q, 5 * values.std() / math.sqrt(len(idx)),
      "ancestral samples of q(z) average the ratio to its exact mean, ± 5 standard errors")

# %% The figure: q(z) against N(0, I), and the log-ratio that step 3 will learn
axis = np.linspace(-4, 4, 241)
grid = np.stack(np.meshgrid(axis, axis), axis=-1).reshape(-1, 2)
fig = Figure(figsize=(10, 4.3))
left, right = fig.subplots(1, 2)
image = left.pcolormesh(axis, axis, np.exp(log_q(grid)).reshape(241, 241), shading="auto")
fig.colorbar(image, ax=left)
left.contour(axis, axis, np.exp(log_normal(grid)).reshape(241, 241), colors="w", linewidths=0.8)
left.set(title="q(z) (colour) and N(0, I) (white lines)")
log_ratio = (log_q(grid) - log_normal(grid)).reshape(241, 241)
image = right.pcolormesh(axis, axis, log_ratio, shading="auto", cmap="RdBu_r", vmin=-3, vmax=3)
fig.colorbar(image, ax=right, extend="both")
right.set(title=f"ln q(z)/N(z); its mean under q: {kl_q:.3f}")
angle = np.linspace(0, 2 * np.pi, 200)
for ax in (left, right):
    r95 = math.sqrt(-2 * math.log(0.05))
    ax.plot(r95 * np.cos(angle), r95 * np.sin(angle), "k--", lw=1)
    ax.set(xlabel="z1", ylabel="z2", aspect="equal")
fig.suptitle("Step 2: step 1's aggregated posterior (dashed: 95% circle of N(0, I))")
os.makedirs(args.out, exist_ok=True)
path = os.path.join(args.out, "step2_aggregated_posterior.png")
atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=110, bbox_inches="tight"))
print(f"wrote {path}")
summary()

# %% [markdown]
# ## Exercises (answers: docs/exercises.md)
# 1. Why can the information E_x KL(q(z|x) ‖ q(z)) never exceed ln 4 here? What is it for
#    four posteriors far apart, and what does the split then say about KL(q(z) ‖ N(0, I))?
# 2. If e1 made up half the training set (and e2..e4 a sixth each), what would q(z) be? Check
#    with `iopvae.log_aggregated_posterior` on such a training set.
# 3. Is E_q(z|x)[ln q(z)/N(z)] positive for every x? Is its average over x? Why?
