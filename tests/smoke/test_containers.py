"""The pure pieces of running a pod from its image (no cluster, no image): Kubernetes' rules for
command/args against ENTRYPOINT/CMD, the environment's precedence, the user and groups, the
volumes the runtime can give, and mount targets resolved inside the root filesystem only."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from images import build
from tests.env import chroot_exec, containers
from tests.env.containers import ImageConfig
from tests.env.pods import ContainerConfigError

IMAGE = ImageConfig.from_oci(
    {
        "Env": ["PATH=/opt/atoll/bin:/usr/bin", "HOME=/tmp", "LANG=C.UTF-8"],
        "Entrypoint": ["atoll"],
        "Cmd": ["operator"],
        "User": "65532:65532",
        "WorkingDir": "/tmp",
    }
)
PASSWD = "root:x:0:0:root:/root:/bin/sh\natoll:x:65532:65532:atoll:/tmp:/usr/sbin/nologin\n"


def pod(spec: dict[str, Any] | None = None, **container: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": "p", "namespace": "ns", "uid": "u"},
        "spec": {"containers": [{"name": "main", "image": "i", **container}], **(spec or {})},
    }


@pytest.mark.parametrize(
    ("container", "expected"),
    [
        ({}, ["atoll", "operator"]),
        ({"args": ["agent", "--interval=$(N)"]}, ["atoll", "agent", "--interval=5"]),
        ({"args": []}, ["atoll"]),
        ({"command": ["python", "-c", "x"]}, ["python", "-c", "x"]),  # command drops the image's CMD too
        ({"command": ["sh"], "args": ["-c", "$$HOME"]}, ["sh", "-c", "$HOME"]),
    ],
)
def test_command_and_args_against_entrypoint_and_cmd(container: dict[str, Any], expected: list[str]) -> None:
    assert containers.argv({"name": "c", **container}, IMAGE, {"N": "5"}) == expected


def test_no_command_anywhere_is_a_config_error() -> None:
    with pytest.raises(ContainerConfigError, match="no command"):
        containers.argv({"name": "c"}, ImageConfig({}, [], [], "", "/"), {})


def test_environment_image_then_service_then_container() -> None:
    env = containers.environment(
        IMAGE, {"HOME": "/scratch", "X": "1"}, hostname="p", api_host="127.0.0.1", api_port=6443
    )
    assert env["PATH"] == "/opt/atoll/bin:/usr/bin"
    assert env["HOME"] == "/scratch"  # the container's own variables win
    assert (env["KUBERNETES_SERVICE_HOST"], env["KUBERNETES_SERVICE_PORT"]) == ("127.0.0.1", "6443")
    assert env["HOSTNAME"] == "p"


def test_identity_from_the_image_and_from_security_contexts() -> None:
    assert containers.identity(pod(), pod()["spec"]["containers"][0], IMAGE, PASSWD) == containers.Identity(
        65532, 65532, ()
    )
    spec = {"securityContext": {"runAsUser": 1000, "fsGroup": 2000, "supplementalGroups": [3000]}}
    manifest = pod(spec, securityContext={"runAsUser": 1001})
    who = containers.identity(manifest, manifest["spec"]["containers"][0], IMAGE, PASSWD)
    assert (who.uid, who.gid, who.groups) == (1001, 65532, (3000, 2000))  # gid: the image's group
    root = ImageConfig({}, ["sh"], [], "", "/")
    manifest = pod({"securityContext": {"runAsNonRoot": True}})
    with pytest.raises(ContainerConfigError, match="runAsNonRoot"):
        containers.identity(manifest, manifest["spec"]["containers"][0], root, PASSWD)


def test_unsupported_volumes_are_config_errors() -> None:
    manifest = pod({"volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": "x"}}]})
    with pytest.raises(ContainerConfigError, match="persistentVolumeClaim volumes are not supported"):
        containers.volume_of(manifest, "data")
    with pytest.raises(ContainerConfigError, match='volume "nope" not found'):
        containers.volume_of(manifest, "nope")
    manifest = pod({"volumes": [{"name": "tmp", "emptyDir": {}}]})
    assert containers.volume_of(manifest, "tmp") == ("emptyDir", {})


def test_mount_targets_resolve_symlinks_inside_the_root(tmp_path: Path) -> None:
    root = tmp_path / "rootfs"
    (root / "run").mkdir(parents=True)
    (root / "var").mkdir()
    (root / "var" / "run").symlink_to("/run")  # absolute, as in Debian: must not lead to the host's /run
    (root / "etc").mkdir()
    (root / "etc" / "alt").symlink_to("../run/x")
    assert chroot_exec._inside(root, "/var/run/secrets/kubernetes.io") == root / "run" / "secrets" / "kubernetes.io"
    assert chroot_exec._inside(root, "/etc/alt/y") == root / "run" / "x" / "y"
    assert chroot_exec._inside(root, "/../../etc") == root / "etc"


def test_image_inputs_key_follows_its_inputs() -> None:
    operator = build.IMAGES["operator"]
    key = build.inputs_key(operator, "base-a")
    assert key == build.inputs_key(operator, "base-a")
    assert key != build.inputs_key(operator, "base-b")
    assert key != build.inputs_key(build.IMAGES["trainer"], "base-a")


def test_the_runtime_finds_buildah_installed_after_it_started(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # On a fresh machine the pod runtime starts before the first image build installs buildah
    # and makes the storage: it ran every image pod on the host for the rest of the session.
    from images.engine import Engine
    from tests.env import imagepods

    engine = Engine("buildah", ("buildah", "--root", str(tmp_path / "root"), "--storage-driver", "vfs"))
    monkeypatch.setattr(imagepods, "_local_engine", lambda: None)
    images = imagepods.ImagePods(None, "https://127.0.0.1:6443", tmp_path / "work")
    assert images.lookup("localhost/atoll-operator:t1") is None, "no buildah yet: on the host"
    (tmp_path / "root" / "vfs-images").mkdir(parents=True)
    records = [{"id": "f" * 64, "names": ["localhost/atoll-operator:t1"]}]
    (tmp_path / "root" / "vfs-images" / "images.json").write_text(json.dumps(records))
    monkeypatch.setattr(imagepods, "_local_engine", lambda: engine)
    assert images.lookup("localhost/atoll-operator:t1") == "f" * 64, "installed and built since: from the image"
