import dataclasses
import json
import math
import re
import warnings

import h5py
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from risloc.config import SceneConfig, SystemConfig
from risloc.io import SceneDataset, SceneFileError, SceneFileWriter, read_scenes, write_scenes
from risloc.io.atomic import SUFFIX
from risloc.io.scenefile import (
    batch_to_arrays,
    batch_truth_problems,
    inspect_scene_file,
    iter_scene_chunks,
    scorable_mask,
    scorable_truth,
    truth_problems,
)
from risloc.simulation import SceneBatch, simulate_range


@pytest.fixture(scope="module")
def batch(system):
    return simulate_range(0, 50, system, SceneConfig(), seed=0, split="test")


@pytest.mark.parametrize("ext", ["h5", "npz"])
def test_round_trip_exact(tmp_path, batch, system, ext):
    path = write_scenes(tmp_path / f"s.{ext}", batch, system, {"split": "test"})
    back, info = read_scenes(path)
    assert info.n_scenes == 50 and info.has_truth and info.system == system
    assert torch.equal(back.y, batch.y) and torch.equal(back.H, batch.H)
    assert torch.equal(back.codes, batch.codes) and torch.equal(back.snr_db, batch.snr_db)
    assert torch.equal(back.K, batch.K)
    a, b = batch_to_arrays(back, system.K_max), batch_to_arrays(batch, system.K_max)
    for k in a:  # the file datasets round-trip bit for bit (NaN padding included)
        np.testing.assert_array_equal(a[k], b[k])
    assert [p.name for p in tmp_path.iterdir()] == [f"s.{ext}"]


def test_records_configuration(tmp_path, batch, system):
    path = write_scenes(tmp_path / "s.h5", batch, system, {"config": '{"a": 1}'})
    with h5py.File(path) as f:
        assert json.loads(f.attrs["system"])["N_H"] == 12
        assert f.attrs["config"] == '{"a": 1}'


def test_the_chunk_writer_takes_what_write_scenes_takes(tmp_path, batch, system):
    """A system as a dict, a batch of NumPy arrays (a review: AttributeErrors from inside)."""
    from dataclasses import fields

    as_numpy = type(batch)(**{f.name: None if getattr(batch, f.name) is None else
                              getattr(batch, f.name).numpy() for f in fields(batch)})
    with SceneFileWriter(tmp_path / "w.h5", len(batch), system.model_dump()) as w:
        w.write(0, as_numpy[:20])
        w.write(20, batch[20:])
    back, _ = read_scenes(tmp_path / "w.h5")
    assert torch.equal(back.y, batch.y) and torch.equal(back.K, batch.K)


def test_interrupted_write_leaves_no_file(tmp_path, batch, system):
    target = tmp_path / "s.h5"
    with pytest.raises(RuntimeError):
        with SceneFileWriter(target, 100, system) as w:
            w.write(0, batch)
            raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(SceneFileError, match=r"only 50 of 100 .* \(missing: \[50, 51"):
        with SceneFileWriter(target, 100, system) as w:
            w.write(0, batch)
    assert list(tmp_path.iterdir()) == []
    # the same scenes twice (a slip for write(50, ...)) would leave scenes 50..99 zero
    with pytest.raises(SceneFileError, match=r"scene\(s\) \[0, 1, 2.*were written already"):
        with SceneFileWriter(target, 100, system) as w:
            w.write(0, batch)
            w.write(0, batch)
    for start in (-1, 1.0, True):
        with pytest.raises(SceneFileError, match="start must be a scene index >= 0"):
            with SceneFileWriter(target, 100, system) as w:
                w.write(start, batch)
    bare = dataclasses.replace(batch, K=None, azimuth=None, elevation=None, range_m=None,
                               powers=None)
    with pytest.raises(SceneFileError, match="carry no truth, but the writer stores it"):
        with SceneFileWriter(target, 50, system) as w:
            w.write(0, bare)
    with SceneFileWriter(target, 50, system, with_truth=False) as w:
        w.write(0, bare)
    assert not read_scenes(target)[1].has_truth


def test_truncated_and_garbage_files_refused(tmp_path, batch, system):
    path = write_scenes(tmp_path / "s.h5", batch, system)
    data = path.read_bytes()
    (tmp_path / "trunc.h5").write_bytes(data[: len(data) // 3])
    with pytest.raises(SceneFileError, match="truncated or corrupt") as err:
        read_scenes(tmp_path / "trunc.h5")
    assert "\n" not in str(err.value)  # h5py's message spans lines; the CLI says one
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(SceneFileError, match="not a readable .npz"):
        read_scenes(tmp_path / "junk.npz")
    with pytest.raises(SceneFileError, match="no such file"):
        read_scenes(tmp_path / "missing.h5")
    (tmp_path / "runs.h5").mkdir()  # a folder is not called corrupt
    with pytest.raises(SceneFileError, match="runs.h5: a folder, not a scene file"):
        read_scenes(tmp_path / "runs.h5")
    (tmp_path / "v5.mat").write_bytes(b"MATLAB 5.0 MAT-file, Platform: GLNXA64" + bytes(100))
    with pytest.raises(SceneFileError, match=r"v5.mat: a MATLAB v5/v7 .mat file, which is not "
                                             r"HDF5: save it with save\(..., '-v7.3'\)"):
        read_scenes(tmp_path / "v5.mat")  # MATLAB's default: not called corrupt either
    (tmp_path / "model.pt").write_bytes(b"PK\x03\x04")  # a model is not called corrupt
    with pytest.raises(SceneFileError, match=r"model.pt: a model or checkpoint file, not a "
                                             r"scene file .* model card \(model.json beside "
                                             r"it\); a training checkpoint has none"):
        read_scenes(tmp_path / "model.pt")
    for name in ("epochs.csv", "metrics.json"):  # a run's files are not called corrupt
        (tmp_path / name).write_text("epoch\n1\n")
        with pytest.raises(SceneFileError, match=rf"{name}: a {name[-4:].strip('.')} file, "
                                                 r"not a scene file \(.h5 / .npz"):
            read_scenes(tmp_path / name)


def _npz(tmp_path, **arrays):
    path = tmp_path / "user.npz"
    np.savez(path, **arrays)
    return path


def test_mismatched_shapes_dtypes_system_refused(tmp_path, batch, system):
    arr = batch_to_arrays(batch, system.K_max)
    bad_H = dict(arr, H=arr["H"][:, :, :100])
    with pytest.raises(SceneFileError, match="'H' has shape"):
        read_scenes(_npz(tmp_path, **bad_H))
    with pytest.raises(SceneFileError, match=r"must be complex, got float32 \(its real part "
                       r"only\? store the complex values as complex64"):
        read_scenes(_npz(tmp_path, **dict(arr, y=arr["y"].real)))
    with pytest.raises(SceneFileError, match="missing required"):
        read_scenes(_npz(tmp_path, y=arr["y"], H=arr["H"]))
    other = SystemConfig(M=8, K_max=3).model_dump_json()
    with pytest.raises(SceneFileError, match="'y' has shape"):
        read_scenes(_npz(tmp_path, **dict(arr, system=np.array(other))))
    with pytest.raises(SceneFileError, match="bad 'system'"):
        read_scenes(_npz(tmp_path, **dict(arr, system=np.array('{"M": -3}'))))
    with pytest.raises(SceneFileError, match="true positions must come together.*found only "
                                             r"\['azimuth_deg', 'elevation_deg'\]"):
        read_scenes(_npz(tmp_path, **{k: v for k, v in arr.items() if k != "range_m"}))
    with pytest.raises(SceneFileError, match=r"'snr_db' has shape \(3,\), expected \(50,\)$"):
        read_scenes(_npz(tmp_path, **dict(arr, snr_db=arr["snr_db"][:3])))


def test_a_shared_channel_swapped_axes_or_missing_names_get_their_fix(tmp_path, batch, system):
    """A new user's review: one H (or code sequence) for all scenes was told to add a
    leading axis of 1, then that the default system was assumed; H (S, N, M) had the system
    note too; a file without 'y' did not say what it held."""
    arr = batch_to_arrays(batch, system.K_max)
    for name, tail in (("H", "16, 144"), ("codes", "16, 144")):
        for one in (arr[name][0], arr[name][:1]):
            with pytest.raises(SceneFileError, match=rf"'{name}' has shape .*the same {name} "
                               rf"for all 50 scenes\? .*np.broadcast_to\({name}.reshape"
                               rf"\({tail}\), \(50, {tail}\)\) in NumPy$"):
                read_scenes(_npz(tmp_path, **dict(arr, **{name: one})))
        swapped = np.ascontiguousarray(arr[name].transpose(0, 2, 1))
        with pytest.raises(SceneFileError, match=rf"'{name}' has shape \(50, 144, 16\), its "
                           rf"last two axes swapped: .*np.swapaxes\({name}, 1, 2\)"):
            read_scenes(_npz(tmp_path, **dict(arr, **{name: swapped})))
    for one in (np.float32(10.0), np.float32([10.0])):  # one SNR for every scene
        with pytest.raises(SceneFileError, match=r"'snr_db' has shape \(1?,?\), expected "
                           r"\(50,\) \(one SNR for all 50 scenes\? np.full\(50, snr_db\)"):
            read_scenes(_npz(tmp_path, **dict(arr, snr_db=one)))
    with pytest.raises(SceneFileError, match=r"expected \(50, 16, 144\) for S=50 scenes and "
                                             r"the file's system \(L=16, M=16, N=144\)$"):
        read_scenes(_npz(tmp_path, **dict(arr, H=arr["H"][:7])))  # S alone: no system note
    split = {k: v for k, v in arr.items() if k != "y"}
    with pytest.raises(SceneFileError, match=r"missing required dataset\(s\) \['y'\]; it "
                                             r"holds \[H, .*y_imag, y_real\]: files hold"):
        read_scenes(_npz(tmp_path, **split, y_real=arr["y"].real, y_imag=arr["y"].imag))
    path = tmp_path / "grouped.h5"
    with h5py.File(path, "w") as f:
        for k in ("y", "H", "codes"):
            f[f"data/{k}"] = arr[k]
    with pytest.raises(SceneFileError, match=r"holds \[data \(a group\)\]"):
        read_scenes(path)
    # a required name in another case is named with the one it misses (a new user's
    # review: MATLAB's Y and H read as Y and h); the others stay as they are
    path = tmp_path / "cased.h5"
    with h5py.File(path, "w") as f:
        f["Y"], f["h"], f["codes"], f["K"] = arr["y"], arr["H"], arr["codes"], np.ones(50)
    with pytest.raises(SceneFileError, match=r"\['y', 'H'\]; it holds \[K, Y \(did you mean "
                       r"y\? names are case-sensitive\), codes, h \(did you mean H\? names "
                       r"are case-sensitive\)\]: files hold"):
        read_scenes(path)


def test_codes_stored_as_booleans_are_named_bits_with_the_plus_minus_one_to_store(
        tmp_path, batch, system):
    arr = batch_to_arrays(batch, system.K_max)
    bits = np.random.default_rng(0).integers(0, 2, arr["codes"].shape).astype(bool)
    path = tmp_path / "bits.h5"
    with h5py.File(path, "w") as f:
        for k, v in dict(arr, codes=bits).items():
            f[k] = v
    for p in (path, _npz(tmp_path, **dict(arr, codes=bits))):
        with pytest.raises(SceneFileError, match=r"'codes' must be complex, got bool \(bits\? "
                           r"codes are unit-modulus phases: a 1-bit RIS's are \+-1, 1 - 2 \* "
                           r"codes.astype\(np.int8\) in NumPy\)$"):
            read_scenes(p)


def test_matlab_complex_compounds_are_read_and_reversed_axes_named(tmp_path, batch, system):
    """MATLAB (v7.3 .mat, h5create) stores complex arrays as a compound of float fields
    real and imag, and every array with its dimensions in reverse order."""
    arr = batch_to_arrays(batch, system.K_max)
    pair = np.dtype([("real", "<f8"), ("imag", "<f8")])
    path = tmp_path / "matlab.h5"
    with h5py.File(path, "w") as f:
        for k in ("y", "H", "codes"):
            c = np.empty(arr[k].shape, pair)
            c["real"], c["imag"] = arr[k].real, arr[k].imag
            f[k] = c
        f["snr_db"] = arr["snr_db"]
    back, info = read_scenes(path)
    assert info.n_scenes == 50 and not info.has_truth
    assert torch.equal(back.y, batch.y) and torch.equal(back.H, batch.H)
    assert torch.equal(back.codes, batch.codes) and back.y.dtype == torch.complex64
    for name in ("y", "H", "codes"):  # each named as reversed, with the shape it should have
        rev = np.ascontiguousarray(arr[name].transpose(2, 1, 0))
        with pytest.raises(SceneFileError, match=rf"'{name}' has shape \({rev.shape[0]}, "
                           rf"\d+, 50\), its axes reversed: \(50, \d+, \d+\) = \(S, "
                           rf"{dict(y='L, M', H='M, N', codes='L, N')[name]}\).*MATLAB.*"
                           rf"permute\({name}, \[3 2 1\]\)$"):
            read_scenes(_npz(tmp_path, **dict(arr, **{name: rev})))
    with pytest.raises(SceneFileError, match=r"must be complex, .*\(a pair of float32 fields: "
                       r"store them as complex64, y\['re'\] \+ 1j \* y\['im'\] in NumPy"):
        other = np.zeros(arr["y"].shape, [("re", "<f4"), ("im", "<f4")])  # other compounds
        read_scenes(_npz(tmp_path, **dict(arr, y=other)))  # are not read
    with pytest.raises(SceneFileError, match=r"\(a pair of int16 fields: integer I/Q samples\?: "
                       r"store them as complex64, y\['real'\] \+ 1j"):  # (a user's review)
        other = np.zeros(arr["y"].shape, [("real", "<i2"), ("imag", "<i2")])
        read_scenes(_npz(tmp_path, **dict(arr, y=other)))
    with pytest.raises(SceneFileError, match=r"must be complex, got .*S8.*'<f4'\)\]$"):  # no advice
        other = np.zeros(arr["y"].shape, [("name", "S8"), ("v", "<f4")])  # for text fields
        read_scenes(_npz(tmp_path, **dict(arr, y=other)))
    # every dataset stacked scenes-last (y (L, M, S) reads like a reversed (M, L, S) where
    # L = M: H tells; a review: "reversed", whose fix transposed every y); MATLAB holds
    # such a file's y as (S, M, L): [2 3 1] makes it (M, L, S), read (S, L, M) (a review:
    # [3 1 2] made it (L, S, M), read as (M, S, L))
    last = {k: np.moveaxis(arr[k], 0, -1) for k in ("y", "H", "codes")}
    with pytest.raises(SceneFileError, match=r"the scene axis comes last \(y \(16, 16, 50\), "
                                             r"H \(16, 144, 50\).*np.moveaxis\(x, -1, 0\) "
                                             r"in NumPy, permute\(x, \[2 3 1\]\) in MATLAB"):
        read_scenes(_npz(tmp_path, **dict(arr, **last)))
    # real and imaginary parts on a last axis of 2 (a review: a note on the system instead)
    pairs = np.stack([arr["y"].real, arr["y"].imag], -1)
    with pytest.raises(SceneFileError, match=r"'y' has shape \(50, 16, 16, 2\): real and "
                                             r"imaginary parts on a last axis of 2\?"):
        read_scenes(_npz(tmp_path, **dict(arr, y=pairs)))


def test_wide_files_of_any_units_read_and_one_scene_needs_its_axis(tmp_path, batch, system):
    """complex128 (or MATLAB float64 pairs) y and H of any units: scenes whose values
    complex64 cannot hold (1e50: inf; 1e-50: zero) are scaled by a power of two before the
    cast, and localize as the file in ordinary units does; scenes it can hold are cast as
    they are. A single scene saved without its scene axis is named as such."""
    from risloc.pipeline import Localizer

    arr = batch_to_arrays(batch[:4], system.K_max)
    plain = write_scenes(tmp_path / "plain.h5", batch[:4], system)
    pair = np.dtype([("real", "<f8"), ("imag", "<f8")])
    scale = np.array([1e50, 1e-50, 1.0, 3.0]).reshape(4, 1, 1)
    with h5py.File(tmp_path / "wide.h5", "w") as f:
        f.attrs["system"] = system.model_dump_json()
        f["y"] = arr["y"].astype(np.complex128) * scale
        H = arr["H"].astype(np.complex128) * scale[::-1]
        c = np.empty(H.shape, pair)
        c["real"], c["imag"] = H.real, H.imag  # MATLAB's complex double
        f["H"], f["codes"] = c, arr["codes"]
    back, _ = read_scenes(tmp_path / "wide.h5")
    assert bool(torch.isfinite(torch.view_as_real(back.y)).all())
    assert bool((back.y.abs().amax((1, 2)) > 0).all())
    assert torch.equal(back.y[2], batch.y[2]) and torch.equal(back.H[1], batch.H[1] * 1.0)
    loc = Localizer(system, "classical")
    got = loc.localize(back.y, back.H, back.codes).estimates
    ref = loc.localize(*(read_scenes(plain)[0].__getattribute__(k) for k in ("y", "H", "codes"))
                       ).estimates
    assert torch.equal(got.K, ref.K)
    torch.testing.assert_close(got.azimuth, ref.azimuth, atol=1e-4, rtol=0, equal_nan=True)
    one = {k: arr[k][0] for k in ("y", "H", "codes")}
    with pytest.raises(SceneFileError, match=r"'y' has shape \(16, 16\): one scene without "
                       r"its scene axis.*\(S, L, M\).*y\[None\].*MATLAB's save drops a "
                       r"trailing axis of length 1: store the scene twice"):
        read_scenes(_npz(tmp_path, **one))
    # MATLAB's way round it, as the guide gives it: the scene stored twice, read up to 1
    twice = {k: np.stack([v, v]) for k, v in one.items()}
    got, _ = read_scenes(_npz(tmp_path, **twice), 0, 1)
    assert len(got) == 1 and torch.equal(got.y[0], torch.from_numpy(one["y"]))


def test_a_big_endian_file_reads_as_the_native_one(tmp_path, batch, system):
    """Files written on a big-endian machine (or by tools that choose that order)."""
    arr = batch_to_arrays(batch, system.K_max)
    path = tmp_path / "big.h5"
    with h5py.File(path, "w") as f:
        f.attrs["system"] = system.model_dump_json()
        for k, v in arr.items():
            f[k] = v.astype(v.dtype.newbyteorder(">"))
    assert h5py.File(path)["y"].dtype.byteorder == ">"
    back, info = read_scenes(path)
    assert info.has_truth and torch.equal(back.y, batch.y) and torch.equal(back.K, batch.K)
    torch.testing.assert_close(back.range_m.float(), batch.range_m, equal_nan=True)
    (_, chunk), = iter_scene_chunks(path, 0, 5, size=5)
    assert torch.equal(chunk.codes, batch.codes[:5])


def test_a_chunk_size_that_is_no_whole_number_of_scenes_is_named(tmp_path, batch, system):
    """size=2.5 was a raw TypeError from range(), size=True chunks of one scene."""
    path = tmp_path / "s.npz"
    write_scenes(path, batch[:3], system)
    for size in (2.5, 2.0, True, 0, -1, "2"):
        with pytest.raises(SceneFileError, match=r"chunk size must be a whole number of "
                           rf"scenes >= 1, got {re.escape(repr(size))}$"):
            next(iter_scene_chunks(path, size=size))
    assert [lo for lo, _ in iter_scene_chunks(path, size=np.int64(2))] == [0, 2]


def test_real_codes_of_a_1_bit_ris_are_read_as_complex(tmp_path, batch, system):
    arr = batch_to_arrays(batch, system.K_max)
    signs = np.where(np.random.default_rng(0).random(arr["codes"].shape) < 0.5, -1, 1)
    for dtype in (np.float32, np.int8):
        back, _ = read_scenes(_npz(tmp_path, **dict(arr, codes=signs.astype(dtype))))
        assert back.codes.dtype == torch.complex64
        assert torch.equal(back.codes, torch.from_numpy(signs).to(torch.complex64))
    with pytest.raises(SceneFileError, match="'y' must be complex"):  # y and H stay complex
        read_scenes(_npz(tmp_path, **dict(arr, y=arr["y"].real.copy())))


def test_user_file_without_optional_fields(tmp_path, batch, system):
    arr = batch_to_arrays(batch, system.K_max)
    back, info = read_scenes(_npz(tmp_path, y=arr["y"], H=arr["H"], codes=arr["codes"]))
    assert not info.has_truth and info.system == SystemConfig()
    assert bool(torch.isnan(back.snr_db).all()) and back.K is None


def test_odd_attributes_and_datasets_are_clean_errors(tmp_path, batch, system):
    import h5py

    arr = batch_to_arrays(batch, system.K_max)
    path = write_scenes(tmp_path / "s.h5", batch, system)
    with h5py.File(path, "a") as f:
        f.attrs["system"] = 42  # not a JSON string: how to store one, MATLAB's way too
    with pytest.raises(SceneFileError, match=r"expected a JSON string, got int64: store one "
                                             r"string, .* h5writeatt\(file, '/', 'system', "
                                             r"jsonencode\(struct"):
        read_scenes(path)
    with pytest.raises(SceneFileError, match="'snr_db' must be numeric"):
        read_scenes(_npz(tmp_path, **dict(arr, snr_db=np.array(["10"] * len(batch)))))
    grp = tmp_path / "g.h5"
    with h5py.File(grp, "w") as f:
        f.create_group("y")
        f["H"], f["codes"] = arr["H"], arr["codes"]
    with pytest.raises(SceneFileError, match=r"must be datasets, found HDF5 group\(s\): "
                                             r"store each as one complex dataset at the "
                                             r"file's root"):
        read_scenes(grp)  # (y/real, y/imag: how some MATLAB users split a complex array)
    bad_K = dict(arr, K=np.full(len(batch), 7, dtype=np.int32))
    with pytest.raises(SceneFileError, match=r"truth of 50 scene\(s\) cannot be scored "
                                             r"\(scene 0: K = 7 outside 1..5"):
        read_scenes(_npz(tmp_path, **bad_K))
    # truth arrays wider than the system's K_max: K is still capped by K_max
    wide = {k: np.pad(arr[k], ((0, 0), (0, 3)), constant_values=np.nan)
            for k in ("azimuth_deg", "elevation_deg", "range_m")}
    K6 = arr["K"].copy()
    K6[4] = 6
    wide["azimuth_deg"][4, :6] = wide["elevation_deg"][4, :6] = 1.0
    wide["range_m"][4, :6] = 2.0
    info = inspect_scene_file(_npz(tmp_path, **dict(arr, **wide, K=K6)))
    assert info.truth_problems == ((4, "K = 6 outside 1..5"),)
    # K as MATLAB writes it (double): whole numbers read as integers, others are named
    path = _npz(tmp_path, **dict(arr, K=arr["K"].astype(np.float64)))
    assert torch.equal(read_scenes(path)[0].K, batch.K)
    Kf = arr["K"].astype(np.float64)
    Kf[[2, 3]] = 1.5, np.inf
    with pytest.raises(SceneFileError, match=r"'K' must hold whole numbers .* got 1.5 in "
                                             r"scene\(s\) \[2, 3\]"):
        inspect_scene_file(_npz(tmp_path, **dict(arr, K=Kf)))
    # NaN, MATLAB's "unknown": that scene's truth cannot be scored, the file still reads
    Kf[[2, 3]] = arr["K"][2], np.nan
    path = _npz(tmp_path, **dict(arr, K=Kf))
    assert inspect_scene_file(path).truth_problems == ((3, "K unknown (NaN)"),)
    back, _ = read_scenes(path, truth="unchecked")
    assert back.K[3] == 0 and torch.equal(back.K[4:], batch.K[4:])


def test_a_K_that_leaves_stored_sources_out_is_noted(tmp_path, batch, system):
    """K = 1 where the positions hold more sources: the file reads (zero padding with K is
    legitimate), but a note says the others are not scored (a review: silently believed)."""
    arr = batch_to_arrays(batch, system.K_max)
    assert not any("K is smaller" in n for n in inspect_scene_file(_npz(tmp_path, **arr)).notes)
    zeros = {k: np.nan_to_num(arr[k]) for k in ("azimuth_deg", "elevation_deg", "range_m")}
    assert not any("K is smaller" in n for n in inspect_scene_file(
        _npz(tmp_path, **dict(arr, **zeros))).notes)  # zeros beyond K: padding
    many = np.flatnonzero(arr["K"] >= 2)
    K1 = arr["K"].copy()
    K1[many[:3]] = 1
    note = [n for n in inspect_scene_file(_npz(tmp_path, **dict(arr, K=K1))).notes
            if "K is smaller" in n]
    assert note == [f"K is smaller than the sources stored in 3 scene(s) "
                    f"{[int(i) for i in many[:3]]} (scene {many[0]}: K = 1, a source in slot 1): "
                    "only the first K are scored, so estimates of the others count as false "
                    "alarms; pad unused slots with NaN, or correct K"]
    # K = 0 with positions stored: truth that cannot be scored (named as such), not this
    # note as well (a review: two contradicting messages for one scene)
    K0 = arr["K"].copy()
    K0[many[0]] = 0
    info = inspect_scene_file(_npz(tmp_path, **dict(arr, K=K0)))
    assert not any("K is smaller" in n for n in info.notes)
    assert [s for s, _ in info.truth_problems] == [int(many[0])]


def test_unusable_truth_is_named_and_the_measurements_still_read(tmp_path, batch, system):
    """Truth that cannot be scored (NaN where a source should be, a range <= 0, K = 0 of a
    noise-only scene) makes reading the truth an error naming the scenes; the measurements
    still read (what `risloc localize` needs). An infinite SNR, other groups and object
    arrays."""
    import h5py

    arr = batch_to_arrays(batch, system.K_max)
    az, r, K = arr["azimuth_deg"].copy(), arr["range_m"].copy(), arr["K"].copy()
    el = arr["elevation_deg"].copy()
    az[5, 0], r[7, 0], K[9], el[6, 0] = np.nan, -1.0, 0, 120.0
    az[8, int(K[8])] = np.nan  # beyond K: padding, not a problem
    az[4, 0] = 300.0  # an azimuth in 0..360: the same direction, scored
    el[3, 0] = -90.0  # straight down, at the limit: scored
    path = _npz(tmp_path, **dict(arr, azimuth_deg=az, elevation_deg=el, range_m=r, K=K))
    info = inspect_scene_file(path)
    assert info.has_truth and info.n_truth_problems == 4
    assert info.truth_problems == ((5, f"a non-finite true position among its K = {K[5]} "
                                       "sources"), (6, "a true elevation beyond +-90 deg"),
                                   (7, "a true range <= 0"), (9, "K = 0 outside 1..5"))
    unchecked, _ = read_scenes(path, truth="unchecked")  # the same scenes, in radians
    assert batch_truth_problems(unchecked, system.K_max) == list(info.truth_problems)
    with pytest.raises(SceneFileError, match=r"truth of 4 scene\(s\) cannot be scored"):
        read_scenes(path)
    with pytest.raises(SceneFileError, match=r"truth of 4 scene\(s\)"):
        SceneDataset(path)  # training from it: an error before the first batch
    back, _ = read_scenes(path, truth=False)
    assert back.K is None and torch.equal(back.y, batch.y)
    chunks = list(iter_scene_chunks(path, size=20, truth=False))
    assert [len(c) for _, c in chunks] == [20, 20, 10] and chunks[0][1].K is None
    snr = arr["snr_db"].copy()
    snr[[3, 4]] = np.inf, 1e4  # 1e4 dB: a noise power float32 cannot hold
    with pytest.raises(SceneFileError, match=r"infinite or beyond \+-300 dB in 2 scene\(s\) "
                                             r"\[3, 4\]; write NaN"):
        inspect_scene_file(_npz(tmp_path, **dict(arr, snr_db=snr)))
    h5 = write_scenes(tmp_path / "extra.h5", batch, system)
    with h5py.File(h5, "a") as f:  # MATLAB v7.3 files hold a group #refs#: not ours
        f.create_group("#refs#")["x"] = np.zeros(3)
    assert read_scenes(h5)[1].n_scenes == 50
    z = tmp_path / "obj.npz"
    np.savez(z, **arr, notes=np.array([{"a": 1}], dtype=object))  # an unrelated object array
    assert read_scenes(z)[1].n_scenes == 50
    pickled = tmp_path / "pickled.npz"  # older code pickled the system
    np.savez(pickled, **arr, system=np.array({"M": 16}, dtype=object))
    with pytest.raises(SceneFileError, match=r"\['system'\] stored as pickled Python "
                       r"objects.*JSON text"):
        read_scenes(pickled)
    other = SystemConfig(K_max=4)  # the system as 0-d bytes (numpy's S dtype), not str
    zb = _npz(tmp_path, **dict(arr, system=np.array(other.model_dump_json().encode())))
    assert inspect_scene_file(zb).system == other and not inspect_scene_file(zb).system_assumed
    assert inspect_scene_file(z).system_assumed  # no system: the default is assumed


def test_writing_names_a_wrong_suffix_and_refuses_an_empty_batch(tmp_path, batch, system):
    with pytest.raises(SceneFileError, match=r"\.h5 / \.hdf5 .* \.npz; got 'x\.mat'"):
        write_scenes(tmp_path / "x.mat", batch, system)
    for ext in ("h5", "npz"):
        with pytest.raises(SceneFileError, match=r"nothing to write \(0 scenes\)"):
            write_scenes(tmp_path / f"e.{ext}", batch[:0], system)
    with pytest.raises(TypeError, match="must be a SceneBatch .*radians.*got dict"):
        write_scenes(tmp_path / "d.h5", {"y": batch.y, "H": batch.H, "codes": batch.codes},
                     system)  # (a review: "must be called with a dataclass")
    from risloc.io.dataset import collate_scenes

    with pytest.raises(ValueError, match="no scenes to collate"):
        collate_scenes([])
    assert not list(tmp_path.iterdir())


def test_complex128_scenes_beyond_complex64_s_range_are_refused_not_written_as_inf_or_0(
        tmp_path, batch, system):
    """A review: y of 1e-50 (or 1e50) in complex128 was written as 0 (inf) without a word,
    then read back as all-zero (non-finite) scenes; the scenes are now named. Within range,
    complex128 scenes are written as complex64 (as before)."""
    for scale, shown in ((1e-50, r"[0-9.]+e-5[01]"), (1e50, r"[0-9.]+e\+(49|50)")):
        far = dataclasses.replace(batch, y=batch.y.to(torch.complex128).clone())
        far.y[1] *= scale / float(far.y[1].abs().max())
        for ext in ("h5", "npz"):
            with pytest.raises(SceneFileError, match=rf"y of scene\(s\) \[1\] lies beyond "
                                                     rf"complex64's range.*imaginary part {shown}"):
                write_scenes(tmp_path / f"f.{ext}", far, system)
    hidden = dataclasses.replace(batch, y=batch.y.to(torch.complex128) * 1e50)
    hidden.y[0, 0, 0] = complex("nan")  # (a NaN hid the overflow from the largest |y|)
    with pytest.raises(SceneFileError, match=r"y of scene\(s\) \[0, 1, "):
        write_scenes(tmp_path / "f.h5", hidden, system)
    assert not list(tmp_path.iterdir())
    edge = dataclasses.replace(batch, y=batch.y.to(torch.complex128).clone())
    edge.y[0, 0, 0] = complex(3e38, 3e38)  # |y| 4.2e38, each part a float32
    assert read_scenes(write_scenes(tmp_path / "e.h5", edge, system))[0].y[0, 0, 0] == \
        complex(3e38, 3e38)
    near = dataclasses.replace(batch, H=batch.H.to(torch.complex128) * 1e-20)
    back = read_scenes(write_scenes(tmp_path / "n.h5", near, system))[0]
    torch.testing.assert_close(back.H, (batch.H.to(torch.complex128) * 1e-20).to(torch.complex64))

def test_scenes_that_do_not_fit_the_system_given_are_not_written(tmp_path, batch, system):
    for ext in ("h5", "npz"):
        with pytest.raises(SceneFileError, match=r"y has shape \(50, 16, 16\), but the system "
                           r"given \(L=16, M=8, N=144\) needs \(50, 16, 8\)"):
            write_scenes(tmp_path / f"m.{ext}", batch, system.model_copy(update={"M": 8}))
        few = system.model_copy(update={"K_max": 3})
        with pytest.raises(SceneFileError, match="K=5 sources, more than the system's K_max=3"):
            write_scenes(tmp_path / f"k.{ext}", batch, few)
        small = batch[batch.K <= 3]  # fits K_max = 3: its unused slots are dropped
        back, info = read_scenes(write_scenes(tmp_path / f"ok.{ext}", small, few))
        assert info.system.K_max == 3 and torch.equal(back.K, small.K)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ok.h5", "ok.npz"]
    # what readers refuse is not written: an infinite SNR, truth that cannot be scored,
    # attribute names of the file's own; NumPy values in attributes are stored
    for ext in ("h5", "npz"):
        snr = batch.snr_db.clone()
        snr[2] = math.inf
        snr[4] = -400.0
        with pytest.raises(SceneFileError, match=r"snr_db is infinite or beyond \+-300 dB in "
                                                 r"scene\(s\) \[2, 4\]"):
            write_scenes(tmp_path / f"i.{ext}", dataclasses.replace(batch, snr_db=snr), system)
        K = batch.K.clone()
        K[3] = 0
        with pytest.raises(SceneFileError, match=r"scene 3: K = 0 outside 1..5"):
            write_scenes(tmp_path / f"z.{ext}", dataclasses.replace(batch, K=K), system)
        with pytest.raises(SceneFileError, match="'snr_db' is the file's own"):
            write_scenes(tmp_path / f"a.{ext}", batch, system, {"snr_db": "hello"})
        path = write_scenes(tmp_path / f"n.{ext}", batch[:2], system,
                            {"seed": np.int64(3), "grid": {"n": np.arange(2)}})
        info = inspect_scene_file(path)
        assert int(info.attrs["seed"]) == 3 and json.loads(str(info.attrs["grid"])) == {
            "n": [0, 1]}
        # a file copied with the attributes it was read with (its 'system' among them)
        back, info = read_scenes(path)
        copy = write_scenes(tmp_path / f"copy.{ext}", back, info.system, info.attrs)
        assert int(inspect_scene_file(copy).attrs["seed"]) == 3
        copy.unlink()
        with pytest.raises(SceneFileError, match="describes another system"):
            write_scenes(tmp_path / f"b.{ext}", back, info.system,
                         {"system": SystemConfig(M=8, K_max=3).model_dump_json()})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["n.h5", "n.npz", "ok.h5", "ok.npz"]


def test_a_closed_reader_and_fractional_indices_are_named(tmp_path, batch, system):
    from risloc.io import SceneReader

    for ext in ("h5", "npz"):
        path = write_scenes(tmp_path / f"s.{ext}", batch[:4], system)
        reader = SceneReader(path)
        assert len(reader.read(np.int64(1), 3)) == 2
        with pytest.raises(SceneFileError, match="stop must be a whole number of scenes"):
            reader.read(0, 2.0)
        with pytest.raises(SceneFileError, match="start must be a whole number of scenes"):
            reader.read(True, 3)  # (a bool is an int to Python: not a scene index)
        reader.close()
        with pytest.raises(SceneFileError, match="the reader is closed"):
            reader.read(0, 2)


def test_a_file_without_a_system_of_another_size_says_the_default_was_assumed(tmp_path):
    other = SystemConfig(L=8)
    arr = batch_to_arrays(simulate_range(0, 3, other, SceneConfig(), seed=0, split="test"),
                          other.K_max)
    with pytest.raises(SceneFileError, match=r"expected \(3, 16, 16\).*no 'system' attribute, "
                                             "so the default system was assumed"):
        read_scenes(_npz(tmp_path, **arr))


def test_a_system_stored_field_by_field_is_refused_not_replaced_by_the_default(tmp_path,
                                                                                batch, system):
    """docs/conventions.md: the system is ONE JSON text named `system`. A file that stores its
    fields one by one (f.attrs['wavelength'] = 0.1, ...) has no `system`: assuming the
    default 0.3 m there localized its scenes wrongly without an error."""
    arr = batch_to_arrays(batch[:2], system.K_max)
    path = tmp_path / "loose.h5"
    with h5py.File(path, "w") as f:
        for k, v in arr.items():
            f[k] = v
        f.attrs["wavelength"], f.attrs["N_H"], f.attrs["operator"] = 0.1, 12, "me"
    with pytest.raises(SceneFileError, match=r"stored one by one \(N_H, wavelength\).*"
                                             r"has another wavelength:.*"
                                             r"attrs\['system'\].*\"wavelength\": 0.1"):
        read_scenes(path)
    with pytest.raises(SceneFileError, match=r"one by one \(M\).*another M:.*np.savez"):
        read_scenes(_npz(tmp_path, **arr, M=np.array(8)))
    # fields that all equal the default's are what the default assumes: read
    assert read_scenes(_npz(tmp_path, **arr, M=np.array(16)))[1].system == SystemConfig()
    # with the system's JSON, other attributes of those names are the user's own
    with h5py.File(path, "a") as f:
        f.attrs["system"] = system.model_dump_json()
    assert read_scenes(path)[1].system == system


def test_system_fields_one_by_one_as_numbers_read_in_single_precision_or_matlab_s(
        tmp_path, batch, system):
    """The fields-one-by-one check (above) takes what a field can hold: the default's
    wavelength in single precision is the default's, a 1-element attribute (MATLAB's
    h5writeatt writes numbers so) is the number it holds, and a text that is no number is
    the user's own 'L' or 'M' (a review: float32 0.3 and a note L = 'long run' were refused
    as another system, and a wavelength of [0.1] was not seen)."""
    arr = batch_to_arrays(batch[:2], system.K_max)

    def h5(name, **attrs):
        path = tmp_path / name
        with h5py.File(path, "w") as f:
            for k, v in arr.items():
                f[k] = v
            f.attrs.update(attrs)
        return path

    ok = h5("f32.h5", wavelength=np.float32(0.3), spacing=np.float32(0.15), M=np.float32(16),
            L="long run", N_H="twelve columns", wavefront=np.bytes_("spherical"))
    assert read_scenes(ok)[1].system == SystemConfig()
    with pytest.raises(SceneFileError, match=r"one by one \(wavelength\).*another wavelength"):
        read_scenes(h5("matlab.h5", wavelength=np.array([0.1])))
    with pytest.raises(SceneFileError, match=r"one by one \(M\).*another M"):
        read_scenes(h5("text.h5", M="8"))
    # a number with its unit (a review: '0.1 m' was skipped as the user's own text and the
    # default 0.3 m assumed); the default's value with a unit is the default's
    with pytest.raises(SceneFileError, match=r"another wavelength.*\"wavelength\": 0\.1.*"
                                             r"wavelength read from the text '0\.1 m'"):
        read_scenes(h5("unit.h5", wavelength="0.1 m"))
    assert read_scenes(h5("unit_ok.h5", wavelength="0.3 m", M="16 antennas",
                          spacing=".15m"))[1].system == SystemConfig()
    # the default's number in another unit, or a text that is not the number it begins
    # with, is no default (a review: '0.3 cm' read as the default's 0.3 m, '1/3' as 1)
    for name, attrs in (("cm.h5", {"wavelength": "0.3 cm"}), ("ft.h5", {"spacing": "0.15 ft"}),
                        ("frac.h5", {"N_H": "12/2"}), ("comma.h5", {"wavelength": "0,3"})):
        with pytest.raises(SceneFileError, match=rf"another {next(iter(attrs))}.*read from "
                                                 rf"the text '{next(iter(attrs.values()))}'"):
            read_scenes(h5(name, **attrs))


def test_a_file_the_disk_cannot_hold_is_refused_before_hdf5_writes_it(tmp_path, batch, system,
                                                                       monkeypatch):
    """HDF5 crashed the process (exit 139) on a full disk, leaving its temporary file; the
    space a file needs is now checked first, and a failure while laying it out removes it."""
    import collections

    import risloc.io.scenefile as scenefile

    good = tmp_path / "s.h5"
    write_scenes(good, batch, system)
    before = good.read_bytes()
    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(scenefile.shutil, "disk_usage", lambda p: usage(10**9, 10**9, 10**4))
    with pytest.raises(SceneFileError, match=r"s.h5: \d+ scenes need about \d+ MB, and .* has "
                                             r"0 MB free"):
        write_scenes(good, batch, system)
    assert good.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["s.h5"]
    monkeypatch.undo()

    def fail(self):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(SceneFileWriter, "_layout", fail)
    with pytest.raises(OSError, match="No space left"):
        write_scenes(tmp_path / "t.h5", batch, system)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.h5"]  # no temporary left


def test_the_truth_fields_are_optional_one_by_one(tmp_path, batch, system):
    """docs/conventions.md lists K and the positions as separate optional datasets: positions
    without K give K by their NaN padding (a NaN inside a scene's sources is named, not
    dropped); K without positions is noted and not used (the scenes are localized)."""
    arr = batch_to_arrays(batch, system.K_max)
    no_K = {k: v for k, v in arr.items() if k != "K"}
    back, info = read_scenes(_npz(tmp_path, **no_K))
    assert info.has_truth and info.n_truth_problems == 0
    assert info.notes[0] == ("no 'K': each scene's K is counted by the NaN padding of its "
                             "true positions")
    # a file without its system: read with the default one, and said (its wavelength and
    # spacing cannot be checked against the data)
    assert info.notes[1].startswith("no 'system' attribute: the default system was assumed "
                                    "(RIS 12x12 (N=144)")
    # the fix names where an .npz holds it: an array, not an HDF5 attribute
    assert info.notes[1].endswith("store its JSON as a 0-d string array 'system' in the .npz "
                                  "(docs/conventions.md)")
    assert not any("'system'" in n for n in inspect_scene_file(
        write_scenes(tmp_path / "w.h5", batch[:2], system)).notes)
    assert torch.equal(back.K, batch.K)
    for name in ("azimuth", "elevation", "range_m"):
        assert torch.equal(getattr(back, name).isnan(), getattr(batch, name).isnan())
    holed = {k: v.copy() for k, v in no_K.items()}
    i = int(np.flatnonzero(arr["K"] >= 2)[0])
    holed["range_m"][i, 0] = np.nan  # the first of two or more sources
    info = inspect_scene_file(_npz(tmp_path, **holed))
    assert info.truth_problems == ((i, f"a non-finite true position among its K = "
                                       f"{arr['K'][i]} sources (K counted by the NaN padding "
                                       "of the positions: pad with NaN or store K)"),)
    # a scene without truth among scenes with it (all NaN): said so, not "pad with NaN"
    unknown = {k: v.copy() for k, v in no_K.items()}
    for k in ("azimuth_deg", "elevation_deg", "range_m"):
        unknown[k][1] = np.nan
    info = inspect_scene_file(_npz(tmp_path, **unknown))
    assert info.truth_problems == ((1, "no true source (its positions are all NaN: truth "
                                       "unknown, not scored)"),)
    # truth for some scenes only: read_scenes refuses it by default and says how to read it
    with pytest.raises(SceneFileError, match=r"truth='unchecked' reads such a file as it is"):
        read_scenes(_npz(tmp_path, **unknown))
    back, _ = read_scenes(_npz(tmp_path, **unknown), truth="unchecked")
    assert int(back.K[1]) == 0 and torch.equal(back.K[2:], batch.K[2:])
    ints = {k: np.nan_to_num(v).astype(np.int32) if k in ("azimuth_deg", "elevation_deg",
                                                           "range_m") else v
            for k, v in no_K.items()}  # integers hold no NaN: no K to count
    info = inspect_scene_file(_npz(tmp_path, **ints))
    assert not info.has_truth and "store K too" in info.notes[0]
    empty = dict(arr, **{k: arr[k][:, :0] for k in ("azimuth_deg", "elevation_deg",
                                                     "range_m")})
    info = inspect_scene_file(_npz(tmp_path, **empty))
    assert not info.has_truth and "width 0" in info.notes[0]
    from risloc.io.scenefile import derived_K
    assert derived_K(*(np.zeros((3, 0)),) * 3).tolist() == [0, 0, 0]
    only_K = {k: v for k, v in arr.items() if k not in ("azimuth_deg", "elevation_deg",
                                                          "range_m")}
    back, info = read_scenes(_npz(tmp_path, **only_K))
    assert not info.has_truth and back.K is None and "'K' without true positions" in info.notes[0]
    assert torch.equal(back.y, batch.y)


def test_system_stored_as_a_dataset_says_how_to_store_it(tmp_path, batch, system):
    path = write_scenes(tmp_path / "s.h5", batch[:2], system)
    with h5py.File(path, "a") as f:
        f["system"] = f.attrs.pop("system")
    with pytest.raises(SceneFileError, match=r"stored as the file attribute 'system' "
                                             r"\(f.attrs\['system'\] = json_text; in MATLAB "
                                             r"h5writeatt\(file, '/', 'system', jsonencode\("
                                             r"struct\('M', 16, ...\)\)\)\), not a "
                                             r"dataset; got a dataset of shape \(\)"):
        read_scenes(path)
    arr = batch_to_arrays(batch[:2], system.K_max)
    with pytest.raises(SceneFileError, match=r"a 0-d string array, np.array\(json_text\); "
                                             r"got an array of shape \(1,\)"):
        read_scenes(_npz(tmp_path, **dict(arr, system=np.array([system.model_dump_json()]))))


def test_write_scenes_takes_a_user_s_arrays_and_a_system_dict(tmp_path, batch, system):
    """A review: a system dict (as localize and crb take) and NumPy fields (users' own
    scenes) were tracebacks, and so was a tensor with torch's lazy conjugate bit."""
    from risloc.simulation import SceneBatch

    mine = SceneBatch(y=batch.y.numpy(), H=batch.H.conj().resolve_conj().conj(),
                      codes=batch.codes.numpy(), snr_db=batch.snr_db.tolist())
    path = write_scenes(tmp_path / "mine.h5", mine, system.model_dump())
    got, info = read_scenes(path)
    assert info.system == system and torch.equal(got.H, batch.H)
    assert torch.equal(got.y, batch.y) and not info.has_truth


@pytest.mark.parametrize("ext", ["h5", "npz"])
@pytest.mark.parametrize("field,value", [
    ("snr_db", np.float32(10.0)), ("snr_db", np.full((3, 1), 10.0)),
    ("snr_db", np.full((1, 3), 10.0)), ("K", np.full((3, 1), 1.0)), ("K", np.ones((1, 3)))])
def test_write_scenes_refuses_per_scene_values_not_one_per_scene(tmp_path, batch, system, ext,
                                                                  field, value):
    """A review: snr_db and K are (S,) in a file (docs/conventions.md) and write_scenes never
    writes a file its readers refuse; a scalar or a MATLAB row / column vector was written
    to an .npz that read_scenes refused, and in an .h5 a scalar was broadcast, a (1, S) K
    or an (S, 1) one a NumPy broadcasting error without a name."""
    from risloc.simulation import SceneBatch

    sc = batch[:3]
    truth = dict(K=sc.K, azimuth=sc.azimuth, elevation=sc.elevation, range_m=sc.range_m)
    fields = dict(y=sc.y, H=sc.H, codes=sc.codes, snr_db=sc.snr_db, **truth)
    fields[field] = value
    path = tmp_path / f"s.{ext}"
    with pytest.raises(SceneFileError, match=rf"the scenes' {field} has shape "
                                             rf"{re.escape(str(np.shape(value)))}, but 3 scenes "
                                             r"need one value each, \(3,\)"):
        write_scenes(path, SceneBatch(**fields), system)
    assert not path.exists()
    fields = dict(fields, **{field: getattr(sc, field)},
                  azimuth=sc.azimuth.T)  # (K_max, S): transposed truth is named too
    with pytest.raises(SceneFileError, match=r"azimuth, elevation and range_m must each be "
                                             r"\[B, K\] with B = 3 scenes"):
        write_scenes(path, SceneBatch(**fields), system)


def test_write_scenes_reads_k_only_with_truth_and_names_one_value_for_all(tmp_path, batch,
                                                                          system):
    """A K without positions is not written (the file has no truth), so its shape is no
    reason to refuse the scenes, as it was not before write_scenes checked K; and a scalar
    snr_db for several scenes is named with the fix the reader gave it (np.full)."""
    from risloc.simulation import SceneBatch

    sc = batch[:3]
    path = tmp_path / "s.h5"
    write_scenes(path, SceneBatch(y=sc.y, H=sc.H, codes=sc.codes, snr_db=sc.snr_db,
                                  K=np.int64(1)), system)
    assert not inspect_scene_file(path).has_truth
    with pytest.raises(SceneFileError, match=r"np.full\(3, snr_db\)"):
        write_scenes(tmp_path / "t.h5", SceneBatch(y=sc.y, H=sc.H, codes=sc.codes,
                                                   snr_db=np.float32(10.0)), system)


def test_entries_not_ours_are_not_opened_and_ours_that_cannot_be_read_are_named(
        tmp_path, batch, system):
    """A user's HDF5 file with extras we never read (a dangling link to raw data, a comment
    in Latin-1) reads; one of ours behind a broken link, in a null dataspace or behind a
    filter HDF5 lacks is named, file and dataset."""
    path = write_scenes(tmp_path / "s.h5", batch[:3], system)
    with h5py.File(path, "a") as f:
        f["raw"] = h5py.ExternalLink("missing_raw.h5", "/data")
        f["notes"] = h5py.SoftLink("/nowhere")
        f.attrs["comment"] = np.bytes_("Messung Büro".encode("latin-1"))
    back, _ = read_scenes(path)
    assert torch.equal(back.y, batch[:3].y)
    with h5py.File(path, "a") as f:
        del f["snr_db"]
        f["snr_db"] = h5py.SoftLink("/nowhere")
    with pytest.raises(SceneFileError, match=r"s.h5: 'snr_db' is a link to something missing"):
        read_scenes(path)
    with h5py.File(path, "a") as f:
        del f["snr_db"]
        f["snr_db"] = h5py.Empty("f8")
    with pytest.raises(SceneFileError, match=r"s.h5: dataset 'snr_db' is empty \(an HDF5 null "
                                             r"dataspace\): store one entry per scene, or "
                                             r"leave it out"):
        read_scenes(path)
    with h5py.File(path, "a") as f:  # a filter no library provides (as Blosc's 32001 where
        del f["snr_db"]                # hdf5plugin is missing)
        a = batch[:3].snr_db.numpy().astype(np.float64)
        d = f.create_dataset("snr_db", shape=a.shape, dtype=a.dtype, chunks=a.shape,
                             compression=65000, allow_unknown_filter=True)
        d.id.write_direct_chunk((0,), a.tobytes(), filter_mask=0)
    with pytest.raises(SceneFileError, match=r"dataset 'snr_db' is compressed with HDF5 "
                                             r"filter 65000.*pip install hdf5plugin"):
        read_scenes(path)
    # a group of the user's own named 'system' beside the attribute: not ours, not read
    path = write_scenes(tmp_path / "g.h5", batch[:2], system)
    with h5py.File(path, "a") as f:
        f.create_group("system")["operator"] = np.bytes_("lab B")
    assert torch.equal(read_scenes(path)[0].y, batch[:2].y)


def test_room_for_a_file_is_checked_before_any_work(tmp_path, monkeypatch):
    """A review: `simulate --out huge.npz` grew past 5.8 GB of memory (an .npz is built
    whole), and on a full disk said only '[Errno 28] No space left on device'."""
    import collections

    from risloc.io import scenefile

    system = SystemConfig()
    one = scenefile.scene_file_bytes(1, system)
    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(scenefile.shutil, "disk_usage", lambda p: usage(0, 0, 10 * one))
    monkeypatch.setattr(scenefile, "available_memory", lambda: 100 * one)
    for name in ("a.h5", "a.npz"):
        scenefile.check_room(tmp_path / "new" / name, 10, system)  # fits (folder made later)
        with pytest.raises(SceneFileError, match=rf"{name}: 11 scenes need about .* MB free"):
            scenefile.check_room(tmp_path / name, 11, system)
    monkeypatch.setattr(scenefile.shutil, "disk_usage", lambda p: usage(0, 0, 1000 * one))
    scenefile.check_room(tmp_path / "a.h5", 40, system)  # written chunk by chunk
    scenefile.check_room(tmp_path / "a.npz", 40, system, built=True)  # already in memory
    with pytest.raises(SceneFileError, match="an .npz is built whole in memory: 40 scenes "
                                             "need about .* write an .h5"):
        scenefile.check_room(tmp_path / "a.npz", 40, system)
    batch = simulate_range(0, 11, system, SceneConfig(), split="test")
    monkeypatch.setattr(scenefile.shutil, "disk_usage", lambda p: usage(0, 0, 10 * one))
    with pytest.raises(SceneFileError, match="a.npz: 11 scenes need about"):
        write_scenes(tmp_path / "a.npz", batch, system)
    assert not list(tmp_path.glob("*a.npz*"))


@pytest.mark.parametrize("ext", ["h5", "npz"])
def test_a_scene_file_is_synced_renamed_and_its_folder_synced(tmp_path, sync_events, batch,
                                                              system, ext):
    """Both formats: data synced, renamed, the folder's entry synced (a review: the .h5
    writer never synced the folder, so after a power loss the name could be missing); a
    folder in the target's place is named before any scene is written and no temporary is
    left (a review: a bare IsADirectoryError, the whole .h5 temporary left behind)."""
    events = sync_events
    write_scenes(tmp_path / f"s.{ext}", batch[:4], system)
    assert [e[0] for e in events] == ["fsync", "replace", "fsync"]
    assert events[0][1].endswith(f".partial.{ext}") and events[2][1] == str(tmp_path)
    (tmp_path / f"d.{ext}").mkdir()
    with pytest.raises(SceneFileError, match=rf"d.{ext}: a folder is there"):
        write_scenes(tmp_path / f"d.{ext}", batch[:4], system)
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"d.{ext}", f"s.{ext}"]
    if ext == "h5":
        with pytest.raises(SceneFileError, match="a folder is there"):
            SceneFileWriter(tmp_path / "d.h5", 4, system)
        with pytest.raises(SceneFileError, match="nothing to write"):
            SceneFileWriter(tmp_path / "none.h5", 0, system)


@pytest.mark.parametrize("ext", ["h5", "npz"])
def test_written_truth_is_integer_K_and_nan_padded_positions(tmp_path, batch, system, ext):
    """The contract's truth: K integer, positions NaN beyond each scene's K, as MATLAB and
    NumPy readers see them, whatever a user's batch holds past K (a mutation review: K as
    float32 or 0-padding passed)."""
    filled = dataclasses.replace(batch, **{k: getattr(batch, k).nan_to_num(0.5) for k in
                                           ("azimuth", "elevation", "range_m")})
    path = write_scenes(tmp_path / f"s.{ext}", filled, system)
    raw = h5py.File(path) if ext == "h5" else np.load(path)
    try:
        K = np.asarray(raw["K"])
        assert K.dtype.kind == "i" and K.tolist() == batch.K.tolist()
        assert int(K.min()) < system.K_max  # (padding to check)
        pad = np.arange(system.K_max) >= K[:, None]
        for name in ("azimuth_deg", "elevation_deg", "range_m"):
            values = np.asarray(raw[name])
            assert np.isnan(values[pad]).all() and np.isfinite(values[~pad]).all(), name
    finally:
        if ext == "h5":
            raw.close()


def test_truth_beyond_K_bad_values_or_shapes_is_named(tmp_path, batch, system):
    """Stored positions past a scene's K are not read as sources; a true range of 0, K of
    another shape and text positions are named (a mutation review: each passed)."""
    arr = batch_to_arrays(batch[:3], system.K_max)
    arr["K"] = np.array([1, 2, 1], np.int32)
    for name in ("azimuth_deg", "elevation_deg", "range_m"):
        arr[name] = np.nan_to_num(arr[name], nan=1.0)  # every slot holds a number
    path = tmp_path / "t.npz"
    np.savez(path, **arr)
    back, _ = read_scenes(path, truth="unchecked")
    assert back.mask.sum(1).tolist() == [1, 2, 1]
    assert bool(torch.isnan(back.azimuth[0, 1:]).all())
    zero = dict(arr, range_m=arr["range_m"].copy())
    zero["range_m"][1, 1] = 0.0
    np.savez(path, **zero)
    info = inspect_scene_file(path)
    assert info.n_truth_problems == 1 and info.truth_problems[0] == (1, "a true range <= 0")
    for K in (arr["K"][:, None], arr["K"][:2]):
        np.savez(path, **dict(arr, K=K))
        with pytest.raises(SceneFileError, match="'K' must be integer"):
            inspect_scene_file(path)
    # a MATLAB user's review: a vector reaches the file as (1, S) or (S, 1) and K's message
    # said "must be integer ... got float64 (1, 3)", where doubles are read (the shape was
    # wrong); both K and snr_db now name the row / column vector
    for name in ("K", "snr_db"):
        for vec in (arr[name].astype(np.float64)[None], arr[name].astype(np.float64)[:, None]):
            np.savez(path, **dict(arr, **{name: vec}))
            with pytest.raises(SceneFileError, match=rf"a row or column vector, as MATLAB "
                                                     rf"stores one: .*{name}.reshape\(-1\)"):
                inspect_scene_file(path)
    for text in (arr["azimuth_deg"].astype("S8"), arr["azimuth_deg"].astype(np.complex64)):
        np.savez(path, **dict(arr, azimuth_deg=text))
        with pytest.raises(SceneFileError, match="'azimuth_deg' must be"):
            inspect_scene_file(path)


def test_chunked_reads_stop_where_asked(tmp_path, batch, system):
    """iter_scene_chunks and SceneDataset.batches end at ``stop``, the last chunk cut short
    (a mutation review: a last chunk running past it passed)."""
    path = write_scenes(tmp_path / "s.h5", batch, system)
    chunks = list(iter_scene_chunks(path, 0, 10, size=4))
    assert [(i, len(b)) for i, b in chunks] == [(0, 4), (4, 4), (8, 2)]
    assert torch.equal(chunks[-1][1].y, batch.y[8:10])
    for in_memory in (True, False):
        ds = SceneDataset(path, in_memory=in_memory)
        got = list(ds.batches(4, 0, 10))
        assert [len(b) for b in got] == [4, 4, 2] and torch.equal(got[-1].y, batch.y[8:10])


def test_y_with_its_last_two_axes_swapped_is_named_as_H_and_codes_are(tmp_path):
    """A new user's review: y stored (S, M, L) with L != M got only "expected (3, 32, 8)",
    where H and codes name the swap; only that exact shape, with H and codes of the
    system's M, L and N, is named so (else the system may be what is wrong)."""
    other = SystemConfig(N_H=2, N_V=2, M=8, L=32, K_max=3)
    arr = batch_to_arrays(simulate_range(0, 3, other, SceneConfig(), seed=0, split="test"),
                          other.K_max)
    arr["system"] = np.array(other.model_dump_json())
    swapped = np.ascontiguousarray(arr["y"].transpose(0, 2, 1))
    with pytest.raises(SceneFileError, match=r"user.npz: dataset 'y' has shape \(3, 8, 32\), "
                       r"its last two axes swapped: \(3, L, M\) = \(3, 32, 8\) is expected: "
                       r"np.swapaxes\(y, 1, 2\) in NumPy$"):
        read_scenes(_npz(tmp_path, **dict(arr, y=swapped)))
    H32 = np.zeros((3, 32, other.N), np.complex64)  # H of M = 32: another system, not a swap
    for y, H in ((swapped[:, :, :31], arr["H"]), (swapped, H32)):
        with pytest.raises(SceneFileError, match=r"'y' has shape .*expected \(3, 32, 8\)"):
            read_scenes(_npz(tmp_path, **dict(arr, y=y, H=H)))


def test_h_and_codes_both_swapped_warn_that_y_of_l_equal_m_cannot_be_checked(tmp_path, batch,
                                                                            system):
    """A MATLAB user's review: arrays kept scenes last, y [L M S], H [M N S], codes [L N S],
    reach HDF5 as (S, M, L), (S, N, M), (S, N, L). H's swap was named alone; fixed as told,
    with y left as it was, the file read and, L = M, was localized wrongly without a word
    (docs/guide.md: a swapped y cannot be detected there). The message says so; one swapped
    array alone gets no such note."""
    arr = batch_to_arrays(batch[:3], system.K_max)
    swap = {k: np.ascontiguousarray(arr[k].transpose(0, 2, 1)) for k in ("y", "H", "codes")}
    with pytest.raises(SceneFileError, match=r"'H' has shape \(3, 144, 16\), its last two "
                                             r"axes swapped: .*np.swapaxes\(H, 1, 2\) in NumPy; "
                                             r"H and codes both .* y .*swap its axes too$"):
        read_scenes(_npz(tmp_path, **dict(arr, **swap)))
    with pytest.raises(SceneFileError, match=r"np.swapaxes\(H, 1, 2\) in NumPy$"):
        read_scenes(_npz(tmp_path, **dict(arr, H=swap["H"])))


def test_datasets_not_read_are_noted_with_the_contract_name_they_resemble(tmp_path, batch,
                                                                          system):
    """A new user's review: 'SNR', 'snrdb', 'k', 'Azimuth_deg' were silently ignored (the
    SNR then "unknown"); the file still reads, and a note names what is not read and the
    contract name it resembles (one the file lacks); risloc's own files have no such note."""
    arr = batch_to_arrays(batch[:3], system.K_max)
    path = tmp_path / "u.h5"
    with h5py.File(path, "w") as f:
        for k in ("y", "H", "codes"):
            f[k] = arr[k]
        f["SNR"], f["k"], f["Azimuth_deg"] = arr["snr_db"], arr["K"], arr["azimuth_deg"]
        f["meta"] = np.zeros(2)
        f.create_group("#refs#")["x"] = np.zeros(3)  # MATLAB's: not named
        f.attrs["system"] = system.model_dump_json()
    back, info = read_scenes(path)
    assert torch.equal(back.y, batch[:3].y) and not info.has_snr and not info.has_truth
    assert info.unread == (("Azimuth_deg", "azimuth_deg"), ("SNR", "snr_db"), ("k", "K"),
                           ("meta", None))
    assert info.notes == ("4 dataset(s) not read (not names of the scene file's contract): "
                          "'Azimuth_deg' (did you mean azimuth_deg?), 'SNR' (did you mean "
                          "snr_db, in dB?), 'k' (did you mean K?), 'meta'; names are "
                          "case-sensitive: "
                          "rename such a one to have it read (docs/conventions.md)",)
    z = _npz(tmp_path, **{k: arr[k] for k in ("y", "H", "codes")}, snrdb=arr["snr_db"],
             extra=np.zeros(2), comment=np.array("a 0-d text: an attribute"))
    info = inspect_scene_file(z)
    assert info.unread == (("extra", None), ("snrdb", "snr_db"))
    assert "2 array(s) not read" in info.notes[-1] and "did you mean snr_db?" in info.notes[-1]
    info = inspect_scene_file(_npz(tmp_path, **arr, extra=np.zeros(2)))
    assert info.unread == (("extra", None),) and "did you mean" not in info.notes[-1]
    # a near miss without the contract name's unit says the unit it will be read in (a
    # review: 'azimuth' in radians renamed azimuth_deg reads as degrees)
    z = _npz(tmp_path, **{k: arr[k] for k in ("y", "H", "codes")}, azimuth=arr["azimuth_deg"],
             Range=arr["range_m"], elevation_deg_=arr["elevation_deg"])
    assert ("'Range' (did you mean range_m, in metres?), 'azimuth' (did you mean azimuth_deg, "
            "in degrees?), 'elevation_deg_' (did you mean elevation_deg?)"
            ) in inspect_scene_file(z).notes[-1]
    # a name of another unit that happens to end as the contract's ('range_km' in 'm')
    z = _npz(tmp_path, **{k: arr[k] for k in ("y", "H", "codes")}, range_km=arr["range_m"])
    assert "'range_km' (did you mean range_m, in metres?)" in inspect_scene_file(z).notes[-1]
    for ext in ("h5", "npz"):
        own = inspect_scene_file(write_scenes(tmp_path / f"own.{ext}", batch[:2], system,
                                              {"split": "test", "seed": 3}))
        assert own.unread == () and not any("not read" in n for n in own.notes)


def test_truth_narrower_than_K_names_the_truth_arrays_width(tmp_path, batch, system):
    """A new user's review: positions with 2 columns and K = 5 read "K = 5 outside 1..2",
    which does not say the cause; a K beyond the system's K_max is not blamed on them."""
    arr = batch_to_arrays(batch[:3], system.K_max)
    narrow = {k: arr[k][:, :2] for k in ("azimuth_deg", "elevation_deg", "range_m")}
    K = np.array([5, 1, 6], np.int32)
    info = inspect_scene_file(_npz(tmp_path, **dict(arr, **narrow, K=K)))
    assert info.truth_problems == (
        (0, "K = 5 outside 1..2 (the truth arrays hold only 2 source column(s): store "
            "azimuth_deg, elevation_deg and range_m with K_max = 5 columns, NaN-padded, or "
            "correct K)"), (2, "K = 6 outside 1..2"))


def test_write_scenes_names_each_bad_truth_shape_and_one_snr_in_a_vector(tmp_path, batch,
                                                                         system):
    """A mutation review: truth arrays that differ from each other, hold another number of
    scenes or have a third axis are each refused by name; a 1-element snr_db vector for 3
    scenes is one value for all (np.full), not a row or column vector (reshape keeps one)."""
    from risloc.simulation import SceneBatch

    sc = batch[:3]
    names = ("azimuth", "elevation", "range_m")
    base = dict(y=sc.y, H=sc.H, codes=sc.codes, snr_db=sc.snr_db, K=sc.K,
                **{k: getattr(sc, k) for k in names})
    path = tmp_path / "s.h5"
    for bad in ({"range_m": sc.range_m[:, :-1]},  # one array narrower than the others
                {k: getattr(sc, k)[[0, 1, 2, 0]] for k in names},  # 4 rows for 3 scenes
                {k: getattr(sc, k)[..., None] for k in names}):  # [B, K, 1]
        with pytest.raises(SceneFileError, match=r"azimuth, elevation and range_m must each "
                                                 r"be \[B, K\] with B = 3 scenes"):
            write_scenes(path, SceneBatch(**dict(base, **bad)), system)
    with pytest.raises(SceneFileError, match=r"snr_db has shape \(1,\), but 3 scenes need one "
                                             r"value each, \(3,\) \(one value for all 3 "
                                             r"scenes\? np.full\(3, snr_db\)"):
        write_scenes(path, SceneBatch(**dict(base, snr_db=sc.snr_db[:1])), system)
    assert not path.exists()


def test_swapped_axes_are_named_for_y_first_and_the_l_equal_m_clause_only_there(tmp_path):
    """A mutation review: with L != M, every array swapped names y's swap (H and codes
    swapped too are no reason to stay silent on y), and H and codes swapped beside a y as
    it should be get no clause that a swapped y of L = M cannot be detected."""
    other = SystemConfig(N_H=2, N_V=2, M=8, L=32, K_max=3)
    arr = batch_to_arrays(simulate_range(0, 3, other, SceneConfig(), seed=0, split="test"),
                          other.K_max)
    arr["system"] = np.array(other.model_dump_json())
    swap = {k: np.ascontiguousarray(arr[k].transpose(0, 2, 1)) for k in ("y", "H", "codes")}
    with pytest.raises(SceneFileError, match=r"dataset 'y' has shape \(3, 8, 32\), its last "
                                             r"two axes swapped: .*np.swapaxes\(y, 1, 2\) in "
                                             r"NumPy$"):
        read_scenes(_npz(tmp_path, **dict(arr, **swap)))
    with pytest.raises(SceneFileError, match=r"dataset 'H' has shape \(3, 4, 8\), its last "
                                             r"two axes swapped: .*np.swapaxes\(H, 1, 2\) in "
                                             r"NumPy$"):
        read_scenes(_npz(tmp_path, **dict(arr, H=swap["H"], codes=swap["codes"])))


def test_a_system_with_m_and_n_exchanged_is_named_as_the_default_assumed_not_a_swap(tmp_path):
    """A file without its system whose M and N are the default's N and M: its H reads as
    (S, N, M), a "swap" by shape, but y does not fit the default either, so the message is
    the default system assumed, not np.swapaxes on H (a mutation review)."""
    z = lambda *shape: np.zeros(shape, np.complex64)  # noqa: E731
    path = _npz(tmp_path, y=z(2, 16, 144), H=z(2, 144, 16), codes=z(2, 16, 16))
    with pytest.raises(SceneFileError, match=r"'y' has shape \(2, 16, 144\), expected "
                                             r"\(2, 16, 16\).*default system was assumed"):
        read_scenes(path)


def test_a_single_scene_s_matlab_scalar_gets_the_vector_hint(tmp_path, batch, system):
    """One scene's K or SNR written by MATLAB as a 1 x 1 matrix, (1, 1), is told to be
    reshaped as a longer row or column vector is (it was told only "expected (1,)")."""
    arr = batch_to_arrays(batch[:1], system.K_max)
    for name in ("K", "snr_db"):
        with pytest.raises(SceneFileError, match=rf"'{name}'.*\(1, 1\).*a row or column vector"
                                                 rf".*{name}.reshape\(-1\)"):
            read_scenes(_npz(tmp_path, **dict(arr, **{name: arr[name].reshape(1, 1)})))


def test_system_fields_one_by_one_edge_cases_and_as_h5_datasets(tmp_path, batch, system):
    """The fields-one-by-one check (a mutation review): a wavelength of c / 1 GHz (0.2998 m,
    0.07 % from the default's 0.3 m) is another system; an empty attribute, a bool and a
    wavefront text with MATLAB's blank padding are no other system; and the fields as 1-
    element datasets at an .h5's root (h5py's f["wavelength"] = 0.1, MATLAB's [1 1]) are
    checked as attributes are (they were only noted as not read: the default's 0.3 m was
    assumed in place of 0.1 m)."""
    arr = batch_to_arrays(batch[:2], system.K_max)

    def h5(name, datasets=None, **attrs):
        path = tmp_path / name
        with h5py.File(path, "w") as f:
            for k, v in {**arr, **(datasets or {})}.items():
                f[k] = v
            f.attrs.update(attrs)
        return path

    with pytest.raises(SceneFileError, match=r"one by one \(wavelength\).*another wavelength"):
        read_scenes(h5("c.h5", wavelength=299_792_458 / 1e9))
    ok = h5("ok.h5", wavelength=np.array([]), N_H=True, wavefront="spherical  ")
    assert read_scenes(ok)[1].system == SystemConfig()
    with pytest.raises(SceneFileError, match=r"one by one \(wavelength\).*another wavelength"):
        read_scenes(h5("ds.h5", {"wavelength": 0.1}))
    with pytest.raises(SceneFileError, match=r"one by one \(M\).*another M"):
        read_scenes(h5("matlab.h5", {"M": np.array([[8.0]])}))
    same = h5("same.h5", {"M": np.array([[16.0]])})
    assert read_scenes(same)[1].system == SystemConfig()
    # checked, so not listed as not read (as an .npz's 0-d fields are not)
    assert inspect_scene_file(same).unread == ()
    # with the system's JSON, such datasets are the user's own
    assert read_scenes(h5("own.h5", {"wavelength": 0.1}, system=system.model_dump_json())
                       )[1].system == system


def test_unread_entries_near_misses_only_of_names_lacking_and_links_not_listed(tmp_path,
                                                                                batch, system):
    """A mutation review of the note on entries not read: a 0-d array named as a system
    field beside the system's JSON is the user's own, listed; a near miss is only of a
    contract name the file lacks and close (not 'sensor' or 'scene_id' for snr_db); a link
    to one of the file's own datasets is not listed; 20 entries are listed without a
    "more"."""
    arr = batch_to_arrays(batch[:2], system.K_max)
    req = {k: arr[k] for k in ("y", "H", "codes")}
    info = inspect_scene_file(_npz(tmp_path, **arr, system=np.array(system.model_dump_json()),
                                   wavelength=np.array(0.1), SNR=arr["snr_db"]))
    assert info.unread == (("SNR", None), ("wavelength", None))
    info = inspect_scene_file(_npz(tmp_path, **req, sensor=np.zeros(2), scene_id=np.arange(2)))
    assert info.unread == (("scene_id", None), ("sensor", None))
    path = tmp_path / "link.h5"
    with h5py.File(path, "w") as f:
        for k, v in arr.items():
            f[k] = v
        f["y_alias"] = h5py.SoftLink("/y")
    assert inspect_scene_file(path).unread == ()
    twenty = {f"extra{i:02d}": np.zeros(1) for i in range(20)}
    note = inspect_scene_file(_npz(tmp_path, **arr, **twenty)).notes[-1]
    assert note.startswith("20 array(s) not read") and "more)" not in note
    assert "'extra19'" in note


@pytest.mark.parametrize("ext", ["h5", "npz"])
def test_written_datasets_have_the_contract_s_dtypes_whatever_the_batch_holds(tmp_path, batch,
                                                                              system, ext):
    """The contract's dtypes (complex64 y, H, codes; float32 snr_db and positions; integer
    K), also from a user's batch of complex128 and float64 fields (a mutation review: an
    .npz kept complex128 codes and a float64 snr_db)."""
    wide = dataclasses.replace(batch[:3], **{k: getattr(batch[:3], k).to(torch.complex128)
                                             for k in ("y", "H", "codes")},
                               snr_db=batch.snr_db[:3].double())
    path = write_scenes(tmp_path / f"s.{ext}", wide, system)
    raw = h5py.File(path) if ext == "h5" else np.load(path)
    try:
        got = {k: np.asarray(raw[k]).dtype for k in ("y", "H", "codes", "snr_db", "K",
                                                      "azimuth_deg", "range_m")}
    finally:
        if ext == "h5":
            raw.close()
    assert {k: got[k] for k in ("y", "H", "codes")} == dict.fromkeys(("y", "H", "codes"),
                                                                      np.complex64)
    assert got["snr_db"] == got["azimuth_deg"] == got["range_m"] == np.float32
    assert got["K"].kind == "i"


def test_a_wide_scene_s_non_finite_value_does_not_set_its_scale(tmp_path, batch, system):
    """A complex128 scene holding an inf (or NaN) among ordinary values is scaled, or not,
    by its finite values alone: those read as they are, without a NumPy warning (a mutation
    review: a peak taken over the inf scaled the whole scene by 2^-inf, to zeros and NaN)."""
    arr = batch_to_arrays(batch[:2], system.K_max)
    y = arr["y"].astype(np.complex128) * np.array([1.0, 1e50]).reshape(2, 1, 1)
    y[:, 0, 0] = np.inf
    path = _npz(tmp_path, y=y, H=arr["H"], codes=arr["codes"],
                system=np.array(system.model_dump_json()))
    with warnings.catch_warnings():  # (NumPy's "invalid value" of inf * 2^-k: not the user's)
        warnings.simplefilter("error", RuntimeWarning)
        back, _ = read_scenes(path)
    rest = torch.ones(back.y.shape[1:], dtype=torch.bool)
    rest[0, 0] = False
    assert torch.equal(back.y[0][rest], batch.y[0][rest])  # cast as it is
    scaled = back.y[1][rest] / batch.y[1][rest]  # one power of two for the scene
    assert bool(torch.isfinite(back.y[1][rest]).all())
    torch.testing.assert_close(scaled, torch.full_like(scaled, scaled[0].real.item()))


def test_a_user_s_float64_truth_reads_at_its_precision_and_k_counts_any_held_slot(tmp_path,
                                                                                  batch, system):
    """True positions stored as float64 are read without a round through float32; without
    'K', a slot holding any number (an azimuth lost to NaN beside its elevation and range)
    counts as a source, named as unscorable, not dropped (a mutation review)."""
    arr = batch_to_arrays(batch[:2], system.K_max)
    az = np.full((2, system.K_max), np.nan)
    el, r = az.copy(), az.copy()
    az[:, 0], el[:, 0], r[:, 0] = 12.3456789012345, -4.321098765432, 1.23456789012345
    el[1, 1], r[1, 1] = 5.0, 2.0  # its azimuth NaN
    path = _npz(tmp_path, y=arr["y"], H=arr["H"], codes=arr["codes"], azimuth_deg=az,
                elevation_deg=el, range_m=r, system=np.array(system.model_dump_json()))
    info = inspect_scene_file(path)
    assert [i for i, _ in info.truth_problems] == [1]
    assert "non-finite" in info.truth_problems[0][1]
    got, _ = read_scenes(path, truth="unchecked")
    assert got.K.tolist() == [1, 2]
    assert got.range_m[0, 0].item() == 1.23456789012345
    assert got.azimuth[0, 0].item() == math.radians(12.3456789012345)
    assert got.elevation[0, 0].item() == math.radians(-4.321098765432)


def test_an_elevation_just_past_90_deg_is_named_and_a_read_past_the_end_is_refused(
        tmp_path, batch, system):
    """The +-90 deg bound of a true elevation is tight (float32's rounding of 90 passes,
    90.01 deg does not); a read that starts past the last scene is an error, one that
    stops past it reads to the end (a mutation review)."""
    arr = batch_to_arrays(batch[:3], system.K_max)
    el = arr["elevation_deg"].copy()
    el[0, 0], el[1, 0] = 90.01, np.float32(90.0)
    path = _npz(tmp_path, **dict(arr, elevation_deg=el,
                                 system=np.array(system.model_dump_json())))
    assert inspect_scene_file(path).truth_problems == ((0, "a true elevation beyond "
                                                           "+-90 deg"),)
    got, _ = read_scenes(path, 1, 99, truth=False)
    assert torch.equal(got.y, batch.y[1:3])
    with pytest.raises(SceneFileError, match=r"bad scene range 5\.\.3 of 3"):
        read_scenes(path, 5, 9, truth=False)


@pytest.mark.parametrize("dtype", [np.int16, np.float64])
def test_a_user_s_snr_of_another_dtype_reads_as_float32(tmp_path, batch, system, dtype):
    """snr_db stored as integers or doubles (MATLAB's) reads as the batch's float32, NaN
    where absent alike (a mutation review)."""
    arr = batch_to_arrays(batch[:3], system.K_max)
    path = _npz(tmp_path, y=arr["y"], H=arr["H"], codes=arr["codes"],
                snr_db=np.array([3, -2, 10], dtype), system=np.array(system.model_dump_json()))
    got, _ = read_scenes(path)
    assert got.snr_db.dtype == torch.float32 and got.snr_db.tolist() == [3.0, -2.0, 10.0]


def test_the_chunk_writer_names_a_write_past_the_end_drops_truth_it_does_not_store_and_removes_stale_temporaries(  # noqa: E501
        tmp_path, batch, system):
    """A mutation review of the writer: a write one scene past the end failed in h5py's
    broadcasting with no name; a batch with truth into a writer without it; a killed run's
    temporary (a dead process id) left beside the file."""
    target = tmp_path / "s.h5"
    stale = tmp_path / f".s.h5.999999999-0badc0de{SUFFIX}.h5"
    stale.write_bytes(b"half a file")
    with pytest.raises(SceneFileError, match=r"writing scenes 1\.\.51 past the end \(50\)"):
        with SceneFileWriter(target, 50, system) as w:
            w.write(1, batch)
    assert not stale.exists() and list(tmp_path.iterdir()) == []
    with SceneFileWriter(target, 50, system, with_truth=False) as w:
        w.write(0, batch)  # (its truth is not stored)
    back, info = read_scenes(target)
    assert not info.has_truth and torch.equal(back.y, batch.y)


def test_integer_attributes_stay_numbers_and_those_beyond_64_bits_are_text(tmp_path, batch,
                                                                            system):
    """HDF5 stores a 64-bit integer attribute (a seed, NumPy's or Python's) as a number; one
    that does not fit is stored as its text (h5py refuses 2**64), a mutation review."""
    attrs = {"seed": np.int64(7), "first_scene": 3, "top": 2**64 - 1, "big": 2**64,
             "low": -2**63 - 1}
    path = write_scenes(tmp_path / "a.h5", batch, system, attrs)
    with h5py.File(path) as f:
        got = {k: f.attrs[k] for k in attrs}
    assert {k: type(v).__name__ for k, v in got.items()} == {
        "seed": "int64", "first_scene": "int64", "top": "uint64", "big": "str", "low": "str"}
    assert got["seed"] == 7 and got["top"] == 2**64 - 1 and got["big"] == str(2**64)
    assert got["low"] == str(-2**63 - 1)


def test_a_close_that_fails_leaves_no_temporary(tmp_path, batch, system, monkeypatch):
    """A full disk fails at the close's flush: the temporary file is removed, the error
    raised (a mutation review: nothing checked it)."""
    close = h5py.File.close

    def full(self):
        close(self)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(h5py.File, "close", full)
    with pytest.raises(OSError, match="No space left"):
        write_scenes(tmp_path / "s.h5", batch, system)
    monkeypatch.undo()
    assert list(tmp_path.iterdir()) == []


def test_the_summary_helpers_of_risloc_info_and_their_hints():
    """A mutation review of the helpers `risloc info`, localize and evaluate word their
    summaries and warnings with (only reached through the commands before)."""
    from risloc.config import FieldOfView
    from risloc.io.scenefile import (
        count_outside,
        drawn_widest_deg,
        listed_scenes,
        outside_hint,
        radians_hint,
        widest_true_angle,
    )
    from risloc.simulation import SceneBatch

    assert listed_scenes(np.arange(10)) == "[0, 1, 2, 3, 4, 5, 6, 7, 8, 9]"
    assert listed_scenes(np.arange(12)) == "[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, ... (2 more)]"
    fov = FieldOfView(azimuth_deg=(-50, 40), elevation_deg=(-20, 25), range_m=(0.5, 8))
    assert fov.describe() == "azimuth -50..40 deg, elevation -20..25 deg, range 0.5..8 m"
    assert outside_hint(0, fov) == ""
    assert outside_hint(2, fov, " of X").startswith(
        "2 true source(s) of X lie outside the field of view the localizers search "
        "(azimuth -50..40 deg")
    nan = float("nan")
    est = SceneBatch(y=None, H=None, codes=None, snr_db=None, K=torch.tensor([1, 2]),
                     azimuth=torch.tensor([[0.1, nan], [-0.2, 0.05]]),
                     elevation=torch.tensor([[0.0, 3.0], [-0.3, 0.1]]),
                     range_m=torch.ones(2, 2))
    n, widest = widest_true_angle(est)  # (the NaN padding and its 3.0 past K not counted)
    assert n == 3 and widest == pytest.approx(math.degrees(0.3))
    assert widest_true_angle(dataclasses.replace(est, K=torch.tensor([0, 0]))) == (0, 0.0)
    assert "all 5 sources lie within +-0.30 deg: radians stored as degrees?" in \
        radians_hint(5, 0.3)
    assert radians_hint(5, math.pi / 2) and not radians_hint(4, 1.0)
    assert not radians_hint(5, 0.29) and not radians_hint(5, 1.6)
    config = json.dumps({"scene": {"azimuth_deg": [-1.0, 1.5], "elevation_deg": [-0.5, 0.5]}})
    assert drawn_widest_deg({"config": config}) == 1.5  # drawn that close: no hint
    assert drawn_widest_deg({}) is None and not radians_hint(5, 1.0, attrs={"config": config})
    mix = json.dumps([{"name": "wide", "share": 0.5, "azimuth_deg": [-70.0, 70.0]}])
    assert drawn_widest_deg({"config": config, "scene_mix": mix}) == 70.0
    assert radians_hint(5, 1.0, attrs={"config": config, "scene_mix": mix})
    # float32 degrees on the boundary, as radians: inside; the NaN padding past K not
    # counted (a mutation review); a source beyond the box counted
    edge = torch.from_numpy(np.radians(np.float32([[-87.5, nan], [10.0, 89.0]])).astype(
        np.float32))
    read = dataclasses.replace(est, azimuth=edge, elevation=torch.zeros(2, 2))
    box = FieldOfView(azimuth_deg=(-87.5, 80.0))
    assert count_outside(read, box) == 1


def test_reader_review_edge_cases_of_values_dtypes_and_shapes(tmp_path, batch, system):
    """A second review of the reader (each case a mutant the tests let through)."""
    arr = batch_to_arrays(batch[:4], system.K_max)
    # a complex128 scene of zeros is not scaled (log2(0)) into NaN
    with h5py.File(tmp_path / "zero.h5", "w") as f:
        f.attrs["system"] = system.model_dump_json()
        y = arr["y"].astype(np.complex128)
        y[1] = 0
        f["y"], f["H"], f["codes"] = y, arr["H"], arr["codes"]
    back, _ = read_scenes(tmp_path / "zero.h5")
    assert bool((back.y[1] == 0).all()) and torch.equal(back.y[0], batch.y[0])
    # a real H is refused (only codes may be real), an infinite SNR of either sign too
    with pytest.raises(SceneFileError, match=r"'H' must be complex, got float64 \(its real "):
        read_scenes(_npz(tmp_path, **dict(arr, H=arr["H"].real.astype(np.float64))))
    with pytest.raises(SceneFileError, match=r"'snr_db' is infinite .* in 1 scene\(s\) \[2\]"):
        read_scenes(_npz(tmp_path, **dict(arr, snr_db=np.array([0, 1, -np.inf, 3], "f4"))))
    # a complex K is refused, not read as its real part
    with pytest.raises(SceneFileError, match=r"'K' must be integer .*complex128 \(4,\)"):
        read_scenes(_npz(tmp_path, **dict(arr, K=arr["K"].astype(np.complex128))))
    # one of the positions integer, without K: no NaN padding to count by, so not used
    no_K = {k: v for k, v in arr.items() if k != "K"}
    info = inspect_scene_file(_npz(tmp_path, **dict(no_K, range_m=np.ones((4, 5), "i4"))))
    assert not info.has_truth and any("stored as integers" in n for n in info.notes)
    # a (S, S) elevation beside a (S, K_max) azimuth is a wrong width, not reversed axes
    with pytest.raises(SceneFileError, match=r"'elevation_deg' must have shape .*\(4, 4\)$"):
        read_scenes(_npz(tmp_path, **dict(arr, elevation_deg=np.zeros((4, 4)))))
    # a K leaving stored sources out: their ranges read NaN, as their angles do
    K1 = np.ones(4, arr["K"].dtype)
    back, _ = read_scenes(_npz(tmp_path, **dict(arr, K=K1)))
    assert bool(back.range_m[:, 1:].isnan().all()) and bool(back.azimuth[:, 1:].isnan().all())


def test_a_file_of_as_many_scenes_as_l_m_and_n_is_not_taken_as_scenes_last(tmp_path):
    """L = M = N = S: every shape is (4, 4, 4), which the scenes-last check must not refuse
    (it refuses only shapes that do not already fit)."""
    small = SystemConfig(N_H=2, N_V=2, M=4, L=4, K_max=2)
    rng = np.random.default_rng(0)
    arr = {k: (rng.standard_normal((4, 4, 4)) + 1j * rng.standard_normal((4, 4, 4))
               ).astype(np.complex64) for k in ("y", "H", "codes")}
    back, info = read_scenes(_npz(tmp_path, **arr, system=np.array(small.model_dump_json())))
    assert info.n_scenes == 4 and torch.equal(back.y, torch.from_numpy(arr["y"]))


def test_a_many_element_system_field_dataset_is_listed_as_not_read(tmp_path, batch, system):
    arr = batch_to_arrays(batch[:4], system.K_max)
    with h5py.File(tmp_path / "f.h5", "w") as f:  # (no 'system': the default assumed)
        for k in ("y", "H", "codes"):
            f[k] = arr[k]
        f["wavelength"] = np.full(3, 0.3)  # not one value: not a system field, not read
    assert [k for k, _ in inspect_scene_file(tmp_path / "f.h5").unread] == ["wavelength"]


SMALL = SystemConfig(N_H=2, N_V=2, M=4, K_max=3)


@st.composite
def _small_batches(draw):
    """A SceneBatch of 1..3 scenes of SMALL (any complex64 values of y, H, codes), its SNR
    known or NaN per scene, with truth (K in 1..K_max in 1..K_max slots, past K NaN or any
    number: the file pads with NaN whatever the batch holds there) or without."""
    B = draw(st.integers(1, 3))
    g = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))

    def cn(*shape):
        return torch.from_numpy((g.standard_normal(shape) + 1j * g.standard_normal(shape))
                                .astype(np.complex64))

    snr = [draw(st.one_of(st.just(math.nan), st.floats(-30, 60, width=32))) for _ in range(B)]
    fields = {"y": cn(B, SMALL.L, SMALL.M), "H": cn(B, SMALL.M, SMALL.N),
              "codes": cn(B, SMALL.L, SMALL.N), "snr_db": torch.tensor(snr)}
    if draw(st.booleans()):
        width = draw(st.integers(1, SMALL.K_max))
        K = torch.tensor([draw(st.integers(1, width)) for _ in range(B)])
        pad = (torch.arange(width) >= K[:, None]) & draw(st.booleans())
        for name, lo, hi in (("azimuth", -math.pi, math.pi), ("elevation", -math.pi / 2,
                                                               math.pi / 2), ("range_m", 0.1, 50)):
            fields[name] = torch.from_numpy(g.uniform(lo, hi, (B, width))).masked_fill(pad,
                                                                                      math.nan)
        fields["K"] = K
    return SceneBatch(**fields)


@settings(max_examples=25, deadline=None, derandomize=True)
@given(_small_batches(), st.sampled_from(["h5", "npz"]))
def test_any_small_batch_written_reads_back_as_it_was(batch, ext):
    """y, H, codes and the SNR (NaN too) bit for bit; the truth (or none): K, and the
    positions to float32 in K_max slots, NaN past each scene's K."""
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as folder:
        path = write_scenes(Path(folder) / f"s.{ext}", batch, SMALL)
        back, info = read_scenes(path)
        if batch.has_truth:  # the file itself NaN-pads (docs/conventions.md)
            with (np.load(path) if ext == "npz" else h5py.File(path)) as f:
                past = np.arange(SMALL.K_max) >= batch.K.numpy()[:, None]
                for name in ("azimuth_deg", "elevation_deg", "range_m"):
                    assert np.isnan(f[name][()][past]).all(), name
    assert info.n_scenes == len(batch) and info.has_truth == batch.has_truth
    assert info.system == SMALL
    for name in ("y", "H", "codes", "snr_db"):
        torch.testing.assert_close(getattr(back, name), getattr(batch, name), rtol=0, atol=0,
                                   equal_nan=True)
    if not batch.has_truth:
        assert back.K is None and back.azimuth is None
        return
    assert torch.equal(back.K, batch.K) and back.azimuth.shape == (len(batch), SMALL.K_max)
    held = torch.arange(SMALL.K_max) < batch.K[:, None]
    w = batch.azimuth.shape[-1]
    for name in ("azimuth", "elevation", "range_m"):  # float32 at the file edge
        got = getattr(back, name).double()
        assert torch.equal(torch.isnan(got), ~held), name
        torch.testing.assert_close(got[:, :w][held[:, :w]], getattr(batch, name)[held[:, :w]],
                                   rtol=2e-7, atol=1e-7)


def test_chunked_reads_begin_where_asked(tmp_path, batch, system):
    """iter_scene_chunks from a ``start`` past 0 yields its chunks from there, indexed as in
    the file (a mutation review: chunks from scene 0 passed)."""
    path = write_scenes(tmp_path / "s.h5", batch, system)
    chunks = list(iter_scene_chunks(path, 5, 12, size=4))
    assert [(i, len(b)) for i, b in chunks] == [(5, 4), (9, 3)]
    assert torch.equal(chunks[0][1].y, batch.y[5:9]) and torch.equal(chunks[1][1].H,
                                                                       batch.H[9:12])


def test_integer_i_q_samples_on_a_last_axis_of_2_get_the_complex_hint(tmp_path, batch,
                                                                       system):
    """int16 real and imaginary parts on a last axis of 2 (a receiver's I/Q samples) are
    named as such, as float ones are (a mutation review: only float ones were)."""
    arr = batch_to_arrays(batch, system.K_max)
    iq = np.round(np.stack([arr["y"].real, arr["y"].imag], -1) * 1000).astype(np.int16)
    with pytest.raises(SceneFileError, match=r"'y' has shape \(50, 16, 16, 2\): real and "
                                             r"imaginary parts on a last axis of 2\?"):
        read_scenes(_npz(tmp_path, **dict(arr, y=iq)))


def test_unsigned_integer_positions_without_k_are_not_used(tmp_path, batch, system):
    """Positions stored as unsigned integers without K hold no NaN padding either: not used,
    as signed ones are not (a mutation review: only signed ones were left out)."""
    arr = {k: v for k, v in batch_to_arrays(batch[:4], system.K_max).items() if k != "K"}
    info = inspect_scene_file(_npz(tmp_path, **dict(arr, range_m=np.ones((4, 5), "u2"))))
    assert not info.has_truth and any("stored as integers" in n for n in info.notes)


@pytest.mark.parametrize("text", ["0.3 m", "0.3 meter", "0.3 meters", "0.3 metre",
                                  "0.3 metres", "0.3"])
def test_a_default_wavelength_in_metres_spelled_any_way_is_the_default(tmp_path, batch,
                                                                       system, text):
    """A wavelength attribute of the default's value in metres, however the unit is spelled,
    is the default system's (a mutation review: 'metres' dropped from the spellings passed)."""
    path = tmp_path / "unit.h5"
    with h5py.File(path, "w") as f:
        for k, v in batch_to_arrays(batch[:2], system.K_max).items():
            f[k] = v
        f.attrs["wavelength"] = text
    assert read_scenes(path)[1].system == SystemConfig()


def test_a_missing_dataset_s_message_lists_the_first_20_root_entries(tmp_path, batch, system):
    """A file without y names what it holds: its first 20 root entries, then how many more
    (a mutation review: a 21st listed passed)."""
    arr = batch_to_arrays(batch[:2], system.K_max)
    path = tmp_path / "many.h5"
    with h5py.File(path, "w") as f:
        f["H"], f["codes"] = arr["H"], arr["codes"]
        for i in range(25):
            f[f"extra{i:02d}"] = np.zeros(2)
    with pytest.raises(SceneFileError, match=r"missing required dataset\(s\) \['y'\]; it holds "
                                             r"\[H, codes, extra00, .*, extra17, \.\.\. \(7 "
                                             r"more\)\]") as err:
        read_scenes(path)
    assert "extra18" not in str(err.value)


def test_an_h5_attribute_of_another_encoding_reads_with_its_odd_characters_replaced(
        tmp_path, batch, system):
    """A bytes attribute that is not UTF-8 (a Latin-1 comment) reads as text, its odd
    characters replaced, not dropped (a mutation review: dropping them passed)."""
    path = write_scenes(tmp_path / "s.h5", batch[:2], system)
    with h5py.File(path, "a") as f:
        f.attrs["comment"] = np.bytes_(b"caf\xe9 run")
    assert inspect_scene_file(path).attrs["comment"] == "caf\ufffd run"


def test_text_under_an_npz_name_is_named_as_such_not_as_pickled_data(tmp_path):
    import pytest as _pytest

    from risloc.io import read_scenes
    from risloc.io.scenefile import SceneFileError
    bad = tmp_path / "scenes.npz"
    bad.write_text("hello world\n")
    with _pytest.raises(SceneFileError, match="no zip archive") as err:
        read_scenes(bad)
    assert "pickle" not in str(err.value)


def test_a_disk_that_refuses_the_writes_is_an_error_of_the_write_not_a_crash(tmp_path):
    """A file-size limit (or a quota, a disk filling meanwhile) under the writer: the write
    fails with an OSError naming the errno, the temporary is removed and the process ends
    normally (HDF5's chunk cache failed the write when a dataset was freed, and the process
    died with a segfault at exit, a persona's `risloc simulate` under `ulimit -f`)."""
    import os
    import subprocess
    import sys
    import textwrap

    script = textwrap.dedent(f"""
        import resource
        from risloc.config import SceneConfig, SystemConfig
        from risloc.io.scenefile import SceneFileWriter
        from risloc.simulation import simulate_range
        s = SystemConfig()
        batch = simulate_range(0, 24, s, SceneConfig(), split="test")
        resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000))
        try:
            with SceneFileWriter({str(tmp_path / "out.h5")!r}, 24, s) as w:
                w.write(0, batch)
        except OSError as err:
            print("refused", err.errno)
        """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["refused", "27"]  # EFBIG
    assert list(tmp_path.iterdir()) == []


def test_truth_checks_of_a_k_max_below_the_slots_and_the_scorable_scenes(tmp_path, batch,
                                                                          system):
    """A mutation review: K beyond the system's k_max but within the truth arrays' slots,
    scorable_mask keeping every scene, and check_truth's listing of exactly 3 scenes
    passed; so did an infinite K."""
    got = truth_problems(np.array([3]), np.zeros((1, 3)), np.zeros((1, 3)), np.ones((1, 3)),
                         k_max=2)
    assert got == [(0, "K = 3 outside 1..2")]
    arr = dict(batch_to_arrays(batch[:4], system.K_max),
               system=np.array(system.model_dump_json()))
    arr["K"] = arr["K"].copy()
    arr["K"][[0, 1, 3]] = 0
    path = _npz(tmp_path, **arr)
    back, _ = read_scenes(path, truth="unchecked")
    assert scorable_mask(back, system.K_max).tolist() == [False, False, True, False]
    assert len(scorable_truth(back, system.K_max)) == 1
    with pytest.raises(SceneFileError, match=r"of 3 scene\(s\) cannot be scored \(scene 0: "
                       r"[^;]*; scene 1: [^;]*; scene 3: [^;]*\); `risloc localize`"):
        read_scenes(path)
    arr["K"] = arr["K"].astype(np.float64)
    arr["K"][2] = np.inf
    with pytest.raises(SceneFileError, match=r"'K' must hold whole numbers .* got inf in "
                                             r"scene\(s\) \[2\]"):
        inspect_scene_file(_npz(tmp_path, **arr))
    del arr["K"]  # integer positions without K: no usable truth, none read
    arr.update({k: np.zeros((4, system.K_max), np.int32)
                for k in ("azimuth_deg", "elevation_deg", "range_m")})
    back, info = read_scenes(_npz(tmp_path, **arr))
    assert not info.has_truth and back.K is None


def test_chunked_reads_past_the_end_or_of_no_scenes(tmp_path, batch, system):
    """A mutation review: a stop past the end yielded an empty chunk and then failed, and a
    range start == stop, which holds no scene, was refused; neither was tested."""
    path = write_scenes(tmp_path / "s.h5", batch[:5], system)
    assert [(i, len(b)) for i, b in iter_scene_chunks(path, 0, 9, size=5)] == [(0, 5)]
    assert [(i, len(b)) for i, b in iter_scene_chunks(path, 1, 99, size=2)] == \
        [(1, 2), (3, 2)]
    assert list(iter_scene_chunks(path, 5, 5)) == [] == list(iter_scene_chunks(path, 2, 2))


def test_a_uint64_K_beyond_int64_is_named_as_stored(tmp_path, batch, system):
    """A review: a file's uint64 K above int64's range was named wrapped (K = -1 for
    2**64 - 1) among the scenes whose truth cannot be scored; it is named as stored."""
    arr = batch_to_arrays(batch, system.K_max)
    K = arr["K"].astype(np.uint64)
    K[[1, 2]] = 2**64 - 1, 2**63 + 2
    info = inspect_scene_file(_npz(tmp_path, **dict(arr, K=K)))
    assert info.truth_problems == ((1, "K = 18446744073709551615 outside 1..5"),
                                   (2, "K = 9223372036854775810 outside 1..5"))


def test_an_infinite_float_K_is_named_not_an_overflow():
    """A review: naming K as stored (int(K)) raised OverflowError for K = +-inf in a float
    array passed to truth_problems; it is named as given."""
    z = np.zeros((3, 2))
    got = truth_problems(np.array([1.0, np.inf, 2.0]), z, z, z + 1)
    assert [(i, why.split(" (")[0]) for i, why in got] == [(1, "K = inf outside 1..2")]
    with np.errstate(invalid="ignore"):
        assert truth_problems(np.array([-np.inf, 1.0, 2.0]), z, z, z + 1) == \
            [(0, "K = -inf outside 1..2")]
