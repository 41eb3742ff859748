"""Loop pages: sampling jobs (admins) and the model leaderboard (admins, researchers)."""

from django.contrib import messages
from django.core.exceptions import ValidationError
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_GET

from core.forms import form_add_service_errors
from core.jobs import BrokerUnavailable
from core.permissions import role_required
from core.roles import Role
from labeling.models import Project
from loop.forms import SamplingForm
from loop.models import SamplingJob
from loop.selectors import PRELIMINARY_BELOW_GAMES, leaderboard
from loop.services.sampling import sampling_job_create

admin_required = role_required(Role.ADMIN)
reader_required = role_required(Role.ADMIN, Role.RESEARCHER)


@admin_required
def sampling(request: HttpRequest) -> HttpResponse:
    form = SamplingForm(
        request.POST or None,
        initial={"model_version": request.GET.get("model_version"), "project": request.GET.get("project")},
    )
    if request.method == "POST" and form.is_valid():
        data = form.cleaned_data
        try:
            job = sampling_job_create(
                project=data["project"],
                model_version=data["model_version"],
                pool=data["pool"],
                limit=data["limit"],
                params=form.params(),
                make_comparisons=data["make_comparisons"],
                uncertain_share=data["uncertain_share"],
                created_by=request.user,
            )
        except ValidationError as exc:
            form_add_service_errors(form, exc)
        except BrokerUnavailable as exc:  # the job is saved and starts once the broker is back
            messages.warning(request, str(exc))
            return redirect("loop:sampling")
        else:
            messages.success(request, f"Sampling job #{job.pk} is queued.")
            return redirect("loop:sampling")
    status = 422 if request.method == "POST" else 200
    context = {"form": form, "jobs": SamplingJob.objects.select_related("project", "model_version")[:50]}
    return render(request, "loop/sampling.html", context, status=status)


@admin_required
@require_GET
def sampling_jobs(request: HttpRequest) -> HttpResponse:
    jobs = SamplingJob.objects.select_related("project", "model_version")[:50]
    return render(request, "loop/partials/sampling_jobs.html", {"jobs": jobs})


@reader_required
def leaderboard_page(request: HttpRequest, slug: str) -> HttpResponse:
    project = get_object_or_404(Project, slug=slug)
    board = leaderboard(project=project)
    models = board.models
    matrix = [
        (row, [board.win_rates.get((row, column)) if row != column else None for column in models])
        for row in models
    ]
    chart = [
        {
            "model": row.model,
            "elo": r.elo,
            "low": r.elo_low,
            "high": r.elo_high,
            "preliminary": row.preliminary,
        }
        for row in board.rows
        if (r := row.rating) is not None
    ]
    return render(
        request,
        "loop/leaderboard.html",
        {
            "project": project,
            "board": board,
            "matrix": matrix,
            "chart": chart,
            "projects": Project.objects.order_by("name"),
            "min_games": PRELIMINARY_BELOW_GAMES,
        },
    )


@reader_required
def leaderboard_index(request: HttpRequest) -> HttpResponse:
    project = Project.objects.order_by("name").first()
    if project is None:
        messages.info(request, "No project yet.")
        return redirect("home")
    return redirect("loop:leaderboard", slug=project.slug)
