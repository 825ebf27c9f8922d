"""The labeling web app: a FastAPI app over the store, serving its own pages (no build step).

Auth: every API call carries ``Authorization: Bearer <token>``. Links put the token in the URL
fragment (``/label#token=...``), which browsers never send to the server, so tokens stay out of
access logs and Referer headers. Admin endpoints take only the admin token; annotator endpoints
only an annotator's token, and an annotator reaches only their own assignments.

Errors are JSON ``{"error": "..."}`` with a 4xx status that says what to fix. Assignments carry their
prompt and responses twice: as sent (shown by the raw-text toggle) and as sanitised HTML rendered
from markdown (``render.py``); the CSP below would stop a script even if one slipped through.
"""

from __future__ import annotations

import hmac
import json
import re
from importlib import resources
from typing import Annotated, Any, Literal

from fastapi import Depends, FastAPI, Path, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from pydantic import BaseModel, ConfigDict, Field, StrictInt
from starlette.exceptions import HTTPException as StarletteHTTPException

from rlhfkit.feedback.app import service
from rlhfkit.feedback.app.active import Scorer
from rlhfkit.feedback.app.items import InputError
from rlhfkit.feedback.app.render import render_assignment, render_markdown
from rlhfkit.feedback.app.storage import Refused, Storage

STATIC = {"label.js": "text/javascript", "admin.js": "text/javascript", "style.css": "text/css"}
HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
                               "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
AssignmentId = Annotated[int, Path(ge=1, lt=2**63)]
Key = Field(min_length=1, max_length=128, description="a fresh random string per action; a retry reuses it")


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class LabelIn(Body):
    idempotency_key: str = Key
    choice: Literal["A", "B", "tie"] | None = None
    ranking: list[Any] | None = None
    strength: StrictInt | None = None


class SkipIn(Body):
    idempotency_key: str = Key
    reason: str = Field(min_length=1, max_length=500)


class UndoIn(Body):
    idempotency_key: str = Key


class AnnotatorIn(Body):
    name: str = Field(min_length=1, max_length=100)


class ProjectIn(Body):
    name: str = Field(min_length=1, max_length=200)
    mode: Literal["pairwise", "ranking"]
    overlap: int = Field(1, ge=1, le=1000)
    strength_scale: int = Field(0, ge=0, le=10)
    guidelines: str = Field("", max_length=100_000)
    candidates_jsonl: str | None = None
    prompts_jsonl: str | None = None
    policy_dir: str | None = None
    k: int = Field(2, ge=2, le=64)
    max_new_tokens: int = Field(64, ge=1, le=4096)
    temperature: float = Field(1.0, ge=0.0, le=10.0)
    seed: int = Field(0, ge=0, lt=2**32)
    filename: str = Field("upload.jsonl", max_length=200)


def _page(name: str) -> str:
    return resources.files("rlhfkit.feedback.app").joinpath("static", name).read_text(encoding="utf-8")


def _bearer(request: Request) -> str | None:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def create_app(store: Storage, *, admin_token: str, scorer: Scorer | None = None) -> FastAPI:
    """The app. ``scorer`` (optional): a reward model that orders new projects' items, most uncertain first."""
    if len(admin_token) < 16:
        raise ValueError("the admin token must be at least 16 characters")
    app = FastAPI(title="rlhfkit labeling", docs_url=None, redoc_url=None, openapi_url=None)

    # ------------------------------------------------------------ errors and headers

    @app.exception_handler(Refused)
    async def refused(_, err: Refused):
        return _error(err.status, err.message)

    @app.exception_handler(InputError)
    async def bad_input(_, err: InputError):
        return _error(422, str(err))

    @app.exception_handler(RequestValidationError)
    async def invalid(_, err: RequestValidationError):
        problems = err.errors()
        if any(p.get("type") == "json_invalid" for p in problems):
            return _error(400, "the request body is not valid JSON")
        parts = []
        for p in problems:
            where = ".".join(str(x) for x in p.get("loc", ()) if x != "body") or "body"
            parts.append(f"{where}: {p.get('msg', 'invalid')}")
        return _error(422, "; ".join(parts))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_, err: StarletteHTTPException):
        return _error(err.status_code, str(err.detail))

    @app.middleware("http")
    async def headers(request: Request, call_next):
        response = await call_next(request)
        for name, value in HEADERS.items():
            response.headers.setdefault(name, value)
        return response

    # ------------------------------------------------------------ who is asking

    def is_admin(token: str | None) -> bool:
        return token is not None and hmac.compare_digest(token.encode(), admin_token.encode())

    def admin(request: Request) -> None:
        token = _bearer(request)
        if token is None:
            raise Refused(401, "missing 'Authorization: Bearer <admin token>' header")
        if not is_admin(token):
            if store.annotator_by_token(token) is not None:
                raise Refused(403, "admin endpoints refuse annotator tokens")
            raise Refused(401, "invalid admin token")

    def annotator(request: Request) -> dict:
        token = _bearer(request)
        if token is None:
            raise Refused(401, "missing 'Authorization: Bearer <token>' header: open your personal link")
        found = store.annotator_by_token(token)
        if found is None:
            if is_admin(token):
                raise Refused(403, "this endpoint is for annotators; create one and use their link")
            raise Refused(401, "invalid annotator token")
        return found

    def link(token: str) -> str:  # relative: the server may not know the address it is reached at
        return f"/label#token={token}"

    # ------------------------------------------------------------ pages

    @app.get("/", response_class=HTMLResponse)
    def index():
        return _page("index.html")

    @app.get("/label", response_class=HTMLResponse)
    def label_page():
        return _page("label.html")

    @app.get("/admin", response_class=HTMLResponse)
    def admin_page():
        return _page("admin.html")

    @app.get("/static/{name}")
    def static(name: str):
        if name not in STATIC:
            raise Refused(404, f"no static file {name!r}")
        return Response(_page(name), media_type=STATIC[name])

    @app.get("/api/health")
    def health():
        return {"ok": True}

    # ------------------------------------------------------------ annotators

    @app.get("/api/me")
    def me(who: dict = Depends(annotator)):
        project = store.project(who["project_id"])
        shown = {k: project[k] for k in ("name", "mode", "strength_scale", "guidelines")}
        shown["guidelines_html"] = render_markdown(project["guidelines"])
        return {"annotator": who["name"], "progress": store.progress(who), "project": shown}

    @app.get("/api/next")
    def next_item(who: dict = Depends(annotator)):
        return {"assignment": render_assignment(store.next_assignment(who)), "progress": store.progress(who)}

    @app.get("/api/assignments/{assignment_id}")
    def get_assignment(assignment_id: AssignmentId, who: dict = Depends(annotator)):
        return render_assignment(store.assignment(who, assignment_id))

    @app.post("/api/assignments/{assignment_id}/label")
    def post_label(assignment_id: AssignmentId, body: LabelIn, who: dict = Depends(annotator)):
        sub, dup = store.submit(who, assignment_id, key=body.idempotency_key, choice=body.choice,
                                ranking=body.ranking, strength=body.strength)
        return JSONResponse({"submission": sub, "duplicate": dup, "progress": store.progress(who)},
                            status_code=200 if dup else 201)

    @app.post("/api/assignments/{assignment_id}/skip")
    def post_skip(assignment_id: AssignmentId, body: SkipIn, who: dict = Depends(annotator)):
        sub, dup = store.submit(who, assignment_id, key=body.idempotency_key, reason=body.reason, skip=True)
        return JSONResponse({"submission": sub, "duplicate": dup, "progress": store.progress(who)},
                            status_code=200 if dup else 201)

    @app.post("/api/undo")
    def post_undo(body: UndoIn, who: dict = Depends(annotator)):
        sub, dup = store.undo(who, key=body.idempotency_key)
        return {"undone": sub, "duplicate": dup, "progress": store.progress(who)}

    # ------------------------------------------------------------ admin

    @app.get("/api/admin/projects", dependencies=[Depends(admin)])
    def list_projects():
        return {"projects": store.projects()}

    @app.post("/api/admin/projects", dependencies=[Depends(admin)], status_code=201)
    def create_project(body: ProjectIn):
        settings = body.model_dump(exclude={"filename"})
        return service.create_project(store, source=body.filename, scorer=scorer, **settings)

    @app.get("/api/admin/projects/{ref}", dependencies=[Depends(admin)])
    def project_detail(ref: str):
        project = store.project(ref)
        annotators = [{"id": a["id"], "name": a["name"], "link": link(a["token"])}
                      for a in store.annotators(project["id"])]
        return {"project": project, "annotators": annotators, "stats": service.stats(store, project["id"])}

    @app.post("/api/admin/projects/{ref}/annotators", dependencies=[Depends(admin)], status_code=201)
    def add_annotator(ref: str, body: AnnotatorIn):
        created = store.add_annotator(store.project(ref)["id"], body.name)
        return {**created, "link": link(created["token"])}

    @app.get("/api/admin/projects/{ref}/stats", dependencies=[Depends(admin)])
    def project_stats(ref: str):
        return service.stats(store, ref)

    @app.get("/api/admin/projects/{ref}/export", dependencies=[Depends(admin)])
    def export(ref: str, format: Literal["pairwise", "ranking"] = "pairwise", drop_ties: bool = False):
        records = service.export(store, ref, format, drop_ties=drop_ties)
        text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
        name = re.sub(r"[^A-Za-z0-9._-]+", "_", f"{store.project(ref)['name']}.{format}.jsonl")
        return PlainTextResponse(text, media_type="application/x-ndjson",
                                 headers={"Content-Disposition": f'attachment; filename="{name}"'})

    @app.post("/api/admin/projects/{ref}/rescore", dependencies=[Depends(admin)])
    def rescore(ref: str):
        if scorer is None:
            raise Refused(409, "no reward model was given: start the server with --reward-model DIR")
        return {"scored": service.rescore(store, store.project(ref)["id"], scorer)}

    return app
