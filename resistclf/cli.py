"""Command line: ``resistclf <command>``. Parsing only; the work is in ``reports/``."""

import argparse


def build_parser():
    parser = argparse.ArgumentParser(
        prog="resistclf",
        description="Detect and correct a network's mistakes by how hard they are to attack.",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    demo = commands.add_parser(
        "demo", help="Run the study on scikit-learn's bundled digits; needs no download."
    )
    demo.add_argument("--seed", type=int, default=0, help="Random seed (default: 0).")
    demo.add_argument("--max-iter", type=_positive_int, default=500,
                      help="Attack steps (default: 500).")
    demo.add_argument("--json", metavar="PATH", help="Also write the results as JSON here.")
    demo.add_argument("--quiet", action="store_true", help="Hide progress bars.")
    demo.set_defaults(run="resistclf.reports.demo")

    reproduce = commands.add_parser(
        "reproduce",
        help="Reproduce the write-up on MNIST or FashionMNIST, each claim beside its baseline.",
    )
    _add_study_arguments(reproduce, "reproduce", None,
                         "Attack only this many test images, drawn at random.")
    _add_bootstrap_argument(reproduce)
    reproduce.set_defaults(run="resistclf.reports.reproduce")

    bench = commands.add_parser(
        "bench", help="Measure the attack's speed against the hardware peak and the peer "
                      "libraries, and judge its fast modes by the study's conclusions.")
    bench.add_argument("--root", help="Folder with the MNIST and FashionMNIST raw files: use the "
                                      "trained reference CNNs and judge every mode on the whole "
                                      "test sets. Without it, random weights and throughput "
                                      "only.")
    bench.add_argument("--out", default="results/bench",
                       help="Output folder for bench.json, bench.md and cached runs "
                            "(default: results/bench).")
    bench.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu).")
    bench.add_argument("--steps", type=_positive_int, default=20,
                       help="Attack steps per throughput timing (default: 20).")
    bench.add_argument("--batch-sizes", type=_positive_int, nargs="+",
                       default=[32, 64, 128, 256, 512],
                       help="Batch sizes to time (default: 32 64 128 256 512).")
    bench.add_argument("--datasets", nargs="+", choices=["mnist", "fashion-mnist"],
                       default=["mnist", "fashion-mnist"],
                       help="With --root: the test sets on which the fast modes are judged "
                            "(default: both).")
    bench.add_argument("--max-iter", type=_positive_int, default=500,
                       help="With --root: steps of the whole-test-set attacks (default: 500).")
    _add_bootstrap_argument(bench)
    bench.add_argument("--quiet", action="store_true", help="Hide progress.")
    bench.set_defaults(run="resistclf.reports.bench")

    adversarial = commands.add_parser(
        "adversarial",
        help="Detect adversarial examples (FGSM, PGD, CW, high-confidence PGD) by resistance; "
             "needs the extra resistclf[adversarial].",
    )
    _add_study_arguments(adversarial, "adversarial", 1000,
                         "Craft adversarial examples from this many correctly classified test "
                         "images, drawn at random (default: 1000).")
    _add_bootstrap_argument(adversarial)
    adversarial.set_defaults(run="resistclf.reports.adversarial")

    dynamics = commands.add_parser(
        "dynamics", help="Train the reference CNN and track resistance after every epoch.")
    _add_study_arguments(dynamics, "dynamics", 300,
                         "Size of the fixed validation subset of test images (default: 300).")
    dynamics.add_argument("--epochs", type=_positive_int, default=10,
                          help="Training epochs (default: 10).")
    dynamics.set_defaults(run="resistclf.reports.dynamics")

    compare = commands.add_parser(
        "compare", help="Compare trained networks (CNN, MLP, CNN on a quarter of the data) "
                        "on the same test images.")
    _add_study_arguments(compare, "compare", 1000,
                         "Evaluate on this many test images, drawn at random (default: 1000).")
    _add_bootstrap_argument(compare)
    compare.set_defaults(run="resistclf.reports.compare")
    return parser


def _add_study_arguments(parser, command, limit, limit_help):
    """The arguments every study command on MNIST or FashionMNIST takes."""
    parser.add_argument("--dataset", required=True, choices=["mnist", "fashion-mnist"])
    parser.add_argument("--root", required=True,
                        help="Folder with the torchvision raw files (MNIST/raw, ...).")
    parser.add_argument("--download", action="store_true",
                        help="Let torchvision download missing files.")
    parser.add_argument("--out", help=f"Output folder (default: results/{command}-DATASET). "
                                      "Trained nets and attack results are cached there.")
    parser.add_argument("--seed", type=int, default=0, help="Random seed (default: 0).")
    parser.add_argument("--limit", type=_positive_int, default=limit, help=limit_help)
    parser.add_argument("--max-iter", type=_positive_int, default=500,
                        help="Steps of the resistance attack (default: 500).")
    parser.add_argument("--fast", action="store_true",
                        help="Attack in the fastest mode the benchmark found to reach exact "
                             "mode's conclusions (default: exact mode).")
    parser.add_argument("--n-jobs", type=_positive_int, default=None,
                        help="Split the attack into jobs run by this many joblib workers.")
    parser.add_argument("--scheduler", metavar="ADDRESS",
                        help="Run the attack's jobs on the dask scheduler at this address "
                             "(needs the extra resistclf[distributed]).")
    parser.add_argument("--quiet", action="store_true", help="Hide progress.")


def _add_bootstrap_argument(parser):
    parser.add_argument("--n-resamples", type=_positive_int, default=1000,
                        help="Bootstrap resamples for the 95%% intervals (default: 1000).")


def _positive_int(text):
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer; got {text}")
    return value


def main(argv=None):
    """Parse ``argv`` and run the chosen command."""
    from importlib import import_module

    args = build_parser().parse_args(argv)
    import_module(args.run).main(args)


if __name__ == "__main__":
    main()
