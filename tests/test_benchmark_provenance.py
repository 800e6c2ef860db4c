"""Every benchmarks/results/*.json says where it came from, and one that no longer matches the shipped
default supernet (or its script's schema) is flagged (issue 15, item 6)."""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"


def _module():
    spec = importlib.util.spec_from_file_location("benchmark_provenance", BENCH / "provenance.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


prov = _module()


@pytest.fixture(scope="module")
def shipped() -> str:
    from fine_deploy.supernet.core import load_supernet

    return load_supernet(None).content_hash


def test_provenance_block(tmp_path, shipped):
    lut = tmp_path / "lut.json"
    lut.write_text('{"entries": {}}')
    args = argparse.Namespace(steps=3, out=tmp_path / "x.json")
    block = prov.provenance(args, "default", lut, data=b"abc", recipe="dit-digits", config={"widths": (8, 16)})
    json.dumps(block)  # a results file must be able to hold it as is
    assert re.fullmatch(r"[0-9a-f]{40}", block["git_commit"]), block["git_commit"]
    assert block["args"] == {"steps": 3, "out": str(tmp_path / "x.json")}
    assert block["supernet"] == {"path": "default", "sha256": shipped}
    assert block["lut_sha256"] == hashlib.sha256(lut.read_bytes()).hexdigest()
    assert block["inputs"]["data"] == hashlib.sha256(b"abc").hexdigest()
    assert block["inputs"]["recipe"] == "dit-digits"
    assert block["inputs"]["config"] == hashlib.sha256(b'{"widths": [8, 16]}').hexdigest()


def test_several_supernets_and_unsaved_ones(dit_supernet):
    from fine_deploy.supernet.core import load_supernet

    sn = load_supernet(dit_supernet)
    sn.path = None  # as a script's in-memory conversion
    block = prov.provenance({"a": 1}, {"dir": dit_supernet, "memory": sn, "none": None})
    assert block["supernet"] == {"dir": {"path": str(dit_supernet), "sha256": sn.content_hash},
                                 "memory": {"path": None, "sha256": sn.content_hash}, "none": None}


def _record(sha: str, path: str = "default", schema: int = 1) -> dict:
    return {"schema": schema, "provenance": {"git_commit": "0" * 40, "args": {"x": 1},
                                             "supernet": {"path": path, "sha256": sha}}}


def test_checker_flags_a_stale_default_supernet(shipped):
    assert prov.check_record(_record(shipped), 1) == []
    stale = prov.check_record(_record("f" * 64), 1)
    assert len(stale) == 1 and "not the shipped default" in stale[0]
    # a supernet the script converted itself is not the shipped one: nothing to compare with
    assert prov.check_record(_record("f" * 64, path="/tmp/sn"), 1) == []
    several = _record(shipped)
    several["provenance"]["supernet"] = {"dit": {"path": "default", "sha256": "e" * 64}, "unet": None}
    assert "supernet dit" in " ".join(prov.check_record(several, 1))


def test_checker_flags_missing_provenance_and_schema(shipped):
    assert prov.check_record({"schema": 1}, 1) == ["no provenance block (re-run the script)"]
    assert "schema 1 but the script now writes 2" in prov.check_record(_record(shipped), 2)
    no_commit = _record(shipped)
    no_commit["provenance"]["git_commit"] = ""
    assert prov.check_record(no_commit, 1) == ["provenance has no git_commit"]


def test_check_results_flags_orphans_and_missing(tmp_path, shipped):
    (tmp_path / "cp_fit.json").write_text(json.dumps(_record(shipped)))
    (tmp_path / "kernels.json").write_text(json.dumps(_record(shipped)))
    got = prov.check_results(tmp_path, shipped)
    assert got["cp_fit.json"] == []
    assert "no script writes it" in got["kernels.json"][0]
    assert got["rank_error.json"] == ["missing (run the script)"]


def test_every_script_is_registered_and_records_provenance():
    scripts = {p.stem for p in BENCH.glob("*.py")} - {"provenance", "steps", "__init__", "__main__"}  # helpers
    assert set(prov.SCRIPTS) == scripts
    for name in prov.SCRIPTS:
        src = (BENCH / f"{name}.py").read_text()
        assert prov.script_schema(name) is not None, f"{name}.py writes no single literal schema"
        assert f'results/{name}.json' in src or f'"results" / "{name}.json"' in src, f"{name}.py: results file"
        assert "provenance(" in src, f"{name}.py does not record provenance"


def test_results_files_are_fresh(shipped):
    problems = {f: why for f, why in prov.check_results(shipped=shipped).items() if why}
    assert problems == {}
    for path in BENCH.glob("results/*.json"):
        block = json.loads(path.read_text())["provenance"]
        sns = block["supernet"]
        records = [sns] if sns and set(sns) == {"path", "sha256"} else [r for r in (sns or {}).values() if r]
        for r in records:  # where it measured a supernet, that supernet's hash
            assert re.fullmatch(r"[0-9a-f]{64}", r["sha256"]), (path.name, r)


def test_python_m_benchmarks_lists_every_script():
    res = subprocess.run([sys.executable, "-m", "benchmarks"], cwd=ROOT, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    for name in prov.SCRIPTS:
        assert f"benchmarks/results/{name}.json" in res.stdout
