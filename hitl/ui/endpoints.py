"""Web UI routes: sign-in, the reviewer page (`/review`) and the admin pages (`/admin/...`).

Pages are server-rendered; every action in them calls the domains' JSON APIs from the browser with the
session cookie and the CSRF header (`core.auth`), so the UI writes exactly what an API client would.
"""

import json
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import APIRouter, Form, HTTPException, Request, status
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from pydantic import BaseModel, Field
from sqlmodel import Session

from core.auth import (
    SESSION_COOKIE, SESSION_MAX_AGE, AdminUser, ReviewerUser, create_user, csrf_token, make_session_token,
    revoke_session, secure_cookie, user_for_key, user_for_session,
)
from core import webhooks
from core.db import SessionDep
from core.models import Role, User, UserCreated, UserPublic
from core.settings import get_settings
from feedback.service import audit_user, snapshot
from hitl.ui import charts, data

HERE = Path(__file__).resolve().parent
templates = Jinja2Templates(directory=HERE / "templates")
templates.env.filters["tojson_pretty"] = lambda v: json.dumps(v, indent=2, default=str)
static = StaticFiles(directory=HERE / "static")
router = APIRouter(include_in_schema=False)

FLAG_TAGS = ("unsafe", "pii", "off_topic", "hallucination", "other")


def rubric() -> tuple[list[str], dict[str, str]]:
    """Rubric dimensions and their guideline text, from settings (the feedback part's defaults)."""
    settings = get_settings()
    dims = list(getattr(settings, "review_rubric", None) or ("correctness", "helpfulness", "tone"))
    text = dict(getattr(settings, "review_guidelines", None) or {})
    return dims, {d: text.get(d, "1 = poor, 3 = acceptable, 5 = excellent.") for d in dims}


def session_user(request: Request, session: Session) -> User | None:
    token = request.cookies.get(SESSION_COOKIE)
    return user_for_session(session, token) if token else None


def render(request: Request, name: str, user: User | None, status_code: int = 200, **context: Any) -> HTMLResponse:
    token = request.cookies.get(SESSION_COOKIE)
    return templates.TemplateResponse(request, name, {
        "user": user, "csrf": csrf_token(token) if token and user else "", "path": request.url.path, **context,
    }, status_code=status_code)


def page_user(request: Request, session: Session, *roles: Role) -> User | Response:
    """The signed-in user allowed on this page, or a redirect to the sign-in form / a 403 page."""
    user = session_user(request, session)
    if user is None:
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return RedirectResponse(f"/login?next={quote(target)}", status.HTTP_303_SEE_OTHER)
    if user.role != Role.admin and user.role not in roles:
        return render(request, "forbidden.html", user, status_code=403)
    return user


def safe_next(target: str | None) -> str:
    """Only same-site paths (no `//host` or `/\\host`, which browsers read as another site)."""
    ok = target and target.startswith("/") and not target.startswith("//") and "\\" not in target
    return target if ok else "/review"


# ------------------------------------------------------------------------------------------- sign-in

@router.get("/", response_class=HTMLResponse)
def home(request: Request, session: SessionDep) -> Response:
    user = session_user(request, session)
    target = "/admin" if user is not None and user.role == Role.admin else "/review"
    return RedirectResponse(target, status.HTTP_303_SEE_OTHER)


@router.get("/login", response_class=HTMLResponse)
def login_form(request: Request, session: SessionDep, next: str | None = None) -> Response:
    return render(request, "login.html", session_user(request, session), next=safe_next(next), error=None)


@router.post("/login", response_class=HTMLResponse)
def login(request: Request, session: SessionDep, key: Annotated[str, Form()] = "",
          next: Annotated[str, Form()] = "/review") -> Response:
    """Exchange an API key for a session cookie (HttpOnly, SameSite=Strict)."""
    target = safe_next(next)
    user = user_for_key(session, key.strip()) if key.strip() else None
    if user is None:
        return render(request, "login.html", None, next=target, error="That key was not recognised.",
                      status_code=401)
    if user.role == Role.service:
        return render(request, "login.html", None, next=target, status_code=403,
                      error="Service keys are for the chat API; sign in with a reviewer or admin key.")
    if target.startswith("/admin") and user.role != Role.admin:
        target = "/review"
    response = RedirectResponse(target, status.HTTP_303_SEE_OTHER)
    response.set_cookie(SESSION_COOKIE, make_session_token(user), max_age=SESSION_MAX_AGE, httponly=True,
                        samesite="strict", secure=secure_cookie(request), path="/")
    return response


@router.post("/logout")
def logout(request: Request, session: SessionDep, csrf_token_field: Annotated[str, Form(alias="csrf_token")] = ""):
    token = request.cookies.get(SESSION_COOKIE)
    if token and user_for_session(session, token):
        if csrf_token_field != csrf_token(token):
            raise HTTPException(status.HTTP_403_FORBIDDEN, "missing or wrong CSRF token")
        revoke_session(session, token)
    response = RedirectResponse("/login", status.HTTP_303_SEE_OTHER)
    response.delete_cookie(SESSION_COOKIE, path="/")
    return response


# -------------------------------------------------------------------------------------------- review

@router.get("/review", response_class=HTMLResponse)
def review_page(request: Request, session: SessionDep) -> Response:
    user = page_user(request, session, Role.reviewer)
    if not isinstance(user, User):
        return user
    dims, guidelines = rubric()
    return render(request, "review.html", user, dimensions=dims, flag_tags=FLAG_TAGS, guidelines=guidelines)


@router.get("/ui/api/progress")
def review_progress(session: SessionDep, user: ReviewerUser) -> dict:
    """The reviewer's progress counter: items submitted today and items left in the queue."""
    return data.progress(session, user)


# --------------------------------------------------------------------------------------------- admin

def admin_page(request: Request, session: Session) -> User | Response:
    return page_user(request, session)  # admins only


@router.get("/admin", response_class=HTMLResponse)
def admin_dashboard(request: Request, session: SessionDep) -> Response:
    user = admin_page(request, session)
    if not isinstance(user, User):
        return user
    act = data.activity(session)
    rate = data.thumbs_up_rate(session)
    depth = data.queue_depth(session)
    throughput = data.reviewer_throughput(session)
    plots = {
        "activity": charts.lines("Conversations and feedback per day", act["labels"], act["series"]),
        "thumbs": charts.bars("Thumbs-up rate per model version", rate["labels"], {"thumbs-up rate": rate["rate"]},
                              percent=True),
        "queue": charts.bars("Queue depth by reason", list(depth), {"open items": list(depth.values())}),
        "throughput": charts.bars("Items reviewed per reviewer per day", [d[5:] for d in throughput["labels"]],
                                  throughput["series"]) if throughput["series"] else
        '<p class="empty">No reviews submitted in the last 7 days.</p>',
    }
    agreement = data.agreement(session)
    if agreement and agreement["reviewers"]:
        people = [r for r in agreement["reviewers"] if "agreement" in r]
        plots["agreement"] = charts.bars("Agreement with the other reviewers (1 = always the same score)",
                                         [r["name"] for r in people], {"agreement": [r["agreement"] for r in people]},
                                         percent=True) if people else ""
    return render(request, "admin/dashboard.html", user, plots=plots, totals=data.totals(session), agreement=agreement,
                  rate=rate, depth=depth, recent=data.recent_feedback(session), section="dashboard")


@router.get("/admin/items/{message_id}", response_class=HTMLResponse)
def admin_item(request: Request, session: SessionDep, message_id: str) -> Response:
    user = admin_page(request, session)
    if not isinstance(user, User):
        return user
    detail = data.item_detail(session, message_id)
    if detail is None:
        return render(request, "not_found.html", user, what=f"message {message_id}", status_code=404)
    return render(request, "admin/item.html", user, section="dashboard", **detail)


@router.get("/admin/adjudication", response_class=HTMLResponse)
def admin_adjudication(request: Request, session: SessionDep) -> Response:
    user = admin_page(request, session)
    if not isinstance(user, User):
        return user
    return render(request, "admin/adjudication.html", user, items=data.adjudication_queue(session),
                  section="adjudication")


@router.get("/admin/users", response_class=HTMLResponse)
def admin_users(request: Request, session: SessionDep) -> Response:
    user = admin_page(request, session)
    if not isinstance(user, User):
        return user
    return render(request, "admin/users.html", user, users=data.users(session), roles=list(Role), section="users")


@router.get("/admin/datasets", response_class=HTMLResponse)
def admin_datasets(request: Request, session: SessionDep) -> Response:
    user = admin_page(request, session)
    if not isinstance(user, User):
        return user
    return render(request, "admin/datasets.html", user, snapshots=data.datasets(session), section="datasets")


@router.get("/admin/runs", response_class=HTMLResponse)
def admin_runs(request: Request, session: SessionDep) -> Response:
    user = admin_page(request, session)
    if not isinstance(user, User):
        return user
    return render(request, "admin/runs.html", user, runs=data.runs(session), section="runs")


@router.get("/admin/runs/{run_id}", response_class=HTMLResponse)
def admin_run(request: Request, session: SessionDep, run_id: int) -> Response:
    user = admin_page(request, session)
    if not isinstance(user, User):
        return user
    model = data.retrain_model()
    run = session.get(model, run_id) if model is not None else None
    if run is None:
        return render(request, "not_found.html", user, what=f"retrain run {run_id}", status_code=404)
    return render(request, "admin/run.html", user, run=run, logs=data.run_logs(run), section="runs")


@router.get("/admin/models", response_class=HTMLResponse)
def admin_models(request: Request, session: SessionDep) -> Response:
    user = admin_page(request, session)
    if not isinstance(user, User):
        return user
    return render(request, "admin/models.html", user, versions=data.models(session),
                  history=data.alias_history(session), section="models")


@router.get("/admin/webhooks", response_class=HTMLResponse)
def admin_webhooks(request: Request, session: SessionDep) -> Response:
    user = admin_page(request, session)
    if not isinstance(user, User):
        return user
    settings = get_settings()
    return render(request, "admin/webhooks.html", user, section="webhooks", **data.webhooks(session),
                  events=webhooks.EVENTS, max_attempts=settings.webhook_max_attempts, backoff=settings.webhook_backoff_s)


# ------------------------------------------------------------------- user management (admin JSON API)

class UserCreate(BaseModel):
    name: str = Field(min_length=1, max_length=100)
    role: Role


@router.get("/ui/api/users", response_model=list[UserPublic])
def list_users(session: SessionDep, _admin: AdminUser) -> list[User]:
    return data.users(session)


@router.post("/ui/api/users", response_model=UserCreated, status_code=201)
def add_user(body: UserCreate, session: SessionDep, admin: AdminUser) -> UserCreated:
    """Create a user and return its key (shown once)."""
    user, key = create_user(session, name=body.name.strip(), role=body.role)
    audit_user(session, admin, "user.create", user)
    return UserCreated(**UserPublic.model_validate(user, from_attributes=True).model_dump(), key=key)


@router.post("/ui/api/users/{user_id}/active", response_model=UserPublic)
def set_active(user_id: int, active: bool, session: SessionDep, admin: AdminUser) -> User:
    """Deactivate (revoke the key) or reactivate a user."""
    user = session.get(User, user_id)
    if user is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"user {user_id} not found")
    if user.id == admin.id and not active:
        raise HTTPException(status.HTTP_409_CONFLICT, "you cannot deactivate yourself")
    before = snapshot(user, exclude=("key_hash",))
    user.active = active
    session.add(user)
    session.flush()
    audit_user(session, admin, "user.reactivate" if active else "user.revoke", user, before)
    return user
