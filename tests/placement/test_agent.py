"""The NVML node agent against the NVML double (and the real pynvml, absent on this machine)."""

from __future__ import annotations

import argparse
import json
import threading
from datetime import UTC, datetime
from typing import Any

import pynvml
import pytest

from atoll.cli import main as atoll_main
from atoll.errors import AtollError
from atoll.operator.agent import cli as agent_cli
from atoll.operator.agent.agent import Agent
from atoll.operator.agent.health import Watch, gpu_health, node_annotations
from atoll.operator.agent.nvml import Nvml, NvmlUnavailableError
from atoll.operator.placement import labels
from tests.placement.nvml_double import FakeGpu, FakeNvml

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def gpus(count: int = 2, **changes: Any) -> list[FakeGpu]:
    return [FakeGpu(uuid=f"GPU-{i:08d}-aaaa-bbbb-cccc-000000000000", **changes) for i in range(count)]


def opened(fake: FakeNvml) -> Nvml:
    session = Nvml(fake)
    session.open()
    return session


def summary(fake: FakeNvml, events: bool = True) -> dict[str, str]:
    session = opened(fake)
    published: list[dict[str, str]] = []
    agent = Agent(session, published.append, wall_clock=lambda: NOW)
    if events:
        agent.record(session.wait_events(0))
    return agent.report()


def test_healthy_gpus_publish_ok_free_memory_heartbeat_and_product() -> None:
    fake = FakeNvml(gpus=gpus(2, memory_free_mib=80000, utilization=37, temperature=41))
    result = summary(fake)
    assert result[labels.HEALTH] == "ok"
    assert result[labels.HEARTBEAT] == "2026-03-01T12:00:00Z"
    assert result[labels.FREE_MIB] == "80000,80000"
    assert result[labels.AGENT_PRODUCT] == "NVIDIA-H100-80GB-HBM3"  # GFD spelling of the NVML name
    assert result[labels.AGENT_MEMORY_MIB] == "81559"
    per_gpu = json.loads(result[labels.GPUS])
    assert [g["i"] for g in per_gpu] == [0, 1]
    assert per_gpu[0] == {
        "i": 0,
        "uuid": "GPU-00000000-aaaa-bbbb-cccc-000000000000",
        "health": "ok",
        "freeMiB": 80000,
        "util": 37,
        "tempC": 41,
        "throttle": ["gpu-idle"],
    }
    assert all(len(value) < 1024 for value in result.values()), "annotations stay compact"
    # XID events were registered on every GPU, limited to what each supports.
    assert fake.registered == {0: pynvml.nvmlEventTypeXidCriticalError, 1: pynvml.nvmlEventTypeXidCriticalError}


def test_uncorrected_ecc_errors_make_the_gpu_unhealthy() -> None:
    fake = FakeNvml(gpus=gpus(2))
    fake.gpus[1].ecc_uncorrected = 3
    result = summary(fake)
    assert result[labels.HEALTH] == "gpu 1: 3 uncorrected ECC errors"
    assert json.loads(result[labels.GPUS])[1]["eccUncorrected"] == 3


def test_ecc_not_supported_is_not_an_error() -> None:
    fake = FakeNvml(gpus=gpus(1, ecc_uncorrected=None, name="NVIDIA GeForce RTX 4090"))
    assert summary(fake)[labels.HEALTH] == "ok"


def test_critical_xid_event_is_sticky_and_names_the_gpu() -> None:
    fake = FakeNvml(gpus=gpus(4))
    session = opened(fake)
    published: list[dict[str, str]] = []
    agent = Agent(session, published.append, wall_clock=lambda: NOW)
    agent.report()
    fake.xid(2, 79)  # GPU has fallen off the bus
    assert agent.step(wait_ms=0) is not None, "a critical XID is published at once"
    assert published[-1][labels.HEALTH] == "gpu 2: xid 79"
    assert json.loads(published[-1][labels.GPUS])[2]["xids"] == [79]
    agent.report()  # no new event: the GPU stays unhealthy
    assert published[-1][labels.HEALTH] == "gpu 2: xid 79"


def test_application_xids_are_ignored_like_the_device_plugin() -> None:
    fake = FakeNvml(gpus=gpus(2))
    for xid in (13, 31, 43, 45, 68, 109):
        fake.xid(0, xid)
    fake.xid(1, 48, event_type=pynvml.nvmlEventTypeDoubleBitEccError)  # not an XID event: counters cover it
    assert summary(fake)[labels.HEALTH] == "ok"
    fake = FakeNvml(gpus=gpus(2))
    fake.xid(0, 13)
    fake.xid(1, 94)  # contained ECC error: critical
    assert summary(fake)[labels.HEALTH] == "gpu 1: xid 94"


def test_extra_ignored_xids_from_the_command_line(capsys: pytest.CaptureFixture[str]) -> None:
    for ignored, health in (("94", "ok"), ("", "gpu 0: xid 94"), ("48, 94", "ok")):
        fake = FakeNvml(gpus=gpus(1))
        fake.xid(0, 94)  # contained ECC error: critical unless ignored
        args = argparse.Namespace(node=None, interval=30.0, once=True, print=True, ignore_xids=ignored)
        assert agent_cli.run(args, nvml_module=fake, stop=threading.Event()) == 0
        assert json.loads(capsys.readouterr().out)[labels.HEALTH] == health
        assert fake.calls[-1] == "nvmlShutdown"
    with pytest.raises(AtollError, match="--ignore-xids must be comma-separated integers"):
        agent_cli.run(argparse.Namespace(node=None, interval=30.0, once=True, print=True, ignore_xids="x"))


def test_hardware_slowdown_is_unhealthy_software_power_cap_is_normal() -> None:
    power_capped = FakeNvml(gpus=gpus(1, throttle_mask=0x4 | 0x20))  # sw power cap + sw thermal
    result = summary(power_capped)
    assert result[labels.HEALTH] == "ok"
    assert json.loads(result[labels.GPUS])[0]["throttle"] == ["sw-power-cap", "sw-thermal"]
    overheating = FakeNvml(gpus=gpus(2))
    overheating.gpus[0].throttle_mask = 0x40 | 0x4  # hw thermal slowdown
    assert summary(overheating)[labels.HEALTH] == "gpu 0: throttled hw-thermal"
    braking = FakeNvml(gpus=gpus(1, throttle_mask=0x80))
    assert summary(braking)[labels.HEALTH] == "gpu 0: throttled hw-power-brake"


def test_row_remapping_failure_and_pending() -> None:
    failed = FakeNvml(gpus=gpus(1, remapped_rows=(2, 9, 0, 1)))
    result = summary(failed)
    assert result[labels.HEALTH] == "gpu 0: row remapping failed"
    assert json.loads(result[labels.GPUS])[0]["remappedRows"] == [2, 9]
    pending = FakeNvml(gpus=gpus(1, remapped_rows=(0, 1, 1, 0)))
    assert summary(pending)[labels.HEALTH] == "gpu 0: row remapping pending (reset the GPU)"
    corrected = FakeNvml(gpus=gpus(1, remapped_rows=(4, 0, 0, 0)))
    assert summary(corrected)[labels.HEALTH] == "ok"


def test_older_gpus_report_retired_pages_instead_of_remapped_rows() -> None:
    v100 = {"name": "Tesla V100-SXM2-16GB", "memory_total_mib": 16384, "remapped_rows": None}
    fine = FakeNvml(gpus=gpus(1, retired_pages=[0x1000, 0x2000], retired_pending=0, **v100))
    result = summary(fine)
    assert result[labels.HEALTH] == "ok"
    assert result[labels.AGENT_PRODUCT] == "Tesla-V100-SXM2-16GB"
    assert json.loads(result[labels.GPUS])[0]["retiredPages"] == 2
    pending = FakeNvml(gpus=gpus(1, retired_pages=[0x1000], retired_pending=1, **v100))
    assert summary(pending)[labels.HEALTH] == "gpu 0: page retirement pending (reset the GPU)"


def test_lost_gpu_and_failed_event_wait() -> None:
    fake = FakeNvml(gpus=gpus(3))
    fake.gpus[1].lost = True
    fake.gpus[2].lost = True
    assert summary(fake, events=False)[labels.HEALTH] == "gpu 1: gpu lost, +1 more"
    broken = FakeNvml(gpus=gpus(2), wait_error=pynvml.NVML_ERROR_UNKNOWN)
    assert summary(broken)[labels.HEALTH] == "gpu 0: nvml event wait failed, +1 more"


def test_gpu_without_event_support_is_still_watched_by_counters() -> None:
    fake = FakeNvml(gpus=gpus(1, supported_events=0, name="Tesla K80"))
    session = opened(fake)
    assert session.unwatched == {}
    assert fake.registered == {}
    assert gpu_health(session.read()[0], Watch()) == "ok"
    too_old = FakeNvml(gpus=gpus(1, register_error=pynvml.NVML_ERROR_NOT_SUPPORTED))
    assert summary(too_old)[labels.HEALTH] == "ok"


def test_failing_event_registration_is_reported() -> None:
    fake = FakeNvml(gpus=gpus(2))
    fake.gpus[1].register_error = pynvml.NVML_ERROR_NO_PERMISSION
    assert summary(fake)[labels.HEALTH] == "gpu 1: xid events unavailable: Insufficient Permissions"


def test_absent_nvml_with_the_real_pynvml_exits_with_a_clear_message(capsys: pytest.CaptureFixture[str]) -> None:
    # This machine has no NVIDIA driver: the real, default pynvml cannot load libnvidia-ml.
    with pytest.raises(NvmlUnavailableError, match=r"NVML is not available on this machine \(NVML Shared Library"):
        Nvml().open()
    assert atoll_main(["agent", "--print", "--once"]) == 1
    error = capsys.readouterr().err
    assert error.startswith("error: NVML is not available on this machine")
    assert "NVIDIA driver" in error


def test_driver_not_loaded_is_reported_too() -> None:
    with pytest.raises(NvmlUnavailableError, match="Driver Not Loaded"):
        Nvml(FakeNvml(driver_loaded=False)).open()


def test_node_name_is_required_unless_printing(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("NODE_NAME", raising=False)
    assert atoll_main(["agent", "--once"]) == 1
    assert "--node NAME or NODE_NAME" in capsys.readouterr().err
    assert atoll_main(["agent", "--interval", "0", "--print"]) == 1
    assert "--interval must be positive" in capsys.readouterr().err


def test_transient_publish_failures_are_retried_not_fatal() -> None:
    fake = FakeNvml(gpus=gpus(1))
    session = opened(fake)
    attempts: list[dict[str, str]] = []
    stop = threading.Event()
    clock = [0.0]

    def flaky(summary: dict[str, str]) -> None:
        attempts.append(summary)
        clock[0] += 31  # the next report is due at once
        if len(attempts) == 1:
            raise ConnectionError("API server unreachable")
        stop.set()

    agent = Agent(session, flaky, interval_seconds=30, clock=lambda: clock[0])
    agent.run(stop)
    assert len(attempts) == 2


def test_annotations_without_gpus() -> None:
    assert node_annotations([], Watch(), NOW)[labels.HEALTH] == "no GPU found by NVML"
