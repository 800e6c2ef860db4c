"""fine-deploy's benchmark scripts (run each as `python benchmarks/NAME.py`, or all with `python -m benchmarks`)."""
