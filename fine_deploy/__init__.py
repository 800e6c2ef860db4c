"""fine-deploy: right-sized diffusion models from one FINE / OFA-Diffusion supernet."""

__version__ = "0.1.0"

from fine_deploy.errors import FineDeployError  # noqa: E402

__all__ = ["FineDeployError", "__version__"]
