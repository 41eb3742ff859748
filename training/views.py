"""Training pages: launch, watch (htmx polling), cancel/resume/retry, the model registry. Thin: services do the work."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlencode

from django.contrib import messages
from django.core.exceptions import ValidationError
from django.http import FileResponse, Http404, HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from core.forms import form_add_service_errors
from core.jobs import BrokerUnavailable
from core.permissions import role_required
from core.roles import Role
from core.selectors import user_has_role
from exports.filters import PreferenceFilters
from labeling.selectors.annotation import sole_project_slug
from loop.selectors import policy_records
from registry.artifacts import resolve_inside, resolve_inside_root
from registry.forms import BaseModelImportForm
from registry.models import BaseModelImport, ModelVersion
from registry.selectors import model_version_lineage
from registry.services import base_model_import_job_create, model_version_use_for_sampling
from training import estimates
from training.estimates import DEVICE_NAMES, expected_device_kind, format_duration, run_eta
from training.forms import STAGE_LABELS, LaunchForm
from training.jobs import stages_waiting
from training.models import StageRun, TrainingRun
from training.selectors import (
    COLLAPSED_STAGE_STATES,
    model_versions_with_runs,
    run_is_finished,
    runs_list,
    stage_metrics,
    stage_progress,
    stages_for_display,
)
from training.services import runs as run_services
from training.services.datasets import snapshot_counts, snapshot_sizes

admin_required = role_required(Role.ADMIN)
reader_required = role_required(Role.ADMIN, Role.RESEARCHER)


def _is_admin(request: HttpRequest) -> bool:
    return user_has_role(user=request.user, role=Role.ADMIN)


@reader_required
def run_list(request: HttpRequest) -> HttpResponse:
    return render(
        request, "training/run_list.html", {"runs": runs_list()[:200], "is_admin": _is_admin(request)}
    )


def _launch_initial(request: HttpRequest) -> dict:
    """A CPU-only installation starts from the CPU demo size with LoRA everywhere: the round finishes in minutes."""
    initial = {"project": request.GET.get("project") or sole_project_slug()}
    if expected_device_kind() == "cpu":
        initial.update({"size": "cpu_demo", **{f"peft_{kind}": "lora" for kind in STAGE_LABELS}})
    return initial


@admin_required
def launch(request: HttpRequest) -> HttpResponse:
    form = LaunchForm(request.POST or None, initial=_launch_initial(request))
    if request.method == "POST" and form.is_valid():
        try:
            run = run_services.training_run_launch(
                project=form.cleaned_data["project"],
                preset=form.cleaned_data["preset"],
                base_model=form.cleaned_data["base_model"],
                peft=form.peft_methods(),
                stage_configs=form.stage_configs(),
                filters=form.filters(),
                sample_after={} if form.cleaned_data["sample_after"] else None,
                created_by=request.user,
            )
        except ValidationError as exc:
            form.add_service_errors(exc.message_dict)
        except BrokerUnavailable as exc:  # the run is saved and starts once the broker is back
            messages.warning(request, str(exc))
            return redirect("training:run", run_id=exc.pk)
        else:
            messages.success(request, f"Run #{run.pk} is queued on the gpu workers.")
            return redirect("training:run", run_id=run.pk)
    status = 422 if request.method == "POST" else 200
    return render(request, "training/launch.html", {"form": form}, status=status)


@admin_required
@require_GET
def launch_count(request: HttpRequest) -> HttpResponse:
    """Live count of the rows a round would train on with the filters in the form (htmx partial)."""
    form = LaunchForm(request.GET)
    form.is_valid()  # partial forms are fine here: only project, preset and filters are read
    data = form.cleaned_data
    context: dict = {"counts": None, "error": None}
    if data.get("project") and data.get("preset"):
        formats = run_services.preset_data_formats(data["preset"])
        try:
            filters = PreferenceFilters.from_dict(form.filters())
            context["counts"] = snapshot_counts(project=data["project"], filters=filters, formats=formats)
        except (ValueError, TypeError, ValidationError) as exc:
            context["error"] = str(exc)
    else:
        context["error"] = "Choose a project and a preset."
    return render(request, "training/partials/launch_count.html", context)


@admin_required
@require_GET
def launch_estimate(request: HttpRequest) -> HttpResponse:
    """How long the round in the form would take, stage by stage (htmx partial, refreshed on every change)."""
    form = LaunchForm(request.GET)
    form.is_valid()
    context: dict = {"estimate": None, "error": None}
    data = form.cleaned_data
    if not (data.get("project") and data.get("preset")):
        context["error"] = "Choose a project and a preset to see how long the round would take."
        return render(request, "training/partials/launch_estimate.html", context)
    try:
        plan = run_services.launch_plan_validate(
            preset=data["preset"],
            peft=form.peft_methods(),
            stage_configs=form.stage_configs(),
            filters=form.filters(),
        )
    except (ValidationError, KeyError):  # the launch itself names the bad fields
        context["error"] = "No estimate until the settings are valid."
        return render(request, "training/partials/launch_estimate.html", context)
    base = data.get("base_model") or run_services.default_base_model()
    sizes = snapshot_sizes(project=data["project"], filters=plan.filters, formats=plan.formats)
    estimate = estimates.launch_estimate(
        stages=[(kind, config) for kind, _, config in plan.stages],
        num_parameters=base.num_parameters if base else 0,
        sizes=sizes,
    )
    context["estimate"] = estimate
    context["rows"] = [
        {
            "estimate": stage,
            "label": STAGE_LABELS[stage.kind],
            "total": format_duration(stage.seconds),
            "per_step": format_duration(stage.seconds_per_step),
        }
        for stage in estimate.stages
    ]
    context["total"] = format_duration(estimate.seconds)
    context["device"] = DEVICE_NAMES[estimate.device]
    return render(request, "training/partials/launch_estimate.html", context)


def _run_context(request: HttpRequest, run: TrainingRun) -> dict:
    stages = stages_for_display(run=run)
    # The next stage whose task never reached the broker (an outage): core.jobs sends it once the broker is back.
    undelivered = set(stages_waiting(run.stages.filter(enqueued_at=None)).values_list("pk", flat=True))
    eta = run_eta(run=run, stages=stages)
    return {
        "run": run,
        "finished": run_is_finished(run=run),
        "run_eta": format_duration(eta.seconds_left) if eta.seconds_left is not None else None,
        "stages": [
            {
                "eta": _stage_eta_view(eta.stages.get(stage.pk)),
                "progress": stage_progress(stage=stage),
                "metrics": stage_metrics(stage=stage),
                "collapsed": stage.status in COLLAPSED_STAGE_STATES,
                "curves_id": f"curves-{stage.pk}",
                "more_id": f"more-series-{stage.pk}",
                "undelivered": stage.pk in undelivered,
            }
            for stage in stages
        ],
        "is_admin": _is_admin(request),
    }


def _filters_sentence(run: TrainingRun) -> str:
    try:
        return PreferenceFilters.from_dict(run.dataset_filters).sentence()
    except (
        ValidationError,
        TypeError,
        ValueError,
    ):  # filters stored by an older version: show them as stored
        return str(run.dataset_filters)


def _stage_eta_view(eta) -> dict | None:
    """What the stage's ETA line says: time left, whether measured or estimated, the phase of a long step."""
    if eta is None:
        return None
    stage = eta.stage
    return {
        "left": format_duration(eta.seconds_left) if eta.seconds_left is not None else None,
        "measured": eta.measured,
        "per_step": format_duration(eta.seconds_per_step) if eta.seconds_per_step else None,
        "overran": eta.overran,
        "running": stage.status == StageRun.Status.RUNNING,
        "phase": stage.phase if stage.status == StageRun.Status.RUNNING and stage.phase else None,
    }


@reader_required
def run_detail(request: HttpRequest, run_id: int) -> HttpResponse:
    run = get_object_or_404(
        TrainingRun.objects.select_related("project", "base_model", "created_by"), pk=run_id
    )
    context = {**_run_context(request, run), "filters_sentence": _filters_sentence(run)}
    return render(request, "training/run_detail.html", context)


@reader_required
@require_GET
def run_live(request: HttpRequest, run_id: int) -> HttpResponse:
    """The part of the run page that changes, polled by htmx while the run is not finished."""
    run = get_object_or_404(TrainingRun, pk=run_id)
    return render(request, "training/partials/run_live.html", _run_context(request, run))


@admin_required
@require_POST
def run_cancel(request: HttpRequest, run_id: int) -> HttpResponse:
    run = run_services.training_run_cancel(run=get_object_or_404(TrainingRun, pk=run_id))
    return _after_action(request, run, "Cancel requested: the stage stops after its current step.")


@admin_required
@require_POST
def stage_restart(request: HttpRequest, stage_id: int, mode: str) -> HttpResponse:
    stage = get_object_or_404(StageRun, pk=stage_id)
    action = {"resume": run_services.stage_run_resume, "retry": run_services.stage_run_retry}.get(mode)
    if action is None:
        raise Http404
    try:
        action(stage_run=stage)
    except ValidationError as exc:
        messages.error(request, " ".join(exc.messages))
    except BrokerUnavailable as exc:
        messages.warning(request, str(exc))
    else:
        verb = "resumes from its last checkpoint" if mode == "resume" else "starts again from step 0"
        messages.success(request, f"Stage {stage.position} ({stage.kind}) {verb}.")
    return _after_action(request, stage.run, None)


def _after_action(request: HttpRequest, run: TrainingRun, message: str | None) -> HttpResponse:
    if message:
        messages.success(request, message)
    if request.htmx:
        run.refresh_from_db()
        return render(request, "training/partials/run_live.html", _run_context(request, run))
    return redirect("training:run", run_id=run.pk)


@reader_required
def model_list(request: HttpRequest) -> HttpResponse:
    versions = list(model_versions_with_runs()[:500])
    records = policy_records(versions=versions)
    context = {
        "rows": [(version, records.get(version.pk)) for version in versions],
        "sampling": next((version for version in versions if version.use_for_sampling), None),
        "is_admin": _is_admin(request),
    }
    return render(request, "training/model_list.html", context)


@admin_required
@require_http_methods(["GET", "POST"])
def model_import(request: HttpRequest) -> HttpResponse:
    """ "Add a base model": a folder on the shared volume, imported by a task on the `default` queue."""
    form = BaseModelImportForm(request.POST or None, request.FILES or None)
    if request.method == "POST" and form.is_valid():
        data = form.cleaned_data
        try:
            job = base_model_import_job_create(
                path=data["path"],
                name=data["name"],
                chat_template=data["chat_template"],
                created_by=request.user,
            )
        except ValidationError as exc:
            form_add_service_errors(form, exc)
        except BrokerUnavailable as exc:  # the job is saved and starts once the broker is back
            messages.warning(request, str(exc))
            return redirect("training:model_import_job", job_id=exc.pk)
        else:
            messages.success(
                request, f"Import #{job.pk} is queued: the folder is checked before anything is copied."
            )
            return redirect("training:model_import_job", job_id=job.pk)
    status = 422 if request.method == "POST" else 200
    context = {"form": form, "jobs": BaseModelImport.objects.select_related("model_version")[:10]}
    return render(request, "training/model_import.html", context, status=status)


@admin_required
@require_GET
def model_import_job(request: HttpRequest, job_id: int) -> HttpResponse:
    """An import's page; its status partial polls itself (htmx) until the job has finished."""
    job = get_object_or_404(BaseModelImport.objects.select_related("model_version"), pk=job_id)
    template = "training/partials/model_import_job.html" if request.htmx else "training/model_import_job.html"
    return render(request, template, {"job": job})


@reader_required
def model_detail(request: HttpRequest, version_id: int) -> HttpResponse:
    version = get_object_or_404(
        ModelVersion.objects.select_related("produced_by_stage__run__project"), pk=version_id
    )
    context = {
        "version": version,
        "lineage": model_version_lineage(version=version),
        "children": version.children.order_by("id"),
        "files": artifact_files(version),
        "is_admin": _is_admin(request),
        "sampling_url": sampling_url(version) if version.kind == ModelVersion.Kind.POLICY else "",
        "samples": version.responses.select_related("prompt").order_by("-id")[:10],
    }
    return render(request, "training/model_detail.html", context)


def _artifact_folder(version: ModelVersion) -> Path:
    folder = resolve_inside_root(version.artifact_path)
    if folder is None or not folder.is_dir():
        raise Http404("The artifact is not on this server.")
    return folder


def artifact_files(version: ModelVersion) -> list[tuple[str, int]]:
    try:
        folder = _artifact_folder(version)
    except Http404:
        return []
    return [(str(p.relative_to(folder)), p.stat().st_size) for p in sorted(folder.rglob("*")) if p.is_file()]


@reader_required
@require_GET
def model_file_download(request: HttpRequest, version_id: int, filename: str) -> FileResponse:
    """One file of the artifact, streamed from disk (weights can be hundreds of MB)."""
    version = get_object_or_404(ModelVersion, pk=version_id)
    path = resolve_inside(_artifact_folder(version), filename)
    if path is None or not path.is_file():
        raise Http404("No such file in this artifact.")
    return FileResponse(open(path, "rb"), as_attachment=True, filename=f"{version.name}--{path.name}")


def sampling_url(version: ModelVersion) -> str:
    """The sampling page with this policy (and the project it was trained on) preselected."""
    query = {"model_version": version.pk}
    stage = getattr(version, "produced_by_stage", None)  # None: imported, not trained here
    if stage is not None:
        query["project"] = stage.run.project.slug
    return f"{reverse('loop:sampling')}?{urlencode(query)}"


@admin_required
@require_POST
def model_use_for_sampling(request: HttpRequest, version_id: int) -> HttpResponse:
    """Make the policy the sampling one, then offer the sampling job: its form opens with this policy chosen."""
    version = get_object_or_404(
        ModelVersion.objects.select_related("produced_by_stage__run__project"), pk=version_id
    )
    try:
        model_version_use_for_sampling(version=version)
    except ValidationError as exc:
        messages.error(request, " ".join(exc.messages))
        return redirect("training:model", version_id=version.pk)
    messages.success(
        request,
        f"{version.name} now generates the responses annotators rank. Start sampling from it: it is chosen below.",
    )
    return redirect(sampling_url(version))
