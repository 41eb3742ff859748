import time

from django.core.management.base import BaseCommand, CommandError

from core.progress import ProgressLine
from training.models import TrainingRun
from training.selectors import run_is_finished


def wait_for_run(*, run_id: int, stdout, poll_s: float = 1.0) -> TrainingRun:
    """Show one progress bar (or plain lines when captured) per stage until the run finishes (the run goes on if this is interrupted)."""
    bars: dict[int, ProgressLine] = {}
    try:
        while True:
            run = TrainingRun.objects.get(pk=run_id)
            for stage in run.stages.order_by("position"):
                bar = bars.get(stage.pk)
                if bar is None:
                    bar = bars[stage.pk] = ProgressLine(
                        stdout, desc=f"{stage.position} {stage.kind}/{stage.peft}", position=stage.position
                    )
                last = stage.metrics[-1]["values"] if stage.metrics else {}
                bar.show(
                    stage.step,
                    stage.total_steps,
                    stage.status,
                    {k: f"{v:.3g}" for k, v in list(last.items())[:3]},
                )
            if run_is_finished(run=run):
                return run
            time.sleep(poll_s)
    finally:
        for bar in bars.values():
            bar.close()


class Command(BaseCommand):
    help = "Show a training run's stages (status, progress, last metrics); --wait follows it to the end."

    def add_arguments(self, parser):
        parser.add_argument("run_id", type=int)
        parser.add_argument("--wait", action="store_true")

    def handle(self, *args, run_id, wait, **options):
        run = TrainingRun.objects.filter(pk=run_id).first()
        if run is None:
            raise CommandError(f"No training run #{run_id}.")
        if wait:
            run = wait_for_run(run_id=run_id, stdout=self.stdout)
        self.stdout.write(f"Run #{run.pk} {run.get_preset_display()} — {run.status}")
        if run.error:
            self.stdout.write(f"  error: {run.error}")
        for stage in run.stages.order_by("position"):
            output = f" → model version #{stage.output_model_id}" if stage.output_model_id else ""
            self.stdout.write(
                f"  {stage.position} {stage.kind:<11} {stage.peft:<7} {stage.status:<9} "
                f"{stage.step}/{stage.total_steps}{output}"
            )
