"""The training recipe: the shipped YAML files, overrides, validation messages."""

from pathlib import Path

import pytest

from risloc.config import ConfigError
from risloc.training.config import TrainConfig, load_train_config

ROOT = Path(__file__).resolve().parents[3]


@pytest.mark.parametrize("name", sorted(p.name for p in (ROOT / "configs").glob("*.yaml")))
def test_shipped_recipes_load(name):
    cfg = load_train_config(ROOT / "configs" / name)
    assert cfg.schedule.weight_schedule["lam_peak_contrast"][1] == pytest.approx(0.10)
    assert TrainConfig.from_json(cfg.to_json()) == cfg


def test_a_shipped_recipe_is_named_without_a_path_from_any_folder(tmp_path, monkeypatch):
    """The recipes live in the package (risloc/recipes, package data of the wheel; configs/
    of the repository links there), so `--config train_default` works after pip install."""
    from risloc.config import RECIPES, load_config, recipe_path, shipped_recipes

    assert (ROOT / "configs").resolve() == RECIPES.resolve()
    assert shipped_recipes() == sorted(p.stem for p in (ROOT / "configs").glob("*.yaml"))
    monkeypatch.chdir(tmp_path)  # no configs/ here
    assert load_train_config("train_tiny") == load_train_config(RECIPES / "train_tiny.yaml")
    assert load_config("train_default", ignored=TrainConfig.model_fields).scene.power_spread_db \
        == (0.0, 15.0)
    for missing in ("train_nope", "configs/train_default.yaml", "train_tiny.yaml"):
        with pytest.raises(ConfigError, match=r"config file not found: .*shipped recipes, "
                                              r"named without a path: train_default, "):
            load_train_config(missing)
    (tmp_path / "train_tiny").write_text("schedule: {epochs: 3}\n")  # a file comes first,
    with pytest.raises(ConfigError, match="must end in .yaml"):  # and is read as a file
        load_train_config("train_tiny")
    assert recipe_path("train_tiny") == Path("train_tiny")
    for typo, meant in (("train_tin", "train_tiny"), ("train_defualt", "train_default"),
                        ("configs/train_tuned.yml", "train_tuned")):  # (a new user's typos)
        with pytest.raises(ConfigError, match=f"; did you mean {meant}\\?\\)$"):
            recipe_path(typo)
    with pytest.raises(ConfigError) as err:
        recipe_path("my_experiment.yaml")
    assert "did you mean" not in str(err.value)


def test_tuned_recipe_is_the_default_plus_the_study_best():
    import yaml

    tuned = load_train_config(ROOT / "configs" / "train_tuned.yaml")
    best = yaml.safe_load((ROOT / "benchmarks" / "results" / "archive" / "tune_best_overrides.yaml"
                           ).read_text())["overrides"]
    expect = load_train_config(ROOT / "configs" / "train_default.yaml",
                               [f"{k}={v:.4g}" for k, v in best.items()]
                               + ["out_dir=runs/train_tuned"])
    assert tuned == expect


def test_a_loss_weight_the_schedule_sets_cannot_be_set_in_loss():
    """--set loss.lam_peak_contrast=0 used to be replaced by the weight schedule every
    epoch, silently: the ablation the user asked for never ran."""
    with pytest.raises(ConfigError, match=r"loss.lam_peak_contrast is set, but "
                       r"schedule.weight_schedule sets it every epoch \(0.05, 0.1, 0.12 .*"
                       r"schedule.weight_schedule.lam_peak_contrast=\[0, 0, 0\]"):
        load_train_config("train_default", ["loss.lam_peak_contrast=0"])
    cfg = load_train_config("train_default",
                            ["schedule.weight_schedule.lam_peak_contrast=[0, 0, 0]"])
    assert cfg.schedule.weight_schedule == {"lam_subspace_align": (0.02, 0.05, 0.07),
                                            "lam_peak_contrast": (0.0, 0.0, 0.0)}
    assert load_train_config(None, ["loss.lam_peak=0"]).loss.lam_peak == 0  # not scheduled
    cfg = load_train_config(None, ["schedule.weight_schedule={}", "loss.lam_peak_contrast=0"])
    assert cfg.loss.lam_peak_contrast == 0  # unscheduled, it is the loss's own
    # a stored recipe (--resume without --config) is checked the same, on its overrides
    stored = load_train_config("train_default").to_json()
    with pytest.raises(ConfigError, match=r"loss.lam_peak_contrast is set, but "
                       r"schedule.weight_schedule sets it every epoch"):
        TrainConfig.from_json(stored, ["loss.lam_peak_contrast=0"])
    assert TrainConfig.from_json(stored, ["loss.lam_peak=0"]).loss.lam_peak == 0
    assert TrainConfig.from_json(stored) == load_train_config("train_default")  # as stored


def test_overrides_and_field_of_view_follow_scene():
    cfg = load_train_config(None, ["optim.lr=3e-4", "scene.azimuth_deg=[-40, 40]",
                                   "model.width=24", "loss.lam_cov_pred=0.1"])
    assert cfg.optim.lr == pytest.approx(3e-4) and cfg.loss.lam_cov_pred == 0.1
    assert cfg.network_config().fov.azimuth_deg == (-40, 40)
    assert cfg.network_config().width == 24
    assert cfg.music_config().fov == cfg.scene.fov


@pytest.mark.parametrize("override, field", [
    ("optim.lr=-1", "optim.lr"), ("schedule.nonsense=1", "schedule.nonsense"),
    ("model.width=2", "model"), ("scene.K=9", "scene.K"),
    ("schedule.weight_schedule={lam_bogus: [1, 2, 3]}", "weight_schedule"),
    ("order.scenes=10", "order.scenes"), ("order.unknown_snr=2", "unknown_snr"),
    ("data.shards=3", "spectral_scenes"),
    ("order.scene={colour: 3}", "order.scene"),
    ("order.scene={range_m: [0.1, 20]}", "field of view"),
    ("order.scene={power_spread_db: [5, 1]}", "power_spread_db"),
    ("order.scene={K: 9}", "order.scene.K=9 exceeds system.K_max=5"),
])
def test_bad_values_name_the_field(override, field):
    with pytest.raises(ConfigError, match=field.split(".")[-1]) as err:
        load_train_config(None, [override])
    assert "Value error" not in str(err.value) and "<config>" not in str(err.value)


def test_a_check_across_sections_and_a_nested_field_read_once():
    # a review: "<config>: Value error, invalid configuration: <config>: Value error, ..."
    with pytest.raises(ConfigError) as err:
        load_train_config(None, ["scene.K=9"])
    assert str(err.value) == "invalid training configuration: scene.K=9 exceeds system.K_max=5"
    with pytest.raises(ConfigError) as err:
        load_train_config(None, ["order.scene.colour=3"])
    assert str(err.value) == ("invalid training configuration: order.scene.colour: Extra "
                              "inputs are not permitted")


def test_snr_curriculum_and_hpo_jitter_reach_the_data_and_beta(tmp_path):
    from risloc.training.data import TrainData
    from risloc.training.loop import Trainer

    cfg = load_train_config(None, ["schedule.snr_curriculum=true", "schedule.epochs=10",
                                   "optim.batch_size=16", "model.width=16",
                                   "model.dilations=[1]", "model.hidden=16",
                                   "schedule.hpo_mode=true", f"out_dir={tmp_path}"])
    early = TrainData(cfg).batch(0, epoch=0).snr_db
    assert early.min() >= 10.0 - 1e-4 and early.max() <= 20.0 + 1e-4
    late = TrainData(cfg).batch(0, epoch=9).snr_db
    assert late.min() < 10.0  # the full range -5..20 dB
    tr = Trainer(cfg)
    tr.step = tr.total_steps  # after the warm-up: beta = 0.3 +- 0.02 in HPO mode
    draws = []
    for k in range(50):
        tr.step = tr.total_steps + k
        draws.append(tr.beta())
    assert all(0.28 - 1e-9 <= b <= 0.32 + 1e-9 for b in draws)


def test_a_long_list_of_recipe_differences_says_how_many_it_leaves_out():
    from risloc.training.config import differences, listed

    old = {"system": {f"f{i}": i for i in range(8)}}
    new = {"system": {f"f{i}": i + 1 for i in range(8)}}
    diff = differences(old, new)
    assert len(diff) == 8 and diff[0] == "system.f0: 0 -> 1"
    assert listed(diff).endswith("system.f5: 5 -> 6; and 2 more")
    assert listed(diff[:6]) == "; ".join(diff[:6])


# ------------------------------------------- a second mutation review: what none checked
@pytest.mark.parametrize("override, ok", [
    ("optim.min_lr_ratio=1", True),  # a constant learning rate
    ("schedule.ema_decay=1", False), ("schedule.swa_frac=1", False),  # (EMA never moves,
    ("schedule.swa_lr_ratio=0", False), ("data.n_val=0", False),      # SWA from epoch 0)
    ("order.scenes=0", True),  # the order stage skipped
    ("schedule.weight_schedule={spectral_scenes: [1, 2, 3]}", False),  # not a loss weight
    ("loss.lam_subspace_align=0", False),  # scheduled: as loss.lam_peak_contrast
])
def test_training_bounds_at_their_edges(override, ok):
    if ok:
        load_train_config(None, [override])
    else:
        with pytest.raises(ConfigError, match=override.split("=")[0].split(".")[-1]):
            load_train_config(None, [override])


def test_checks_across_sections_at_their_edges():
    with pytest.raises(ConfigError, match="spectral_scenes=3 must be a multiple of "
                                          "data.shards=2"):
        load_train_config(None, ["data.shards=2", "loss.spectral_scenes=3"])
    with pytest.raises(ConfigError, match="simulate_on=device cannot run in prefetch=process"):
        load_train_config(None, ["simulate_on=device", "prefetch=process"])
    assert load_train_config(None, ["simulate_on=device"]).prefetch is None  # each alone:
    assert load_train_config(None, ["prefetch=process"]).simulate_on == "host"  # fine
    # the first kind of a mixture is checked against K_max like the others
    with pytest.raises(ConfigError, match=r"data.scene_mix\[0\].scene.K=9 exceeds"):
        load_train_config(None, ["data.scene_mix=[{share: 0.1, scene: {K: 9}}]"])
    # a reversed curriculum start was drawn from, silently (scene.snr_db reversed is refused)
    with pytest.raises(ConfigError, match=r"schedule.curriculum_start_db = \[20, 10\] is "
                       r"reversed: .* moving to scene.snr_db = \[-5, 20\]$"):
        load_train_config(None, ["schedule.snr_curriculum=true",
                                 "schedule.curriculum_start_db=[20, 10]"])
    for on, start in (("true", "[10, 10]"), ("false", "[20, 10]")):  # equal; or unused
        assert load_train_config(None, [f"schedule.snr_curriculum={on}", "schedule."
                                        f"curriculum_start_db={start}"]).schedule.snr_curriculum \
            == (on == "true")


def test_scene_files_are_kept_absolute_and_a_stored_recipe_takes_overrides(tmp_path,
                                                                            monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = load_train_config(None, ["data.val_file=val.h5"])
    assert cfg.data.val_file == tmp_path / "val.h5"  # resumable from any folder
    stored = load_train_config(None, ["optim.lr=0.01"]).to_json()
    assert TrainConfig.from_json(stored, ["optim.lr=0.02"]).optim.lr == 0.02


# ------------------------------------------- a third mutation review: what none checked
def test_music_follows_the_evaluation_section_field_by_field():
    m = load_train_config(None, ["evaluation.n_azimuth=33", "evaluation.n_elevation=17",
                                 "evaluation.n_range=5", "evaluation.refine_iterations=2"]
                          ).music_config()
    assert (m.n_azimuth, m.n_elevation, m.n_range, m.refine_iterations) == (33, 17, 5, 2)


def test_the_trajectory_leaves_out_how_a_run_runs_and_names_scene_files_given(tmp_path):
    from risloc.training.config import trajectory

    base = load_train_config(None)
    d = trajectory(base)
    assert "order" not in d and "out_dir" not in d and d["schedule"]["patience"] == 10
    assert "patience" not in trajectory(base, stopping=False)["schedule"]
    assert "min_improvement" not in trajectory(base, stopping=False)["schedule"]
    other = load_train_config(None, ["order.scenes=0", f"out_dir={tmp_path}", "threads=2"])
    assert trajectory(other) == d
    a, b = (trajectory(load_train_config(None, [f"data.val_file={tmp_path / n}"]))
            for n in ("a.h5", "b.h5"))
    assert a == b and a["data"]["val_file"] == "given" and d["data"]["val_file"] is None
    assert trajectory(load_train_config(None, ["optim.lr=0.01"])) != d


def test_differences_name_a_field_only_one_side_has_and_not_equal_values():
    from risloc.training.config import differences

    assert differences({"s": {"a": [1.5, 2.5]}}, {"s": {"a": [1.5, 2.5], "b": 1}}) == [
        "s.b: None -> 1"]
    assert differences({"s": {"a": 1}}, {}) == ["s: {'a': 1} -> None"]


def test_a_stored_recipe_of_an_older_format_is_read():
    import json

    stored = json.loads(load_train_config(None).to_json())
    stored["model"]["azimuth_deg"] = [-60, 60]  # the model's own field of view, retired
    stored["order"]["unknown_snr"] = 2          # the order head read the SNR, retired
    assert TrainConfig.from_json(json.dumps(stored)) == load_train_config(None)


@pytest.mark.parametrize("override, ok", [
    ("data.snr_shown=1.5", False), ("optim.warmup_steps=0", True),
    ("schedule.beta_jitter_hpo=0.6", False), ("schedule.beta_jitter=0.6", False),
    # (a third mutation review: gt=0 read as ge=0, ge=1 as ge=0, le=1 as lt=1 passed)
    ("optim.lr=0", False), ("optim.grad_clip=0", False), ("optim.batch_size=0", False),
    ("schedule.curriculum_frac=1", True),
    # accepted before, failing only when AdamW was built or the phase began (mid-run)
    ("optim.betas=[0.9, 1]", False), ("optim.betas=[0, 0.5]", True),
    ("schedule.weight_schedule={lam_peak_contrast: [0.05, 0.1, -1]}", False),
    ("schedule.weight_schedule={lam_peak_contrast: [0, 0, 0]}", True),
])
def test_more_bounds_at_their_edges(override, ok):
    test_training_bounds_at_their_edges(override, ok)


def test_a_scene_file_under_home_is_expanded(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    assert load_train_config(None, ["data.train_file=~/t.h5"]).data.train_file \
        == tmp_path / "t.h5"


@pytest.mark.parametrize("text", ["[]", "null", "3"])
def test_a_stored_recipe_that_is_not_a_mapping_is_refused_not_read_as_the_defaults(text):
    """A review: merged with the overrides first, '[]' read as the default recipe (a resume
    compared itself with it) and 'null' raised a bare TypeError past `train --resume`."""
    with pytest.raises(ConfigError, match="Input should be a valid dictionary"):
        TrainConfig.from_json(text, ["optim.lr=0.01"])


def test_learning_rate_is_pointed_to_optim_lr(tmp_path):
    """A recipe author's `optim.learning_rate` (the name most libraries use) is refused
    with the recipe's name for it; difflib alone offered nothing."""
    recipe = tmp_path / "my.yaml"
    recipe.write_text("optim:\n  learning_rate: 2.0e-3\n")
    with pytest.raises(ConfigError, match=r"optim\.learning_rate: .*\(did you mean optim\.lr\?\)"):
        load_train_config(recipe)
    with pytest.raises(ConfigError, match=r"\(did you mean optim\.lr\?\)"):
        load_train_config(None, ["learning_rate=1e-3"])


# ------------------------------- the fourth and fifth mutation reviews: what none checked
@pytest.mark.parametrize("override, ok", [
    ("schedule.weight_final_frac=1", True), ("schedule.beta_warmup_frac=1", True),
    ("order.report_scenes=0", False), ("schedule.swa_anneal_epochs=0", False),
    ("optim.accumulation=0", False),
    # (the fifth)
    ("order.scenes=63", False), ("order.scenes=64", True),  # MIN_ORDER_SCENES, the edge
    ("data.seed=-1", False), ("data.stream=-1", False), ("data.val_offset=-1", False),
    ("data.val_batch_size=0", False), ("seed=-1", False), ("log_every=0", False),
    ("evaluation.n_azimuth=1", False), ("evaluation.n_range=1", False),
    ("evaluation.refine_iterations=0", True), ("evaluation.f1_weight_deg=-1", False),
    ("schedule.epochs=0", False), ("schedule.steps_per_epoch=0", False),
    ("schedule.patience=0", False), ("schedule.min_improvement=-1", False),
    ("schedule.weight_warmup_epochs=0", True), ("schedule.beta_jitter=0.5", True),
    ("optim.weight_decay=-1", False),
])
def test_later_bounds_at_their_edges(override, ok):
    test_training_bounds_at_their_edges(override, ok)


def test_only_process_prefetch_is_refused_with_device_simulation():
    for prefetch in ("thread", "true"):  # the training thread's CUDA, no fork
        assert load_train_config(None, ["simulate_on=device", f"prefetch={prefetch}"]) \
            .simulate_on == "device"


def test_two_scheduled_loss_weights_set_name_the_first():
    with pytest.raises(ConfigError, match=r"^loss.lam_peak_contrast is set"):
        load_train_config(None, ["loss.lam_subspace_align=0", "loss.lam_peak_contrast=0"])


def test_a_scheduled_weight_set_in_loss_names_the_schedule_values_shortest():
    with pytest.raises(ConfigError, match=r"every epoch \(0, 0, 0 in the warm-up"):
        load_train_config(None, ["schedule.weight_schedule.lam_peak_contrast=[0, 0, 0]",
                                 "loss.lam_peak_contrast=1"])
