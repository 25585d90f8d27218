"""The stage modules, one per `python -m atoll.trainer <stage>`: each exposes `run(ctx: StageContext)`."""
