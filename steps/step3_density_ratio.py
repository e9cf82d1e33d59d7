# %% [markdown]
# # Step 3: the density ratio trick, for a fixed encoder (Eqs. 11-14, 20)
#
# We can sample q(z) (step 2: a random training point, then z ~ q(z|x)) but not evaluate it.
# Label z1 ~ q(z) with y = 1 and z0 ~ N(0, I) with y = 0, in equal numbers (Eq. 11). The ideal
# classifier D(z) = σ(T(z)) has odds D/(1 − D) = q(z)/N(z) (Eq. 12), so the logit that maximises
#
#     (1/M) Σ_i ln σ(T_ψ(z1_i)) + (1/M) Σ_j ln(1 − σ(T_ψ(z0_j)))                (Eqs. 13, 20)
#
# is T*(z) = ln q(z)/N(z) (Eq. 14), the ratio of Eq. (15). Here T_ψ (`iopvae.DensityRatio`, two
# tanh layers; the paper adds dropout, keep 0.5, which step 4 uses) learns it for step 1's
# encoder, held fixed, and we compare it with the exact ratio of step 2.
#
#     python steps/step3_density_ratio.py [--quick] [--out out/steps]

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

args = step_options("Step 3: the density ratio trick on OneHot", "step3_density_ratio.png")

# %% Step 1's encoder (same settings, seed and loop); then T's, without dropout (exercise 2)
HIDDEN, EPOCHS, WARMUP, LR, K, SEED = 64, 200, 20, 1e-3, 100, 0
T_EPOCHS, KEEP, T_LR = 200, 1.0, 3e-3           # one T epoch: N samples of each class (M = N)
if args.quick:
    HIDDEN, EPOCHS, WARMUP, T_EPOCHS = 8, 3, 1, 2
ag.set_backend("numpy")
train_x = datasets.load("onehot").train
N = len(train_x)
rng = ag.default_rng(SEED)
model = iopvae.StandardVAE(4, "bernoulli", latent=2, hidden=HIDDEN, rng=rng)
opt = Adam(model.vae_parameters(), lr=LR)
for epoch in range(1, EPOCHS + 1):
    for idx in iopvae.minibatches(N, K, rng):
        loss = model.loss(ag.Tensor(train_x[idx]), rng, iopvae.warmup_beta(epoch, WARMUP))
        opt.zero_grad()
        loss.backward()
        opt.step()
components = iopvae.aggregated_posterior_components(model, train_x)   # q(z|x_n), fixed


def sample_q(n):                           # Eq. (6), ancestrally: x_n at random, z ~ q(z|x_n)
    idx = rng.integers(0, N, n)
    return iopvae.reparameterize(ag.Tensor(components[0][idx]), ag.Tensor(components[1][idx]),
                                 iopvae.standard_normal(rng, (n, 2)))


def log_ratio(z):                          # the exact ln q(z)/N(z) of the training set (Eq. 8)
    return iopvae.log_aggregated_posterior(z, components) - iopvae.log_standard_normal(
        ag.Tensor(z.astype(np.float64))).data


# %% [markdown]
# ## The new idea: minus Eq. (20) as two binary cross-entropies
# −ln σ(t) = ln(1 + e^−t) and −ln(1 − σ(t)) = ln(1 + e^t). Checked against
# `iopvae.density_ratio_loss` and `density_ratio_loss_on` (T on the stacked batch); at T = 0,
# a classifier that knows nothing, it is ln 4.

# %%
T = iopvae.DensityRatio(2, HIDDEN, ag.default_rng(SEED + 1), keep=KEEP)
z1, z0 = sample_q(K), iopvae.standard_normal(rng, (K, 2))
with iopvae.evaluation(T):
    t1, t0 = T(z1).data, T(z0).data
    ours = np.logaddexp(0, -t1).mean() + np.logaddexp(0, t0).mean()
    lib = float(iopvae.density_ratio_loss(ag.Tensor(t1), ag.Tensor(t0)).data)
    stacked = float(iopvae.density_ratio_loss_on(T, z1, z0).data)
check("-Eq. (20) in NumPy", ours, lib, 1e-5, "density_ratio_loss on T's two outputs",
      fmt=".6f")
check("-Eq. (20) by density_ratio_loss_on", stacked, lib, 1e-5, "T run once on the stacked "
      "batch gives the same loss", fmt=".6f")

# %% The loop: Algorithm 1's lines 7-12 alone, the encoder fixed
T_opt = Adam(T.parameters(), lr=T_LR)
for epoch in range(1, T_EPOCHS + 1):
    for _ in range(N // K):
        z0 = iopvae.standard_normal(rng, (K, 2))                    # line 8: z0 ~ N(0, I)
        z1 = sample_q(K)                                            # line 9: z1 ~ q(z)
        loss = iopvae.density_ratio_loss_on(T, z1, z0)              # line 10: -Eq. (20)
        T_opt.zero_grad()
        loss.backward()
        T_opt.step()                                                # line 11
    if epoch % max(1, T_EPOCHS // 5) == 0:
        print(f"T epoch {epoch:4d}  loss {float(loss.data):.4f}")

# %% What a learner should check: E_q[T] beside the true KL(q(z) || N(0, I)) = E_q[ln q/N]
z1, z0 = sample_q(20_000), iopvae.standard_normal(rng, (20_000, 2))
with iopvae.evaluation(T):
    t1, t0 = T(z1).data.astype(np.float64), T(z0).data.astype(np.float64)
r1, r0 = log_ratio(z1.data), log_ratio(z0.data)
report("E_q[T]", t1.mean())
report("KL(q(z) || N(0, I)) = E_q[ln q/N]", r1.mean())
check("E_q[T] / KL(q(z) || N(0, I)) of a full run", t1.mean() / r1.mean(), 0.8, 0.35,
      "T learns the ratio's shape, its size only roughly (0.52 to 1.07 over seeds 0-4)",
      fmt=".2f", skip=args.quick)
loss_T = np.logaddexp(0, -t1).mean() + np.logaddexp(0, t0).mean()
loss_star = np.logaddexp(0, -r1).mean() + np.logaddexp(0, r0).mean()
check("-Eq. (20) of the exact ratio T*", loss_star, math.log(4), 0, "the ratio of Eq. (14) "
      "classifies better than T = 0, whose loss is ln 4", side="<")
check("-Eq. (20) of T", loss_T, loss_star, 0.01, "no logit beats T* (Eq. 14), up to the "
      "sampling noise of 20,000 points", side=">")
check("-Eq. (20) of T minus T*'s, a full run", loss_T - loss_star, 0.02, 0.025, "T gets within "
      "a few hundredths of a nat of the best classifier", skip=args.quick)
error = abs(t1 - r1)
report("E_q|T - ln q/N|", error.mean())
log_q = r1 + iopvae.log_standard_normal(ag.Tensor(z1.data.astype(np.float64))).data
edge = log_q < np.quantile(log_q, 0.05)               # z outside the contour of 95% of q(z)
report("E_q|T - ln q/N| inside the contour of 95% of q(z)", error[~edge].mean())
report("E_q|T - ln q/N| outside it", error[edge].mean())
report("the outside's share of E_q|T - ln q/N|", error[edge].sum() / error.sum(), ".1%")

# %% The figure: T beside the true ratio, with samples of both classes
axis = np.linspace(-4, 4, 161)
grid = np.stack(np.meshgrid(axis, axis), axis=-1).reshape(-1, 2)
with iopvae.evaluation(T):
    t_grid = T(ag.Tensor(grid.astype(np.float32))).data.reshape(161, 161)
fig = Figure(figsize=(10.5, 4.4))
angle = np.linspace(0, 2 * np.pi, 200)
r95 = math.sqrt(-2 * math.log(0.05))
for ax, values, title in zip(fig.subplots(1, 2), (t_grid, log_ratio(grid).reshape(161, 161)),
                             ("learned T(z)", "true ln q(z)/N(z)")):
    image = ax.pcolormesh(axis, axis, values, shading="auto", cmap="RdBu_r", vmin=-3, vmax=3)
    ax.scatter(*z0.data[:300].T, s=3, c="k", label="z0 ~ N(0, I) (y = 0)")
    ax.scatter(*z1.data[:300].T, s=3, c="y", label="z1 ~ q(z) (y = 1)")
    ax.plot(r95 * np.cos(angle), r95 * np.sin(angle), "k--", lw=1, label="95% of N(0, I)")
    ax.set(title=title, xlabel="z1", ylabel="z2", aspect="equal", xlim=(-4, 4), ylim=(-4, 4))
fig.colorbar(image, ax=fig.axes, extend="both")
fig.axes[0].legend(markerscale=3, fontsize=7, loc="lower left")
fig.suptitle(f"Step 3: E_q[T] = {t1.mean():.3f} against KL(q(z) || N(0, I)) = {r1.mean():.3f}")
os.makedirs(args.out, exist_ok=True)
path = os.path.join(args.out, "step3_density_ratio.png")
atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=110, bbox_inches="tight"))
print(f"wrote {path}")
summary()

# %% [markdown]
# ## Exercises (answers: docs/exercises.md)
# 1. Shift the exact ratio by a constant, T = T* + c: how does −Eq. (20) change, and why is the
#    minimum at c = 0? (Hint: Eq. 12 needs equal class sizes.)
# 2. Set `KEEP = 0.5` (the paper's dropout, which step 4 uses). Predict, then check, what
#    E_q[T] and T's loss become.
# 3. Where in the figure has T seen no samples of either class? Compare T and the true ratio
#    there: does it matter for Eq. (15), which only evaluates T at z ~ q(z|x)?
