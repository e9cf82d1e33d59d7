# %% [markdown]
# # Step 1: the standard VAE (Eqs. 1-3)
#
# A VAE models p(x) = ∫ p_θ(x|z) p(z) dz (Eq. 1). With an encoder q_φ(z|x) = N(μ(x), diag σ²(x))
# Jensen's inequality gives the evidence lower bound (Eq. 2), written as (Eq. 3)
#
#     L(x) = E_q(z|x)[ln p_θ(x|z)] − KL(q_φ(z|x) ‖ p(z)),   p(z) = N(0, I).
#
# Two ideas make it trainable: the reparameterisation z = μ + σ·ε, ε ~ N(0, I) (under Eq. 18),
# so gradients flow through the sample, and the KL to N(0, I) in closed form. The data: OneHot,
# the four vectors e1..e4 of R⁴, equally often. No model beats ln p(x) = −ln 4 on average, and
# the standard VAE does not reach it: its posteriors overlap (the paper's Figure 1a).
#
#     python steps/step1_standard_vae.py [--quick] [--out out/steps]

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

args = step_options("Step 1: the standard VAE on OneHot", "step1_posteriors.png")

# %% The settings: plain names (the paper: 500 hidden units, 1,000 epochs, warm-up 100)
HIDDEN, EPOCHS, WARMUP, LR, K, SEED = 64, 200, 20, 1e-3, 100, 0
LOGVAR_BOUNDS = (-6.0, 2.0)                          # the encoder's ln σ² is clipped to these
if args.quick:
    HIDDEN, EPOCHS, WARMUP = 8, 3, 1
ag.set_backend("numpy")
OPTIMUM = -math.log(4)

# %% [markdown]
# ## The one new idea, in NumPy: z = μ + σ ε and KL(N(μ, σ²) ‖ N(0, I)) = ½ Σ (μ² + σ² − ln σ² − 1)
# Checked against `iopvae.reparameterize` and `iopvae.kl_standard_normal`, and the closed form
# against a Monte Carlo average of ln q(z|x) − ln p(z); from then on the library's versions.

# %%
def reparameterize(mu, logvar, eps):
    return mu + np.exp(0.5 * logvar) * eps


def kl_standard_normal(mu, logvar):
    return 0.5 * (mu ** 2 + np.exp(logvar) - logvar - 1.0).sum(axis=-1)


rng_np = np.random.default_rng(SEED)
mu, logvar, eps = rng_np.normal(size=(3, 5, 2))
ours = (reparameterize(mu, logvar, eps), kl_standard_normal(mu, logvar))
lib = (iopvae.reparameterize(ag.Tensor(mu), ag.Tensor(logvar), ag.Tensor(eps)).data,
       iopvae.kl_standard_normal(ag.Tensor(mu), ag.Tensor(logvar)).data)
difference = max(abs(a - b).max() for a, b in zip(ours, lib))
check("NumPy against iopvae, largest difference", difference, 0, 1e-6,
      "the two lines above are iopvae.reparameterize and iopvae.kl_standard_normal", fmt=".1e")
m, lv = ag.Tensor(mu[:1]), ag.Tensor(logvar[:1])
z = iopvae.reparameterize(m, lv, ag.Tensor(rng_np.standard_normal((200_000, 2))))
terms = (iopvae.log_normal_diag(z, m, lv) - iopvae.log_standard_normal(z)).data
closed, se = kl_standard_normal(mu[:1], logvar[:1])[0], terms.std() / math.sqrt(terms.size)
check("KL closed form", closed, terms.mean(), 5 * se,
      "the Monte Carlo mean of ln q(z|x) - ln N(z) over 200,000 z ~ q(z|x), ± 5 standard errors")

# %% The data and the model: gated encoder and decoder (Sec. 5.2), Bernoulli likelihood
data = datasets.load("onehot")                       # 1,000 training vectors, each one of e1..e4
train_x, valid_x, test_x = data.train, data.valid, data.test
rng = ag.default_rng(SEED)
model = iopvae.StandardVAE(4, "bernoulli", latent=2, hidden=HIDDEN, rng=rng,
                           encoder_logvar_bounds=LOGVAR_BOUNDS)
opt = Adam(model.vae_parameters(), lr=LR)

# %% [markdown]
# ## The loss: minus Eq. (3), averaged over a mini-batch
# `model.elbo_terms(x, rng)` gives ln p(x|z) at one reparameterised z (L = 1) and the closed-form
# KL, per row. β < 1 weighs the KL during the warm-up. Written out once, then `model.loss`.

# %%
x = ag.Tensor(train_x[:K])
reconstruction, kl = model.elbo_terms(x, ag.default_rng(1))
written_out = -(reconstruction - 0.5 * kl).mean()
check("-(reconstruction - beta KL), written out", float(written_out.data),
      float(model.loss(x, ag.default_rng(1), 0.5).data), 1e-6,
      "model.loss is minus Eq. (3) with beta on the KL, at the same z", fmt=".6f")

# %% The loop: forward, loss, clear gradients, backward, update
for epoch in range(1, EPOCHS + 1):
    beta = iopvae.warmup_beta(epoch, WARMUP)
    for idx in iopvae.minibatches(len(train_x), K, rng):
        loss = model.loss(ag.Tensor(train_x[idx]), rng, beta)       # -Eq. (3), with beta
        opt.zero_grad()
        loss.backward()
        opt.step()
    if epoch % max(1, EPOCHS // 5) == 0:
        print(f"epoch {epoch:4d}  loss {float(loss.data):.4f}")

# %% What a learner should check: the ELBO stays below -ln 4, and why
reconstruction, kl = iopvae.mean_elbo_terms(model, valid_x, rng, samples=20)
elbo = reconstruction - kl                                    # Eq. (3), 20 z per point
check("validation ELBO", elbo, OPTIMUM, 0, "no model's average ELBO on OneHot passes -ln 4, "
      "the entropy of four equally likely vectors", side="<")
check("validation ELBO of a full run", elbo, -1.77, 0.09, "seeds 0-4 give -1.70 to -1.83: "
      "the overlap of the posteriors costs the VAE 0.3 to 0.45 nats", skip=args.quick)
report("reconstruction E_q[ln p(x|z)]", reconstruction)
report("KL(q(z|x) || N(0, I))", kl)
with iopvae.evaluation(model):
    z = model.posterior_sample(ag.Tensor(test_x), rng)
    guess = model.decoder(z).data.argmax(axis=1)              # the decoder's likeliest vector
    logvar = model.encoder(ag.Tensor(test_x))[1].data
labels = test_x.argmax(axis=1)
check("z ~ q(z|x) the decoder reads as another vector than x", np.mean(guess != labels), 0.09,
      0.04, "the posteriors overlap (the figure): 7% to 12% over seeds 0-4", fmt=".1%",
      skip=args.quick)
report("the encoder's lowest ln σ² on the test points", logvar.min(), ".3f")
report("the encoder's highest ln σ² on the test points", logvar.max(), ".3f")

# %% The figure: the overlapping posteriors (the paper's Figure 1a)
fig = Figure(figsize=(4.8, 4.6))
ax = fig.subplots()
z = z.data
for k in range(4):
    ax.scatter(z[labels == k, 0], z[labels == k, 1], s=3, alpha=0.5, label=f"x = e{k + 1}")
angle = np.linspace(0, 2 * np.pi, 200)
r95 = math.sqrt(-2 * math.log(0.05))                          # 95% of N(0, I) in 2-D
ax.plot(r95 * np.cos(angle), r95 * np.sin(angle), "k--", lw=1, label="95% of N(0, I)")
ax.set(xlabel="z1", ylabel="z2", aspect="equal",
       title=f"Step 1: q(z|x), standard VAE, ELBO {elbo:.3f}")
ax.legend(markerscale=4, fontsize=8, loc="upper left", bbox_to_anchor=(1, 1))
os.makedirs(args.out, exist_ok=True)
path = os.path.join(args.out, "step1_posteriors.png")
atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=110, bbox_inches="tight"))
print(f"wrote {path}")
summary()

# %% [markdown]
# ## Exercises (answers: docs/exercises.md)
# 1. Predict KL(q(z|x) ‖ N(0, I)) for μ = (1, 0), σ = 1, and for μ = 0 with ln σ² at the
#    encoder's lower bound −6 in both coordinates. Check with `iopvae.kl_standard_normal`.
# 2. Why can no model's average ELBO on OneHot exceed −ln 4? What ELBO would a VAE get whose
#    four posteriors never overlap but which still pays its KL to N(0, I)?
# 3. Set `WARMUP = 0` (β = 1 from the start) and rerun, with `SEED = 0`, `1` and `2`: does the
#    ELBO move by more than it moves from one seed to the next?
# 4. The step prints the range of the trained ln σ². Would `LOGVAR_BOUNDS = (-2.0, 2.0)` change
#    anything? Then set `LOGVAR_BOUNDS = (-0.5, 2.0)`, which binds: predict the KL, the
#    decoder's errors and the ELBO, then check.
