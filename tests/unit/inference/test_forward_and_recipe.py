"""forward_blend makes R_blend = load(shrink((1 - beta) R_pred + beta R_samp)) from the
recipe's blend settings, and the stored recipe is read strictly (mutation review)."""

import json

import pytest
import torch

from risloc.config import ConfigError, FieldOfView, SceneConfig, SystemConfig
from risloc.covariance.tools import sample_covariance
from risloc.inference.forward import forward_blend
from risloc.inference.recipe import BlendConfig, InferenceRecipe
from risloc.model import CovarianceNet, ModelConfig
from risloc.simulation import simulate_batch

SYSTEM = SystemConfig()


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    model = CovarianceNet(SYSTEM, ModelConfig(width=8, dilations=(1,), hidden=8)).eval()
    sc = simulate_batch(2, SYSTEM, SceneConfig(), torch.Generator().manual_seed(1),
                        snr_db=10.0)
    return model, sc


def _unit_trace(R, N):
    R = (R + R.mH) / 2
    return R * (N / torch.diagonal(R, dim1=-2, dim2=-1).real.sum(-1)).view(-1, 1, 1)


def test_r_blend_is_the_beta_mix_of_r_pred_and_r_samp_then_shrunk_and_loaded(setup):
    model, sc = setup
    N, beta = SYSTEM.N, 0.2
    cfg = BlendConfig(beta=0.9, shrinkage=0.1, loading=0.05, bp_alpha=0.5)  # beta given apart
    with torch.no_grad():
        fwd = forward_blend(model, sc.y, sc.H, sc.codes, sc.snr_db, beta, cfg)
    R_samp = sample_covariance(sc.y, sc.H, sc.codes, alpha=0.5, N=N)  # the blend's alpha
    torch.testing.assert_close(fwd.R_samp, R_samp, rtol=1e-4, atol=1e-5)
    mix = _unit_trace((1 - beta) * _unit_trace(fwd.out.R_pred, N)
                      + beta * _unit_trace(R_samp, N), N)
    eye = torch.eye(N, dtype=mix.dtype)
    expected = 0.9 * mix + 0.1 * eye + 0.05 * eye  # trace N: mean eigenvalue 1
    torch.testing.assert_close(fwd.R_blend, expected, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(fwd.factor.dense(), fwd.R_blend, rtol=1e-4, atol=1e-5)


def test_dense_false_leaves_out_r_samp_and_r_blend_and_keeps_the_factor(setup):
    """Training reads only the factor: dense=False makes no N x N matrix (a mutation review:
    making them anyway passed every test)."""
    model, sc = setup
    cfg = BlendConfig(shrinkage=0.1, loading=0.05)
    with torch.no_grad():
        dense = forward_blend(model, sc.y, sc.H, sc.codes, sc.snr_db, 0.3, cfg)
        lean = forward_blend(model, sc.y, sc.H, sc.codes, sc.snr_db, 0.3, cfg, dense=False)
    assert lean.R_samp is None and lean.R_blend is None
    torch.testing.assert_close(lean.factor.dense(), dense.R_blend, rtol=1e-4, atol=1e-5)


def test_the_forward_pass_gives_the_network_the_snr(setup):
    model, sc = setup
    with torch.no_grad():
        fwd = forward_blend(model, sc.y, sc.H, sc.codes, sc.snr_db, 0.3)
        given = model(sc.y, sc.H, sc.codes, sc.snr_db)
        blind = model(sc.y, sc.H, sc.codes, None)
    assert torch.equal(fwd.out.K_logits, given.K_logits)
    assert not torch.equal(given.K_logits, blind.K_logits)  # (the SNR matters to this net)


def test_check_false_skips_the_input_checks_and_true_makes_them(setup):
    """The learned pipeline checks its inputs once and passes check=False: no check of
    checks.py runs (each waits for a GPU); by default they run (a mutation review: check
    fixed to either value passed)."""
    from risloc.core.syncs import SyncCounter

    model, sc = setup
    y = sc.y.clone()
    y[0] = 0  # an all-zero scene: refused by the checks
    with torch.no_grad():
        with pytest.raises(ValueError, match="zero"):
            forward_blend(model, y, sc.H, sc.codes, sc.snr_db, 0.3)
        with SyncCounter() as waits:
            forward_blend(model, sc.y, sc.H, sc.codes, sc.snr_db, 0.3, check=False)
        assert not [k for k in waits.syncs if k.startswith("checks.py")], waits.syncs
        with SyncCounter() as waits:
            forward_blend(model, sc.y, sc.H, sc.codes, sc.snr_db, 0.3)
        assert [k for k in waits.syncs if k.startswith("checks.py")]


def _recipe(**sections):
    return json.dumps({"system": SYSTEM.model_dump(), **sections})


def test_a_recipe_without_blend_or_data_reads_the_documented_defaults():
    r = InferenceRecipe.from_json(_recipe())
    assert (r.blend.beta, r.blend.shrinkage, r.blend.loading, r.blend.bp_alpha) == \
        (0.30, 0.0, 0.0, 1e-3)
    assert r.reads_snr  # data.snr_shown defaults to 1: always shown
    assert InferenceRecipe.from_json(_recipe(data={"snr_shown": 0.25})).reads_snr
    assert not InferenceRecipe.from_json(_recipe(data={"snr_shown": 0})).reads_snr


@pytest.mark.parametrize("blend,field", [
    ({"beta": 1.5}, "beta"), ({"beta": -0.1}, "beta"), ({"shrinkage": 1.5}, "shrinkage"),
    ({"bp_alpha": 0.0}, "bp_alpha"), ({"loading": -1e-3}, "loading"),
    ({"bta": 0.5}, "bta"),  # a misspelt blend key: refused, not silently the default beta
])
def test_a_recipe_s_bad_blend_is_refused_naming_the_field(blend, field):
    with pytest.raises(ConfigError, match=f"(?s)recipe is invalid.*blend.{field}"):
        InferenceRecipe.from_json(_recipe(blend=blend))


def test_a_recipe_that_is_not_json_is_a_config_error():
    with pytest.raises(ConfigError, match="recipe is invalid"):
        InferenceRecipe.from_json("{not json")


def test_the_network_s_field_of_view_is_the_recipe_scene_s_and_old_keys_are_dropped():
    scene = {"azimuth_deg": [-30, 30], "elevation_deg": [-10, 10], "range_m": [1, 5]}
    old_model = {"width": 8, "azimuth_deg": [-60, 60], "elevation_deg": [-30, 30],
                 "range_m": [0.5, 10]}  # an old recipe's own field of view: replaced
    r = InferenceRecipe.from_json(_recipe(scene=scene, model=old_model))
    assert r.network_config().fov == FieldOfView((-30, 30), (-10, 10), (1, 5))
    assert r.network_config().width == 8


def test_the_scenes_include_the_recipe_s_scene_mix():
    mix = [{"share": 0.25, "scene": {"range_m": [0.5, 1.5]}}]
    r = InferenceRecipe.from_json(_recipe(data={"scene_mix": mix}))
    (w0, base), (w1, near) = r.scenes()
    assert (w0, w1) == (0.75, 0.25) and base == r.scene and near.range_m == (0.5, 1.5)
    other = SceneConfig(snr_db=(0.0, 5.0))
    assert r.scenes(other)[0][1] == other  # the scene given replaces the recipe's
    assert InferenceRecipe.from_json(_recipe()).scenes(other) == other


def test_a_recipe_s_unknown_model_key_is_refused_not_dropped():
    """pydantic drops unknown keys of the ModelConfig dataclass under the recipe's
    extra="ignore": a misspelt (or newer risloc's) model key built another network."""
    with pytest.raises(ConfigError, match="(?s)recipe is invalid.*unknown model key.*widht"
                       ) as err:
        InferenceRecipe.from_json(_recipe(model={"width": 8, "widht": 9}))
    # one line naming the field, not pydantic's dump of the whole section (a review)
    assert str(err.value) == ("the checkpoint's recipe is invalid: model: unknown model key(s) "
                              "widht (a recipe of a newer risloc? upgrade risloc to read it)")
    with pytest.raises(ConfigError, match="recipe is invalid"):  # JSON, but not an object
        InferenceRecipe.from_json("[1, 2]")


def test_a_recipe_s_snr_shown_outside_0_1_is_refused():
    with pytest.raises(ConfigError, match="(?s)recipe is invalid.*data.snr_shown"):
        InferenceRecipe.from_json(_recipe(data={"snr_shown": 1.5}))
    with pytest.raises(ConfigError, match="(?s)recipe is invalid.*data.seed"):
        InferenceRecipe.from_json(_recipe(data={"seed": -1}))  # the order head's scenes


def test_an_old_training_recipe_with_order_unknown_snr_still_resumes():
    from risloc.inference.recipe import migrate_recipe
    from risloc.training.config import TrainConfig, load_train_config

    old = json.loads(load_train_config(None, []).to_json())
    old["order"]["unknown_snr"] = True
    assert "unknown_snr" not in migrate_recipe(old)["order"] and old["order"]["unknown_snr"]
    assert TrainConfig.from_json(json.dumps(old)).order == load_train_config(None, []).order
