"""Training data from users' files and the simulator: checks a mutation review found
untested (each test names what it pins)."""

from dataclasses import replace

import numpy as np
import pytest
import torch

from risloc.config import SceneConfig, SystemConfig
from risloc.io import write_scenes
from risloc.io.scenefile import batch_to_arrays
from risloc.simulation import simulate_range
from risloc.training.config import load_train_config
from risloc.training.data import TrainData, validation_set


def _file(tmp_path, n=8, name="s.h5", **scene):
    system = SystemConfig()
    scenes = simulate_range(0, n, system, SceneConfig(**scene), seed=1, split="train")
    write_scenes(tmp_path / name, scenes, system)
    return tmp_path / name, scenes


def test_a_training_file_without_the_truth_is_refused_up_front(tmp_path):
    """Users' files often carry measurements alone: refused when the data is set up, not
    as a traceback in the first step's loss."""
    system = SystemConfig()
    scenes = simulate_range(0, 4, system, SceneConfig(), seed=1, split="train")
    bare = replace(scenes, K=None, azimuth=None, elevation=None, range_m=None, powers=None)
    write_scenes(tmp_path / "bare.h5", bare, system)
    cfg = load_train_config(None, [f"data.train_file={tmp_path / 'bare.h5'}"])
    with pytest.raises(ValueError, match=r"training file .*bare\.h5 must carry the truth"):
        TrainData(cfg)


def test_a_file_without_a_system_and_more_sources_than_the_recipe_is_refused(tmp_path):
    """A file with no system attribute is taken to be the recipe's system, so its K is
    checked against the recipe's K_max: more sources are refused, K_max itself is not."""
    system = SystemConfig()
    arr = batch_to_arrays(simulate_range(0, 4, system, SceneConfig(K=3), seed=1,
                                         split="train"), 5)
    np.savez(tmp_path / "k3.npz", **arr)  # no system attribute
    over = [f"data.train_file={tmp_path / 'k3.npz'}", "optim.batch_size=2"]
    with pytest.raises(ValueError, match=r"K=3 sources, more than the recipe's "
                                         r"system\.K_max=2"):
        TrainData(load_train_config(None, [*over, "system.K_max=2", "scene.K=2"]))
    batch = TrainData(load_train_config(None, [*over, "system.K_max=3", "scene.K=3"])).batch(0, 0)
    assert batch.azimuth.shape == (2, 3) and bool((batch.K == 3).all())


def test_the_file_order_follows_data_seed_and_is_the_same_in_every_run(tmp_path):
    """The shuffle of a scene file is a function of data.seed and the pass: the same seed
    gives the same batches (a resumed run sees what it would have seen), another seed
    another order."""
    path, _ = _file(tmp_path, n=12)
    cfg = lambda seed: load_train_config(None, [  # noqa: E731
        f"data.train_file={path}", "optim.batch_size=12", f"data.seed={seed}"])
    torch.manual_seed(123)
    a = TrainData(cfg(5)).batch(1, 0).y
    torch.manual_seed(456)  # the global RNG plays no part
    b = TrainData(cfg(5)).batch(1, 0).y
    assert torch.equal(a, b)
    assert not torch.equal(TrainData(cfg(6)).batch(1, 0).y, a)


def test_hidden_snrs_of_a_file_differ_from_batch_to_batch(tmp_path):
    """With snr_shown < 1 the scenes whose SNR is hidden are drawn per batch, not the same
    positions in every batch."""
    path, _ = _file(tmp_path, n=64)
    cfg = load_train_config(None, [f"data.train_file={path}", "optim.batch_size=64",
                                   "data.snr_shown=0.5"])
    data = TrainData(cfg)
    masks = [data.batch(i, 0).snr_db.isnan() for i in range(3)]
    assert not (torch.equal(masks[0], masks[1]) and torch.equal(masks[1], masks[2]))


def test_the_shards_of_consecutive_batches_are_all_different():
    """data.shards S: global batch i is blocks i*S .. i*S+S-1 of the stream, so no shard of
    one batch repeats in another (overlapping blocks would train twice on the same
    scenes)."""
    cfg = load_train_config(None, ["optim.batch_size=4", "data.shards=2",
                                   "loss.spectral_scenes=2"])
    shards = [TrainData(cfg, shards_here=(r,)).batch(i, 0).y for i in range(3) for r in (0, 1)]
    for j in range(len(shards)):
        for k in range(j):
            assert not torch.equal(shards[j], shards[k]), (j, k)


def test_the_training_stream_is_the_recipes_data_stream():
    """data.stream picks the training stream: another stream, other scenes."""
    a = TrainData(load_train_config(None, ["optim.batch_size=4"])).batch(0, 0).y
    b = TrainData(load_train_config(None, ["optim.batch_size=4", "data.stream=2"])).batch(0, 0).y
    assert not torch.equal(a, b)


def test_validation_scenes_are_the_validation_splits_from_val_offset():
    """The simulated validation set: scenes val_offset.. of the validation split, never the
    training stream's scenes."""
    from risloc.simulation import scene_stream

    cfg = load_train_config(None, ["data.n_val=4", "data.val_offset=3", "optim.batch_size=4"])
    val = validation_set(cfg)
    ref = simulate_range(3, 7, cfg.system, cfg.scene, 0, "validation")
    assert torch.equal(val.y, ref.y)
    train = next(scene_stream(4, cfg.system, cfg.scene, seed=0, split="train", stream=1))
    assert not torch.equal(val.y, train.y)
    assert not torch.equal(val.y, simulate_range(0, 4, cfg.system, cfg.scene, 0,
                                                 "validation").y)


def test_a_file_with_many_bad_scenes_names_the_first_three(tmp_path):
    """The refusal of a file names the count and the first three bad scenes (then '...'),
    so the user can find them without `risloc info`."""
    import math

    system = SystemConfig()
    scenes = simulate_range(0, 6, system, SceneConfig(), seed=1, split="train")
    bad = scenes.y.clone()
    bad[[1, 2, 4, 5], 0, 0] = complex(math.nan, 0.0)
    path = tmp_path / "my scenes.h5"  # (the command it prints quotes the path)
    write_scenes(path, replace(scenes, y=bad), system)
    cfg = load_train_config(None, [f"data.train_file={path}"])
    with pytest.raises(ValueError, match=r"4 scene\(s\) cannot be trained on \(scene 1: .*; "
                                         r"scene 2: .*; scene 4: [^;]*; \.\.\.\)") as err:
        TrainData(cfg)
    assert "scene 5" not in str(err.value)
    assert f"`risloc info '{path}'` lists them" in str(err.value)


def test_shards_that_cannot_split_the_batch_or_a_file_are_refused(tmp_path):
    """batch_size not a multiple of data.shards would silently train on smaller batches;
    a scene file cannot be sharded (every rank would train on the whole batch)."""
    cfg = load_train_config(None, ["optim.batch_size=5", "data.shards=2",
                                   "loss.spectral_scenes=2"])
    with pytest.raises(ValueError, match=r"optim\.batch_size=5 must be a multiple of "
                                         r"data\.shards=2"):
        TrainData(cfg)
    path, _ = _file(tmp_path, n=4)
    cfg = load_train_config(None, [f"data.train_file={path}", "optim.batch_size=4",
                                   "data.shards=2", "loss.spectral_scenes=2"])
    with pytest.raises(ValueError, match=r"data\.shards > 1 needs simulated training data"):
        TrainData(cfg)


def test_the_snr_curriculum_reaches_the_training_batches():
    """schedule.snr_curriculum: epoch 0 draws its SNRs from curriculum_start_db, an epoch
    past curriculum_frac from scene.snr_db (epoch 0 itself, not one later)."""
    cfg = load_train_config(None, [
        "optim.batch_size=64", "schedule.snr_curriculum=true", "schedule.epochs=10",
        "schedule.curriculum_frac=0.5", "schedule.curriculum_start_db=[30, 40]",
        "scene.snr_db=[-10, 0]"])
    data = TrainData(cfg)
    first, late = data.batch(0, epoch=0).snr_db, data.batch(0, epoch=8).snr_db
    assert bool(((first >= 30) & (first <= 40)).all()), first
    assert bool(((late >= -10) & (late <= 0)).all()), late


def test_an_empty_scene_file_is_refused_by_name(tmp_path):
    """A file of 0 scenes (an export that wrote nothing) is named as such, not a traceback
    from the first statistic over its scenes."""
    system = SystemConfig()
    arr = batch_to_arrays(simulate_range(0, 2, system, SceneConfig(), seed=1,
                                         split="train"), 5)
    np.savez(tmp_path / "empty.npz", **{k: v[:0] for k, v in arr.items()},
             system=np.array(system.model_dump_json()))
    cfg = load_train_config(None, [f"data.val_file={tmp_path / 'empty.npz'}"])
    with pytest.raises(ValueError, match=r"validation file .*empty\.npz holds no scenes"):
        validation_set(cfg)


def test_hidden_snrs_of_simulated_batches_differ_from_batch_to_batch():
    """The same for simulated batches: each batch hides the SNR of its own scenes."""
    cfg = load_train_config(None, ["optim.batch_size=64", "data.snr_shown=0.5"])
    data = TrainData(cfg)
    masks = [data.batch(i, 0).snr_db.isnan() for i in range(3)]
    assert not (torch.equal(masks[0], masks[1]) and torch.equal(masks[1], masks[2]))


def test_separate_training_and_validation_files_bring_no_warning(tmp_path, caplog):
    """The warning that the validation flatters the model is for the same file only."""
    train, _ = _file(tmp_path, n=4, name="train.h5")
    val, _ = _file(tmp_path, n=4, name="val.h5")
    cfg = load_train_config(None, [f"data.train_file={train}", f"data.val_file={val}"])
    with caplog.at_level("WARNING", logger="risloc.training.data"):
        assert len(validation_set(cfg)) == 4
    assert "data.val_file is data.train_file" not in caplog.text


def test_the_validation_scenes_show_the_snr_only_when_training_always_does():
    """data.snr_shown: the validation SNRs are shown when it is 1, hidden otherwise."""
    for share, hidden in ((1.0, False), (0.5, True), (0.0, True)):
        cfg = load_train_config(None, ["data.n_val=4", f"data.snr_shown={share}"])
        snr = validation_set(cfg).snr_db
        assert bool(snr.isnan().all()) is hidden and bool(snr.isnan().any()) is hidden, share


def test_chunks_cover_every_scene_once_in_order():
    """The validation batches: consecutive chunks, the last one shorter, no scene left."""
    from risloc.training.data import chunks

    scenes = simulate_range(0, 5, SystemConfig(), SceneConfig(), seed=1, split="train")
    for size, lengths in ((2, [2, 2, 1]), (5, [5]), (8, [5])):
        parts = chunks(scenes, size)
        assert [len(p) for p in parts] == lengths
        assert torch.equal(torch.cat([p.y for p in parts]), scenes.y)


def test_the_hidden_snrs_and_the_validation_scenes_follow_data_seed():
    """data.seed seeds which SNRs a batch hides and the simulated validation scenes, not
    only the training scenes (a mutation review: a fixed seed there passed)."""
    cfg = lambda seed: load_train_config(None, [  # noqa: E731
        "optim.batch_size=64", "data.snr_shown=0.5", "data.n_val=4", f"data.seed={seed}"])
    masks = [TrainData(cfg(s)).batch(0, 0).snr_db.isnan() for s in (0, 1)]
    assert not torch.equal(masks[0], masks[1])
    assert not torch.equal(validation_set(cfg(0)).y, validation_set(cfg(1)).y)


def test_the_same_file_under_another_name_is_warned_of(tmp_path, caplog):
    """data.val_file a link to data.train_file is the same file: the warning is given."""
    train, _ = _file(tmp_path, n=4, name="train.h5")
    (tmp_path / "link.h5").symlink_to(train)
    cfg = load_train_config(None, [f"data.train_file={train}",
                                   f"data.val_file={tmp_path / 'link.h5'}"])
    with caplog.at_level("WARNING", logger="risloc.training.data"):
        assert len(validation_set(cfg)) == 4
    assert "data.val_file is data.train_file" in caplog.text


def test_an_snr_curriculum_beside_a_training_file_is_said_to_do_nothing(tmp_path, caplog):
    """The curriculum draws the SNRs of simulated scenes; a file's scenes keep theirs, so
    the recipe asking for both is warned of (a review: it was silently without effect)."""
    from risloc.training.data import TrainData

    train, _ = _file(tmp_path, n=4, name="train.h5")
    for on in (False, True):
        caplog.clear()
        cfg = load_train_config(None, [f"data.train_file={train}",
                                       f"schedule.snr_curriculum={str(on).lower()}"])
        with caplog.at_level("WARNING", logger="risloc.training.data"):
            TrainData(cfg)
        assert ("schedule.snr_curriculum has no effect" in caplog.text) == on
