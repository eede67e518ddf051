"""The run-directory contract shared by every pipeline."""

import dataclasses
import json

import pytest

from pipelines.common.errors import CorruptCheckpointError, UserError
from pipelines.common.run_dir import RunDir, read_json, write_json_atomic


@dataclasses.dataclass
class Settings:
    env: str = "Pendulum-v1"
    lr: float = 3e-4
    sizes: tuple = (64, 64)
    total_steps: int = 1000


def test_a_new_directory_is_claimed_and_a_second_claim_resumes(tmp_path):
    run = RunDir(tmp_path / "run")
    assert run.claim(Settings()) is False
    assert json.loads(run.config_file.read_text())["sizes"] == [64, 64]
    assert RunDir(tmp_path / "run").claim(Settings()) is True


def test_other_settings_are_refused_naming_every_field_that_differs(tmp_path):
    RunDir(tmp_path / "run").claim(Settings())
    with pytest.raises(UserError) as error:
        RunDir(tmp_path / "run").claim(
            Settings(env="Hopper-v5", lr=1e-3), may_change={"total_steps"}
        )
    message = str(error.value)
    assert "env: 'Pendulum-v1' -> 'Hopper-v5'" in message
    assert "lr: 0.0003 -> 0.001" in message
    assert "only total_steps may change" in message
    # The refused claim leaves the directory as it was.
    assert json.loads((tmp_path / "run" / "config.json").read_text())["env"] == "Pendulum-v1"


def test_fields_that_may_change_do_not_block_a_resume(tmp_path):
    RunDir(tmp_path / "run").claim(Settings())
    assert RunDir(tmp_path / "run").claim(Settings(total_steps=5000), may_change={"total_steps"})
    assert json.loads((tmp_path / "run" / "config.json").read_text())["total_steps"] == 5000


@dataclasses.dataclass
class LaterSettings:
    """Settings as a later release has them: `lr` renamed, `clip` added."""
    RENAMED_FIELDS = {"lr": "learning_rate"}  # not a field (no annotation)
    env: str = "Pendulum-v1"
    learning_rate: float = 3e-4
    sizes: tuple = (64, 64)
    total_steps: int = 1000
    clip: float = 1.0


def test_a_run_claimed_by_an_older_release_resumes_with_new_fields_at_their_defaults(
        tmp_path):
    RunDir(tmp_path / "run").claim(Settings(lr=1e-3))
    assert RunDir(tmp_path / "run").differences(LaterSettings(learning_rate=1e-3)) == {}
    # A new field away from its default, or the renamed one changed, is a change as ever.
    changed = RunDir(tmp_path / "run").differences(LaterSettings(clip=0.2))
    assert changed == {"clip": (1.0, 0.2), "learning_rate": (1e-3, 3e-4)}
    assert RunDir(tmp_path / "run").claim(LaterSettings(learning_rate=1e-3)) is True


def test_a_finished_run_is_refused_unless_its_budget_grows(tmp_path):
    run = RunDir(tmp_path / "run")
    run.claim(Settings())
    run.finish({"run_id": "abc"})
    assert run.summary() == {"run_id": "abc"}
    with pytest.raises(UserError, match="already finished"):
        RunDir(tmp_path / "run").claim(Settings(), may_change={"total_steps"})
    again = RunDir(tmp_path / "run")
    assert again.claim(Settings(total_steps=2000), may_change={"total_steps"})
    assert not again.finished_file.exists()


def test_a_corrupt_config_file_names_the_file_and_the_way_out(tmp_path):
    run = RunDir(tmp_path / "run")
    run.claim(Settings())
    run.config_file.write_text("")
    with pytest.raises(CorruptCheckpointError) as error:
        RunDir(tmp_path / "run").claim(Settings())
    message = str(error.value)
    assert str(run.config_file) in message and "it is empty" in message
    assert "--run-dir" in message


def test_read_json_reports_truncated_json_with_the_file_name(tmp_path):
    path = tmp_path / "state.json"
    path.write_text('{"step": 3')
    with pytest.raises(CorruptCheckpointError, match=r"state\.json cannot be read"):
        read_json(path, "training state")


def test_atomic_writes_leave_no_temporary_file(tmp_path):
    write_json_atomic(tmp_path / "a" / "b.json", {"x": (1, 2)})
    assert json.loads((tmp_path / "a" / "b.json").read_text()) == {"x": [1, 2]}
    assert [p.name for p in (tmp_path / "a").iterdir()] == ["b.json"]


def test_announce_resume_tells_the_user_where_the_run_continues(tmp_path, capsys):
    RunDir(tmp_path / "run").announce_resume("step 40")
    assert f"Resuming the run in {tmp_path / 'run'} from step 40." in capsys.readouterr().err
