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
    reproduce.add_argument("--dataset", required=True, choices=["mnist", "fashion-mnist"])
    reproduce.add_argument("--root", required=True,
                           help="Folder with the torchvision raw files (MNIST/raw, ...).")
    reproduce.add_argument("--download", action="store_true",
                           help="Let torchvision download missing files.")
    reproduce.add_argument("--out", help="Output folder (default: results/reproduce-DATASET). "
                                         "The trained net and attack results are cached there.")
    reproduce.add_argument("--seed", type=int, default=0, help="Random seed (default: 0).")
    reproduce.add_argument("--limit", type=_positive_int,
                           help="Attack only this many test images, drawn at random.")
    reproduce.add_argument("--max-iter", type=_positive_int, default=500,
                           help="Attack steps (default: 500).")
    reproduce.add_argument("--quiet", action="store_true", help="Hide progress.")
    reproduce.set_defaults(run="resistclf.reports.reproduce")

    bench = commands.add_parser(
        "bench", help="Measure the attack's speed against the hardware peak and alternatives.")
    bench.add_argument("--root", help="Folder with MNIST's raw files: use the trained reference "
                                      "CNN and time the whole test set in every mode. Without "
                                      "it, random weights and throughput only.")
    bench.add_argument("--out", default="results/bench",
                       help="Output folder for bench.json, bench.md and cached runs "
                            "(default: results/bench).")
    bench.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu).")
    bench.add_argument("--steps", type=_positive_int, default=20,
                       help="Attack steps per throughput timing (default: 20).")
    bench.add_argument("--batch-sizes", type=_positive_int, nargs="+",
                       default=[32, 64, 128, 256, 512],
                       help="Batch sizes to time (default: 32 64 128 256 512).")
    bench.add_argument("--quiet", action="store_true", help="Hide progress.")
    bench.set_defaults(run="resistclf.reports.bench")
    return parser


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
