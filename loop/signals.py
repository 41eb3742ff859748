"""Sample from a run's final policy when the run asked for it (TrainingRun.sample_after)."""

from django.dispatch import receiver

from loop.services.sampling import sampling_job_create
from training.selectors import run_final_policy
from training.signals import training_run_succeeded


@receiver(training_run_succeeded)
def sample_after_training_run(sender, run, **kwargs) -> None:
    if run.sample_after is None:  # {} means "sample, with the default options"
        return
    final = run_final_policy(run=run)
    if final is None:  # e.g. a reward-model-only run: nothing generates text
        return
    # Quiet: this runs in the worker that finished the run; on a broker outage the job is sent later.
    sampling_job_create(
        project=run.project,
        model_version=final,
        created_by=run.created_by,
        quiet=True,
        **(run.sample_after or {}),
    )
