# %% [markdown]
# # Step 5: on images (FreyFaces), where z has 40 dimensions
#
# The same two methods as steps 1 and 4, on Brendan Frey's 28×20 face images (Gaussian
# decoder, latent size 40 as in the paper), for a few epochs from the same start: the standard
# VAE (Eq. 3) and the implicit optimal prior (Algorithm 1). What changes on images: to
# reconstruct 560 grey levels the decoder needs precise codes, so each q(z|x_n) is narrow and
# q(z) fills a thin part of the space that N(0, I) spreads over. The ratio q(z)/N(z) is huge
# where q(z) lies, T tells the two apart almost without error, and its loss (Eq. 20, negated)
# is near 0; in two dimensions too (exercise 2): the size of the ratio does it, not the
# dimension. Then the logistic loss no longer pins T's size: E_q[T] (what Eq. 15 subtracts)
# sits beside the exact E_q[ln q(z)/N(z)] of the training-set mixture (Eq. 8), which we can
# still compute, and they need not agree (the paper's dropout keeps T from fitting that
# mixture, so it is a reference, not T's target).
#
#     python steps/step5_images.py [--quick] [--out out/steps] [--data-dir DIR]
#
# The data: `python datasets.py download freyfaces` (or point $IOPVAE_DATA at a folder holding
# freyfaces/freyfaces.pkl). Up to 5 minutes on one core.

# %%
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

args = step_options("Step 5: the VAE and IOP on FreyFaces", "step5_images.png", more=[
    (["--data-dir"], dict(help="data folder (default: $IOPVAE_DATA, else ~/.cache/iopvae)")),
    (["--no-verify"], dict(action="store_true", help="skip the file's checksum"))])

# %% The settings (the paper: 500 hidden units, 1,000 epochs, warm-up 100)
HIDDEN, EPOCHS, WARMUP, LR, K, SEED, J2, LATENT, SAMPLES = 200, 20, 5, 1e-3, 100, 0, 10, 40, 2000
if args.quick:
    HIDDEN, EPOCHS, WARMUP, J2, SAMPLES = 8, 2, 1, 1, 200
ag.set_backend("numpy")
try:
    data = datasets.load("freyfaces", args.data_dir, verify_checksums=not args.no_verify)
except datasets.DataError as exc:
    sys.exit(f"step 5 needs FreyFaces: `python datasets.py download freyfaces` ({exc})")
train_x, valid_x = data.train, data.valid
N = len(train_x)

# %% Two models from the same start: same seed, so the same encoder and decoder weights
vae = iopvae.StandardVAE(data.dim, "gaussian", latent=LATENT, hidden=HIDDEN,
                         rng=ag.default_rng(SEED))
iop = iopvae.ImplicitOptimalPrior(data.dim, "gaussian", latent=LATENT, hidden=HIDDEN,
                                  rng=ag.default_rng(SEED))
same = all(np.array_equal(a.data, b.data) for a, b in zip(vae.vae_parameters(),
                                                           iop.vae_parameters()))
check("the same start for both, 1 if so", float(same), 1, 0, "the same seed draws the same "
      "encoder and decoder weights; IOP adds T", fmt=".0f")
vae_opt, iop_opt = Adam(vae.vae_parameters(), lr=LR), Adam(iop.vae_parameters(), lr=LR)
T_opt = Adam(iop.density_ratio_parameters(), lr=LR)
rng = ag.default_rng(SEED + 1)

# %% Steps 1 and 4's loops, side by side; after each round, T against the exact ratio
history = []
for epoch in range(1, EPOCHS + 1):
    beta = iopvae.warmup_beta(epoch, WARMUP)
    with iopvae.frozen(iop.density_ratio):
        for idx in iopvae.minibatches(N, K, rng):
            for model, opt in ((vae, vae_opt), (iop, iop_opt)):
                loss = model.loss(ag.Tensor(train_x[idx]), rng, beta)   # -Eq. (3), -Eq. (19)
                opt.zero_grad()
                loss.backward()
                opt.step()
    with iopvae.frozen(iop.encoder, iop.decoder):
        for _ in range(J2):
            for idx in iopvae.minibatches(N, K, rng):
                z0 = iopvae.standard_normal(rng, (len(idx), LATENT))
                z1 = iop.aggregated_posterior_sample(ag.Tensor(train_x[idx]), rng)
                T_loss = iopvae.density_ratio_loss_on(iop.density_ratio, z1, z0)   # -Eq. (20)
                T_opt.zero_grad()
                T_loss.backward()
                T_opt.step()
    components = iopvae.aggregated_posterior_components(iop, train_x)
    pick = rng.integers(0, N, SAMPLES)
    z1 = iopvae.reparameterize(ag.Tensor(components[0][pick]), ag.Tensor(components[1][pick]),
                               iopvae.standard_normal(rng, (SAMPLES, LATENT)))
    with iopvae.evaluation(iop):
        mean_T = float(iop.density_ratio(z1).data.mean())
    log_ratio = (iopvae.log_aggregated_posterior(z1.data, components)
                 - iopvae.log_standard_normal(ag.Tensor(z1.data.astype(np.float64))).data)
    row = (epoch, float(iopvae.elbo(vae, valid_x, rng)), float(iopvae.elbo(iop, valid_x, rng)),
           float(T_loss.data), mean_T, float(log_ratio.mean()))
    history.append(row)
    print("epoch {:3d}  valid ELBO: VAE {:.2f}  IOP {:.2f} (estimated)  T loss {:.1e}  "
          "E_q[T] {:.2f}  exact E_q[ln q/N] {:.2f}".format(*row))

# %% What a learner should check: T separates q(z) from N(0, I), far from the exact ratio
epochs, vae_elbo, iop_elbo, T_losses, mean_T, exact = np.array(history).T
check("T's highest loss over the epochs", T_losses.max(), 0.1, 0, "T tells q(z) from N(0, I) "
      "almost without error from the first epoch (ln 4 = 1.39: no better than chance)",
      side="<", skip=args.quick)
check("E_q[T] / exact E_q[ln q/N], last epoch", mean_T[-1] / exact[-1], 0.4, 0.15, "the "
      "logistic loss no longer pins T's size: T stands for a fraction of the ratio",
      fmt=".2f", skip=args.quick)
check("VAE's validation ELBO, last epoch", vae_elbo[-1], 690, 70, "20 epochs are far from the "
      "paper's 1,000, and the ELBO still jumps from epoch to epoch", fmt=".1f", skip=args.quick)
report("IOP's estimated validation ELBO, last epoch", iop_elbo[-1], ".1f")
report("T's lowest loss over the epochs", T_losses.min(), ".1e")
for name, values in (("E_q[T]", mean_T), ("exact E_q[ln q/N]", exact)):
    report(f"{name}, lowest over the epochs", values.min(), ".2f")
    report(f"{name}, highest over the epochs", values.max(), ".2f")

# %% The figure: the ELBOs per epoch, and E_q[T] against the exact mean log-ratio
fig = Figure(figsize=(12, 3.8))
a, b, c = fig.subplots(1, 3)
a.plot(epochs, vae_elbo, "o-", label="VAE")
a.plot(epochs, iop_elbo, "o-", label="IOP (estimated)")
a.set(xlabel="epoch", title="validation ELBO")
a.legend(fontsize=8)
b.semilogy(epochs, T_losses, "o-")
b.axhline(np.log(4), ls="--", c="k", lw=1, label="ln 4: T = 0")
b.set(xlabel="epoch", title="T's loss, -Eq. (20)")
b.legend(fontsize=8)
c.plot(epochs, mean_T, "o-", label="E_q[T]")
c.plot(epochs, exact, "o-", label="exact E_q[ln q/N], Eq. (8)")
c.set(xlabel="epoch", title="what Eq. (15) subtracts")
c.legend(fontsize=8)
fig.suptitle(f"Step 5: FreyFaces, z in {LATENT} dimensions, hidden {HIDDEN}", y=1.03)
os.makedirs(args.out, exist_ok=True)
path = os.path.join(args.out, "step5_images.png")
atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=110, bbox_inches="tight"))
print(f"wrote {path}")
summary()

# %% [markdown]
# ## Exercises (answers: docs/exercises.md)
# 1. Why is the exact E_q[ln q(z)/N(z)] so large in 40 dimensions? (Each q(z|x_n) is narrow;
#    ln q(z) at a sample is at least ln q(z|x_n)/N, its own component's share.)
# 2. Set `LATENT = 2`: predict, then check, whether T's loss moves away from 0, as on OneHot
#    (steps 3 and 4). What, then, makes T's task easy here?
# 3. Which numbers of this step would you trust to compare the two methods, and which not?
