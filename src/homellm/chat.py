"""Streamed chat with an exported model folder (transformers, in this process) or an
OpenAI-compatible endpoint. ``open_chat`` picks the kind from the target; both kinds expose
``stream(messages, ...)`` yielding text pieces, then ``last_usage`` (completion tokens)."""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import httpx

from homellm.errors import HomellmError

Message = dict[str, str]


class Chat(Protocol):
    name: str
    last_usage: int | None
    usage_exact: bool  # False when last_usage counts streamed chunks, not tokens

    def stream(self, messages: list[Message], max_tokens: int, temperature: float,
               top_p: float | None) -> Iterator[str]: ...

    def close(self) -> None: ...


def is_url(target: str) -> bool:
    return target.startswith(("http://", "https://"))


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


class LocalChat:
    """A Hugging Face model folder, generated with ``model.generate`` in a thread."""

    def __init__(self, folder: Path, device: str | None = None) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # a loading bar would land in the middle of the chat

        self.name = str(folder)
        self.last_usage: int | None = None
        self.usage_exact = True
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(folder)
        except (OSError, ValueError) as exc:
            raise HomellmError(
                f"{folder}: cannot load the tokenizer ({_first_line(exc)})") from None
        if not getattr(self.tokenizer, "chat_template", None):
            raise HomellmError(f"{folder}: the tokenizer has no chat template, so it cannot chat")
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        try:
            model = AutoModelForCausalLM.from_pretrained(folder, dtype="auto")
        except (OSError, ValueError) as exc:
            raise HomellmError(f"{folder}: cannot load the model ({_first_line(exc)})") from None
        self.model = model.to(self.device).eval()

    def stream(self, messages: list[Message], max_tokens: int, temperature: float,
               top_p: float | None) -> Iterator[str]:
        from transformers import StoppingCriteria, StoppingCriteriaList, TextIteratorStreamer

        self.last_usage = None
        inputs = self.tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
        ).to(self.device)
        prompt_len = inputs["input_ids"].shape[1]
        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True,
                                        skip_special_tokens=True)
        stop = threading.Event()

        class _Stopped(StoppingCriteria):  # lets Ctrl-C end generate() between two tokens
            def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
                import torch

                return torch.full((input_ids.shape[0],), stop.is_set(), dtype=torch.bool,
                                  device=input_ids.device)

        gen_config = self.model.generation_config
        sampling: dict[str, Any] = (
            {"do_sample": True, "temperature": temperature, "top_p": top_p or 1.0}
            if temperature > 0
            else {"do_sample": False, "temperature": None, "top_p": None, "top_k": None}
        )
        outcome: dict[str, Any] = {}

        def generate() -> None:
            try:
                outcome["ids"] = self.model.generate(
                    **inputs, max_new_tokens=max_tokens, streamer=streamer,
                    eos_token_id=gen_config.eos_token_id,
                    pad_token_id=gen_config.pad_token_id or self.tokenizer.pad_token_id,
                    stopping_criteria=StoppingCriteriaList([_Stopped()]), **sampling)
            except BaseException as exc:  # re-raised in the caller's thread
                outcome["error"] = exc
                streamer.end()  # else the consumer would wait forever

        thread = threading.Thread(target=generate, name="homellm-chat-generate", daemon=True)
        thread.start()
        try:
            for text in streamer:
                if text:
                    yield text
        finally:
            stop.set()
            thread.join()
        if "error" in outcome:
            raise HomellmError(f"{self.name}: generation failed "
                               f"({_first_line(outcome['error'])})")
        self.last_usage = int(outcome["ids"].shape[1] - prompt_len)

    def close(self) -> None:
        pass


def _error_message(response: httpx.Response) -> str:
    """The message of an OpenAI-shaped error body, else the start of whatever came back."""
    try:
        body = response.json()
    except ValueError:
        return response.text.strip().splitlines()[0][:200] if response.text.strip() else ""
    if isinstance(body, dict):
        error = body.get("error", body)
        if isinstance(error, dict):
            error = error.get("message") or error.get("detail") or json.dumps(error)
        return str(error)
    return json.dumps(body)[:200]


class EndpointChat:
    """An OpenAI-compatible server: ``POST /v1/chat/completions`` with ``stream: true``."""

    def __init__(self, url: str, model: str | None = None, api_key: str | None = None,
                 timeout_s: float = 300.0) -> None:
        self.url = url.rstrip("/")
        base = self.url[: -len("/v1")] if self.url.endswith("/v1") else self.url
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.client = httpx.Client(base_url=base, headers=headers,
                                   timeout=httpx.Timeout(timeout_s, connect=10.0))
        self.last_usage: int | None = None
        self.usage_exact = True
        try:
            self.name = self._pick_model(model)
        except BaseException:
            self.client.close()
            raise

    def _call(self, send: Callable[[], Any]) -> Any:
        try:
            return send()
        except httpx.ConnectError as exc:
            raise HomellmError(f"{self.url}: cannot connect ({_first_line(exc)})") from None
        except httpx.TimeoutException as exc:
            raise HomellmError(f"{self.url}: timed out ({type(exc).__name__})") from None
        except httpx.RemoteProtocolError as exc:
            raise HomellmError(f"{self.url}: the connection broke ({_first_line(exc)})") from None
        except httpx.HTTPError as exc:
            raise HomellmError(f"{self.url}: {_first_line(exc)}") from None

    def _http_error(self, response: httpx.Response) -> HomellmError:
        message = _error_message(response)
        return HomellmError(f"{self.url}: HTTP {response.status_code}"
                            + (f": {message}" if message else ""))

    def _pick_model(self, model: str | None) -> str:
        response = self._call(lambda: self.client.get("/v1/models"))
        if response.status_code == 404 and model:
            return model  # a server without the list: trust the name we were given
        if response.status_code >= 400:
            raise self._http_error(response)
        try:
            ids = [str(m["id"]) for m in response.json()["data"]]
        except (ValueError, KeyError, TypeError):
            raise HomellmError(f"{self.url}: /v1/models did not answer a model list") from None
        if model is None:
            if not ids:
                raise HomellmError(f"{self.url}: the endpoint lists no models; pass --model")
            return ids[0]
        if model not in ids:
            raise HomellmError(f"{self.url}: unknown model {model!r} "
                               f"(the endpoint serves: {', '.join(ids) or 'none'})")
        return model

    def stream(self, messages: list[Message], max_tokens: int, temperature: float,
               top_p: float | None) -> Iterator[str]:
        body: dict[str, Any] = {"model": self.name, "messages": messages, "stream": True,
                                "max_tokens": max_tokens, "temperature": temperature,
                                "stream_options": {"include_usage": True}}
        if top_p is not None:
            body["top_p"] = top_p
        self.last_usage, self.usage_exact = None, True
        chunks = 0
        with contextlib.ExitStack() as stack:
            response = self._call(lambda: stack.enter_context(
                self.client.stream("POST", "/v1/chat/completions", json=body)))
            if response.status_code >= 400:
                self._call(response.read)
                raise self._http_error(response)
            lines = self._call(lambda: iter(response.iter_lines()))
            while (line := self._call(lambda: next(lines, None))) is not None:
                if not line.startswith("data:"):
                    continue
                data = line[len("data:"):].strip()
                if data == "[DONE]":
                    break
                try:
                    event = json.loads(data)
                except ValueError:
                    raise HomellmError(f"{self.url}: not JSON in the stream: {data[:80]}") from None
                if isinstance(event.get("error"), dict | str):
                    error = event["error"]
                    message = error.get("message") if isinstance(error, dict) else error
                    raise HomellmError(f"{self.url}: error in the stream: {message}")
                if isinstance(event.get("usage"), dict):
                    self.last_usage = event["usage"].get("completion_tokens")
                choices = event.get("choices") or []
                content = (choices[0].get("delta") or {}).get("content") if choices else None
                if content:
                    chunks += 1
                    yield content
        if self.last_usage is None:
            self.last_usage, self.usage_exact = chunks, False

    def close(self) -> None:
        self.client.close()


def open_chat(target: str, *, model: str | None = None, api_key: str | None = None,
              device: str | None = None) -> Chat:
    """An ``EndpointChat`` for an http(s) URL, a ``LocalChat`` for a folder with config.json.
    The key falls back to HOMELLM_API_KEY, then OPENAI_API_KEY."""
    if is_url(target):
        key = api_key or os.environ.get("HOMELLM_API_KEY") or os.environ.get("OPENAI_API_KEY")
        return EndpointChat(target, model=model, api_key=key)
    folder = Path(target).expanduser()
    if not (folder / "config.json").is_file():
        raise HomellmError(f"{target}: neither a model folder (no config.json) nor an http(s) URL")
    return LocalChat(folder, device=device)


@dataclass
class Reply:
    text: str
    tokens: int | None
    exact: bool  # tokens counted by the model or server, not by streamed chunks
    seconds: float

    @property
    def tokens_per_s(self) -> float | None:
        return self.tokens / self.seconds if self.tokens is not None and self.seconds > 0 else None


def answer(chat: Chat, messages: list[Message], *, max_tokens: int, temperature: float,
           top_p: float | None, on_text: Callable[[str], None] | None = None) -> Reply:
    """Stream one reply, handing each piece to ``on_text``; time and count it."""
    start = time.perf_counter()
    pieces: list[str] = []
    for piece in chat.stream(messages, max_tokens, temperature, top_p):
        pieces.append(piece)
        if on_text is not None:
            on_text(piece)
    return Reply("".join(pieces), chat.last_usage, chat.usage_exact,
                 time.perf_counter() - start)
