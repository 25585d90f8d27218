"""Atoll: train Decentralized Diffusion Models on heterogeneous GPU fleets.

The package `atoll` holds what every part shares: the DDMRun API models (`atoll.api`),
the object store (`atoll.store`), logging and the `atoll` command line. The stage
trainers live in `atoll.trainer`, the Kubernetes operator in `atoll.operator`.
"""

__version__ = "0.1.0"
