"""Device profiles: every shipped YAML validates, aliases resolve, bad input gets one clear line."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from fine_deploy.cost.profiles import (
    alias_table,
    list_profiles,
    load_profile,
    resolve_name,
    validate_profile_dict,
)
from fine_deploy.errors import FineDeployError

REPO_PROFILES = Path(__file__).resolve().parents[1] / "profiles"
REQUIRED_DEVICES = {
    "jetson-orin-nano-4gb",
    "jetson-orin-nano-8gb",
    "jetson-orin-nx-16gb",
    "jetson-agx-orin-64gb",
    "rtx-4090",
    "a100-80gb",
    "h100-sxm",
    "mac-m2-16gb",
    "iphone-15-pro",
    "host",
}


def test_every_required_device_ships_and_validates():
    rows = {r["name"]: r for r in list_profiles(REPO_PROFILES)}
    assert REQUIRED_DEVICES <= set(rows)
    for name in REQUIRED_DEVICES - {"host"}:
        p = load_profile(name, REPO_PROFILES, probe=False)
        assert p.peak("fp32") > 0 and p.memory_bandwidth > 0
        assert 0 < p.usable_memory_bytes <= p.memory_bytes
        # half precision is never slower than fp32 on these devices' spec sheets
        assert p.peak_flops.get("fp16", p.peak("fp32")) >= p.peak("fp32")


def test_every_spec_profile_names_its_source_in_a_comment():
    for path in REPO_PROFILES.glob("*.yaml"):
        text = path.read_text()
        assert text.lstrip().startswith("#"), path.name
        assert "source" in text.lower(), path.name


def test_aliases_resolve_and_jetson_orin_names_a_module():
    assert resolve_name("jetson-orin", REPO_PROFILES) == "jetson-orin-nano-8gb"
    assert resolve_name("H100", REPO_PROFILES) == "h100-sxm"
    assert resolve_name("4090", REPO_PROFILES) == "rtx-4090"
    table = alias_table(REPO_PROFILES)
    assert all(table[name] == name for name in REQUIRED_DEVICES)


def test_unknown_device_lists_close_matches():
    with pytest.raises(FineDeployError, match="did you mean.*jetson-orin-nano"):
        resolve_name("jetson-orin-nan", REPO_PROFILES)
    with pytest.raises(FineDeployError, match="fine-deploy devices"):
        resolve_name("zzzzzz", REPO_PROFILES)


def _spec(**over):
    data = yaml.safe_load((REPO_PROFILES / "a100-80gb.yaml").read_text())
    data.update(over)
    return data


@pytest.mark.parametrize(
    "over, message",
    [
        ({"memory_bandwidth": -1.0}, "must be positive"),
        ({"usable_memory_bytes": 10**15}, "usable_memory_bytes"),
        ({"schema": 9}, "schema 9"),
        ({"kind": "fpga"}, "kind must be"),
        ({"runtime": "tvm"}, "not among its runtimes"),
        ({"peak_flops": {"fp32": 1.0e12}}, "no peak_flops entry"),
        ({"bogus": 1}, "unknown field"),
    ],
)
def test_invalid_profiles_are_refused_with_one_line(over, message):
    with pytest.raises(FineDeployError, match=message) as err:
        validate_profile_dict(_spec(**over), "x.yaml")
    assert "\n" not in str(err.value)


def test_missing_field_is_named():
    data = _spec()
    del data["memory_bytes"]
    with pytest.raises(FineDeployError, match="memory_bytes"):
        validate_profile_dict(data, "x.yaml")


def test_host_is_probed_once_and_cached(tmp_path, monkeypatch):
    shutil.copy(REPO_PROFILES / "host.yaml", tmp_path / "host.yaml")
    monkeypatch.setenv("FINE_DEPLOY_CACHE", str(tmp_path / "cache"))
    host = load_profile("host", tmp_path)
    # a 2-core CI runner does tens of GFLOP/s on one thread; a broken probe gives 0 or absurd numbers
    assert 1e9 < host.peak("fp32") < 1e13
    assert 1e8 < host.memory_bandwidth < 1e12
    assert host.runtime_overhead_bytes > 1 << 20  # ONNX Runtime's libraries alone take megabytes
    assert (tmp_path / "cache" / "measured" / "host-probe.json").exists()  # the user cache, not beside the YAML
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "host.yaml"]
    again = load_profile("local", tmp_path)
    assert again.peak_flops == host.peak_flops  # from the cache, not a second noisy probe


def test_profiles_are_package_data_and_measured_files_go_to_the_user_cache(monkeypatch, tmp_path):
    import fine_deploy
    from fine_deploy.cost.lut import lut_path
    from fine_deploy.cost.profiles import profiles_dir

    monkeypatch.delenv("FINE_DEPLOY_PROFILES", raising=False)
    shipped = profiles_dir()
    assert shipped == Path(fine_deploy.__file__).parent / "profiles"  # inside the package: ships in the wheel
    assert REPO_PROFILES.resolve() == shipped.resolve()  # the top-level profiles/ is the same folder
    monkeypatch.setenv("FINE_DEPLOY_CACHE", str(tmp_path / "c"))
    assert lut_path("host", "onnxruntime-cpu") == tmp_path / "c" / "measured" / "host-onnxruntime-cpu.json"
    monkeypatch.delenv("FINE_DEPLOY_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert lut_path("host", "onnxruntime-cpu").parent == tmp_path / "x" / "fine-deploy" / "measured"
