"""Compute islands: other Kubernetes clusters the home operator reaches with a kubeconfig Secret."""
