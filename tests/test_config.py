"""Configuration: precedence, conversion of strings, validation naming the key,
and the provenance check-config prints."""

from __future__ import annotations

import pytest

from gatewayd.config import default_worker_memory_mb, load_config, render_config
from gatewayd.errors import ConfigError


def write(tmp_path, text: str):
    path = tmp_path / "gatewayd.toml"
    path.write_text(text)
    return str(path)


def test_defaults_then_file_then_environment_then_flags(tmp_path):
    path = write(tmp_path, "[pipeline]\nchunk_size = 64\nqueue_size = 100\nworkers = 3\n")
    env = {"GATEWAYD_PIPELINE__QUEUE_SIZE": "200", "GATEWAYD_PIPELINE__WORKERS": "4",
           "UNRELATED": "x"}
    config = load_config(path, ["pipeline.workers=5"], env)
    assert config.pipeline.chunk_size == 64
    assert config.pipeline.queue_size == 200
    assert config.pipeline.workers == 5
    assert config.pipeline.chunk_timeout_s == 4.0
    p = config.provenance
    assert p["pipeline.chunk_size"] == f"file:{path}"
    assert p["pipeline.queue_size"] == "env:GATEWAYD_PIPELINE__QUEUE_SIZE"
    assert p["pipeline.workers"] == "--set"
    assert p["pipeline.chunk_timeout_s"] == "default"


def test_strings_from_environment_and_flags_take_the_fields_types():
    config = load_config(None, ["mqtt.tls=yes", "lidar.bbox=0,0,0,10,10,5",
                                "pipeline.chunk_timeout_s=2.5"], {"GATEWAYD_MQTT__PORT": "8883"})
    assert config.mqtt.tls is True and config.mqtt.port == 8883
    assert config.lidar.bbox == (0.0, 0.0, 0.0, 10.0, 10.0, 5.0)
    assert config.pipeline.chunk_timeout_s == 2.5


@pytest.mark.parametrize(("override", "key"), [
    ("pipeline.chunk_size=0", "pipeline.chunk_size"),
    ("pipeline.chunk_size=lots", "pipeline.chunk_size"),
    ("pipeline.chunk_timeout_s=-1", "pipeline.chunk_timeout_s"),
    ("pipeline.overflow=explode", "pipeline.overflow"),
    ("mqtt.port=70000", "mqtt.port"),
    ("mqtt.tls=perhaps", "mqtt.tls"),
    ("lidar.bbox=1,2,3", "lidar.bbox"),
    ("lidar.bbox=5,0,0,1,1,1", "lidar.bbox"),
    ("gateway.id=a/b", "gateway.id"),
    ("gateway.id=#", "gateway.id"),
    ("zones.file=/no/such/zones.geojson", "zones.file"),
    ("pipeline.min_chunk_size=500", "pipeline.min_chunk_size"),
    ("nosuch.key=1", "nosuch.key"),
    ("pipeline.nosuch=1", "pipeline.nosuch"),
])
def test_every_invalid_value_is_refused_naming_its_key(override, key):
    with pytest.raises(ConfigError) as info:
        load_config(None, [override], {})
    assert info.value.key == key
    assert key in str(info.value)
    assert info.value.exit_code == 2


@pytest.mark.parametrize("override", ["pipeline", "chunk_size=3", "=3", "pipeline.=3"])
def test_malformed_set_flags_are_refused(override):
    with pytest.raises(ConfigError):
        load_config(None, [override], {})


def test_a_toml_syntax_error_names_the_line(tmp_path):
    path = write(tmp_path, "[pipeline]\nchunk_size = 64\nqueue_size = = 3\n")
    with pytest.raises(ConfigError, match="line 3"):
        load_config(path, [], {})


def test_wrong_types_in_the_file_and_missing_files_are_refused(tmp_path):
    with pytest.raises(ConfigError, match=r"pipeline\.chunk_size"):
        load_config(write(tmp_path, "[pipeline]\nchunk_size = \"big\"\n"), [], {})
    with pytest.raises(ConfigError, match=r"mqtt\.tls"):
        load_config(write(tmp_path, "[mqtt]\ntls = 1\n"), [], {})
    with pytest.raises(ConfigError, match="not found"):
        load_config(str(tmp_path / "missing.toml"), [], {})


def test_check_config_output_is_toml_that_loads_back_to_the_same_values(tmp_path):
    config = load_config(None, ["pipeline.chunk_size=32", "lidar.bbox=0,0,0,1,1,1"], {})
    text = render_config(config)
    assert "chunk_size = 32  # --set" in text
    again = load_config(write(tmp_path, text), [], {})
    assert again.pipeline == config.pipeline and again.lidar == config.lidar


def test_the_example_configuration_loads_and_documents_every_key():
    import dataclasses
    from pathlib import Path

    from gatewayd.config import _SECTIONS

    example = Path(__file__).resolve().parents[1] / "systemd" / "gatewayd.toml"
    config = load_config(str(example), [], {})
    text = example.read_text()
    for section, cls in _SECTIONS.items():
        assert f"[{section}]" in text
        for f in dataclasses.fields(cls):
            set_or_shown = f"\n{f.name} = " in text or f"\n# {f.name} = " in text
            assert set_or_shown, f"{section}.{f.name} is not documented"
            if f"\n{f.name} = " in text:
                # What the example sets is the default: it documents, it does not change.
                default = getattr(load_config(None, [], {}), section)
                if f.name != "id":
                    assert getattr(getattr(config, section), f.name) == \
                        getattr(default, f.name), f"{section}.{f.name}"


def test_plain_mqtt_to_another_machine_is_refused_unless_allowed():
    with pytest.raises(ConfigError, match=r"mqtt\.tls"):
        load_config(None, ["mqtt.host=broker.example.net"], {})
    with pytest.raises(ConfigError, match=r"mqtt\.tls"):
        load_config(None, ["mqtt.host=10.1.2.3"], {})
    assert load_config(None, ["mqtt.host=10.1.2.3", "mqtt.tls=true"], {}).mqtt.tls
    assert load_config(None, ["mqtt.host=10.1.2.3", "mqtt.allow_plaintext=yes"], {})
    for host in ("localhost", "127.0.0.1", "127.8.9.10", "::1"):
        assert load_config(None, [f"mqtt.host={host}"], {}).mqtt.host == host


def test_a_password_file_others_can_read_is_refused(tmp_path):
    secret = tmp_path / "mqtt-password"
    secret.write_text("s3cret\n")
    secret.chmod(0o644)
    with pytest.raises(ConfigError, match="readable by every user") as info:
        load_config(None, ["mqtt.username=gw", f"mqtt.password_file={secret}"], {})
    assert "s3cret" not in str(info.value)
    secret.chmod(0o640)
    config = load_config(None, ["mqtt.username=gw", f"mqtt.password_file={secret}"], {})
    assert "s3cret" not in render_config(config)
    with pytest.raises(ConfigError, match=r"needs mqtt\.username"):
        load_config(None, [f"mqtt.password_file={secret}"], {})


def test_the_worker_memory_cap_defaults_by_the_pointer_width_of_the_build():
    import struct

    # A 32-bit worker maps far less address space (cross-build/README.md).
    assert default_worker_memory_mb(64) == 180
    assert 64 < default_worker_memory_mb(32) < default_worker_memory_mb(64)
    config = load_config(None, [], {})
    bits = struct.calcsize("P") * 8
    assert config.pipeline.worker_memory_mb == default_worker_memory_mb(bits)
    assert config.provenance["pipeline.worker_memory_mb"] == "default"
    assert load_config(None, ["pipeline.worker_memory_mb=300"], {}).pipeline.worker_memory_mb \
        == 300
