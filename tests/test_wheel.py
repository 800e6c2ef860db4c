"""The built wheel, installed as a user (and the Docker images) would install it, works from any folder.

The test copies what the Dockerfiles copy (pyproject.toml, README.md, fine_deploy/), builds the wheel with
`pip wheel --no-deps`, installs it with `--no-deps` into a fresh venv that sees this environment's
dependencies (torch, onnxruntime, ...) but not its editable fine_deploy, and runs `devices`, `plan`,
`export`, `bench` and `profile` from a temporary folder. Nothing may be written into the installed
package or the source tree: measured data goes to the user cache, outputs to -o.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCKER_COPIES = ("pyproject.toml", "README.md", "fine_deploy")  # what docker/Dockerfile.* COPY


def _snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in root.rglob("*") if p.is_file()}


def _git_status() -> str | None:
    if not (REPO / ".git").exists() or shutil.which("git") is None:
        return None
    r = subprocess.run(["git", "status", "--porcelain", "--ignored", "--untracked-files=all"], cwd=REPO,
                       capture_output=True, text=True)
    # the test session's own bytecode is not what this test looks for
    return "\n".join(line for line in r.stdout.splitlines()
                     if "__pycache__" not in line and ".pytest_cache" not in line)


def _build_wheel(tmp: Path) -> Path:
    src = tmp / "src"
    src.mkdir()
    for name in DOCKER_COPIES:
        p = REPO / name
        if p.is_dir():
            shutil.copytree(p, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy(p, src / name)
    cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp / "wheels"), str(src)]
    try:
        import setuptools  # noqa: F401  (present: build offline with it instead of fetching an isolated one)

        cmd.insert(4, "--no-build-isolation")
    except ImportError:
        pass
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    wheels = list((tmp / "wheels").glob("fine_deploy-*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


def _venv_seeing_our_dependencies(tmp: Path) -> tuple[Path, Path]:
    """A fresh venv whose own site-packages comes first, with this environment's site-packages behind it.

    `--system-site-packages` would expose the base interpreter's packages, not this (virtual) environment's,
    so the dependencies are added with a .pth path line instead. Path lines do not run this environment's
    .pth hooks, so its editable fine_deploy stays invisible: the venv can only import the installed wheel.
    """
    venv = tmp / "venv"
    r = subprocess.run([sys.executable, "-m", "venv", str(venv)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    py = venv / "bin" / "python"
    site = Path(subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    ours = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    (site / "zz_outer_dependencies.pth").write_text("\n".join(sorted(ours)) + "\n")
    return py, site


@pytest.mark.slow
def test_wheel_installs_and_runs_from_a_temporary_folder(tmp_path, dit_supernet):
    wheel = _build_wheel(tmp_path)
    import zipfile

    names = zipfile.ZipFile(wheel).namelist()
    assert "fine_deploy/profiles/host.yaml" in names and "fine_deploy/zoo/default/weights.safetensors" in names
    assert not any("/measured/" in n for n in names)  # measured data never ships

    py, site = _venv_seeing_our_dependencies(tmp_path)
    r = subprocess.run([str(py), "-m", "pip", "install", "--no-deps", "--no-index", "-q", str(wheel)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    exe = py.parent / "fine-deploy"
    assert exe.is_file()

    work, cache, home = tmp_path / "work", tmp_path / "cache", tmp_path / "home"
    for d in (work, home):
        d.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FINE_DEPLOY", "PYTHON", "XDG_CACHE"))}
    env.update(FINE_DEPLOY_CACHE=str(cache), HOME=str(home), PYTHONDONTWRITEBYTECODE="1", HF_HUB_OFFLINE="1",
               OMP_NUM_THREADS="1")
    where = subprocess.run([str(py), "-c", "import fine_deploy; print(fine_deploy.__file__)"], cwd=work, env=env,
                           capture_output=True, text=True, check=True).stdout.strip()
    assert Path(where).is_relative_to(site), where  # the wheel, not the editable source tree
    installed = site / "fine_deploy"
    before_install, before_src = _snapshot(installed), _git_status()

    def cli(*args: str, timeout: int = 300) -> str:
        r = subprocess.run([str(exe), *args], cwd=work, env=env, capture_output=True, text=True, timeout=timeout)
        assert r.returncode == 0, f"fine-deploy {' '.join(args)}: {r.stdout}{r.stderr}"
        return r.stdout + r.stderr

    out = cli("devices", "--json")
    assert {"host", "jetson-orin-nano-8gb", "h100-sxm"} <= {row["name"] for row in json.loads(out)}
    cli("plan", "--device", "host", "--mem", "2GB", "-o", "plan.json")
    cli("export", "--plan", "plan.json", "--format", "onnx", "-o", "model")
    cli("bench", "model", "--runs", "5", "--warmup", "1", "--no-calibrate", "--json", "bench.json")
    # the quickest real profile: the tiny test supernet's layers (the default's takes ~40 s on 2 cores)
    cli("profile", "--device", "host", "--supernet", str(dit_supernet), timeout=600)

    assert sorted(p.name for p in work.iterdir()) == ["bench.json", "model", "plan.json"]
    assert json.loads((work / "bench.json").read_text())["models"][0]["samples_s"]
    lut = cache / "measured" / "host-onnxruntime-cpu.json"
    assert lut.is_file() and json.loads(lut.read_text())["complete"] is True  # profile wrote to the user cache
    assert (cache / "measured" / "host-probe.json").is_file()
    assert _snapshot(installed) == before_install, "a command wrote into the installed package"
    assert _git_status() == before_src, "a command wrote into the source tree"
