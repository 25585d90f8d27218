"""The NVML node agent (`atoll agent`): GPU health, free memory and a heartbeat on its Node.

Runs on GPU nodes as a DaemonSet; the planner reads what it publishes. It reads NVML and
patches its own Node's annotations — nothing else.
"""
