"""A real HTTP server on loopback speaking a hosted provider's files and fine-tuning API.

One instance plays one provider (``kind``), as its SDK calls it:

* ``openai``: ``POST/GET /v1/files`` (multipart, purpose ``fine-tune``), ``/v1/fine_tuning/jobs``
  (create, list newest first, retrieve, ``/cancel``); base URL ``http://127.0.0.1:PORT/v1``.
* ``together``: ``POST /v1/files`` answers 302 with a ``Location`` to PUT the bytes to and the
  file id in ``X-Together-File-Id`` (409 with ``file_id`` for a checksum it already holds), then
  ``POST /v1/files/{id}/preprocess``; ``GET /v1/files``; ``/v1/fine-tunes`` (create, list,
  retrieve, ``/cancel``), ``/v1/fine-tunes/models/limits`` and ``/v1/fine-tunes/estimate-price``,
  which the SDK asks before it creates; base URL ``http://127.0.0.1:PORT``.
* ``fireworks``: ``/v1/accounts/{a}/datasets`` (create with the caller's ``datasetId``, 409 when
  it exists; get; ``:upload``) and ``/v1/accounts/{a}/supervisedFineTuningJobs`` (create with
  ``?supervisedFineTuningJobId=``, get, ``:cancel``); base URL ``http://127.0.0.1:PORT``.

A job walks through ``states`` (this project's words; each provider's own are sent), one step per
status check, and stays in the last; ``failed`` carries ``error``. ``upload_faults`` are HTTP
statuses answered to the first upload attempts (429 with ``retry-after-ms``). Everything asked is
recorded, so tests can prove that nothing was uploaded or launched twice.
"""

from __future__ import annotations

import contextlib
import hashlib
import time
from dataclasses import dataclass, field
from typing import Any, Literal

from aiohttp import web
from fakeserver import in_background

Kind = Literal["openai", "together", "fireworks"]

RAW = {
    "openai": {"queued": "queued", "validating": "validating_files", "running": "running",
               "succeeded": "succeeded", "failed": "failed", "cancelled": "cancelled"},
    "together": {"queued": "pending", "validating": "queued", "running": "running", "succeeded": "completed",
                 "failed": "error", "cancelled": "cancelled"},
    "fireworks": {"queued": "JOB_STATE_PENDING", "validating": "JOB_STATE_VALIDATING",
                  "running": "JOB_STATE_RUNNING", "succeeded": "JOB_STATE_COMPLETED", "failed": "JOB_STATE_FAILED",
                  "cancelled": "JOB_STATE_CANCELLED"},
}


@dataclass
class FakeJob:
    id: str
    model: str
    training_file: str
    validation_file: str | None
    epochs: int | None
    suffix: str | None
    metadata: dict[str, str] | None
    states: list[str]
    created_at: float = field(default_factory=time.time)
    polls: int = 0
    cancelled: bool = False

    @property
    def state(self) -> str:
        return "cancelled" if self.cancelled else self.states[min(self.polls, len(self.states) - 1)]


@dataclass
class FakeProvider:
    kind: Kind
    states: list[str] = field(default_factory=lambda: ["queued", "running", "succeeded"])
    error: str = "The job failed: loss diverged at step 12"
    upload_faults: list[int] = field(default_factory=list)
    account: str = "acme"
    echo_auth: bool = False  # error messages repeat the Authorization header, as careless servers do
    port: int = 0
    files: dict[str, dict[str, Any]] = field(default_factory=dict, init=False)
    contents: dict[str, bytes] = field(default_factory=dict, init=False)
    uploads: list[str] = field(default_factory=list, init=False)  # ids of uploads completed
    upload_attempts: int = field(default=0, init=False)
    jobs: dict[str, FakeJob] = field(default_factory=dict, init=False)
    created: list[dict[str, Any]] = field(default_factory=list, init=False)  # bodies of job creations
    pending: dict[str, dict[str, Any]] = field(default_factory=dict, init=False)  # Together: started uploads
    datasets: dict[str, dict[str, Any]] = field(default_factory=dict, init=False)  # Fireworks
    base_url: str = field(default="", init=False)

    # ---- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        {"openai": self._openai_routes, "together": self._together_routes,
         "fireworks": self._fireworks_routes}[self.kind](app.router)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self.port)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        root = f"http://127.0.0.1:{self.port}"
        self.base_url = f"{root}/v1" if self.kind == "openai" else root

    async def stop(self) -> None:
        await self._runner.cleanup()

    def running(self) -> contextlib.AbstractContextManager[FakeProvider]:
        """Serve from a daemon thread while the block runs (sync tests, the CLI in-process)."""
        return in_background(self)

    # ---- shared ----------------------------------------------------------------------------

    def _error(self, request: web.Request, status: int, message: str, **headers: str) -> web.Response:
        if self.echo_auth:  # whole, cut and masked, as servers do
            sent = request.headers.get("Authorization") or ""
            key = sent.removeprefix("Bearer ")
            message += f" (request had Authorization: {sent}; key {key[:14]}... or ...{key[-10:]})"
        if self.kind == "fireworks":
            body: dict[str, Any] = {"code": status, "message": message}
        else:
            body = {"error": {"message": message, "type": "invalid_request_error", "code": None}}
        return web.json_response(body, status=status, headers=headers)

    def _upload_fault(self, request: web.Request) -> web.Response | None:
        self.upload_attempts += 1
        if self.upload_attempts <= len(self.upload_faults):
            status = self.upload_faults[self.upload_attempts - 1]
            return self._error(request, status, "Rate limit reached for file uploads", **{"retry-after-ms": "50"})
        return None

    def _authorized(self, request: web.Request) -> web.Response | None:
        if not (request.headers.get("Authorization") or "").startswith("Bearer "):
            return self._error(request, 401, "missing API key")
        return None

    def _new_job(self, body: dict[str, Any], model: str, training_file: str, validation_file: str | None,
                 epochs: int | None, suffix: str | None, job_id: str | None = None) -> FakeJob:
        self.created.append(body)
        job = FakeJob(job_id or f"ftjob-{len(self.jobs) + 1:04d}", model, training_file, validation_file, epochs,
                      suffix, body.get("metadata"), list(self.states))
        self.jobs[job.id] = job
        return job

    def _poll(self, job_id: str) -> FakeJob | None:
        job = self.jobs.get(job_id)
        if job is not None:
            job.polls += 1
        return job

    def _store_file(self, file_id: str, name: str, data: bytes, purpose: str = "fine-tune") -> dict[str, Any]:
        meta = {"id": file_id, "object": "file", "bytes": len(data), "created_at": int(time.time()),
                "filename": name, "purpose": purpose, "status": "processed"}
        self.files[file_id] = meta
        self.contents[file_id] = data
        self.uploads.append(file_id)
        return meta

    def model_id(self, job: FakeJob) -> str:
        if self.kind == "openai":
            return f"ft:{job.model}:acme:{job.suffix or 'x'}:{job.id[-4:]}"
        if self.kind == "together":
            return f"acme/{job.model.split('/')[-1]}-{job.suffix or 'ft'}-{job.id[-4:]}"
        return f"accounts/{self.account}/models/{job.id}"

    # ---- OpenAI ----------------------------------------------------------------------------

    def _openai_routes(self, router: web.UrlDispatcher) -> None:
        router.add_post("/v1/files", self._oa_upload)
        router.add_get("/v1/files", self._oa_files)
        router.add_post("/v1/fine_tuning/jobs", self._oa_create)
        router.add_get("/v1/fine_tuning/jobs", self._oa_list)
        router.add_get("/v1/fine_tuning/jobs/{id}", self._oa_get)
        router.add_post("/v1/fine_tuning/jobs/{id}/cancel", self._oa_cancel)

    def _oa_job(self, job: FakeJob) -> dict[str, Any]:
        state = job.state
        return {
            "id": job.id, "object": "fine_tuning.job", "created_at": int(job.created_at), "model": job.model,
            "status": RAW["openai"][state], "training_file": job.training_file,
            "validation_file": job.validation_file, "organization_id": "org-acme", "result_files": [],
            "seed": 42, "hyperparameters": {"n_epochs": job.epochs}, "metadata": job.metadata,
            "fine_tuned_model": self.model_id(job) if state == "succeeded" else None,
            "finished_at": int(time.time()) if state in ("succeeded", "failed", "cancelled") else None,
            "trained_tokens": 1234 if state == "succeeded" else None,
            "error": {"code": "invalid_training_file", "message": self.error, "param": None}
            if state == "failed" else None,
        }

    async def _oa_upload(self, request: web.Request) -> web.Response:
        if (denied := self._authorized(request)) or (denied := self._upload_fault(request)):
            return denied
        form = await request.post()
        upload = form.get("file")
        if not isinstance(upload, web.FileField) or form.get("purpose") != "fine-tune":
            return self._error(request, 400, "expected a file with purpose=fine-tune")
        return web.json_response(self._store_file(f"file-{len(self.files) + 1:04d}", upload.filename,
                                                  upload.file.read()))

    async def _oa_files(self, request: web.Request) -> web.Response:
        data = [m for m in reversed(self.files.values()) if request.query.get("purpose") in (None, m["purpose"])]
        return web.json_response({"object": "list", "data": data, "has_more": False})

    async def _oa_create(self, request: web.Request) -> web.Response:
        if denied := self._authorized(request):
            return denied
        body = await request.json()
        if body.get("training_file") not in self.files:
            return self._error(request, 400, f"invalid training_file: {body.get('training_file')}")
        epochs = body.get("method", {}).get("supervised", {}).get("hyperparameters", {}).get("n_epochs")
        job = self._new_job(body, body["model"], body["training_file"], body.get("validation_file"), epochs,
                            body.get("suffix"))
        return web.json_response(self._oa_job(job))

    async def _oa_list(self, request: web.Request) -> web.Response:
        data = [self._oa_job(j) for j in reversed(self.jobs.values())]
        return web.json_response({"object": "list", "data": data, "has_more": False})

    async def _oa_get(self, request: web.Request) -> web.Response:
        job = self._poll(request.match_info["id"])
        if job is None:
            return self._error(request, 404, "No such fine-tuning job")
        return web.json_response(self._oa_job(job))

    async def _oa_cancel(self, request: web.Request) -> web.Response:
        job = self.jobs.get(request.match_info["id"])
        if job is None:
            return self._error(request, 404, "No such fine-tuning job")
        job.cancelled = True
        return web.json_response(self._oa_job(job))

    # ---- Together --------------------------------------------------------------------------

    def _together_routes(self, router: web.UrlDispatcher) -> None:
        router.add_post("/v1/files", self._tg_upload_start)
        router.add_put("/_storage/{id}", self._tg_put)
        router.add_post("/v1/files/{id}/preprocess", self._tg_preprocess)
        router.add_get("/v1/files", self._tg_files)
        router.add_get("/v1/files/{id}", self._tg_file)
        router.add_get("/v1/fine-tunes/models/limits", self._tg_limits)
        router.add_post("/v1/fine-tunes/estimate-price", self._tg_estimate)
        router.add_post("/v1/fine-tunes", self._tg_create)
        router.add_get("/v1/fine-tunes", self._tg_list)
        router.add_get("/v1/fine-tunes/{id}", self._tg_get)
        router.add_post("/v1/fine-tunes/{id}/cancel", self._tg_cancel)

    def _tg_file_view(self, meta: dict[str, Any]) -> dict[str, Any]:
        return {"id": meta["id"], "object": "file", "created_at": meta["created_at"], "filename": meta["filename"],
                "bytes": meta["bytes"], "purpose": "fine-tune", "FileType": "jsonl", "Processed": True,
                "LineCount": self.contents[meta["id"]].count(b"\n")}

    async def _tg_upload_start(self, request: web.Request) -> web.Response:
        if (denied := self._authorized(request)) or (denied := self._upload_fault(request)):
            return denied
        form = await request.post()
        checksum = str(form.get("checksum"))
        for meta in self.files.values():
            if meta.get("checksum") == checksum:
                return web.json_response({"file_id": meta["id"], "message": "file already exists"}, status=409)
        file_id = f"file-{len(self.pending) + len(self.files) + 1:04d}"
        self.pending[file_id] = {"filename": str(form.get("file_name")), "checksum": checksum}
        return web.Response(status=302, headers={"Location": f"http://127.0.0.1:{self.port}/_storage/{file_id}",
                                                 "X-Together-File-Id": file_id})

    async def _tg_put(self, request: web.Request) -> web.Response:
        file_id = request.match_info["id"]
        meta = self.pending.get(file_id)
        if meta is None:
            return web.Response(status=404)
        meta["data"] = await request.read()
        return web.Response(status=200)

    async def _tg_preprocess(self, request: web.Request) -> web.Response:
        file_id = request.match_info["id"]
        meta = self.pending.pop(file_id, None)
        if meta is None or "data" not in meta:
            return self._error(request, 404, f"no upload {file_id}")
        if hashlib.sha256(meta["data"]).hexdigest() != meta["checksum"]:
            return self._error(request, 400, "checksum mismatch")
        stored = self._store_file(file_id, meta["filename"], meta["data"])
        stored["checksum"] = meta["checksum"]
        return web.json_response(self._tg_file_view(stored))

    async def _tg_files(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [self._tg_file_view(m) for m in self.files.values()]})

    async def _tg_file(self, request: web.Request) -> web.Response:
        meta = self.files.get(request.match_info["id"])
        if meta is None:
            return self._error(request, 404, "no such file")
        return web.json_response(self._tg_file_view(meta))

    async def _tg_limits(self, request: web.Request) -> web.Response:
        lora = {"default_rank": 8, "max_batch_size": 32, "max_batch_size_dpo": 16, "max_rank": 64,
                "min_batch_size": 8, "target_modules": ["q_proj", "v_proj"]}
        return web.json_response({
            "model_name": request.query.get("model_name"), "default_gradient_accumulation_steps": 1,
            "lora_training": lora, "full_training": None, "max_learning_rate": 1.0, "min_learning_rate": 1e-8,
            "max_num_checkpoints": 10, "max_num_epochs": 20, "max_num_evals": 100, "max_seq_length_dpo": 8192,
            "max_seq_length_sft": 8192, "merge_output_lora": False, "min_max_seq_length": 512,
            "supports_vision": False, "supports_tools": True, "supports_reasoning": False,
        })

    async def _tg_estimate(self, request: web.Request) -> web.Response:
        return web.json_response({"estimation_available": True, "allowed_to_proceed": True,
                                  "estimated_total_price": 0.5, "estimated_train_token_count": 1000,
                                  "estimated_eval_token_count": 0, "user_limit": 100})

    def _tg_job(self, job: FakeJob) -> dict[str, Any]:
        state = job.state
        created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(job.created_at))
        events = [{"object": "fine-tune-event", "created_at": created, "message": self.error, "type": "job_error",
                   "level": "error"}] if state == "failed" else []
        return {
            "id": job.id, "status": RAW["together"][state], "user_id": "u-acme", "model": job.model,
            "training_file": job.training_file, "validation_file": job.validation_file or "",
            "created_at": created, "updated_at": created, "n_epochs": job.epochs, "suffix": job.suffix,
            "model_output_name": self.model_id(job), "adapter_output_name": None, "events": events,
            "token_count": 1234 if state == "succeeded" else None,
        }

    async def _tg_create(self, request: web.Request) -> web.Response:
        if denied := self._authorized(request):
            return denied
        body = await request.json()
        if body.get("training_file") not in self.files:
            return self._error(request, 400, f"invalid training_file: {body.get('training_file')}")
        job = self._new_job(body, body["model"], body["training_file"], body.get("validation_file") or None,
                            body.get("n_epochs"), body.get("suffix"), f"ft-{len(self.jobs) + 1:04d}")
        return web.json_response(self._tg_job(job))

    async def _tg_list(self, request: web.Request) -> web.Response:
        return web.json_response({"data": [self._tg_job(j) for j in reversed(self.jobs.values())]})

    async def _tg_get(self, request: web.Request) -> web.Response:
        job = self._poll(request.match_info["id"])
        if job is None:
            return self._error(request, 404, "no such job")
        return web.json_response(self._tg_job(job))

    async def _tg_cancel(self, request: web.Request) -> web.Response:
        job = self.jobs.get(request.match_info["id"])
        if job is None:
            return self._error(request, 404, "no such job")
        job.cancelled = True
        return web.json_response(self._tg_job(job))

    # ---- Fireworks -------------------------------------------------------------------------

    def _fireworks_routes(self, router: web.UrlDispatcher) -> None:
        base = "/v1/accounts/{account}"
        router.add_post(f"{base}/datasets", self._fw_dataset_create)
        router.add_get(base + "/datasets/{id:[^/:]+}", self._fw_dataset_get)
        router.add_post(base + "/datasets/{id:[^/:]+}:upload", self._fw_dataset_upload)
        router.add_post(f"{base}/supervisedFineTuningJobs", self._fw_create)
        router.add_get(base + "/supervisedFineTuningJobs/{id:[^/:]+}", self._fw_get)
        router.add_post(base + "/supervisedFineTuningJobs/{id:[^/:]+}:cancel", self._fw_cancel)

    def _fw_account(self, request: web.Request) -> web.Response | None:
        if request.match_info["account"] != self.account:
            return self._error(request, 404, f"account {request.match_info['account']} not found")
        return self._authorized(request)

    async def _fw_dataset_create(self, request: web.Request) -> web.Response:
        if denied := self._fw_account(request):
            return denied
        body = await request.json()
        name = body["datasetId"]
        if name in self.datasets:
            return self._error(request, 409, f"dataset {name} already exists")
        self.datasets[name] = {"name": f"accounts/{self.account}/datasets/{name}", "state": "UPLOADING",
                               "userUploaded": {}, "createTime": time.strftime("%Y-%m-%dT%H:%M:%SZ")}
        return web.json_response(self.datasets[name])

    async def _fw_dataset_get(self, request: web.Request) -> web.Response:
        if denied := self._fw_account(request):
            return denied
        found = self.datasets.get(request.match_info["id"])
        if found is None:
            return self._error(request, 404, "dataset not found")
        return web.json_response(found)

    async def _fw_dataset_upload(self, request: web.Request) -> web.Response:
        if (denied := self._fw_account(request)) or (denied := self._upload_fault(request)):
            return denied
        name = request.match_info["id"]
        found = self.datasets.get(name)
        if found is None:
            return self._error(request, 404, "dataset not found")
        form = await request.post()
        upload = form.get("file")
        if not isinstance(upload, web.FileField):
            return self._error(request, 400, "expected a file")
        self._store_file(found["name"], upload.filename, upload.file.read())
        found["state"] = "READY"
        return web.json_response({"filenameToSignedUrls": {}})

    def _fw_job(self, job: FakeJob) -> dict[str, Any]:
        state = job.state
        status = {"code": "INTERNAL", "message": self.error} if state == "failed" else {"code": "OK", "message": ""}
        return {
            "name": f"accounts/{self.account}/supervisedFineTuningJobs/{job.id}", "state": RAW["fireworks"][state],
            "status": status, "dataset": job.training_file, "baseModel": job.model, "epochs": job.epochs,
            "evaluationDataset": job.validation_file, "displayName": job.suffix,
            "createTime": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(job.created_at)),
            "outputModel": self.model_id(job) if state == "succeeded" else None,
        }

    async def _fw_create(self, request: web.Request) -> web.Response:
        if denied := self._fw_account(request):
            return denied
        body = await request.json()
        job_id = request.query.get("supervisedFineTuningJobId") or f"sftj-{len(self.jobs) + 1:04d}"
        if job_id in self.jobs:
            return self._error(request, 409, f"supervisedFineTuningJob {job_id} already exists")
        if body.get("dataset") not in self.files or self.datasets.get(body["dataset"].rsplit("/", 1)[-1], {}).get(
                "state") != "READY":
            return self._error(request, 400, f"dataset {body.get('dataset')} is not ready")
        job = self._new_job(body, body["baseModel"], body["dataset"], body.get("evaluationDataset"),
                            body.get("epochs"), body.get("displayName"), job_id)
        return web.json_response(self._fw_job(job))

    async def _fw_get(self, request: web.Request) -> web.Response:
        if denied := self._fw_account(request):
            return denied
        job = self._poll(request.match_info["id"])
        if job is None:
            return self._error(request, 404, "job not found")
        return web.json_response(self._fw_job(job))

    async def _fw_cancel(self, request: web.Request) -> web.Response:
        job = self.jobs.get(request.match_info["id"])
        if job is None:
            return self._error(request, 404, "job not found")
        job.cancelled = True
        return web.json_response({})
