import itertools

import numpy as np
from click.testing import CliRunner

from wherevit.app.cli import main
from wherevit.train.evals.jigsaw import JigsawConfig, _assemble, _tiles, best_assignment, evaluate_jigsaw
from wherevit.train.evals.probes import knn_accuracy


def test_best_assignment_is_exact():
    rng = np.random.default_rng(0)
    for _ in range(5):
        s = rng.standard_normal((6, 6))
        brute = max(itertools.permutations(range(6)), key=lambda p: sum(s[i, p[i]] for i in range(6)))
        assert tuple(best_assignment(s)) == brute


def test_tiles_round_trip():
    x = np.random.default_rng(0).integers(0, 255, (2, 30, 30, 3)).astype(np.uint8)
    t = _tiles(x)
    assert t.shape == (2, 9, 10, 10, 3)
    np.testing.assert_array_equal(t[0, 5], x[0, 10:20, 20:30])  # slot 5 = row 1, column 2
    np.testing.assert_array_equal(_assemble(t), x)


def test_knn_by_hand():
    train = np.array([[1.0, 0], [0.9, 0.1], [0, 1.0]])
    y = np.array([0, 0, 1])
    assert knn_accuracy(train, y, np.array([[1.0, 0.05], [0.05, 1.0]]), np.array([0, 1]), k=1) == 1.0


def test_jigsaw_runs_and_beats_chance_per_tile(trained_run):
    from wherevit.train.checkpoint import load_backbone

    r = evaluate_jigsaw(load_backbone(trained_run)[0], JigsawConfig(n_train=40, n_test=20, size=33, tile_size=16, image_size=32))
    assert r["per_tile_acc"] > 1 / 9 and 0 <= r["full_permutation_acc"] <= 1
    assert {"recognition_intact", "recognition_shuffled", "recognition_reassembled"} <= set(r)


def test_eval_probes_cli(trained_run):
    res = CliRunner().invoke(main, ["eval", "probes", str(trained_run)])
    assert res.exit_code == 0, res.output
    assert "k-NN" in res.output and "linear" in res.output
