"""The configuration: defaults from config/config.yaml, validated by config/schema.yaml."""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from msimaging.resources import CONFIG_FILE, SCHEMA_FILE

#: Keys that say where data lives or how results are shown, not how they are measured: left out of
#: config_sha256.
LOCATION_KEYS = ("bids_dir", "participant_label", "outcome", "cohort")


class ConfigError(ValueError):
    """An invalid configuration value, with a readable message."""


def load_schema() -> dict[str, Any]:
    return yaml.safe_load(SCHEMA_FILE.read_text(encoding="utf-8"))


def _validator() -> Any:
    base = jsonschema.Draft202012Validator

    def set_defaults(validator: Any, properties: dict, instance: Any, schema: dict) -> Any:
        if isinstance(instance, dict):
            for prop, sub in properties.items():
                if "default" in sub and prop not in instance:
                    instance[prop] = copy.deepcopy(sub["default"])
        yield from base.VALIDATORS["properties"](validator, properties, instance, schema)

    return jsonschema.validators.extend(base, {"properties": set_defaults})(load_schema())


def validate_config(config: dict[str, Any]) -> dict[str, Any]:
    """Fill defaults and validate; raises :class:`ConfigError` naming every bad key."""
    cfg = copy.deepcopy(config)
    errors = sorted(_validator().iter_errors(cfg), key=lambda e: list(e.absolute_path))
    if errors:
        lines = [f"config {'.'.join(str(p) for p in e.absolute_path) or '(top)'}: {e.message}" for e in errors]
        raise ConfigError("\n".join(lines))
    return cfg


def default_config() -> dict[str, Any]:
    return yaml.safe_load(CONFIG_FILE.read_text(encoding="utf-8"))


def load_config(overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Defaults, overridden key by key (nested dicts merged), then validated."""
    cfg = default_config()
    if overrides:
        cfg = deep_merge(cfg, overrides)
    return validate_config(cfg)


def deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def parse_override(text: str) -> dict[str, Any]:
    """``a.b=3`` -> ``{"a": {"b": 3}}`` (the value parsed as YAML)."""
    if "=" not in text:
        raise ConfigError(f"--config {text!r}: expected KEY=VALUE (e.g. lesions.min_volume_mm3=15)")
    key, raw = text.split("=", 1)
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"--config {text!r}: empty key")
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"--config {text!r}: value is not valid YAML ({exc})") from exc
    out: dict[str, Any] = {}
    node = out
    parts = key.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value
    return out


def config_sha256(config: dict[str, Any]) -> str:
    """SHA-256 of the measurement settings (canonical JSON, location keys left out)."""
    measured = {k: v for k, v in config.items() if k not in LOCATION_KEYS}
    blob = json.dumps(measured, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()
