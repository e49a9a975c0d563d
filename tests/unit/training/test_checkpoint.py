"""Atomic checkpoints, round trip, and rebuilding the model for inference."""

import io

import numpy as np
import pytest
import torch

from risloc.config import SceneConfig
from risloc.inference.checkpoint import load_checkpoint, load_model, save_checkpoint
from risloc.simulation import simulate_batch
from risloc.training.config import load_train_config
from risloc.training.loop import Trainer


def test_atomic_save_and_round_trip(tmp_path):
    state = {"a": torch.arange(5), "nested": {"x": 1.5, "s": "text"}, "none": None}
    path = save_checkpoint(tmp_path / "sub" / "c.pt", state)
    assert [p.name for p in path.parent.iterdir()] == ["c.pt"]  # no temporary left behind
    back = load_checkpoint(path)
    assert torch.equal(back["a"], state["a"]) and back["nested"] == state["nested"]
    save_checkpoint(path, {"a": torch.zeros(2)})  # overwrite in place
    assert load_checkpoint(path)["a"].shape == (2,)


def test_bad_checkpoints(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "missing.pt")
    torch.save({"x": 1}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a risloc"):
        load_checkpoint(tmp_path / "other.pt")
    for text in ("hello\n", "garbage\n", ""):  # "garbage" read as pickled objects once
        (tmp_path / "text.pt").write_text(text)
        with pytest.raises(ValueError, match=r"text.pt is not a risloc checkpoint \(not a "
                                             r"file torch writes"):
            load_checkpoint(tmp_path / "text.pt")
    with pytest.raises(ValueError, match="is a folder"):
        load_checkpoint(tmp_path)
    torch.save({"a": np.zeros(3)}, tmp_path / "numpy.pt")  # weights_only refuses it
    with pytest.raises(ValueError, match="numpy.pt is not a risloc checkpoint: it holds Python"
                       ) as err:
        load_checkpoint(tmp_path / "numpy.pt")
    assert "weights_only" not in str(err.value)


def test_trainer_state_rebuilds_the_model(tmp_path):
    cfg = load_train_config(None, ["model.width=16", "model.dilations=[1]", "model.hidden=16",
                                   f"out_dir={tmp_path}"])
    tr = Trainer(cfg)
    with torch.no_grad():
        for p in tr.model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    tr.ema.update_parameters(tr.model)
    save_checkpoint(tmp_path / "last.pt", tr.state())
    for weights, ref in (("ema", tr.ema.module), ("raw", tr.model)):
        model, cfg2 = load_model(tmp_path / "last.pt", weights)
        assert cfg2.system == cfg.system and cfg2.network_config() == cfg.network_config()
        assert cfg2.blend == cfg.blend and not model.training
        sc = simulate_batch(2, cfg.system, SceneConfig(), torch.Generator().manual_seed(0))
        with torch.no_grad():
            a = model(sc.y, sc.H, sc.codes).R_pred
            b = ref.eval()(sc.y, sc.H, sc.codes).R_pred
        assert torch.equal(a, b)
    with pytest.raises(ValueError, match="swa"):
        load_model(tmp_path / "last.pt", "swa")


def test_a_flipped_bit_is_an_error_not_a_silent_model(tmp_path):
    path = save_checkpoint(tmp_path / "c.pt", {"w": torch.arange(1000.0), "config": "{}"})
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    (tmp_path / "d.pt").write_bytes(bytes(raw))
    with pytest.raises(ValueError, match="damaged|unreadable"):
        load_checkpoint(tmp_path / "d.pt")
    (tmp_path / "t.pt").write_bytes(path.read_bytes()[:500])  # truncated
    with pytest.raises(ValueError, match=r"t.pt is a truncated checkpoint \(its end is "
                                         "missing"):
        load_checkpoint(tmp_path / "t.pt")
    assert torch.equal(load_checkpoint(path)["w"], torch.arange(1000.0))


def test_a_checkpoint_the_disk_cannot_hold_is_an_os_error_naming_it(tmp_path, monkeypatch):
    """torch's writer raises RuntimeError('[enforce fail ...] unexpected pos') on a full
    disk: it reached users as a traceback; now an OSError (the CLI's one-line error)."""
    import risloc.inference.checkpoint as checkpoint

    real = torch.save

    def full(obj, f):  # the serialisation in memory works; the write to the disk fails
        if not isinstance(f, io.BytesIO):
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos "
                               "128 vs 0")
        real(obj, f)

    save_checkpoint(tmp_path / "c.pt", {"w": torch.ones(3)})
    monkeypatch.setattr(checkpoint.torch, "save", full)
    with pytest.raises(OSError, match=r"cannot write the checkpoint .*c.pt \(.* MB; is the disk "
                                      r"full\?\): \[enforce fail"):
        save_checkpoint(tmp_path / "c.pt", {"w": torch.zeros(3)})
    monkeypatch.undo()
    assert torch.equal(load_checkpoint(tmp_path / "c.pt")["w"], torch.ones(3))  # the old one
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.pt"]


def test_torch_s_long_messages_are_cut_with_an_ellipsis():
    from risloc.inference.checkpoint import _first_line

    assert _first_line("short\nsecond") == "short"
    cut = _first_line("word " * 100)
    assert len(cut) == 200 and cut.endswith("...") and cut.startswith("word word")
