"""The implicit optimal prior on OneHot, in one loop: the first file to run.

    python examples/onehot_iop.py [--epochs 100] [--method iop|vae] [--out out/example]

Algorithm 1 of the paper with nothing around it: each epoch, one pass of the
VAE over the data on Eq. (19) with T fixed, then ten passes of T on Eq. (20)
with the VAE fixed.  ``--method vae`` trains the standard VAE (prior N(0, I),
no T) in the same loop, for contrast.  The default 100 epochs take about
2 minutes of one CPU core (3 minutes on a busy 2-core machine); ``--method vae``
about 20 seconds.

Every 5 epochs it prints the validation ELBO next to the optimum -ln 4 =
-1.386 (the log-likelihood of four equally likely vectors; no ELBO can pass
it) and the test log p(x) (Monte Carlo over the model's prior).  For IOP the
ELBO is an *estimate*, because T(z) stands in for ln q(z)/N(z); beside it
come the exact ELBO with the true prior, the aggregated posterior of the
training set (on OneHot an exact mixture), and T's own loss (ln 4 = 1.386 for
a T that cannot tell q(z) from N(0, I); lower is better).  Finally it draws
samples of q(z|x) for the test points, as in Figure 1, into a PNG.
"""
import argparse
import math
import os
import sys
import time

from matplotlib.figure import Figure  # drawing into a PNG needs no GUI (pyplot)

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import autograd_lite as ag  # noqa: E402
import datasets  # noqa: E402
import estimators  # noqa: E402
import iopvae  # noqa: E402
from autograd_lite.files import save_png  # noqa: E402
from autograd_lite.optim import Adam  # noqa: E402

parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
parser.add_argument("--epochs", type=int, default=100, help="rounds (paper: 1000)")
parser.add_argument("--method", choices=["iop", "vae"], default="iop",
                    help="iop (the paper's method) or vae (standard prior N(0, I), for contrast)")
parser.add_argument("--out", default=os.path.join("out", "example"), help="folder of the PNG")
parser.add_argument("--hidden", type=int, default=500, help="units per hidden layer")
args = parser.parse_args()
try:
    ag.backend_name()  # reads AUTOGRAD_LITE_BACKEND
except ag.BackendError as exc:
    sys.exit(f"error: {exc}")

OPTIMUM = -math.log(4)
data = datasets.load("onehot")  # 1,000 points, each one of the 4 one-hot vectors in R^4
train_x, valid_x, test_x = (ag.as_array(x) for x in (data.train, data.valid, data.test))
rng = ag.default_rng(0)
model = iopvae.METHODS[args.method](data.dim, "bernoulli", latent=2, hidden=args.hidden, rng=rng)
vae_opt = Adam(model.vae_parameters(), lr=1e-3)               # theta, phi
if model.has_density_ratio:
    t_opt = Adam(model.density_ratio_parameters(), lr=1e-3)   # psi
n, K, warmup = train_x.shape[0], 100, max(1, args.epochs // 10)
started = time.time()

for epoch in range(1, args.epochs + 1):                       # 1: while not converged
    beta = iopvae.warmup_beta(epoch, warmup)                  # KL warm-up
    model.train()
    with iopvae.frozen(model.density_ratio):                  # 2-6: psi fixed
        for idx in iopvae.minibatches(n, K, rng):
            loss = model.loss(ag.Tensor(train_x[idx]), rng, beta)   # -Eq. (19)
            vae_opt.zero_grad()
            loss.backward()
            vae_opt.step()
    if model.has_density_ratio:
        with iopvae.frozen(model.encoder, model.decoder):     # 7-12: theta, phi fixed
            for _ in range(10):
                t_losses = []
                for idx in iopvae.minibatches(n, K, rng):
                    x = ag.Tensor(train_x[idx])
                    z1 = model.aggregated_posterior_sample(x, rng)   # 9: z1 ~ q(z)
                    z0 = iopvae.standard_normal(rng, z1.shape)      # 8: z0 ~ N(0, I)
                    loss = model.density_ratio_loss(z1, z0, x)      # -Eq. (20)
                    t_opt.zero_grad()
                    loss.backward()
                    t_opt.step()
                    t_losses.append(float(loss.data))
    if epoch % max(1, args.epochs // 20) == 0 or epoch == args.epochs:
        elbo = float(iopvae.elbo(model, valid_x, rng, samples=10))
        log_px = float(estimators.prior_log_likelihood(model, test_x, 2000, rng,
                                                       data=train_x).mean())
        line = f"epoch {epoch:4d} | beta {beta:.2f} | valid ELBO {elbo:.4f}"
        if model.has_density_ratio:
            components = iopvae.aggregated_posterior_components(model, train_x)
            exact = float(estimators.exact_aggregated_elbo(model, valid_x, components, 10, rng))
            line += (f" (estimated) | exact ELBO {exact:.4f} | T loss "
                     f"{sum(t_losses) / len(t_losses):.4f}")
        print(f"{line} | optimum {OPTIMUM:.4f} | test log p(x) {log_px:.4f}", flush=True)

print(f"{args.epochs} epochs in {time.time() - started:.0f}s")
if model.has_density_ratio:
    print("The estimated ELBO uses T(z) where the exact one uses ln q(z)/N(z): it can sit above "
          "-ln 4, where no true ELBO can, by T's error, E[T(z) - ln q(z)/N(z)] over z ~ q(z|x).")

with iopvae.evaluation(model):                                # Figure 1
    z = ag.to_numpy(model.posterior_sample(ag.Tensor(test_x), rng).data)
fig = Figure(figsize=(4.5, 4.5))
ax = fig.subplots()
for k in range(4):
    which = data.test.argmax(axis=1) == k
    ax.scatter(z[which, 0], z[which, 1], s=3, alpha=0.5, label=f"x = e{k + 1}")
title = {"iop": "implicit optimal prior", "vae": "standard VAE"}[args.method]
ax.set(xlabel="z1", ylabel="z2", title=f"samples of q(z|x), {title}")
ax.legend(markerscale=4, fontsize=8)
os.makedirs(args.out, exist_ok=True)
path = os.path.join(args.out, f"posterior-{args.method}.png")
save_png(fig, path, dpi=110, bbox_inches="tight")
print(f"wrote {path}")
