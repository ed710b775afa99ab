"""Routes per engine: an adapter declares what its engine serves, `up` hands it to the gateway,
and the gateway forwards and advertises only the routes every replica of a model serves."""

from __future__ import annotations

from pathlib import Path

from homellm.config import ModelConfig, ReplicaConfig
from homellm.engines.llamacpp import LlamaCppAdapter
from homellm.engines.sglang import SglangAdapter
from homellm.engines.transformers import TransformersAdapter
from homellm.engines.vllm import VllmAdapter
from homellm.up import backends_of
from tests.gateway.conftest import MODEL, Harness, info

CHAT_ONLY = ("/v1/chat/completions", "/v1/completions")
ALL = (*CHAT_ONLY, "/v1/embeddings")


def test_adapters_declare_their_routes_and_up_passes_them_on(tmp_path: Path) -> None:
    replica = ReplicaConfig(role="primary", port=8101)

    def model(source: Path, engine: str, **args: object) -> ModelConfig:
        return ModelConfig(source=str(source), engine=engine, engine_args=args,
                           replicas=[replica])

    spec = TransformersAdapter().launch("tiny", model(tmp_path, "transformers"), replica, 0, 1)
    assert backends_of([spec])[0].routes == CHAT_ONLY
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF" + bytes(60))
    adapter = LlamaCppAdapter(server="llama_cpp.server")
    plain = adapter.launch("g", model(gguf, "llamacpp"), replica, 0, 1)
    embeds = adapter.launch("g", model(gguf, "llamacpp", embedding=True), replica, 0, 1)
    assert plain.routes == CHAT_ONLY and embeds.routes == ALL


def test_vllm_and_sglang_serve_chat_or_embeddings_by_their_runner(tmp_path: Path) -> None:
    """A generating vLLM/SGLang model answers /v1/embeddings with an error; a pooling one
    (runner: pooling / is_embedding) serves only embeddings."""
    (tmp_path / "config.json").write_text('{"model_type": "llama", '
                                          '"max_position_embeddings": 4096}')
    replica = ReplicaConfig(role="primary", port=8101, gpus=[0])
    for adapter, pooling in ((VllmAdapter(), {"runner": "pooling"}),
                             (SglangAdapter(), {"is_embedding": True})):
        for args, routes in (({}, CHAT_ONLY), (pooling, ("/v1/embeddings",))):
            model = ModelConfig(source=str(tmp_path), engine=adapter.name, engine_args=args,
                                replicas=[replica])
            spec = adapter.launch("m", model, replica, 0, 8101)
            assert backends_of([spec])[0].routes == routes, (adapter.name, args)


def test_a_route_one_replica_lacks_is_404_and_unadvertised(harness: Harness) -> None:
    full, chat_only = harness.fake(name="full"), harness.fake(name="chat-only")
    backends = [info(full, "tiny/0"), info(chat_only, "tiny/1", "backup"),
                info(harness.fake(name="other"), "emb/0", model="emb")]
    backends[1] = backends[1].__class__(**{**backends[1].__dict__, "routes": CHAT_ONLY})
    gw = harness.gateway(backends)
    with gw.http() as http:
        response = http.post("/v1/embeddings", json={"model": MODEL, "input": "hi"})
        assert response.status_code == 404
        error = response.json()["error"]
        assert error["code"] == "route_not_served" and error["param"] == "model"
        assert "/v1/embeddings" in error["message"]
        assert full.requests == chat_only.requests == 0  # no engine was asked
        assert http.post("/v1/embeddings", json={"model": "emb", "input": "hi"}
                         ).status_code == 200
        assert http.post("/v1/chat/completions", json={
            "model": MODEL, "messages": [{"role": "user", "content": "hi"}]}).status_code == 200
        routes = {m["id"]: m["routes"] for m in http.get("/v1/models").json()["data"]}
        assert routes == {MODEL: list(CHAT_ONLY), "emb": list(ALL)}
        paths = http.get("/openapi.json").json()["paths"]
    embed_models = paths["/v1/embeddings"]["post"]["requestBody"]["content"][
        "application/json"]["schema"]["properties"]["model"]["enum"]
    chat_models = paths["/v1/chat/completions"]["post"]["requestBody"]["content"][
        "application/json"]["schema"]["properties"]["model"]["enum"]
    assert embed_models == ["emb"] and chat_models == ["emb", MODEL]
