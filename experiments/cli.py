"""The command line of iopvae: one parser for every command.

    iopvae train --dataset onehot --method iop --out runs/onehot-iop [--resume]
    iopvae evaluate runs/onehot-iop --samples 5000
    iopvae sample runs/onehot-iop [--sir]
    iopvae table2 --datasets freyfaces --seeds 0 1 2 --jobs 2
    iopvae gradcheck --method all

``iopvae`` is the console script that ``pip install -e .`` declares; ``python -m
experiments ...`` is the same command line from a source tree.  This is the top floor:
it imports the modules below it and none imports it back, so imports run one way,
cli -> commands, gradcheck -> run_commands -> checkpoints -> runs -> estimators -> iopvae
-> datasets -> autograd_lite.  The commands live where their work is: train, evaluate and
sample in run_commands.py; table2, select, curves, figure3, readme and run in
commands.py; gradcheck in gradcheck/check.py.
"""
import sys

import autograd_lite as ag
import datasets
import iopvae
from experiments import checkpoints, run_commands, runs
from experiments import commands as experiment_commands
from experiments.gradcheck import check as check_gradients


def build_parser():
    parser = runs.ArgumentParser(prog="iopvae", description=iopvae.__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="train one method on one data set (Algorithm 1)")
    runs.add_config_options(train, required=("dataset", "method"))
    train.add_argument("--out", default="",
                       help="run folder for checkpoints (default: runs/DATASET-METHOD-seedSEED)")
    train.add_argument("--resume", action="store_true",
                       help="continue the run in --out with its own configuration (--epochs "
                            "sets a new end)")
    train.add_argument("--samples", type=int, default=10,
                       help="importance samples for the final test log-likelihood (default: 10)")
    train.set_defaults(run=run_commands.command_train)

    evaluate = sub.add_parser("evaluate", help="test ELBO and importance-sampled log-likelihood")
    evaluate.add_argument("checkpoint", help="a run folder or its checkpoint.npz")
    evaluate.add_argument("--samples", type=int, default=10,
                          help="importance samples per point (default: 10)")
    evaluate.add_argument("--split", choices=["train", "valid", "test"], default="test",
                          help="which split to score (default: test)")
    evaluate.add_argument("--seed", type=int, default=0, help="seed of the sampling noise")
    evaluate.add_argument("--data-dir", default="", help="data folder (default: the run's)")
    evaluate.set_defaults(run=run_commands.command_evaluate)

    sample = sub.add_parser("sample", help="decode samples from the model's prior into a PNG")
    sample.add_argument("checkpoint", help="a run folder or its checkpoint.npz")
    sample.add_argument("--n", type=int, default=64, help="number of samples (default: 64)")
    sample.add_argument("--seed", type=int, default=0, help="seed of the sampling noise")
    sample.add_argument("--sir", action="store_true",
                        help="IOP: sampling-importance-resampling from N(0, I) with exp(T(z))")
    sample.add_argument("--out", default="",
                        help="PNG file (default: RUN/samples.png, with --sir RUN/samples_sir.png)")
    sample.add_argument("--data-dir", default="",
                        help="data folder, for IOP's ancestral sampling (default: the run's)")
    sample.set_defaults(run=run_commands.command_sample)

    experiment_commands.add_commands(sub)

    gradcheck = sub.add_parser("gradcheck", help="every gradient against finite differences "
                               "and PyTorch, in float64 (experiments/gradcheck)")
    check_gradients.add_options(gradcheck)
    return parser


def main(argv=None):
    return run_command_line(build_parser(), argv)


def run_command_line(parser, argv=None):
    """Parse ``argv`` and run its command: its exit status, or 2 with one line for an error."""
    for stream in (sys.stdout, sys.stderr):  # PYTHONIOENCODING=ascii: "±" as "\xb1"
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")
    args = parser.parse_args(argv)
    try:
        status = args.run(args)
    except (ValueError, OSError, checkpoints.CheckpointError, runs.TrainingDiverged,
            ag.BackendError, datasets.DataError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except MemoryError as exc:
        print(f"error: not enough memory ({exc or 'an array too large'}); the sizes come from "
              "--hidden, --latent, --components, --noise-dim, --batch-size, --samples and --n",
              file=sys.stderr)
        return 2
    except (runs.Interrupted, KeyboardInterrupt) as exc:
        print(str(exc) or "interrupted", file=sys.stderr)
        return 130
    return status if isinstance(status, int) else 0
