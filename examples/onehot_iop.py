"""The implicit optimal prior on OneHot, in one loop: the first file to run.

    python examples/onehot_iop.py [--epochs 100] [--out out/example]

Algorithm 1 of the paper with nothing around it: each epoch, one pass of the
VAE over the data on Eq. (19) with T fixed, then ten passes of T on Eq. (20)
with the VAE fixed.  It prints the (estimated) validation ELBO and the test
log p(x) under the aggregated posterior (optimum -ln 4 = -1.386), then draws
samples of q(z|x) for the test points, as in Figure 1 (d), into a PNG.
"""
import argparse
import os
import sys

from matplotlib.figure import Figure  # drawing into a PNG needs no GUI (pyplot)

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import autograd_lite as ag  # noqa: E402
import datasets  # noqa: E402
import iopvae  # noqa: E402
from autograd_lite.optim import Adam  # noqa: E402

parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
parser.add_argument("--epochs", type=int, default=100, help="rounds (paper: 1000)")
parser.add_argument("--out", default=os.path.join("out", "example"), help="folder of the PNG")
parser.add_argument("--hidden", type=int, default=500, help="units per hidden layer")
args = parser.parse_args()
try:
    ag.backend_name()  # reads AUTOGRAD_LITE_BACKEND
except ag.BackendError as exc:
    sys.exit(f"error: {exc}")

data = datasets.load("onehot")  # 1,000 points, each one of the 4 one-hot vectors in R^4
train_x, valid_x, test_x = (ag.as_array(x) for x in (data.train, data.valid, data.test))
rng = ag.default_rng(0)
model = iopvae.ImplicitOptimalPrior(data.dim, "bernoulli", latent=2, hidden=args.hidden, rng=rng)
vae_opt = Adam(model.vae_parameters(), lr=1e-3)              # theta, phi
t_opt = Adam(model.discriminator_parameters(), lr=1e-3)       # psi
n, K, warmup = train_x.shape[0], 100, max(1, args.epochs // 10)

for epoch in range(1, args.epochs + 1):                       # 1: while not converged
    beta = iopvae.warmup_beta(epoch, warmup)                  # KL warm-up
    model.train()
    with iopvae.frozen(model.density_ratio):                  # 2-6: psi fixed
        for idx in iopvae.minibatches(n, K, rng):
            loss = model.loss(ag.Tensor(train_x[idx]), rng, beta)   # -Eq. (19)
            vae_opt.zero_grad()
            loss.backward()
            vae_opt.step()
    with iopvae.frozen(model.encoder, model.decoder):         # 7-12: theta, phi fixed
        for _ in range(10):
            for idx in iopvae.minibatches(n, K, rng):
                loss = model.discriminator_loss(ag.Tensor(train_x[idx]), rng)  # -Eq. (20)
                t_opt.zero_grad()
                loss.backward()
                t_opt.step()
    if epoch % max(1, args.epochs // 20) == 0 or epoch == args.epochs:
        elbo = float(iopvae.elbo(model, valid_x, rng))
        log_px = float(iopvae.prior_log_likelihood(model, test_x, 2000, rng, data=train_x).mean())
        print(f"epoch {epoch:4d} | beta {beta:.2f} | valid ELBO {elbo:.4f} (estimated) | "
              f"test log p(x) {log_px:.4f}", flush=True)

with iopvae.evaluation(model):                                # Figure 1 (d)
    z = ag.to_numpy(model.posterior_sample(ag.Tensor(test_x), rng).data)
fig = Figure(figsize=(4.5, 4.5))
ax = fig.subplots()
for k in range(4):
    which = data.test.argmax(axis=1) == k
    ax.scatter(z[which, 0], z[which, 1], s=3, alpha=0.5, label=f"x = e{k + 1}")
ax.set(xlabel="z1", ylabel="z2", title="samples of q(z|x), implicit optimal prior")
ax.legend(markerscale=4, fontsize=8)
os.makedirs(args.out, exist_ok=True)
fig.savefig(os.path.join(args.out, "posterior.png"), dpi=110, bbox_inches="tight")
print(f"wrote {os.path.join(args.out, 'posterior.png')}")
