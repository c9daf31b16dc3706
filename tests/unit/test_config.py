"""Configuration defaults, validation and the measurement hash."""

import pytest

from msimaging.config import ConfigError, config_sha256, load_config, parse_override


def test_defaults_fill_and_validate():
    cfg = load_config({"bids_dir": "/x"})
    assert cfg["lesions"]["min_volume_mm3"] == 10.0
    assert cfg["change"]["dilate_reference_voxels"] == 1


def test_bad_values_are_named():
    with pytest.raises(ConfigError, match="lesions.min_voxels"):
        load_config({"bids_dir": "/x", "lesions": {"min_voxels": 0}})
    with pytest.raises(ConfigError, match="unknown_key|Additional properties"):
        load_config({"bids_dir": "/x", "unknown_key": 1})


def test_overrides_parse_nested_yaml_values():
    assert parse_override("lesions.min_volume_mm3=15") == {"lesions": {"min_volume_mm3": 15}}
    with pytest.raises(ConfigError):
        parse_override("novalue")


def test_hash_ignores_locations_but_not_measurement_settings():
    a = load_config({"bids_dir": "/a"})
    b = load_config({"bids_dir": "/b"})
    c = load_config({"bids_dir": "/a", "lesions": {"min_volume_mm3": 20}})
    assert config_sha256(a) == config_sha256(b) != config_sha256(c)
