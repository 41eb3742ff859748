"""Thin views of the labeling app: the home page, annotator loop (htmx partials), import upload, dashboard, review."""

from __future__ import annotations

from datetime import datetime

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import ValidationError
from django.http import Http404, HttpRequest, HttpResponse, QueryDict
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from core.permissions import role_required
from core.roles import Role
from core.selectors import user_has_role
from labeling.forms import ImportForm, SkipForm, ranks_from_post
from labeling.models import Assignment, Comparison, ImportJob, Project, Ranking, Response
from labeling.selectors.annotation import (
    OwnAssignment,
    annotator_rankings_shown,
    annotator_work,
    annotator_workspace_state,
    assignment_responses,
    project_for_slug,
    project_with_own_assignment,
    projects_for_annotator,
    ranking_shown,
    sole_project_slug,
)
from labeling.selectors.quality import (
    annotator_table,
    flagged_rankings,
    next_disagreement,
    project_agreement,
    project_counts,
    review_queue,
    throughput_per_day,
)
from labeling.services.import_jobs import (
    import_job_create,
    import_job_messages,
    import_job_run,
    import_sync_max_bytes,
)
from labeling.services.leasing import assignment_lease_next
from labeling.services.projects import adjudication_record
from labeling.services.ranking_edits import ranking_edit
from labeling.services.rankings import (
    SKIP_REASONS,
    UNDO_WINDOW_SECONDS,
    assignment_skip,
    ranking_submit,
    ranking_undo_last,
    ranking_undoable,
)

annotator_required = role_required(Role.ANNOTATOR, Role.ADMIN)
admin_required = role_required(Role.ADMIN)


@login_required
def home(request: HttpRequest) -> HttpResponse:
    """Where everyone lands after signing in: what each of their roles does, and an annotator's work left."""
    context = {}
    if user_has_role(user=request.user, role=Role.ANNOTATOR):
        context["work"] = annotator_work(annotator=request.user)
    return render(request, "labeling/home.html", context)


def _error_text(error: ValidationError) -> str:
    if hasattr(error, "message_dict"):
        return " ".join(message for messages_ in error.message_dict.values() for message in messages_)
    return " ".join(error.messages)


# --- annotator loop ---------------------------------------------------------------------------------------


@annotator_required
def project_list(request: HttpRequest) -> HttpResponse:
    return render(
        request,
        "labeling/project_list.html",
        {
            "projects": projects_for_annotator(annotator=request.user),
            "is_admin": user_has_role(user=request.user, role=Role.ADMIN),
        },
    )


def _workspace_context(
    request: HttpRequest, project: Project, assignment: Assignment | None, **extra
) -> dict:
    state = annotator_workspace_state(project=project, annotator=request.user)
    context = {
        "project": project,
        "assignment": assignment,
        "progress": state.progress,
        "undoable": state.undoable,
        "undo_window": UNDO_WINDOW_SECONDS,
        "skip_reasons": SKIP_REASONS.items(),
        "flag_choices": Ranking.Flag.choices,
        **extra,
    }
    if assignment is not None:
        shown = assignment_responses(assignment=assignment)
        posted = extra.get("posted") or {}
        context.update(
            comparison=assignment.comparison,
            shown=[(item, posted.get(f"rank_{item.response.id}", "")) for item in shown],
            posted_flags=posted.getlist("flags") if posted else [],
            previous_choice=extra.get("previous_choice", ""),
            posted_rationale=posted.get("rationale", "") if posted else "",
            pairwise=len(shown) == 2,
            rank_choices=range(1, len(shown) + 1),
        )
    return context


def _render_workspace(
    request: HttpRequest, project: Project, assignment: Assignment | None, status: int = 200, **extra
):
    """The workspace fragment plus out-of-band progress and undo fragments (htmx swaps all three)."""
    context = _workspace_context(request, project, assignment, **extra)
    return render(request, "labeling/partials/workspace_swap.html", context, status=status)


@annotator_required
def annotate(request: HttpRequest, slug: str) -> HttpResponse:
    project = _project(slug)
    assignment = assignment_lease_next(project=project, annotator=request.user)
    if request.htmx:
        return _render_workspace(request, project, assignment)
    return render(request, "labeling/annotate.html", _workspace_context(request, project, assignment))


def _project(slug: str) -> Project:
    project = project_for_slug(slug=slug)
    if project is None:
        raise Http404("No such project.")
    return project


def _project_and_own_assignment(
    request: HttpRequest, slug: str, assignment_id: int, now: datetime
) -> OwnAssignment:
    """Annotators only ever touch their own assignments: anything else is a 404, not a hint that it exists."""
    own = project_with_own_assignment(slug=slug, assignment_id=assignment_id, annotator=request.user, now=now)
    if own.project is None:
        raise Http404("No such project.")
    if own.assignment is None:
        raise Http404("No such assignment of yours.")
    return own


@annotator_required
@require_POST
def submit(request: HttpRequest, slug: str, assignment_id: int) -> HttpResponse:
    now = timezone.now()
    project, assignment, other_lease_id = _project_and_own_assignment(request, slug, assignment_id, now)
    try:
        ranking_submit(
            assignment_id=assignment.pk,
            assignment_read=assignment,
            annotator=request.user,
            choice=request.POST.get("choice") or None,
            ranks=None
            if request.POST.get("choice")
            else ranks_from_post(request.POST, assignment.display_order),
            flags=request.POST.getlist("flags"),
            rationale=request.POST.get("rationale", ""),
        )
    except ValidationError as error:
        assignment.refresh_from_db()
        if assignment.state == Assignment.State.LEASED:
            return _render_workspace(
                request, project, assignment, status=422, error=_error_text(error), posted=request.POST
            )
        next_assignment = assignment_lease_next(project=project, annotator=request.user)
        return _render_workspace(request, project, next_assignment, status=422, error=_error_text(error))
    next_assignment = assignment_lease_next(
        project=project, annotator=request.user, now=now, current_lease_id=other_lease_id
    )
    if not request.htmx:
        return redirect("labeling:annotate", slug=project.slug)
    return _render_workspace(request, project, next_assignment, notice="Saved.")


@annotator_required
@require_POST
def skip(request: HttpRequest, slug: str, assignment_id: int) -> HttpResponse:
    now = timezone.now()
    project, assignment, other_lease_id = _project_and_own_assignment(request, slug, assignment_id, now)
    form = SkipForm(request.POST)
    try:
        if not form.is_valid():
            raise ValidationError({"reason": "Choose why you skip this item."})
        assignment_skip(
            assignment_id=assignment.pk, annotator=request.user, reason=form.cleaned_data["reason"]
        )
    except ValidationError as error:
        return _render_workspace(request, project, assignment, status=422, error=_error_text(error))
    next_assignment = assignment_lease_next(
        project=project, annotator=request.user, now=now, current_lease_id=other_lease_id
    )
    if not request.htmx:
        return redirect("labeling:annotate", slug=project.slug)
    return _render_workspace(request, project, next_assignment, notice="Skipped.")


def _as_posted(ranking: Ranking) -> QueryDict:
    """A withdrawn ranking as the form data that would submit it again: the workspace shows it filled in."""
    posted = QueryDict(mutable=True)
    for rid, rank in ranking.ranks.items():
        posted[f"rank_{rid}"] = str(rank)
    posted.setlist("flags", list(ranking.flags))
    posted["rationale"] = ranking.rationale
    return posted


def _pairwise_choice(ranking: Ranking) -> str:
    """The pairwise button that gave this ranking (relative to its display order)."""
    if ranking.both_bad:
        return "both_bad"
    first, second = (ranking.ranks[str(rid)] for rid in ranking.display_order)
    return "a" if first < second else "b" if first > second else "tie"


@annotator_required
@require_POST
def undo(request: HttpRequest, slug: str) -> HttpResponse:
    project = _project(slug)
    withdrawn = ranking_undoable(project=project, annotator=request.user)
    try:
        assignment = ranking_undo_last(project=project, annotator=request.user)
    except ValidationError as error:
        current = assignment_lease_next(project=project, annotator=request.user)
        return _render_workspace(request, project, current, status=422, error=_error_text(error))
    previous = {}
    if withdrawn is not None and withdrawn.assignment_id == assignment.pk:  # what was undone, as it was
        previous = {"posted": _as_posted(withdrawn)}
        if len(withdrawn.display_order) == 2:
            previous["previous_choice"] = _pairwise_choice(withdrawn)
    notice = "Your last ranking was withdrawn: change it or submit it again."
    if (
        not request.htmx
    ):  # the whole page, with the withdrawn item (a redirect would show an older lease first)
        context = _workspace_context(request, project, assignment, notice=notice, **previous)
        return render(request, "labeling/annotate.html", context)
    return _render_workspace(request, project, assignment, notice=notice, **previous)


@annotator_required
def my_rankings(request: HttpRequest, slug: str) -> HttpResponse:
    project = get_object_or_404(Project, slug=slug)
    return render(
        request,
        "labeling/my_rankings.html",
        {
            "project": project,
            "items": annotator_rankings_shown(project=project, annotator=request.user),
            "undo_window": UNDO_WINDOW_SECONDS,
            "flag_choices": Ranking.Flag.choices,
        },
    )


@annotator_required
@require_POST
def my_ranking_edit(request: HttpRequest, slug: str, ranking_id: int) -> HttpResponse:
    """Change one of your own rankings in place (within the undo window, before any adjudication)."""
    project = get_object_or_404(Project, slug=slug)
    ranking = Ranking.objects.filter(
        pk=ranking_id, annotator=request.user, comparison__project=project
    ).first()
    if ranking is None:
        raise Http404("No such ranking of yours.")
    error, notice, status = "", "", 200
    try:
        ranking = ranking_edit(
            ranking_id=ranking.pk,
            annotator=request.user,
            ranks=ranks_from_post(request.POST, ranking.display_order),
            flags=request.POST.getlist("flags"),
            rationale=request.POST.get("rationale", ""),
        )
        notice = "Saved."
    except ValidationError as exc:
        error, status = _error_text(exc), 422
        ranking.refresh_from_db()
    if not request.htmx:
        (messages.error if error else messages.success)(request, error or notice)
        return redirect("labeling:my_rankings", slug=project.slug)
    responses = Response.objects.in_bulk(ranking.display_order)
    context = {
        "project": project,
        "item": ranking_shown(ranking=ranking, responses=responses),
        "notice": notice,
        "error": error,
        "flag_choices": Ranking.Flag.choices,
    }
    return render(request, "labeling/partials/my_ranking.html", context, status=status)


# --- admin pages ------------------------------------------------------------------------------------------


@admin_required
@require_http_methods(["GET", "POST"])
def import_upload(request: HttpRequest) -> HttpResponse:
    """Small files import during the request; larger ones become a background job whose page shows progress."""
    form = ImportForm(
        request.POST or None,
        request.FILES or None,
        initial={"project": request.GET.get("project") or sole_project_slug() or ""},
    )
    errors: list[str] = []
    if request.method == "POST" and form.is_valid():
        upload = form.cleaned_data["file"]
        background = upload.size > import_sync_max_bytes()
        try:
            job = import_job_create(
                project_slug=form.cleaned_data["project"],
                file_name=upload.name,
                data=upload.read(),
                file_format=form.file_format,
                build_k=form.cleaned_data["build_k"],
                pairing=form.cleaned_data["pairing"],
                created_by=request.user,
                enqueue=background,
            )
        except ValidationError as error:
            errors = [_error_text(error)]
        else:
            if background:
                messages.info(
                    request, f"Import #{job.pk} is queued: every line is checked before anything is written."
                )
                return redirect("labeling:import_job", job_id=job.pk)
            job = import_job_run(job_id=job.pk)
            if job.status == ImportJob.Status.SUCCEEDED:
                messages.success(request, f"Imported: {job.counts['summary']}.")
                return redirect(reverse("labeling:dashboard", args=[job.project_slug]))
            errors = import_job_messages(job=job)
    status = 422 if request.method == "POST" and (errors or form.errors) else 200
    context = {"form": form, "import_errors": errors, "jobs": ImportJob.objects.all()[:10]}
    return render(request, "labeling/import.html", context, status=status)


@admin_required
@require_GET
def import_job(request: HttpRequest, job_id: int) -> HttpResponse:
    """A background import's page; its status partial polls itself (htmx) until the job has finished."""
    job = get_object_or_404(ImportJob, pk=job_id)
    template = "labeling/partials/import_job.html" if request.htmx else "labeling/import_job.html"
    return render(request, template, {"job": job, "job_errors": import_job_messages(job=job)})


@admin_required
def dashboard(request: HttpRequest, slug: str) -> HttpResponse:
    project = get_object_or_404(Project, slug=slug)
    context = {
        "project": project,
        "counts": project_counts(project=project),
        "throughput": throughput_per_day(project=project),
        "agreement": project_agreement(project=project),
        "annotators": annotator_table(project=project),
        "flagged": flagged_rankings(project=project),
    }
    return render(request, "labeling/dashboard.html", context)


@admin_required
def review(request: HttpRequest, slug: str) -> HttpResponse:
    project = get_object_or_404(Project, slug=slug)
    include_done = request.GET.get("all") == "1"
    return render(
        request,
        "labeling/review.html",
        {
            "project": project,
            "items": review_queue(project=project, include_adjudicated=include_done),
            "include_done": include_done,
        },
    )


@admin_required
@require_http_methods(["GET", "POST"])
def adjudicate(request: HttpRequest, slug: str, comparison_id: int) -> HttpResponse:
    project = get_object_or_404(Project, slug=slug)
    comparison = get_object_or_404(
        Comparison.objects.select_related("prompt"), pk=comparison_id, project=project
    )
    items = list(comparison.items.select_related("response").order_by("position"))
    error = ""
    status = 200
    following = None
    if request.method == "POST":
        try:
            adjudication_record(
                comparison=comparison,
                adjudicator=request.user,
                ranks=ranks_from_post(request.POST, [item.response_id for item in items]),
                note=request.POST.get("note", ""),
            )
        except ValidationError as exc:
            error, status = _error_text(exc), 422
        else:
            comparison.refresh_from_db()
            following = next_disagreement(project=project, after=comparison)
            if not request.htmx:
                messages.success(request, f"Final ranking of comparison #{comparison.pk} recorded.")
                if following is not None:
                    return redirect("labeling:adjudicate", slug=project.slug, comparison_id=following.pk)
                return redirect("labeling:review", slug=project.slug)
    adjudication = getattr(comparison, "adjudication", None)
    rankings = list(comparison.rankings.select_related("annotator").order_by("id"))
    context = {
        "project": project,
        "comparison": comparison,
        "items": items,
        "rankings": rankings,
        "adjudication": adjudication,
        "error": error,
        "rank_choices": range(1, len(items) + 1),
        "saved": request.method == "POST" and not error,
        "next_comparison": following if request.method == "POST" and not error else None,
    }
    template = "labeling/partials/adjudication_form.html" if request.htmx else "labeling/adjudicate.html"
    return render(request, template, context, status=status)
