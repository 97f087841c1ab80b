"""The HTTP face of galaxy-serve (Starlette, served by uvicorn).

    POST /v1/infer   inputs -> outputs (serve/codec.py); 4xx for what the bundle cannot take,
                     503 when the cluster cannot serve (the reason names the rank), 504 on timeout
    POST /v1/generate     a generation bundle (galaxy-compile --max-len): prompt -> new tokens
    POST /v1/completions  the same in the OpenAI-style completions format (serve/generation.py);
                     `"stream": true` sends each token as a server-sent event as it is made
    GET  /healthz    200 when every rank is alive, on the plan in force and serving; else 503
    GET  /metrics    Prometheus text (serve/metrics.py)
    POST /v1/plan    {"bundle": "DIR"}: serve another bundle from the next request on; needs
                     `Authorization: Bearer <cluster token>`

Each answer carries `Server-Timing: queue;dur=<ms>, cluster;dur=<ms>, rank0;dur=<ms>` (waiting
in the queue; dispatch to the ranks -> answer; rank 0's own time from taking the request on to
its outputs), so a client can tell HTTP time from the coordinator's and the ranks'.
"""
from __future__ import annotations

import asyncio
import hmac
import json

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from galaxy.host.tokenizer import Tokenizer
from galaxy.runtime.errors import GalaxyRuntimeError
from galaxy.runtime.generate import request_tensors, result_from_tensors

from .bundles import HostBundle
from .codec import BadRequest, decode_inputs, encode_outputs, expected_inputs
from .coordinator import Coordinator
from .errors import RequestFailed, RequestTimeout, ServiceUnavailable
from .generation import (CompletionChunks, completions_request, completions_response, generate_request,
                         generate_response, streaming)

_STATUS = {ServiceUnavailable: 503, RequestTimeout: 504, RequestFailed: 502}


def make_app(coordinator: Coordinator, tokenizer: Tokenizer | None = None) -> Starlette:
    """The routes above; `tokenizer` lets generation take and give text."""
    metrics = coordinator.metrics

    def answer(request: Request, response: Response) -> Response:
        metrics.http.labels(path=request.url.path, status=str(response.status_code)).inc()
        return response

    def error(request: Request, status: int, message: str, **extra) -> Response:
        return answer(request, JSONResponse({"error": message, **extra}, status_code=status))

    async def infer(request: Request) -> Response:
        plan = coordinator.plan
        if plan is None:
            return error(request, 503, "the cluster is still forming its group; retry in a moment")
        if "generation" in plan.plan:
            return error(request, 400, "this is a generation bundle (galaxy-compile --max-len): POST a prompt to "
                                       "/v1/generate or /v1/completions")
        example = plan.example_inputs
        try:
            inputs, as_json = decode_inputs(request.headers.get("content-type", ""), await request.body(), example)
        except BadRequest as exc:
            return error(request, exc.status, str(exc), expected=expected_inputs(example))
        try:
            future = coordinator.submit(inputs)
            outputs = await asyncio.wrap_future(future)
        except GalaxyRuntimeError as exc:
            return error(request, _STATUS.get(type(exc), 500), " ".join(str(exc).split()))
        body, media_type = encode_outputs(outputs, as_json)
        timing = getattr(future, "timing", None) or {}
        headers = {"Server-Timing": ", ".join(f"{k};dur={1e3 * v:.3f}" for k, v in timing.items()),
                   "X-Galaxy-Plan": plan.sha[:12]}
        return answer(request, Response(body, media_type=media_type, headers=headers))

    async def run_generation(request: Request, openai: bool) -> Response:
        plan = coordinator.plan
        if plan is None:
            return error(request, 503, "the cluster is still forming its group; retry in a moment")
        generation = plan.plan.get("generation")
        if generation is None:
            return error(request, 400, "this bundle was compiled without --max-len, so it does not generate; "
                                       "POST its inputs to /v1/infer, or compile with galaxy-compile --max-len N")
        try:
            body = json.loads(await request.body())
            parse = completions_request if openai else generate_request
            wanted = parse(body, generation, tokenizer)
        except ValueError as exc:
            return error(request, 400, f"the body must be JSON ({exc})")
        except BadRequest as exc:
            return error(request, exc.status, str(exc))
        stream, include_usage = streaming(body) if openai else (False, False)
        if stream:
            return await stream_completion(request, wanted, plan, include_usage)
        try:
            future = coordinator.submit(request_tensors(wanted))
            result = result_from_tensors(await asyncio.wrap_future(future))
        except GalaxyRuntimeError as exc:
            return error(request, _STATUS.get(type(exc), 500), " ".join(str(exc).split()))
        body = (completions_response(result, tokenizer, plan.plan["plan"]["model"]) if openai
                else generate_response(result, tokenizer))
        timing = getattr(future, "timing", None) or {}
        headers = {"Server-Timing": ", ".join(f"{k};dur={1e3 * v:.3f}" for k, v in timing.items()),
                   "X-Galaxy-Plan": plan.sha[:12]}
        return answer(request, JSONResponse(body, headers=headers))

    async def stream_completion(request: Request, wanted, plan: HostBundle, include_usage: bool) -> Response:
        """Server-sent events: a chunk per token as rank 0 makes it, then the last ones and [DONE].
        A failure after the first byte cannot change the status: it comes as an `error` event."""
        loop = asyncio.get_running_loop()
        tokens: asyncio.Queue = asyncio.Queue()
        chunks = CompletionChunks(tokenizer, plan.plan["plan"]["model"])
        try:
            future = coordinator.submit(request_tensors(wanted),
                                        on_token=lambda i, t: loop.call_soon_threadsafe(tokens.put_nowait, (i, t)))
        except GalaxyRuntimeError as exc:
            return error(request, _STATUS.get(type(exc), 500), " ".join(str(exc).split()))
        done = asyncio.wrap_future(future)

        async def events():
            while not done.done() or not tokens.empty():
                next_token = asyncio.ensure_future(tokens.get())
                await asyncio.wait({next_token, done}, return_when=asyncio.FIRST_COMPLETED)
                if not next_token.done():
                    next_token.cancel()
                    continue
                chunk = chunks.token(*next_token.result())
                if chunk is not None:
                    yield f"data: {json.dumps(chunk)}\n\n"
            try:
                result = result_from_tensors(done.result())
            except GalaxyRuntimeError as exc:
                yield f"data: {json.dumps({'error': ' '.join(str(exc).split())})}\n\n"
            else:
                for chunk in chunks.finish(result, include_usage):
                    yield f"data: {json.dumps(chunk)}\n\n"
            yield "data: [DONE]\n\n"

        return answer(request, StreamingResponse(events(), media_type="text/event-stream",
                                                 headers={"X-Galaxy-Plan": plan.sha[:12], "Cache-Control": "no-cache"}))

    async def generate(request: Request) -> Response:
        return await run_generation(request, openai=False)

    async def completions(request: Request) -> Response:
        return await run_generation(request, openai=True)

    async def healthz(request: Request) -> Response:
        health = coordinator.health()
        return answer(request, JSONResponse(health, status_code=200 if health["status"] == "ok" else 503))

    async def metrics_text(request: Request) -> Response:
        return answer(request, Response(metrics.text(), media_type="text/plain; version=0.0.4; charset=utf-8"))

    async def swap(request: Request) -> Response:
        presented = request.headers.get("authorization", "").removeprefix("Bearer ").strip().encode()
        if not hmac.compare_digest(presented, coordinator.token):
            return error(request, 401, "swapping plans needs the cluster token: Authorization: Bearer <token>")
        try:
            document = json.loads(await request.body())
            new_plan = HostBundle.load(document["bundle"])
        except (ValueError, KeyError, TypeError) as exc:
            return error(request, 400, f'the body must be {{"bundle": "BUNDLE_DIR"}} ({exc})')
        except GalaxyRuntimeError as exc:
            return error(request, 400, " ".join(str(exc).split()))
        try:
            epoch = await asyncio.wrap_future(coordinator.swap_plan(new_plan))
        except GalaxyRuntimeError as exc:
            return error(request, 503, " ".join(str(exc).split()))
        return answer(request, JSONResponse({"plan": new_plan.sha[:12], "bundle": str(new_plan.path), "epoch": epoch}))

    return Starlette(routes=[Route("/v1/infer", infer, methods=["POST"]),
                             Route("/v1/generate", generate, methods=["POST"]),
                             Route("/v1/completions", completions, methods=["POST"]),
                             Route("/healthz", healthz, methods=["GET"]),
                             Route("/metrics", metrics_text, methods=["GET"]),
                             Route("/v1/plan", swap, methods=["POST"])])
