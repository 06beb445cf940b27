"""Mutation testing: how many planted bugs the test suite catches, module by module (mutmut 3).

mutmut changes the library one small edit at a time (``<`` for ``<=``, ``None`` for a value,
``and`` for ``or``, a dropped argument...) and runs the tests on each such *mutant*; a mutant the
tests let pass *survives*. The score of a module is the fraction of its mutants that the tests
kill. Run by hand, not in CI: it is CPU-heavy (the attack's module alone has about a thousand
mutants).

Usage::

    pip install -c constraints.txt -e ".[test,mutation]"
    python benchmarks/mutation.py                 # every module below, one after the other
    python benchmarks/mutation.py metrics _cache  # some of them
    python benchmarks/mutation.py --report        # only rewrite the report from past runs

Each module runs in its own copy of the project (the files git tracks, plus uncommitted
changes) under ``build/mutation/<module>/``, whose ``setup.cfg`` mutates that module alone and
selects the tests written for it (``TESTS`` below). mutmut copies that copy into ``mutants/``,
runs the selected tests once to learn which tests reach which function, then runs, for each
mutant, the tests that reach the mutated function, stopping at the first failure, in a process
forked from the one that ran them all (so the trained nets of the fixtures are ready).
Hypothesis runs its ``mutation`` profile (tests/conftest.py): fixed examples, no shrinking;
and the quickest test files run first (``QUICK_FIRST`` there).
``OMP_NUM_THREADS=1``: one thread a test process, two processes at a time (``--max-children``).
A run that is stopped resumes where it left off, and a new run checks the survivors again (after
new tests), except those listed as equivalent; ``--fresh`` starts the module over, as it must
after the library code changed, or after a test that existed already was changed to call a
function it did not call before (mutmut maps tests to functions on a module's first run only).

Results go to ``build/mutation/report.md`` and ``report.json``: per module the mutants run,
killed (or timed out), survived and equivalent, the score over the mutants that are not
equivalent, the wall time, the diff of every survivor, and each equivalent mutant with its
reason. A survivor is equivalent only if ``EQUIVALENT`` below lists it, with the line it
must have mutated and why no test can kill it.
To look at one survivor in place: ``cd build/mutation/<module> && mutmut show <name>``.

Left out of mutation, on purpose (``SKIPPED_FUNCTIONS``): functions whose output is a speed
choice, not a number the library reports (``batch_size="auto"``'s timing and memory estimate).
Error messages are not mutated (``do_not_mutate_patterns``): the tests
match each message's key phrase, not its every word.
"""

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / "build" / "mutation"
MUTMUT = [str(Path(sys.executable).with_name("mutmut"))]

#: The tests each module's mutants are run against.
TESTS = {
    "_attack": ["tests/test_attack_reference.py", "tests/test_attack_settings.py",
                "tests/test_properties.py",
                # memory maps, Datasets and preprocessing
                *(f"tests/test_inputs.py::test_{name}" for name in [
                    "attack_memmap_gives_the_tensor_results",
                    "attack_dataset_gives_the_tensor_results_reading_a_batch_at_a_time",
                    "attack_auto_batch_size_reads_a_dataset",
                    "attack_bad_dataset_or_array_raises", "attack_memmap_is_not_modified",
                    "preprocessing_equals_a_module_that_normalises_inside",
                    "preprocessing_broadcasts_as_numpy_does_without_axis",
                    "preprocessing_keeps_x_r_and_clip_in_pixel_units",
                    "preprocessing_leaves_the_module_alone", "attack_bad_preprocessing_raises",
                    "attack_preprocessing_must_be_a_dict"]),
                # test_attack.py's tests whose code paths the files above do not take
                *(f"tests/test_attack.py::test_attack_{name}" for name in [
                    "never_flipped_is_marked", "does_not_modify_input",
                    "restores_module_state_after_exception",
                    "restores_module_state_and_computes_no_parameter_gradients",
                    "runs_under_no_grad", "verbose_shows_progress", "invalid_settings_raise",
                    "early_exit_refuses_traces", "bad_input_raises", "rank_out_of_range_raises",
                    "bfloat16_is_close_to_float32",
                    "channels_last_agrees_and_restores_the_weights",
                    "auto_batch_size_respects_memory_budget", "cuda_without_cuda_raises",
                    "costs_max_iter_plus_one_forward_and_max_iter_backward_passes",
                    "early_exit_stops_once_the_clip_holds_r_at_its_largest",
                    "tied_logits_rank_the_lower_class_first",
                    "conf_at_the_low_threshold_takes_the_conf_branch",
                    "memory_format_follows_channels_last"]),
                # The parallel path (_attack_task), in threads of the test's own process. No
                # test that starts worker processes: mutmut neither sees which functions they
                # run nor mutates them, and the loky workers that mutmut's own process would
                # start exit after 300 s idle, when its os.wait() takes them for a mutant's
                # and stops with a KeyError.
                "tests/test_distributed.py::test_threading_backend_attacks_copies_of_the_module"],
    "_estimator": ["tests/test_estimator_cases.py", "tests/test_estimator.py",
                   "tests/test_properties.py", "tests/test_cache.py", "tests/test_common.py",
                   *(f"tests/test_inputs.py::test_classifier_{name}" for name in [
                       "reads_a_memmap_a_batch_at_a_time",
                       "applies_preprocessing_to_predictions_and_attacks"])],
    "metrics": ["tests/test_metrics.py", "tests/test_risk_coverage.py"],
    "_cache": ["tests/test_cache.py",
               # test_files.py's tests of the cache's file (the rest there are the studies')
               *(f"tests/test_files.py::test_{name}" for name in [
                   "attack_cache_load_refuses_planted_files",
                   "attack_cache_load_names_a_foreign_file",
                   "attack_cache_load_names_a_truncated_file",
                   "attack_cache_load_missing_file_raises_file_not_found",
                   "atomic_write_keeps_the_old_file_when_writing_fails",
                   "attack_cache_save_is_atomic",
                   "atomic_write_gives_the_permissions_the_umask_leaves"]),
               "tests/test_inputs.py::test_classifier_reads_a_memmap_a_batch_at_a_time"],
    "callbacks": ["tests/test_callbacks.py"],
    "scores": ["tests/test_scores.py"],
}
#: Functions whose mutants are not run (see the module docstring), as mutmut names them.
SKIPPED_FUNCTIONS = {
    "_attack": ["xǁResistanceAttackǁ_auto_batch_size", "x__memory_budget",
                "x__bytes_per_image"],
}
# Why a surviving mutant is *equivalent*: no test can tell it from the library, because it
# computes the same thing (or, for ON_CPU, only differs on a GPU, which the machines that run
# mutation testing and CI do not have).
ON_CPU = ("device only: on a machine without a GPU every tensor and module is on the CPU, "
          "whatever device is asked for or left out")
FLOAT64_DEFAULT = ("numpy's default dtype is float64: astype(None) / dtype=None give the "
                   "float64 the line asked for")
RESULT_DTYPE_PROMOTED = ("the running minimum's initial inf in float32 instead of the "
                         "distances' dtype: torch.minimum/torch.where promote it at the first "
                         "class, and inf is exact in both")
BATCH_SIZE_DEFAULT = ("default batch_size 256 -> 257: results do not depend on the batch size "
                      "(the tests check batched against other batch sizes)")
RETAIN_GRAPH = ("retain_graph=True on the last backward pass only keeps the graph alive "
                "longer: memory, not values")
DEFAULT_ARGUMENT = "drops or re-spells an argument's default value: the same call"

#: Surviving mutants that no test can kill, and why: per module, a list of
#: ``(names, line, reason)``. ``names`` is a regular expression over the mutant's name after
#: ``resistclf.<module>.``; ``line`` one that the mutated line (the diff's ``+`` line) must
#: match, so that an entry made stale by a change of the library (mutmut numbers the mutants
#: of a function in order) counts its mutant as a survivor again instead of hiding it.
EQUIVALENT = {
    "_attack": [
        (r"xǁAttackResultǁfeature_matrix__mutmut_3|xǁ_Slotsǁresult__mutmut_(14|19)",
         r"\.astype\(None\)", FLOAT64_DEFAULT),
        (r"x__l2__mutmut_5", r"vector_norm\(r, dim=1\)",
         DEFAULT_ARGUMENT + " (vector_norm's ord=2)"),
        (r"xǁ_Slotsǁstart_images__mutmut_42", r"\.argsort\(descending=True, stable=True\)",
         DEFAULT_ARGUMENT + " (argsort's dim=-1 is dim 1 of the 2-D logits)"),
        (r"xǁ_Slotsǁ__init____mutmut_(18|22)", r"torch\.full\(\(size,\), -1, (dtype=None, )?device",
         "torch.full infers int64 from an integer fill value: the same dtype"),
        (r"xǁResistanceAttackǁpreprocessed__mutmut_(27|29|31|33)|"
         r"xǁResistanceAttackǁ_attack_chunk__mutmut_5|xǁResistanceAttackǁ_attack_images__mutmut_27|"
         r"xǁ_Slotsǁ__init____mutmut_(11|14|19|23|29|32|39|42|63|67|75|78)|"
         r"xǁ_Slotsǁ_fill__mutmut_(14|17|20|22)|xǁ_Slotsǁstart_images__mutmut_(12|15|19|22|30|33)",
         r"device=None|, \)|\.to\(None, |\.to\(dtype\)|\.to\(self\.dtype\)|"
         r"on_device\(module, None\)|_Slots\(images, batch_size, None|"
         r"^\s*\) if return_trace|^\s*(None, )?self\.dtype\)$", ON_CPU),
        (r"x__l2_grad__mutmut_14", r"& \(largest >= 0\)",
         "a row of r = 0 is then 'rescaled' to 0 / tiny = 0, whose norm is 0: the same zero "
         "gradient"),
        (r"x__l2_grad__mutmut_44", r"torch\.where\(norm > 0, norm, 2\.0\)",
         "the divisor is used only where the norm is 0, and there r is 0 as well (after the "
         "rescale every other row has a norm of at least sqrt(tiny)): 0 / 2 = 0 / 1"),
        (r"x__linf_grad__mutmut_2", r"norm\[:, None\]\)\.to\(None\)",
         "the mask stays boolean: multiplied by sign(r) it takes r's dtype, and its int64 row "
         "sum divides that exactly as the float one does"),
        (r"xǁResistanceAttackǁpreprocessed__mutmut_15", r"fits = None",
         "`if not fits` reads None as False"),
        (r"xǁResistanceAttackǁ_attack_chunk__mutmut_29", r"lambda count: 0",
         "nothing reads the progress callback's return value"),
        (r"xǁResistanceAttackǁ_attack_images__mutmut_45", r'optimizer = ""',
         "every slot is fresh on the loop's first pass, which sets the optimizer before any "
         "use"),
        (r"xǁResistanceAttackǁ_attack_images__mutmut_68", r"raw\.detach\(\)\.to\(None\)",
         "the logits are then added to slots.removed, of dtype slots.work, which promotes "
         "them to it exactly (widening is exact; removed holds 0 and -inf)"),
        (r"xǁResistanceAttackǁ_attack_images__mutmut_93", r"& \(step >= 0\)",
         "at step 0 the prediction is c0 by construction (both come from the same logits, "
         "ties going to the lower class in the ranking as in argmax; "
         "test_attack_tied_logits_rank_the_lower_class_first), so nothing has changed there"),
        (r"xǁResistanceAttackǁ_attack_images__mutmut_179",
         r"torch\.where\(conf >= high, -1\.0, 1\.0\)\.to\(None\)",
         "+-1 are exact in every float dtype, and the product with the norm's gradient takes "
         "that gradient's dtype"),
        (r"xǁResistanceAttackǁ_attack_images__mutmut_199", r"grad_outputs=dconf\.to\(None\)",
         "autograd converts grad_outputs to the output's dtype itself (bfloat16 or float16 "
         "under autocast), with the same rounding"),
        (r"xǁ_Imagesǁ__init____mutmut_12", r'not in "XXbiufXX"',
         "no dtype kind is 'X': the same kinds are accepted"),
        (r"xǁ_Imagesǁ__init____mutmut_18", r"self\.read\(None, 1\)",
         "slice(None, 1) reads the same first row as slice(0, 1)"),
        (r"xǁ_Imagesǁ__init____mutmut_(30|32)", r"or True else first\.shape|first\.shape\[2:\]",
         "the error's shape is built only when first is None or has fewer than 2 dimensions, "
         "where first.shape[1:] (and [2:]) is empty anyway"),
        (r"xǁ_Imagesǁ_rows__mutmut_2", r"isinstance\(positions, slice\)\) or True",
         "torch tensors take NumPy integer arrays as indices: the same rows"),
        (r"xǁ_Imagesǁ_rows__mutmut_30", r"torch\.zeros\(\(1, \*self\.sample_shape\)\)",
         "an empty read fills no slot (x[take] with no take), and a (1, ...) tensor "
         "broadcasts into no rows as a (0, ...) one does"),
        (r"xǁ_Slotsǁ__init____mutmut_(24|25)", r"torch\.full\(\(size,\), [+-][12], ",
         "_fill, at the end of __init__, writes every slot: an image number or -1"),
        (r"xǁ_Slotsǁ__init____mutmut_68", r"torch\.full\(\(3, n, ",
         "only rows 0 and 1 of the traces are written and read: a third row of NaNs is memory, "
         "not results"),
        (r"xǁ_Slotsǁ__init____mutmut_(74|77)", r"torch\.ones\(size, (dtype=None, )?device",
         "_fill takes only nonzero() of the mask, which is every slot for float ones as for "
         "bool ones"),
        (r"xǁ_Slotsǁ_fill__mutmut_32", r"self\.image\[idle\] = -2",
         "idle slots are told by image < 0 everywhere (busy, record_trace, finish)"),
        (r"xǁ_Slotsǁstart_images__mutmut_(18|21)",
         r"torch\.zeros\(\(size, n_classes\), (dtype=None, )?device",
         "removed holds only 0 and -inf, exact in float32, and adding it to the logits in "
         "slots.work promotes it exactly"),
        (r"xǁ_Slotsǁstart_images__mutmut_45", r"logits\.to\(None\)\.argsort",
         "the logits' values are exact in slots.work (widening), so they rank the same"),
        (r"xǁ_Slotsǁstart_images__mutmut_102", r"torch\.where\(fresh, 1, self\.stable_since\)",
         "stable_since counts only once the image has flipped, which takes a move of r, and "
         "r's first move makes |r| > Res_max = 0, which sets stable_since"),
        (r"xǁ_Slotsǁfinish__mutmut_25", r"self\.steps_after_flip > 1",
         "with one step after the flip, the mean of that one |r| is that |r|, the fallback"),
    ],
    "_estimator": [
        (r"xǁResistanceClassifierǁpredict_topk__mutmut_17",
         r"torch\.argsort\(self\._logits\(X\), descending=True\)",
         DEFAULT_ARGUMENT + " (argsort's dim=-1 is dim 1 of the 2-D logits)"),
        (r"xǁResistanceClassifierǁ_train__mutmut_8", r"rng\.randint\(3\*\*31\)",
         "another range for the seed of the forked torch RNG: the seed is still drawn from "
         "random_state, so fits stay reproducible, and no particular seed is promised"),
        (r"xǁResistanceClassifierǁ_train__mutmut_23", r"self\._n_outputs\(X\[:2\], net\)",
         "the number of the module's outputs does not depend on how many rows are run"),
        (r"xǁResistanceClassifierǁpredict_proba__mutmut_4", r"\.astype\(None\)",
         FLOAT64_DEFAULT),
        (r"xǁResistanceClassifierǁ_encode__mutmut_(5|7)", r"^\s*(key=None)?\)$",
         "only the order in which the error message lists the unknown labels (np.unique "
         "returns them of one type, so they sort without key=str)"),
        (r"xǁResistanceClassifierǁ_encode__mutmut_(11|13)",
         r"for label in y\.tolist\(\)\], (dtype=None)?\)",
         "an array of a non-empty list of ints is int64 anyway (y has at least one sample)"),
        (r"xǁResistanceClassifierǁ_fit_detector__mutmut_27", r"^\s*\)$",
         "the filter then ignores that message in any category: only a UserWarning has it"),
        (r"xǁResistanceClassifierǁ_fit_detector__mutmut_31",
         r'"N_QUANTILES \.\* IS GREATER THAN THE TOTAL NUMBER"',
         "warnings.filterwarnings matches messages case-insensitively"),
        (r"xǁResistanceClassifierǁpredict_topk__mutmut_(53|55)",
         r"np\.zeros\(candidates\.shape, (dtype=None)?\)",
         "0.0/1.0 instead of False/True: argsort orders them the same"),
        (r"xǁResistanceClassifierǁpredict_topk__mutmut_58", r"for j in range\(candidates",
         "j = 0 compares the first column with none before it: never seen before, as the "
         "zeros it starts with say"),
        (r"xǁResistanceClassifierǁpredict_topk__mutmut_(73|83)",
         r"np\.argsort\(seen_before, kind=\"stable\"\)|first_unique, \)\]",
         DEFAULT_ARGUMENT + " (axis=-1 is axis 1 of these 2-D arrays)"),
        (r"xǁResistanceClassifierǁpredict_topk__mutmut_77|x__best_threshold__mutmut_8",
         r'kind="STABLE"', DEFAULT_ARGUMENT + " (numpy reads sort kinds case-insensitively)"),
        (r"xǁResistanceClassifierǁ_fit_detector__mutmut_(74|76)", r"\.astype\(None\)",
         "the gains are -1, 0 and 1: in float64 they and their sums are the same integers"),
        (r"xǁResistanceClassifierǁ_validate__mutmut_3", r"reset=None",
         "validate_data only tests reset for truth: None is as false"),
        (r"xǁResistanceClassifierǁ_validate__mutmut_10", r"allow_nd=True, \)$",
         "X of another numeric dtype is no longer converted to float32 here, but the attack "
         "and _logits convert every image to the module's dtype as they read it: the same "
         "numbers"),
        (r"xǁResistanceClassifierǁ_logits__mutmut_(16|18|26|35|37)",
         r"device = None|\(attack\.device is None\) or True|on_device\(module, None\)|"
         r"\.to\((None, )?dtype\)", ON_CPU),
        (r"xǁResistanceClassifierǁ_logits__mutmut_12", r"batch_size = 257 if",
         "plain forward passes in batches of 257 instead of 256 when the attack's batch size "
         "is 'auto': the same logits"),
        (r"x__best_threshold__mutmut_(3|5)", r"np\.argsort\(-proba, (kind=None)?\)",
         "the order within a run of equal probabilities: the cuts fall only at the ends of "
         "such runs, where the cumulative gain does not depend on it"),
    ],
    "metrics": [
        (r"x__check_detection_input__mutmut_16", r"issubdtype\(None, np\.number\)",
         "np.issubdtype(None, number) is True, so is_error of any dtype is accepted when all "
         "its values are 0 or 1: only object arrays of 0/1 pass that were refused before, and "
         "they convert to the right booleans"),
        (r"x__check_detection_input__mutmut_36|x__risk_coverage_areas__mutmut_(19|21)",
         r"\.astype\(None\)", FLOAT64_DEFAULT),
        (r"x__risk_coverage_areas__mutmut_17", r"prepend=1\.0",
         "the first block's H-difference is multiplied by E' - N' e / c = 0 (nothing is "
         "accepted before the first block), so its value never counts"),
        (r"x__fpr_at_tpr__mutmut_21", r"searchsorted\(.*, tpr, \)", DEFAULT_ARGUMENT
         + " (searchsorted's side='left')"),
        (r"x_softmax_topk__mutmut_6", r"argsort\(-np\.asarray\(proba\), kind",
         DEFAULT_ARGUMENT + " (argsort's axis=-1 is axis 1 of the documented 2-D proba)"),
        (r"x_softmax_topk__mutmut_12", r'kind="STABLE"',
         DEFAULT_ARGUMENT + " (numpy reads sort kinds case-insensitively)"),
        (r"x__percentile_interval__mutmut_(3|5)", r"np\.asarray\(values, (dtype=None)?\)",
         "the statistic returns floats (documented), and a list of floats and NaNs is "
         "float64 without asking"),
    ],
    "_cache": [
        (r"xǁAttackCacheǁattack__mutmut_2", r"if isinstance\(X, np\.ndarray\):",
         "arrays are converted to float32 whole instead of a few rows at a time: the same "
         "numbers (a float32 array is not even copied); only the memory a float64 memory map "
         "takes differs"),
        (r"xǁAttackCacheǁattack__mutmut_(5|7)", r"np\.asarray\(X, (dtype=None)?\)",
         "the keys and the rows attacked (_Rows) are converted to float32 anyway"),
        (r"xǁAttackCacheǁattack__mutmut_(31|33)", r"^\s*(dtype=None)?\)$",
         "an array of a non-empty list of ints is int64 anyway, and an empty one is not used"),
        (r"xǁAttackCacheǁload__mutmut_(5|7)", r"np\.load\(path, (allow_pickle=None)?\)",
         DEFAULT_ARGUMENT + " (np.load's allow_pickle is False by default, and None is as "
         "false)"),
        (r"xǁAttackCacheǁload__mutmut_36", r'not in "XXbiufXX"',
         "no dtype kind is 'X': the same kinds are accepted"),
    ],
    "callbacks": [
        (r"xǁResistanceMonitorǁinitialize__mutmut_(3|5)",
         r"np\.array\(self\.X_val, (dtype=None)?\)",
         "the images stay float64 instead of float32, but the attack converts them to the "
         "module's dtype as it reads them: the same float32 numbers"),
        (r"xǁResistanceMonitorǁon_epoch_end__mutmut_79",
         r"round\(time\.perf_counter\(\) - start, 3\)",
         "seconds rounded to 1 ms instead of 10 ms: still the time the monitor took (the "
         "tests read it from a fake clock to within 5 ms)"),
    ],
    "scores": [
        (r"x__check_logits__mutmut_(2|4)", r"\.to\((None, )?torch\.float64\)", ON_CPU),
        (r"x__check_logits__mutmut_21", r"\.astype\(None\)", FLOAT64_DEFAULT),
        (r"x__top_and_gaps__mutmut_11", r"top\] = None",
         "None stored in a bool array is False"),
        (r"x__top_and_gaps__mutmut_22", r"reshape\(len\(z\), -2\)",
         "numpy's reshape infers any negative size, -2 as -1"),
        (r"x__batches__mutmut_(10|13)", r"\.to\((device=None, )?dtype=dtype, copy=True\)",
         ON_CPU),
        (r"x__batches__mutmut_(15|17)", r"\.to\(device=device, dtype=dtype, (copy=False)?\)",
         "the batch is only read (deepfool clones it; input_margin makes it a leaf that "
         "requires grad, which a module cannot write in place), and X is already a detached "
         "tensor or a fresh float64 copy"),
        (r"x__linearised_boundaries__mutmut_(4|6|13|15)",
         r"torch\.arange\(n(_classes)?, (device=None)?\)", ON_CPU),
        (r"x__linearised_boundaries__mutmut_(36|37)", r"retain_graph=column (<=|< n_classes \+)",
         RETAIN_GRAPH),
        (r"x_(input_margin|deepfool)__mutmut_3", r"batch_size=257", BATCH_SIZE_DEFAULT),
        (r"x_input_margin__mutmut_(18|20|26|33|49|53)|x_deepfool__mutmut_(35|37|43|50)",
         r"device = None|\(device is None\) or True|on_device\(module, None\)|"
         r"batch_size, None\)|dtype=torch\.float64, (device=None)?\)", ON_CPU),
        (r"x__deepfool_batch__mutmut_(7|9|13|16|20|23|27|30|49|53)",
         r"device=None\)|torch\.arange\(n, \)|dtype=(torch\.bool|torch\.int64|xa\.dtype), \)",
         ON_CPU),
        (r"x_input_margin__mutmut_(48|52)|x__deepfool_batch__mutmut_(48|52)",
         r"torch\.inf, (dtype=None, )?device=", RESULT_DTYPE_PROMOTED),
        (r"x__deepfool_batch__mutmut_94", r"difference / squared_norm, 1\.0\)",
         "scale only counts where the class is closer and its gradient non-zero: elsewhere "
         "the step is not taken, or is -scale * 0 = 0"),
    ],
}
#: Survivors that a test could kill only by pinning float rounding on an exact boundary, left
#: on purpose: ``(names, line, reason)`` as in EQUIVALENT. They still count as survivors; the
#: report gives the reason beside the diff.
GAPS = {
    "_attack": [
        (r"x__l2_grad__mutmut_10", r"largest <= torch\.finfo",
         "differs only for a row whose largest entry is exactly float32's sqrt(tiny) = 2**-63, "
         "and there only in the norm's last bit, where the mutant's rescaled path is, if "
         "anything, the more accurate"),
        (r"xǁResistanceAttackǁ_attack_images__mutmut_186", r"torch\.where\(conf > high",
         "differs only when Conf equals thresholds[1] to the last bit at r != 0 (at r = 0 the "
         "two branches take the same first step, |r|'s subgradient there being 0), which no "
         "test can arrange; the low threshold's edge is pinned by "
         "test_attack_conf_at_the_low_threshold_takes_the_conf_branch"),
    ],
}
#: Lines whose expressions are not mutated: the text of error messages and warnings.
MESSAGE_LINES = [
    r'^\s*f?"[^"]*"\s*\)?,?\s*$',  # a line that is only (part of) a string
    r"raise \w+\(",
    r"warnings\.warn\(",
    r"stacklevel=",  # which caller a warning names
]
STATUSES = ["killed", "survived", "timeout", "no tests", "suspicious", "segfault",
            "skipped", "not checked", "caught by type check"]


def config(module):
    """The [mutmut] section that mutates ``module`` against its tests."""
    lines = ["[mutmut]", "source_paths = resistclf/", "only_mutate =",
             f"    resistclf/{module}.py", "pytest_add_cli_args_test_selection ="]
    lines += [f"    {test}" for test in TESTS[module]]
    lines += ["pytest_add_cli_args = -p no:cacheprovider -o addopts= -W ignore",
              # Each mutant's tests run in a process forked from the one that ran them all
              # once, which has the digits CNN trained already (see tests/conftest.py).
              "process_isolation = fork",
              # A mutant's tests get (time they took unmutated + 10 s) x 5 before they count
              # as timed out: ample on a shared machine, since the forked process has the
              # trained nets already; a mutant that loops for ever (an image that never
              # leaves its slot) then costs a minute or two, not seven.
              "timeout_constant = 10", "timeout_multiplier = 5",
              "do_not_mutate_patterns ="]
    lines += [f"    {pattern}" for pattern in MESSAGE_LINES]
    return "\n".join(lines) + "\n"


def prepare(module, fresh):
    """A copy of the project in build/mutation/<module>, configured for that module."""
    folder = WORK / module
    if fresh and folder.exists():
        shutil.rmtree(folder)
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"],
                           cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    for name in files:
        source, target = ROOT / name, folder / name
        if source.is_file() and (not target.exists()
                                 or target.read_bytes() != source.read_bytes()):
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    setup = (ROOT / "setup.cfg").read_text()
    setup = re.sub(r"\n\[mutmut\].*", "", setup, flags=re.S)  # the copy's own section
    (folder / "setup.cfg").write_text(setup.rstrip() + "\n\n" + config(module))
    return folder


def mutant_names(folder, module):
    """The module's mutants to run: those not run yet and the survivors (the tests may have
    changed since), but not those in SKIPPED_FUNCTIONS nor the survivors EQUIVALENT names
    (the report still checks that each of those mutated the line its entry gives)."""
    meta = json.loads((folder / "mutants" / "resistclf" / f"{module}.py.meta").read_text())
    return [name for name, exit_code in meta["exit_code_by_key"].items()
            if exit_code in (None, 0, 5, 33) and not skipped(module, name)
            and not (exit_code == 0 and listed_equivalent(module, name))]


def listed_equivalent(module, name):
    short = name.removeprefix(f"resistclf.{module}.")
    return any(re.fullmatch(names, short) for names, _, _ in EQUIVALENT.get(module, []))


def skipped(module, name):
    return any(f".{function}__mutmut_" in name for function in SKIPPED_FUNCTIONS.get(module, []))


def environment():
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HYPOTHESIS_PROFILE": "mutation",
           "RESISTCLF_MUTATION": "1"}
    env.pop("PYTHONPATH", None)  # the tests must import the mutated copy
    return env


def run(module, max_children, fresh):
    folder = prepare(module, fresh)
    start = time.perf_counter()
    # A name that matches no mutant: mutmut generates the mutants, runs the tests once to
    # map tests to functions, and stops there. Then the mutants still to run are named.
    subprocess.run([*MUTMUT, "run", "--max-children", str(max_children),
                    f"resistclf.{module}.x_generate_only__mutmut_0"],
                   cwd=folder, env=environment(), check=False, stderr=subprocess.DEVNULL)
    names = mutant_names(folder, module)
    if names:
        subprocess.run([*MUTMUT, "run", "--max-children", str(max_children), *names],
                       cwd=folder, env=environment(), check=False)
    timings = WORK / "seconds.json"
    past = json.loads(timings.read_text()) if timings.exists() else {}
    seconds = past.get(module, 0) * (not fresh) + time.perf_counter() - start
    timings.write_text(json.dumps({**past, module: round(seconds)}, indent=1))


def mutated_line(diff):
    """The lines the mutant adds, from ``mutmut show``'s diff."""
    return "\n".join(line[1:] for line in diff.splitlines()
                     if line.startswith("+") and not line.startswith("+++"))


def reason(listing, module, name, diff):
    """The reason ``listing`` (EQUIVALENT or GAPS) gives for the survivor ``name``, or None."""
    short = name.removeprefix(f"resistclf.{module}.")
    for names, line, why in listing.get(module, []):
        if re.fullmatch(names, short) and re.search(line, mutated_line(diff)):
            return why
    return None


def results(module):
    """Status of every mutant of ``module``, the diff of each survivor, and the equivalent
    survivors with their reason."""
    folder = WORK / module
    meta_path = folder / "mutants" / "resistclf" / f"{module}.py.meta"
    if not meta_path.exists():
        return None
    listed = subprocess.run([*MUTMUT, "results", "--all", "true"], cwd=folder,
                            capture_output=True, text=True, env=environment())
    status = {}
    for line in listed.stdout.splitlines():
        name, _, state = line.strip().rpartition(": ")
        if name.startswith(f"resistclf.{module}."):
            status[name] = "skipped" if skipped(module, name) else state
    survivors, equivalent = {}, {}
    for name, state in status.items():
        if state in ("survived", "no tests"):
            shown = subprocess.run([*MUTMUT, "show", name], cwd=folder, capture_output=True,
                                   text=True, env=environment())
            diff = shown.stdout.strip()
            why = reason(EQUIVALENT, module, name, diff)
            if why is None:
                survivors[name] = {"diff": diff, "gap": reason(GAPS, module, name, diff)}
            else:
                equivalent[name] = {"line": mutated_line(diff).strip(), "reason": why}
    counts = {state: sum(s == state for s in status.values()) for state in STATUSES}
    counts = {state: n for state, n in counts.items() if n}
    run_on = sum(n for state, n in counts.items() if state not in ("skipped", "not checked"))
    killed = counts.get("killed", 0) + counts.get("timeout", 0)
    not_equivalent = run_on - len(equivalent)
    return {"counts": counts, "run": run_on, "killed": killed, "survived": len(survivors),
            "equivalent": len(equivalent),
            "score": killed / not_equivalent if not_equivalent else None,
            "survivors": survivors, "equivalent_survivors": equivalent}


def score_text(score):
    return "-" if score is None else f"{100 * score:.1f}%"


def report():
    timings = WORK / "seconds.json"
    seconds = json.loads(timings.read_text()) if timings.exists() else {}
    found = {module: results(module) for module in TESTS}
    found = {module: r for module, r in found.items() if r is not None}
    (WORK / "report.json").write_text(json.dumps(
        {module: {**r, "seconds": seconds.get(module)} for module, r in found.items()},
        indent=1))
    lines = ["# Mutation testing", "",
             "Score: mutants killed (a test failed, or the run timed out) over the mutants run "
             "that are not equivalent. An equivalent mutant is a survivor that no test can "
             "kill; each is listed below with its reason (`EQUIVALENT` in "
             "benchmarks/mutation.py). Wall time: the runs since the module's last `--fresh` "
             "start, on the machine that ran them.", "",
             "| module | mutants run | killed | survived | equivalent | score | wall time |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for module, r in found.items():
        lines.append(f"| {module} | {r['run']} | {r['killed']} | {r['survived']} | "
                     f"{r['equivalent']} | {score_text(r['score'])} | "
                     f"{seconds.get(module, '?')} s |")
    for module, r in found.items():
        lines += ["", f"## {module}: survivors", ""]
        if not r["survivors"]:
            lines.append("None.")
        for name, survivor in r["survivors"].items():
            lines += [f"### {name}", ""]
            if survivor["gap"]:
                lines += [f"Left on purpose: {survivor['gap']}.", ""]
            lines += ["```diff", survivor["diff"], "```", ""]
        lines += ["", f"## {module}: equivalent mutants", ""]
        for name, e in r["equivalent_survivors"].items():
            line = e["line"].replace("`", "'")
            lines.append(f"- `{name.removeprefix(f'resistclf.{module}.')}`: `{line}`: "
                         f"{e['reason']}.")
    (WORK / "report.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines[:6 + len(found)]))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("modules", nargs="*", choices=[*TESTS, []], default=[])
    parser.add_argument("--max-children", type=int, default=2)
    parser.add_argument("--fresh", action="store_true", help="start the modules over")
    parser.add_argument("--report", action="store_true", help="only rewrite the report")
    args = parser.parse_args()
    if not args.report:
        for module in args.modules or [m for m in TESTS if (ROOT / TESTS[m][0]).exists()]:
            run(module, args.max_children, args.fresh)
    report()


if __name__ == "__main__":
    main()
