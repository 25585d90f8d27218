"""Runtimes run the stage commands of a run: here the local one (subprocesses on this machine).

The Kubernetes runtime is the operator; both run the very same `python -m atoll.trainer`
commands and follow the stages only through the store.
"""
