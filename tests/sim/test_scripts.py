"""`python -m sim --script FILE` as a user runs it: identical reports per seed; save/restore."""

from __future__ import annotations

from pathlib import Path

from tests.sim.helpers import run_sim, run_sims

ARGS = ("--no-registry", "--nodes", "12", "--areas", "3")

EXPERIMENT = """
# every source of randomness, and messages in flight at the end
autonet on
net latency 120 jitter 90
net loss 0.1
net bandwidth 800 link n0 n1
mobility 2 fraction 0.25
group create g
group add g n0-n3
flood n5
exchange n6 n7
nstep 2
group train g
group share g
churn 0.05
nstep 3
stats
test
"""


def test_the_same_seed_and_script_print_identical_reports(tmp_path: Path) -> None:
    # Prepare
    script = tmp_path / "experiment.sim"
    script.write_text(EXPERIMENT)

    # Execute
    first, second, other_seed = run_sims(
        (*ARGS, "--seed", "3", "--script", str(script)),
        (*ARGS, "--seed", "3", "--script", str(script)),
        (*ARGS, "--seed", "4", "--script", str(script)),
    )

    # Assert
    assert first.returncode == 0, first.stderr
    assert first.stdout == second.stdout
    assert "sim> stats" in first.stdout and "mean accuracy" in first.stdout
    assert "g round 1 (4 members, fedavg)" in first.stdout
    assert other_seed.stdout != first.stdout


def test_restore_in_a_new_process_continues_as_if_never_saved(tmp_path: Path) -> None:
    # Prepare
    saved = tmp_path / "state.npz"
    rest = "nstep 3\nflood all\nstep\nstats\ntest\n"
    (tmp_path / "straight.sim").write_text(f"{EXPERIMENT}\nsave {saved}\n{rest}")
    (tmp_path / "resumed.sim").write_text(f"restore {saved}\n{rest}")

    # Execute
    straight = run_sim(*ARGS, "--script", str(tmp_path / "straight.sim"))
    resumed = run_sim("--no-registry", "--nodes", "2", "--script", str(tmp_path / "resumed.sim"))
    assert straight.returncode == 0 and resumed.returncode == 0, straight.stderr + resumed.stderr

    # Assert
    after_save = straight.stdout.split(f"sim> save {saved}\n", 1)[1].split("\n", 1)[1]
    after_restore = resumed.stdout.split("\n", 2)[2]
    assert after_restore == after_save
    assert "sim> test" in after_restore


def test_a_failing_line_is_reported_and_the_script_goes_on_but_exits_non_zero(
    tmp_path: Path,
) -> None:
    # Prepare
    script = tmp_path / "bad.sim"
    script.write_text("net loss lots\nnode add 1\n")

    # Execute
    result = run_sim("--no-registry", "--script", str(script))

    # Assert
    assert result.returncode == 1
    assert result.stdout.splitlines() == [
        "sim> net loss lots",
        "error: P must be a number, got 'lots'",
        "usage: net latency MS [jitter MS] [link A B] | net loss P [link A B] | "
        "net bandwidth KBPS [link A B] | net show | net reset [link A B]",
        "sim> node add 1",
        "added n004 (5 nodes now)",
    ]


def test_unreadable_scripts_and_saves_are_named_without_a_traceback(tmp_path: Path) -> None:
    # Prepare: a script that is not text, a save cut short, a latency of infinity
    binary = tmp_path / "binary.sim"
    binary.write_bytes(bytes(range(128, 256)))
    good = tmp_path / "good.npz"
    saving = run_sim("--no-registry", "--nodes", "2", "--script", _script(tmp_path, f"save {good}"))
    assert saving.returncode == 0, saving.stderr
    cut = tmp_path / "cut.npz"
    cut.write_bytes(good.read_bytes()[:3000])
    lines = f"restore {cut}\nnet latency inf\nexchange n0 n1"

    # Execute
    not_text = run_sim("--no-registry", "--nodes", "2", "--script", str(binary))
    broken = run_sim("--no-registry", "--nodes", "2", "--script", _script(tmp_path, lines))

    # Assert
    assert not_text.returncode == 2 and "cannot read script" in not_text.stderr
    assert broken.returncode == 1
    assert f"error: {cut} is not a saved simulation" in broken.stdout
    assert "a damaged zip archive" in broken.stdout
    assert "error: latency must be a finite number, got inf" in broken.stdout
    assert "allow_pickle" not in broken.stdout
    assert "Traceback" not in not_text.stderr + broken.stderr + broken.stdout


def _script(tmp_path: Path, text: str) -> str:
    path = tmp_path / f"script-{abs(hash(text))}.sim"
    path.write_text(text + "\n")
    return str(path)
