"""/v1/templates: register a workflow graph by name; read it back with what it predicts.

Calls tagged with agent_hints {template, node_id} (body or x-agent-* headers)
teach the template its transitions (openai_proxy records them), and templated
workflows teach it theirs when they finish. GET returns, per node, the predicted
next nodes with probabilities: the planner's input for prefetching.
"""

from __future__ import annotations

from aiohttp import web

from common.errors import NotFoundError, ValidationProblems
from common.http import json_response
from common.workflow.schemas import TemplateIn, parse_or_422
from common.workflow.template_graph import TemplateGraph, predict_next, validate_template
from gateway.api.http import read_json
from gateway.auth.keys import scoped_name
from gateway.auth.middleware import principal, tenant_of
from gateway.keys import TEMPLATES


def add_routes(app: web.Application) -> None:
    app.router.add_post("/v1/templates", register)
    app.router.add_get("/v1/templates", list_templates)
    app.router.add_get("/v1/templates/{name}", get_template)


async def register(request: web.Request) -> web.Response:
    graph = parse_or_422(TemplateIn, await read_json(request)).to_graph()
    problems = validate_template(graph)
    if problems:
        raise ValidationProblems(problems)
    await request.app[TEMPLATES].save(scoped_name(tenant_of(request), graph.name), graph.to_json())
    return json_response({"name": graph.name, "nodes": len(graph.nodes), "edges": len(graph.edges)}, status=201)


async def list_templates(request: web.Request) -> web.Response:
    """The caller's templates (an admin's: every tenant's, as stored: tenant:name)."""
    who, names = principal(request), await request.app[TEMPLATES].names()
    if who.tenant is not None and not who.admin:
        mine = scoped_name(who.tenant, "")
        names = [n[len(mine):] for n in names if n.startswith(mine)]
    return json_response({"object": "list", "data": names})


async def get_template(request: web.Request) -> web.Response:
    store = request.app[TEMPLATES]
    name = request.match_info["name"]
    raw = await store.get(scoped_name(tenant_of(request), name))
    if raw is None:
        raise NotFoundError(f"template '{name}' does not exist", param="name", code="template_not_found")
    graph = TemplateGraph.from_json(raw)
    learned = await store.transitions(scoped_name(tenant_of(request), name))
    predictions = {node: [{"node": n, "p": round(p, 4)} for n, p in predict_next(graph, learned, node)]
                   for node in graph.nodes}
    return json_response({**graph.to_json(), "name": name, "transitions": learned, "predictions": predictions})
