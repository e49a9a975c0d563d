"""A section given whole in an override merges with the fields set before it, as it merges
with the file's section."""

from risloc.config import load_config, parse_overrides


def test_a_section_override_keeps_the_fields_set_before_it(tmp_path):
    assert parse_overrides(["system.L=8", "system={M: 8, K_max: 3}"]) == \
        {"system": {"L": 8, "M": 8, "K_max": 3}}
    assert parse_overrides(["system.L=8", "system={L: 4}"]) == {"system": {"L": 4}}  # last
    (tmp_path / "c.yaml").write_text("system:\n  N_H: 8\n")
    s = load_config(tmp_path / "c.yaml", ["system.L=8", "system={M: 8, K_max: 3}"]).system
    assert (s.N_H, s.L, s.M, s.K_max) == (8, 8, 8, 3)
