"""Command line: ``resistclf <command>``. Parsing only; the work is in ``reports/``."""

import argparse
import json

#: MNIST-C's corruptions, as resistclf.datasets.CORRUPTIONS names them (kept here so that
#: parsing imports nothing heavy; a test checks that the two agree).
CORRUPTION_NAMES = ("shot_noise", "impulse_noise", "glass_blur", "motion_blur", "shear",
                    "scale", "rotate", "brightness", "translate", "stripe", "fog", "spatter",
                    "dotted_line", "zigzag", "canny_edges")


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
    _add_cache_argument(bench)
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
    _add_bootstrap_argument(dynamics)
    dynamics.add_argument("--epochs", type=_positive_int, default=10,
                          help="Training epochs (default: 10).")
    dynamics.set_defaults(run="resistclf.reports.dynamics")

    shift = commands.add_parser(
        "shift", help="Failure detection under MNIST-C's corruptions and new-class shift, "
                      "beside the softmax and the minimum-norm attacks FMN and DDN.")
    _add_study_arguments(shift, "shift", 1000,
                         "Test images drawn at random, corrupted by each corruption; as many "
                         "images of the other data set for new-class shift (default: 1000).")
    _add_bootstrap_argument(shift)
    shift.add_argument("--per-image", metavar="CSV",
                       help="Also write every image's raw measurements in every set (set, "
                            "source image, label, prediction, Res_N as measured, max-softmax, "
                            "every competitor's distance and class) to this CSV file.")
    shift.add_argument("--corruptions", nargs="+", metavar="NAME",
                       choices=list(CORRUPTION_NAMES),
                       help="Only these of MNIST-C's corruptions (default: all 15).")
    shift.add_argument("--competitors", nargs="*", metavar="NAME",
                       help="The attack-based competitors, names from "
                            "resistclf.study.COMPETITORS; the flag alone runs none (default: "
                            "resistclf.study.DEFAULT_COMPETITORS: the input-space margin, "
                            "DeepFool, and FMN-L2, FMN-Linf and DDN at Foolbox's 100 steps, "
                            "which take most of the time).")
    own = shift.add_argument_group(
        "your own network", "Without --model, shift trains the reference CNN on the data "
        "set's training images first (20 epochs, about ten minutes on two CPU cores; kept "
        "in --cache for the next run). With it, your network is studied: it must take "
        "images of shape (1, 28, 28) with pixels in [0, 1] and score the ten classes.")
    _add_network_arguments(own, required=False)
    shift.set_defaults(run="resistclf.reports.shift")

    study = commands.add_parser(
        "study", help="The study on your own network and data: a model builder and a state "
                      "dict; an .npz, an image folder or a torchvision dataset.",
        description="Run the study (resistance, every error score, detection, correction and "
                    "top-k, beside the softmax baselines) on your own network and data, and "
                    "write the same report as reproduce.")
    _add_study_command_arguments(study)
    _add_cache_argument(study)
    _add_bootstrap_argument(study)
    study.set_defaults(run="resistclf.reports.study")

    verify = commands.add_parser(
        "verify", help="Recompute every number of a report's results.json from its "
                       "per-image arrays (per_image.npz); exit 1 on any difference.")
    verify.add_argument("folders", nargs="+", metavar="DIR",
                        help="Report folders, such as docs/results/shift-mnist.")
    verify.add_argument("--rewrite", action="store_true",
                        help="Where every number agrees, write report.md and the figures the "
                             "arrays alone can draw again, in the current code's words "
                             "(reproduce, study and shift reports).")
    verify.set_defaults(run="resistclf.reports.verify")

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
    parser.add_argument("--out", help=f"Output folder of the report (default: "
                                      f"results/{command}-DATASET).")
    _add_cache_argument(parser)
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


def _add_study_command_arguments(parser):
    """The arguments of ``resistclf study``, but --cache and --n-resamples."""
    _add_network_arguments(parser.add_argument_group("the network"), required=True)
    data = parser.add_argument_group("the data")
    source = data.add_mutually_exclusive_group(required=True)
    source.add_argument("--data", metavar="PATH",
                        help="An .npz file with float inputs X and labels y, or an image "
                             "folder with one subfolder per class (torchvision ImageFolder), "
                             "read from disk as the study needs it.")
    source.add_argument("--dataset", choices=["MNIST", "FashionMNIST", "CIFAR10", "CIFAR100",
                                              "SVHN", "ImageNet"],
                        help="A torchvision dataset, under --root.")
    data.add_argument("--root", help="The folder that holds --dataset.")
    data.add_argument("--split", help="The split of --dataset (default: test; val for "
                                      "ImageNet).")
    data.add_argument("--download", action="store_true",
                      help="Let torchvision download --dataset if it is missing.")
    data.add_argument("--image-size", type=_positive_int, metavar="N",
                      help="Resize the shorter side of each image to --resize and crop the "
                           "centre NxN (image folders and torchvision datasets).")
    data.add_argument("--resize", type=_positive_int, metavar="M",
                      help="The shorter side before the crop (default: --image-size; 256 "
                           "with --image-size 224 is ImageNet's usual evaluation).")
    data.add_argument("--preprocessing", type=_json_object, metavar="JSON",
                      help='The normalisation the network expects, applied inside it, as '
                           '{"mean": [...], "std": [...], "axis": -3}; the attack moves the '
                           'images before it.')
    data.add_argument("--clip", type=float, nargs=2, metavar=("LOW", "HIGH"),
                      help="The box of valid inputs the attack keeps images in (default: "
                           "none); 0 1 for images in [0, 1].")
    data.add_argument("--limit", type=_positive_int,
                      help="Study only this many samples, drawn at random with --seed.")
    attack = parser.add_argument_group("the study")
    attack.add_argument("--topk", type=int, choices=[1, 2, 5], default=2,
                        help="Top-k lists to score: 1 and 2 attack the prediction (rank 0); "
                             "5 also ranks 1 and 2, three times the cost (default: 2).")
    attack.add_argument("--max-iter", type=_positive_int, default=500,
                        help="Steps of the resistance attack (default: 500).")
    attack.add_argument("--step-size", type=_positive_float, default=0.15,
                        help="Its step size (default: 0.15).")
    attack.add_argument("--fast", action="store_true",
                        help="Attack in the fast mode the benchmark found equivalent to exact "
                             "mode on MNIST (bfloat16, channels last, early exit). No "
                             "benchmark has judged it on your network; the report says so.")
    attack.add_argument("--competitors", nargs="+", metavar="NAME",
                        help="The attack-based competitors, names from "
                             "resistclf.study.COMPETITORS (default: "
                             "resistclf.study.DEFAULT_COMPETITORS).")
    attack.add_argument("--per-image", metavar="CSV",
                        help="Also write every sample's raw measurements (labels, prediction, "
                             "Res_N as measured, max-softmax, every competitor's distance and "
                             "class) to this CSV file.")
    attack.add_argument("--device", help="cpu or cuda (default: cpu).")
    attack.add_argument("--batch-size", type=_positive_int, default=256,
                        help="Samples per batch (default: 256).")
    attack.add_argument("--n-jobs", type=_positive_int, default=None,
                        help="Split the attack into jobs run by this many joblib workers.")
    attack.add_argument("--scheduler", metavar="ADDRESS",
                        help="Run the attack's jobs on the dask scheduler at this address "
                             "(needs the extra resistclf[distributed]).")
    attack.add_argument("--seed", type=int, default=0,
                        help="Seeds --limit, the folds and the bootstrap (default: 0).")
    parser.add_argument("--out", help="Output folder of the report (default: results/study).")
    parser.add_argument("--quiet", action="store_true", help="Hide progress.")


def _add_network_arguments(net, required):
    """--model, --model-arg, --weights and --net-output: a user's own network."""
    net.add_argument("--model", required=required, metavar="MODULE:CALLABLE",
                     help="The callable that builds the network, as package.module:function "
                          "(for example torchvision.models:resnet18); imported from the "
                          "installed packages or the current folder.")
    net.add_argument("--model-arg", action="append", type=_model_arg, metavar="KEY=VALUE",
                     help="A keyword argument of the callable, VALUE read as JSON, else as a "
                          "string (for example num_classes=10); repeat for more.")
    net.add_argument("--weights", metavar="PATH",
                     help="A state dict saved with torch.save, or a checkpoint dict holding "
                          "one under 'state_dict' or 'model'; read with "
                          "torch.load(weights_only=True), never unpickled. Without it, the "
                          "network keeps the weights its callable gave it.")
    net.add_argument("--net-output", choices=["logits", "proba"], default="logits",
                     help="What the network returns (default: logits).")


def _add_cache_argument(parser):
    parser.add_argument("--cache", metavar="DIR",
                        help="Folder where trained nets and every per-image result are kept, "
                             "keyed by their content, so that a rerun, or another command on "
                             "the same images, reuses them and an interrupted run resumes "
                             "(default: OUT/cache). Commands may share one.")


def _add_bootstrap_argument(parser):
    parser.add_argument("--n-resamples", type=_positive_int, default=1000,
                        help="Bootstrap resamples for the 95%% intervals (default: 1000).")


def _positive_int(text):
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer; got {text}")
    return value


def _positive_float(text):
    value = float(text)
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number; got {text}")
    return value


def _model_arg(text):
    """``KEY=VALUE``, VALUE read as JSON, else kept as a string."""
    key, equals, value = text.partition("=")
    if not equals or not key.isidentifier():
        raise argparse.ArgumentTypeError(f"takes KEY=VALUE; got {text!r}")
    try:
        return key, json.loads(value)
    except ValueError:
        return key, value


def _json_object(text):
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"must be a JSON object; got {text!r} ({exc})")
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"must be a JSON object; got {text!r}")
    return value


def main(argv=None):
    """Parse ``argv`` and run the chosen command."""
    from importlib import import_module

    parser = build_parser()
    args = parser.parse_args(argv)
    _check_paths(parser, args)
    import_module(args.run).main(args)


def _check_paths(parser, args):
    """Fail before any work, with the command line's error, on a folder that cannot serve:
    an --out that is a file or cannot be created, a --root that does not exist."""
    import os
    from pathlib import Path

    out = getattr(args, "out", None)
    if out is not None:
        if Path(out).exists() and not Path(out).is_dir():
            parser.error(f"--out {out} exists and is not a folder; the report needs a folder.")
        existing = Path(os.path.abspath(out))
        while not existing.exists():
            existing = existing.parent
        if not existing.is_dir() or not os.access(existing, os.W_OK):
            parser.error(f"--out {out} cannot be created: {existing} is "
                         f"{'a file' if not existing.is_dir() else 'not writable'}.")
    root = getattr(args, "root", None)
    if root is not None and not getattr(args, "download", False) and not Path(root).is_dir():
        parser.error(f"--root {root} is not a folder: it must hold the data set's files "
                     "(give --download to let torchvision fetch them).")


if __name__ == "__main__":
    main()
