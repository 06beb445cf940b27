"""The study engine (resistclf.study) and the store behind it (ResultStore)."""

import json
from functools import partial

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
from sklearn.base import clone
from sklearn.frozen import FrozenEstimator
from sklearn.model_selection import StratifiedKFold

from resistclf import AttackCache, ResistanceAttack, ResistanceClassifier, ResultStore, \
    make_detector
from resistclf.metrics import auroc, detection_metrics
from resistclf.scores import SOFTMAX_SCORES, input_margin, softmax_scores
from resistclf.study import COMPETITORS, ERRORS_SHOWN, Measurements, analyse, measure, \
    run_study

ATTACK = ResistanceAttack(max_iter=30, batch_size=32)
CHEAP = ("input-space margin", "DeepFool")


@pytest.fixture(scope="module")
def sample(trained_cnn, digits):
    """100 test digits and every test digit the net gets wrong (about 20), in order."""
    _, _, X, y = digits
    wrong = np.flatnonzero(trained_cnn.predict(X) != y)
    keep = np.union1d(np.arange(100), wrong)
    return X[keep], y[keep]


@pytest.fixture(scope="module")
def measured(trained_cnn, sample):
    X, y = sample
    return measure(trained_cnn, X, y, attack=ATTACK, ranks=3, competitors=CHEAP)


def counting(values):
    """A compute for ResultStore.rows that records the rows it is given."""
    seen = []

    def compute(rows):
        block = rows[:]
        seen.append(len(block))
        return {name: f(block) for name, f in values.items()}

    return compute, seen


def test_result_store_computes_each_row_once_and_keeps_the_order(tmp_path):
    store = ResultStore(tmp_path)
    X = np.random.RandomState(0).rand(10, 3).astype(np.float32)
    compute, seen = counting({"sum": lambda b: b.sum(1)})
    first = store.rows("sums", {"v": 1}, X[:6], compute, chunk_size=4)
    assert seen == [4, 2]
    again = store.rows("sums", {"v": 1}, np.concatenate([X[8:], X[::-1]]), compute,
                       chunk_size=4)
    assert seen == [4, 2, 4], "only the 4 rows not seen before, once each"
    np.testing.assert_allclose(again["sum"], np.r_[X[8:], X[::-1]].sum(1), rtol=1e-6)
    np.testing.assert_array_equal(again["sum"][-6:][::-1], first["sum"])
    assert (again["seconds"] >= 0).all() and len(again["seconds"]) == 12


def test_result_store_keys_rows_on_settings_and_bytes(tmp_path):
    store = ResultStore(tmp_path)
    X = np.random.RandomState(1).rand(4, 3).astype(np.float32)
    compute, seen = counting({"sum": lambda b: b.sum(1)})
    store.rows("sums", {"v": 1}, X, compute)
    store.rows("sums", {"v": 2}, X, compute)
    store.rows("sums", {"v": 1}, X.astype(np.float64), compute)  # the same float32 rows
    changed = X.copy()
    changed[0, 0] += 1e-3
    store.rows("sums", {"v": 1}, changed, compute)
    assert seen == [4, 4, 1]


def test_result_store_resumes_an_interrupted_computation(tmp_path):
    X = np.random.RandomState(2).rand(10, 3).astype(np.float32)
    calls = []

    def interrupted(rows):
        calls.append(len(rows))
        if len(calls) == 2:
            raise KeyboardInterrupt
        return {"sum": rows[:].sum(1)}

    with pytest.raises(KeyboardInterrupt):
        ResultStore(tmp_path).rows("sums", "s", X, interrupted, chunk_size=4)
    compute, seen = counting({"sum": lambda b: b.sum(1)})
    resumed = ResultStore(tmp_path).rows("sums", "s", X, compute, chunk_size=4)
    assert seen == [4, 2], "a new store on the folder computes what was not finished"
    np.testing.assert_allclose(resumed["sum"], X.sum(1), rtol=1e-6)


def test_result_store_keeps_whole_values_by_content(tmp_path):
    store = ResultStore(tmp_path)
    data = np.arange(6.0)
    calls = []

    def compute():
        calls.append(1)
        return {"doubled": 2 * data}

    for _ in range(2):
        np.testing.assert_array_equal(store.arrays("double", {"data": data}, compute)["doubled"],
                                      2 * data)
    assert store.json("info", {"data": data}, lambda: {"n": 6}) == {"n": 6}
    assert ResultStore(tmp_path).json("info", {"data": data}, lambda: {"n": -1}) == {"n": 6}
    state = {"w": torch.ones(2, dtype=torch.bfloat16)}
    assert torch.equal(ResultStore(tmp_path).tensors("net", "s", lambda: state)["w"],
                       state["w"])
    assert calls == [1]
    store.arrays("double", {"data": data + 1e-12}, compute)
    assert calls == [1, 1], "other content, another key"


def test_result_store_in_memory_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    store = ResultStore(None)
    compute, seen = counting({"sum": lambda b: b.sum(1)})
    X = np.ones((3, 2), dtype=np.float32)
    store.rows("sums", "s", X, compute)
    store.rows("sums", "s", X, compute)
    assert store.json("info", "s", lambda: [1]) == [1] == store.json("info", "s", lambda: [2])
    assert seen == [1] and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("a, b", [
    (np.zeros(3, np.float32), np.zeros(3, np.float64)),
    (np.zeros((2, 3)), np.zeros((3, 2))),
    ({"a": 1, "b": 2}, {"a": 1, "b": 3}),
    ((1, 2), [1, 2]),
    ("1", 1),
    (torch.nn.Linear(2, 2, bias=False), torch.nn.Linear(2, 2, bias=True)),
], ids=["dtype", "shape", "dict", "tuple-list", "str-int", "module"])
def test_result_store_key_tells_contents_apart(a, b):
    assert ResultStore.key(a) != ResultStore.key(b)
    assert ResultStore.key(a) == ResultStore.key(a)


def test_result_store_key_is_the_same_for_equal_content_and_order_of_dicts():
    assert ResultStore.key({"a": np.arange(3), "b": 1}) == ResultStore.key(
        {"b": 1, "a": np.arange(3).copy()})


@pytest.mark.parametrize("call, match", [
    (lambda s: ResultStore.key(object()), "cannot key on a object"),
    (lambda s: ResultStore.key(np.array([{}], dtype=object)), "cannot key on an array of "
                                                               "dtype object"),
    (lambda s: s.rows("x", "s", np.ones((2, 2)), lambda r: {}, chunk_size=0),
     "chunk_size must be a positive integer"),
    (lambda s: s.rows("x", "s", np.ones((2, 2)), lambda r: {"keys": np.ones(len(r))}),
     "a column cannot be named 'keys'"),
], ids=["object", "object-array", "chunk-size", "reserved-column"])
def test_result_store_rejects_bad_arguments(tmp_path, call, match):
    with pytest.raises((TypeError, ValueError), match=match):
        call(ResultStore(tmp_path))


def test_measure_gives_what_each_method_gives_alone(measured, trained_cnn, sample):
    X, y = sample
    module = trained_cnn.module_
    logits = trained_cnn.forward(X, training=False).numpy()
    np.testing.assert_allclose(measured.logits, logits, rtol=1e-5, atol=1e-5)
    fresh = ATTACK(module, torch.from_numpy(X), rank=1)
    np.testing.assert_array_equal(measured.attacks[1].res_n, fresh.res_n)
    np.testing.assert_array_equal(measured.distances["input-space margin"],
                                  input_margin(module, X))
    np.testing.assert_array_equal(measured.classes[measured.y], y)
    assert measured.cost()["resistance"]["forward"] == 31
    assert measured.cost()["input-space margin"]["backward"] == 9


def test_measure_error_scores_point_to_errors(measured):
    scores = measured.error_scores()
    result = measured.attacks[0]
    np.testing.assert_array_equal(scores["Res_N"], -result.res_n)
    np.testing.assert_array_equal(scores["Res_min"], -result.res_min.astype(float))
    np.testing.assert_array_equal(scores["DeepFool distance"], -measured.distances["DeepFool"])
    for name, score in softmax_scores(measured.logits).items():
        np.testing.assert_array_equal(scores[name], score)
    # Oriented alike: every score ranks the net's errors above its correct predictions
    # (a flipped sign would give 1 - AUROC).
    for name, score in scores.items():
        assert auroc(measured.is_error, score) > 0.6, name


def test_measurements_subset_and_concatenate_round_trip(measured):
    mask = np.arange(len(measured)) % 3 == 0
    joined = Measurements.concatenate([measured[mask], measured[~mask]])
    order = np.r_[np.flatnonzero(mask), np.flatnonzero(~mask)]
    np.testing.assert_array_equal(joined.logits, measured.logits[order])
    np.testing.assert_array_equal(joined.attacks[2].adversarial_class,
                                  measured.attacks[2].adversarial_class[order])
    np.testing.assert_array_equal(joined.seconds["DeepFool"], measured.seconds["DeepFool"][order])
    assert len(measured[:7]) == 7


def test_measure_without_labels_counts_every_prediction_as_a_failure(trained_cnn, digits):
    _, _, X, _ = digits
    new_class = measure(trained_cnn, X[:20], attack=ATTACK, competitors=())
    assert new_class.is_error.all() and (new_class.y == -1).all()
    result = analyse(new_class, n_resamples=10)
    assert result.to_dict()["detection"] is None, "no correct prediction to rank against"
    assert result.to_dict()["accuracy"]["value"] == 0


def test_measure_resumes_from_its_store_and_gives_the_same_numbers(tmp_path, trained_cnn,
                                                                   digits, monkeypatch):
    _, _, X, y = digits
    X, y = X[:70], y[:70]
    attack = ResistanceAttack(max_iter=20, batch_size=32)
    original = ResistanceAttack.__call__
    calls = []

    def interrupted(self, module, X, **kwargs):
        calls.append(len(X))
        if len(calls) == 2:
            raise KeyboardInterrupt
        return original(self, module, X, **kwargs)

    monkeypatch.setattr(ResistanceAttack, "__call__", interrupted)
    with pytest.raises(KeyboardInterrupt):
        measure(trained_cnn, X, y, attack=attack, competitors=(), store=tmp_path)
    calls.clear()
    monkeypatch.setattr(ResistanceAttack, "__call__", lambda self, module, X, **kwargs: (
        calls.append(len(X)), original(self, module, X, **kwargs))[1])
    resumed = measure(trained_cnn, X, y, attack=attack, competitors=(), store=tmp_path)
    assert calls == [32, 6], "the first batch was kept; only the rest is attacked"
    fresh = measure(trained_cnn, X, y, attack=attack, competitors=())
    for field in ("res_n", "res_max", "res_min", "adversarial_class"):
        np.testing.assert_array_equal(getattr(resumed.attacks[0], field),
                                      getattr(fresh.attacks[0], field))


@pytest.mark.parametrize("kwargs, match", [
    ({"y": np.full(120, 11)}, r"y holds labels outside the net's classes: \[11\]"),
    ({"y": np.zeros(3)}, r"y must have one label per sample, shape \(120,\)"),
    ({"X": np.zeros((120, 1, 8, 8), dtype=np.uint8)}, "X must hold floats"),
    ({"X": np.zeros((0, 1, 8, 8), dtype=np.float32)}, "at least one sample"),
    ({"ranks": 0}, "ranks must be a positive integer"),
    ({"ranks": True}, "ranks must be a positive integer"),
    ({"competitors": ("FMN",)}, "competitors must be names from"),
    ({"competitors": "DeepFool"}, "competitors must be names from"),
    ({"attack": "pgd"}, "attack must be a ResistanceAttack"),
    ({"batch_size": 0}, "batch_size must be a positive integer"),
], ids=lambda v: str(v)[:30])
def test_measure_rejects_bad_arguments(trained_cnn, digits, kwargs, match):
    _, _, X, y = digits
    arguments = {"X": X[:120], "y": y[:120], "attack": ATTACK, "competitors": (), **kwargs}
    with pytest.raises((TypeError, ValueError), match=match):
        measure(trained_cnn, **arguments)


@pytest.mark.parametrize("kwargs, match", [
    ({"folds": 1}, "folds must be an integer >= 2"),
    ({"n_resamples": 0}, "n_resamples must be an integer >= 1"),
], ids=["folds", "resamples"])
def test_analyse_rejects_bad_arguments(measured, kwargs, match):
    with pytest.raises(ValueError, match=match):
        analyse(measured, **kwargs)
    with pytest.raises(TypeError, match="measurements must be Measurements"):
        analyse({"logits": measured.logits})


@pytest.fixture(scope="module")
def study(measured):
    return analyse(measured, n_resamples=30, random_state=0)


def test_analyse_numbers_are_the_direct_ones(study, measured):
    r = study.to_dict()
    is_error = measured.is_error
    assert r["errors"]["count"] == is_error.sum() > 0
    assert r["detection"]["Res_N"]["auroc"]["value"] == auroc(is_error, -measured.attacks[0].res_n)
    assert r["detection"]["max-softmax"]["aurc"]["value"] == detection_metrics(
        is_error, softmax_scores(measured.logits)["max-softmax"])["aurc"]
    errors = np.flatnonzero(is_error)
    second = np.argsort(-measured.logits, axis=1)[:, 1]
    assert r["correction"]["second_choice_is_true"]["count"] == np.sum(
        second[errors] == measured.y[errors])
    assert r["correction"]["DeepFool_class_is_true"]["count"] == np.sum(
        measured.landing["DeepFool"][errors] == measured.y[errors])
    for name, metrics in r["detection"].items():
        low, high = metrics["aurc"]["ci"]
        assert low <= metrics["aurc"]["value"] <= high, name
    assert set(SOFTMAX_SCORES) < set(r["detection"])
    assert r["cost"]["Res_N"]["forward"] == 31 and r["cost"]["max-softmax"]["backward"] == 0


def test_analyse_topk_lists_are_predict_topks(study, measured, trained_cnn, sample):
    X, y = sample
    clf = ResistanceClassifier(FrozenEstimator(trained_cnn), attack=ATTACK).fit(X, y)
    top5 = clf.predict_topk(X, k=5)
    np.testing.assert_array_equal(measured.classes[measured.topk_labels(5)], top5)
    assert study.to_dict()["topk_error"]["top5_predict_topk"]["count"] == np.sum(
        ~(top5 == y[:, None]).any(axis=1))


def test_corrected_predictions_are_resistance_classifiers_cross_validated(measured, trained_cnn,
                                                                          sample):
    X, y = sample
    clf = ResistanceClassifier(FrozenEstimator(trained_cnn), attack=ATTACK, cache=AttackCache(),
                               random_state=0)
    expected = np.empty_like(y)
    for train, held in StratifiedKFold(5, shuffle=True, random_state=0).split(X, y):
        expected[held] = clone(clf).fit(X[train], y[train]).predict(X[held])
    np.testing.assert_array_equal(
        measured.classes[measured.corrected_predictions(folds=5, random_state=0)], expected)


def test_study_result_writes_markdown_and_figures(study, sample):
    X, _ = sample
    markdown = study.to_markdown(level=3)
    for phrase in ["### Detecting the net's errors", "max-softmax", "Res_mean",
                   "### Adversarial correction", "### Top-k", "### Detect, then correct",
                   "Spearman", "DeepFool distance"]:
        assert phrase in markdown, phrase
    figures = study.figures(X)
    assert set(figures) == {"risk_coverage", "roc", "histograms", "errors"}
    for fig in figures.values():
        plt.close(fig)


def test_study_result_figures_show_the_best_of_each_family_and_the_learned_detectors(study):
    detection = study.results["detection"]
    shown = study.shown_scores()
    learned = next(names for family, names in study.groups.items()
                   if family.startswith("learned"))
    assert set(learned) <= set(shown)
    for family, names in study.groups.items():
        if not family.startswith("learned"):
            best = max(names, key=lambda name: detection[name]["auroc"]["value"])
            assert [name for name in shown if name in names] == [best], family
    figures = study.figures()
    for name in ("roc", "risk_coverage"):
        ax = figures[name].axes[0]
        labels = [text.get_text() for text in ax.get_legend().get_texts()]
        assert [label.split(" (")[0] for label in labels if not label.startswith(
            ("chance", "optimal"))] == shown, name
        # The legend sits right of the axes, where it covers no curve.
        assert ax.get_legend().get_bbox_to_anchor().x0 > ax.get_window_extent().x1, name
    roc_labels = [t.get_text() for t in figures["roc"].axes[0].get_legend().get_texts()]
    best_softmax = max(study.groups["softmax-derived, from one forward pass"],
                       key=lambda name: detection[name]["auroc"]["value"])
    assert (f"{best_softmax} (AUROC {detection[best_softmax]['auroc']['value']:.3f})"
            in roc_labels)
    for fig in figures.values():
        plt.close(fig)


def test_study_result_errors_figure_names_classes_and_counts_the_errors(study, sample):
    X, _ = sample
    n_errors = int(study.measurements.is_error.sum())
    names = [f"class-{label}" for label in range(10)]
    fig = study.figures(X, class_names=names)["errors"]
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert len(titles) == min(n_errors, ERRORS_SHOWN)
    assert all(title.startswith("true class-") and "pred class-" in title for title in titles)
    assert f"of {n_errors} (" in fig._suptitle.get_text()
    plt.close(fig)


def test_run_study_is_measure_then_analyse(trained_cnn, digits):
    _, _, X, y = digits
    result = run_study(trained_cnn, X[:60], y[:60], attack=ATTACK, competitors=(),
                       n_resamples=10)
    expected = analyse(measure(trained_cnn, X[:60], y[:60], attack=ATTACK, competitors=()),
                       n_resamples=10)
    assert result.to_dict()["detection"] == expected.to_dict()["detection"]


def test_competitors_are_listed_with_a_known_function():
    for name, (function, params) in COMPETITORS.items():
        assert function in {"input_margin", "deepfool", "minimum_norm"}, name
        assert isinstance(params, dict)


def test_analyse_takes_infinite_distances_as_farthest(measured):
    # A minimum-norm attack that finds no adversarial without a box reports inf.
    far = measured[:]
    far.distances = {**far.distances, "DeepFool": far.distances["DeepFool"].copy()}
    confident = np.argsort(far.distances["DeepFool"])[-5:]
    far.distances["DeepFool"][confident] = np.inf
    r = analyse(far, n_resamples=10).to_dict()
    assert r["detection"]["DeepFool distance"]["auroc"]["value"] == auroc(
        far.is_error, -far.distances["DeepFool"])
    for name in ("LR(softmax + distances)", "LR(softmax + distances + resistance)"):
        assert np.isfinite(r["detection"][name]["auroc"]["value"]), name


def test_analyse_groups_of_identical_copies_give_the_intervals_of_the_sources(measured):
    copies = Measurements.concatenate([measured] * 4)
    source = np.tile(np.arange(len(measured)), 4)
    ci = lambda study: study.results["detection"]["max-softmax"]["auroc"]["ci"]  # noqa: E731
    alone = analyse(measured, n_resamples=60)
    grouped = analyse(copies, groups=source, n_resamples=60)
    as_rows = analyse(copies, n_resamples=60)
    # Drawing whole sources draws the same AUROCs as drawing the images alone.
    assert ci(grouped) == pytest.approx(ci(alone), rel=1e-12)
    assert ci(as_rows)[1] - ci(as_rows)[0] < (ci(alone)[1] - ci(alone)[0]) / 1.5
    # Every copy of an image is scored in the same fold.
    assert (grouped.fold.reshape(4, -1) == grouped.fold[: len(measured)]).all()
    assert grouped.results["n_sources"] == len(measured)


def test_analyse_detectors_learn_only_from_train_and_score_out_of_fold(measured):
    train = np.arange(len(measured)) % 2 == 0
    study = analyse(measured, train=train, n_resamples=5)
    scores, is_error, fold = measured.error_scores(), measured.is_error, study.fold
    features = np.column_stack([scores[name] for name in ("Res_N", "Res_max", "Res_min")])
    assert fold.min() == 0 and fold.max() >= 1
    for k in range(fold.max() + 1):
        fit = train & (fold != k)
        expected = make_detector().fit(features[fit], is_error[fit]).predict_proba(
            features[fold == k])[:, 1]
        np.testing.assert_allclose(study.scores["LR(resistance)"][fold == k], expected)


def test_analyse_names_one_primary_test_and_holm_adjusts_the_rest(measured):
    tests = analyse(measured, n_resamples=40).results["tests"]
    primary = tests["primary"]
    assert primary["with"] == "LR(softmax + resistance)" and primary["without"] == "LR(softmax)"
    low, high = primary["equivalence"]["ci"]
    assert primary["equivalence"]["equivalent"] == (-0.005 < low and high < 0.005)
    secondary = tests["secondary"]
    assert "correction: adversarial class against the softmax second choice, among errors" \
        in secondary
    for test in secondary.values():
        assert test["p_holm"] >= test["p_value"]
        assert (test["verdict"] == "no difference found") == (test["p_holm"] >= 0.05)
    mcnemar = secondary["correction: adversarial class against the softmax second choice, "
                        "among errors"]["mcnemar"]
    cor = analyse(measured, n_resamples=40).results["correction"]
    assert mcnemar["difference"] == (cor["adversarial_class_is_true"]["count"]
                                     - cor["second_choice_is_true"]["count"])


def test_measurements_round_trip_through_an_npz_without_pickle(measured, tmp_path):
    np.savez_compressed(tmp_path / "m.npz", **measured.to_arrays())
    with np.load(tmp_path / "m.npz", allow_pickle=False) as arrays:
        back = Measurements.from_arrays(dict(arrays), attack=ATTACK)
    first, second = analyse(measured, n_resamples=20), analyse(back, n_resamples=20)
    as_json = lambda study: json.dumps(study.results, default=str, sort_keys=True)  # noqa
    assert as_json(first) == as_json(second)
    per_image = first.per_image()
    assert per_image["score.Res_N"].tolist() == (-measured.attacks[0].res_n).tolist()
    assert set(per_image) >= {"y", "prediction", "is_error", "fold", "source",
                              "score.LR(softmax + resistance)"}


def _fill_store(folder, start, stop, barrier):
    """Compute rows start..stop of a shared table in a store, one chunk at a time, once
    both processes have read the (empty) table."""
    import time

    X = np.arange(200, dtype=np.float32).reshape(100, 2)[start:stop]

    def compute(rows):
        if barrier is not None:
            barrier.wait(30)
        time.sleep(0.02)  # so that the two processes' writes interleave
        return {"sum": rows[:].sum(1)}

    ResultStore(folder).rows("shared", "settings", X, compute, chunk_size=5)


def test_result_store_keeps_every_row_of_two_processes_sharing_it(tmp_path):
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    # Two studies over overlapping images: 0-59 and 40-99, each writing after every chunk.
    barrier = context.Barrier(2)
    workers = [context.Process(target=_fill_store, args=(tmp_path, a, b, barrier))
               for a, b in ((0, 60), (40, 100))]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
        assert worker.exitcode == 0
    seen = []
    columns = ResultStore(tmp_path).rows(
        "shared", "settings", np.arange(200, dtype=np.float32).reshape(100, 2),
        lambda rows: seen.append(len(rows)) or {"sum": rows[:].sum(1)})
    assert seen == [], f"{sum(seen)} rows were lost and computed again"
    np.testing.assert_array_equal(columns["sum"], np.arange(200).reshape(100, 2).sum(1))


def test_measurements_per_image_csv_holds_raw_values_that_recompute_the_auroc(measured,
                                                                             tmp_path):
    import csv

    sources = np.arange(len(measured)) // 2
    measured.to_csv(tmp_path / "per_image.csv", sources=sources)
    with open(tmp_path / "per_image.csv", newline="") as file:
        rows = list(csv.DictReader(file))
    assert len(rows) == len(measured)
    column = {name: [row[name] for row in rows] for name in rows[0]}
    # Res_N as measured, not negated; and it recomputes the report's AUROC.
    res_n = np.array(column["Res_N"], dtype=float)
    np.testing.assert_array_equal(res_n, measured.attacks[0].res_n)
    is_error = np.array(column["is_error"]) == "True"
    np.testing.assert_array_equal(is_error, measured.is_error)
    assert auroc(is_error, -res_n) == auroc(measured.is_error,
                                            measured.error_scores()["Res_N"])
    proba = torch.softmax(torch.from_numpy(measured.logits), dim=1).numpy()
    np.testing.assert_allclose(np.array(column["max-softmax"], dtype=float), proba.max(1),
                               rtol=1e-12)
    assert {"Res_N, rank 2", "adversarial class, rank 1", "DeepFool distance",
            "DeepFool class"} <= set(column)
    np.testing.assert_array_equal(np.array(column["source"], dtype=int), sources)
    truth = [str(measured.classes[i]) for i in measured.y]
    assert column["label"] == truth


def test_measure_shows_one_progress_bar_for_all_its_work(trained_cnn, digits, tmp_path, capsys):
    X, y = digits[0][:12], digits[1][:12]
    run = partial(measure, trained_cnn, X, y, attack=ResistanceAttack(max_iter=5),
                  competitors=("input-space margin",), store=tmp_path, verbose=True)
    run()
    states = [line for line in capsys.readouterr().err.replace("\r", "\n").splitlines()
              if line.strip()]
    assert states and all(line.startswith("measure 12 samples, ") for line in states), states
    assert "100%" in states[-1] and "input-space margin" in states[-1]
    run()  # every row is in the store now
    assert "all from the store: 100%" in capsys.readouterr().err
