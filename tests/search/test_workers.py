"""Two worker processes on one study, through a journal file and through a real PostgreSQL server:
both finish, the trial count adds up, and no trial is lost or duplicated."""

from __future__ import annotations

import subprocess
import sys
import uuid

import optuna

from tensorfold.search.storage import open_storage

PER_WORKER = 6


def _run_two_workers(model, storage: str, study: str, tmp_path):
    code = "from tensorfold.cli import main; main()"
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                code,
                "search",
                "ranks",
                str(model),
                "--storage",
                storage,
                "--study",
                study,
                "--n-trials",
                str(PER_WORKER),
                "--sampler",
                "nsga2",
                "--population",
                "4",
                "-o",
                str(tmp_path / f"w{i}"),
                "--no-models",
                "--json",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-2000:]
    loaded = optuna.load_study(study_name=study, storage=open_storage(storage))
    trials = loaded.get_trials(deepcopy=False)
    assert len(trials) == 2 * PER_WORKER
    assert sorted(t.number for t in trials) == list(range(2 * PER_WORKER))
    assert len({t._trial_id for t in trials}) == 2 * PER_WORKER
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    assert all("plan" in t.user_attrs and "error" in t.user_attrs for t in trials)
    # the two workers drew different proposals (their seeds differ)
    assert len({tuple(sorted(t.params.items())) for t in trials}) > PER_WORKER


def test_two_workers_share_a_journal_file(demo_model, tmp_path):
    _run_two_workers(demo_model, f"journal:{tmp_path / 'study.log'}", "journal-study", tmp_path)


def test_two_workers_share_a_postgresql_study(demo_model, tmp_path, postgres_url):
    _run_two_workers(demo_model, postgres_url, f"pg-{uuid.uuid4().hex[:8]}", tmp_path)
