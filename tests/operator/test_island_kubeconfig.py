"""An island's kubeconfig is cut to one context with its files inlined; what the operator cannot use is refused."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import pytest
import yaml

from atoll.operator.islands.kubeconfig import KubeconfigError, standalone


def _kubeconfig(user: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "v1", "kind": "Config", "current-context": "a",
        "clusters": [{"name": "one", "cluster": {"server": "https://one:6443", "certificate-authority": "ca.crt"}},
                     {"name": "two", "cluster": {"server": "https://two:6443"}}],
        "users": [{"name": "u", "user": user}, {"name": "v", "user": {"token": "other-token"}}],
        "contexts": [{"name": "a", "context": {"cluster": "one", "user": "u"}},
                     {"name": "b", "context": {"cluster": "two", "user": "v"}}],
    }  # fmt: skip


def test_one_context_with_files_inlined(tmp_path: Path) -> None:
    (tmp_path / "ca.crt").write_bytes(b"CA")
    (tmp_path / "token").write_text("secret-token\n")
    text = yaml.safe_dump(_kubeconfig({"tokenFile": "token"}))
    out = yaml.safe_load(standalone(text, base=tmp_path))
    assert [c["name"] for c in out["contexts"]] == ["a"]
    assert [c["name"] for c in out["clusters"]] == ["one"]
    assert [u["name"] for u in out["users"]] == ["u"]
    assert out["clusters"][0]["cluster"] == {"server": "https://one:6443", "certificate-authority-data": "Q0E="}
    assert out["users"][0]["user"] == {"token": "secret-token"}
    assert "other-token" not in standalone(text, base=tmp_path)
    other = yaml.safe_load(standalone(text, context="b", base=tmp_path))
    assert other["current-context"] == "b"
    assert other["users"][0]["user"] == {"token": "other-token"}
    assert base64.b64decode(out["clusters"][0]["cluster"]["certificate-authority-data"]) == b"CA"


@pytest.mark.parametrize(
    ("user", "context", "message"),
    [
        ({"exec": {"command": "aws"}}, None, "exec plugin"),
        ({"auth-provider": {"name": "oidc"}}, None, "auth-provider plugin"),
        ({"token": "t"}, "missing", "no entry 'missing' in contexts"),
        ({"client-certificate": "absent.crt"}, None, "cannot read client-certificate"),
    ],
    ids=["exec", "auth-provider", "context", "unreadable-file"],
)
def test_unusable_kubeconfigs_are_refused(
    tmp_path: Path, user: dict[str, Any], context: str | None, message: str
) -> None:
    (tmp_path / "ca.crt").write_bytes(b"CA")
    with pytest.raises(KubeconfigError, match=message) as caught:
        standalone(yaml.safe_dump(_kubeconfig(user)), context=context, base=tmp_path, source="island.yaml")
    assert str(caught.value).startswith("island.yaml: ")
    assert "other-token" not in str(caught.value)
