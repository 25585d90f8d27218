"""The stage trainers: `python -m atoll.trainer <stage> --run SPEC_URI --store RUN_URI`.

Each stage (partition, expert, router, assemble, evaluate) reads its inputs from the run's
store, writes its outputs there, is idempotent and resumes from its last committed
checkpoint. Trainers never call the Kubernetes API: the store is their only channel.
"""
