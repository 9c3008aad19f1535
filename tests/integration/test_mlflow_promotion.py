"""The alias is the only promotion step: operator promote/rollback, and racing gates promote once."""

import tempfile
import threading
import time

import pytest
from mlflow import MlflowClient
from typer.testing import CliRunner

from recsys.tasks.paths import tracking_uri

pytestmark = pytest.mark.integration


def _model_with_versions(name: str, n: int) -> MlflowClient:
    """A registered model with n cheap versions (aliases only; nothing is loaded)."""
    client = MlflowClient(tracking_uri())
    client.create_registered_model(name)
    src = tempfile.mkdtemp()
    for _ in range(n):
        client.create_model_version(name, source=src)
    return client


def _champion(client, name):
    return str(client.get_model_version_by_alias(name, "champion").version)


def test_promote_records_who_and_why_and_rollback_restores_in_one_command(recsys_home):
    from recsys.flows.cli import app

    name = "ops-cli"
    client = _model_with_versions(name, 2)
    runner = CliRunner()
    out = runner.invoke(app, ["promote", "--model-name", name, "--version", "1", "--reason", "first", "--who", "ann"])
    assert out.exit_code == 0, out.output
    out = runner.invoke(app, ["promote", "--model-name", name, "--version", "2", "--reason", "hotfix", "--who", "bob"])
    assert out.exit_code == 0, out.output
    assert "champion 1 -> 2" in out.output
    assert _champion(client, name) == "2"
    v2 = client.get_model_version(name, "2").tags
    assert v2["promoted_by"] == "bob" and v2["promotion_reason"] == "manual: hotfix" and v2["promoted_at"]
    assert str(client.get_model_version_by_alias(name, "previous").version) == "1"

    out = runner.invoke(app, ["rollback", "--model-name", name, "--reason", "bad latency"])
    assert out.exit_code == 0, out.output
    assert "champion 2 -> 1" in out.output
    assert _champion(client, name) == "1"
    assert str(client.get_model_version_by_alias(name, "previous").version) == "2"
    assert client.get_model_version(name, "1").tags["promotion_reason"] == "rollback: bad latency"


def test_rollback_without_previous_fails_clearly(recsys_home):
    from recsys.flows.cli import app

    _model_with_versions("ops-noprev", 1)
    out = CliRunner().invoke(app, ["rollback", "--model-name", "ops-noprev"])
    assert out.exit_code == 1 and "no 'previous' alias" in out.output


def test_move_is_compare_and_set(recsys_home):
    from recsys.tasks import tracking

    name = "ops-cas"
    client = _model_with_versions(name, 3)
    tracking.move_champion(name, "1", "init")
    with pytest.raises(tracking.ChampionMoved):
        tracking.move_champion(name, "3", "stale decision", expected_champion="2")
    assert _champion(client, name) == "1"
    assert tracking.move_champion(name, "3", "fresh decision", expected_champion="1") == "1"
    assert _champion(client, name) == "3"


def test_racing_gates_promote_only_once(recsys_home):
    """Two challengers that both beat the champion they started against, deciding at the same time."""
    from recsys.tasks import tracking

    name = "ops-race"
    client = _model_with_versions(name, 3)
    tracking.move_champion(name, "1", "init")
    barrier = threading.Barrier(2)
    results, errors = {}, []

    def gate(version: str) -> None:
        def decide(champion):
            time.sleep(0.5)  # scoring takes a while: the window where both would see v1
            return champion == "1", f"beats v{champion}", champion

        try:
            barrier.wait()
            results[version] = tracking.gate_and_promote(name, version, decide)
        except Exception as exc:  # pragma: no cover - surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=gate, args=(v,)) for v in ("2", "3")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    promoted = [v for v, (_, ok, _) in results.items() if ok]
    assert len(promoted) == 1
    winner, loser = promoted[0], ({"2", "3"} - set(promoted)).pop()
    assert _champion(client, name) == winner
    assert results[loser][0] == winner  # the loser decided against the new champion, not the stale v1
    assert str(client.get_model_version_by_alias(name, "previous").version) == "1"


def test_gate_decides_again_when_the_alias_moves_under_it(recsys_home):
    """No shared lock (another machine): the compare-and-set catches the move and the gate re-decides."""
    from recsys.tasks import tracking

    name = "ops-remote"
    client = _model_with_versions(name, 3)
    tracking.move_champion(name, "1", "init")
    seen = []

    def decide(champion):
        seen.append(champion)
        if len(seen) == 1:  # a gate elsewhere promotes v2 while this one is scoring against v1
            client.set_registered_model_alias(name, "champion", "2")
        return champion == "1", f"beats v{champion}", None

    champion, promoted, _ = tracking.gate_and_promote(name, "3", decide)
    assert seen == ["1", "2"] and champion == "2" and not promoted
    assert _champion(client, name) == "2"
