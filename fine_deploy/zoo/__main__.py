"""`python -m fine_deploy.zoo [--steps N] [--resume]`: retrain the embedded default supernet."""

import argparse

from fine_deploy.zoo import build_default

ap = argparse.ArgumentParser(prog="python -m fine_deploy.zoo")
ap.add_argument("--steps", type=int, default=None)
ap.add_argument("--resume", action="store_true")
ap.add_argument("-o", "--output", default=None)
a = ap.parse_args()
print(build_default(a.output, steps=a.steps, resume=a.resume))
