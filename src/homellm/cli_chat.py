"""``homellm chat``: the command function for the CLI to mount (``app.command("chat")(
chat_command)``). One-shot with ``--prompt``, else an interactive loop; the logic is in
``homellm.chat``.

Exit codes: 0 done; 1 a ``HomellmError`` (one line), 2 a bad flag; 130 after Ctrl-C at the prompt.
"""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING, Annotated, NoReturn

import typer
from rich.console import Console
from rich.prompt import Prompt

from homellm.errors import ConfigError, HomellmError

if TYPE_CHECKING:  # torch and transformers load only when a chat starts
    from homellm.chat import Chat, Message, Reply

Opt = typer.Option
console = Console(highlight=False)
err_console = Console(stderr=True, highlight=False)


def _fail(exc: HomellmError) -> NoReturn:
    err_console.print(f"[red]error:[/] {str(exc).splitlines()[0]}", soft_wrap=True)
    raise typer.Exit(exc.exit_code)


def _write(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


def _stats(reply: Reply) -> str:
    if reply.tokens is None:
        return f"{reply.seconds:.2f} s"
    unit = "tokens" if reply.exact else "chunks (the server sent no usage)"
    rate = f", {reply.tokens_per_s:.1f}/s" if reply.tokens_per_s is not None else ""
    return f"{reply.tokens} {unit} in {reply.seconds:.2f} s{rate}"


def _interactive(chat: Chat, system: list[Message], **sampling: float | int | None) -> None:
    from homellm.chat import answer

    console.print(f"[dim]chatting with {chat.name}; /reset clears the conversation, "
                  "/exit or Ctrl-D quits, Ctrl-C stops a reply[/]")
    history = list(system)
    while True:
        try:
            line = Prompt.ask("[bold green]you[/]", console=console)
        except EOFError:
            console.print()
            return
        except KeyboardInterrupt:
            console.print()
            raise typer.Exit(130) from None
        text = line.strip()
        if text in ("/exit", "/quit"):
            return
        if text == "/reset":
            history = list(system)
            console.print("[dim](conversation cleared)[/]")
            continue
        if not text:
            continue
        history.append({"role": "user", "content": text})
        try:
            reply = answer(chat, history, on_text=_write, **sampling)  # type: ignore[arg-type]
        except KeyboardInterrupt:
            history.pop()  # the stopped turn leaves no trace in the conversation
            console.print("\n[dim](stopped)[/]")
            continue
        except HomellmError as exc:
            history.pop()
            _write("\n")
            err_console.print(f"[red]error:[/] {str(exc).splitlines()[0]}", soft_wrap=True)
            continue
        history.append({"role": "assistant", "content": reply.text})
        _write("\n")
        console.print(f"[dim]{_stats(reply)}[/]")


def chat_command(
    target: Annotated[str, typer.Argument(
        metavar="MODEL_OR_URL",
        help="a model folder (with config.json) or an OpenAI-compatible URL")],
    model: Annotated[str | None, Opt(
        "--model", help="model name on the endpoint (default: the first it lists)")] = None,
    api_key: Annotated[str | None, Opt(
        "--api-key", help="endpoint key (default: $HOMELLM_API_KEY, else $OPENAI_API_KEY)")
    ] = None,
    system: Annotated[str | None, Opt("--system", help="system message")] = None,
    max_tokens: Annotated[int, Opt("--max-tokens", help="most tokens per reply")] = 256,
    temperature: Annotated[float, Opt("--temperature", help="0 = greedy")] = 0.7,
    top_p: Annotated[float | None, Opt("--top-p", help="nucleus sampling")] = None,
    prompt: Annotated[str | None, Opt(
        "--prompt", help="ask this once, print the streamed answer and exit")] = None,
    json_output: Annotated[bool, Opt(
        "--json", help="with --prompt: print answer, tokens, seconds, tokens_per_s as JSON")
    ] = False,
) -> None:
    """Chat in the terminal with a model folder or an OpenAI-compatible endpoint, streamed."""
    from homellm.chat import answer, open_chat

    try:
        if max_tokens < 1:
            raise ConfigError("--max-tokens must be 1 or more")
        if temperature < 0:
            raise ConfigError("--temperature must be 0 or more")
        if top_p is not None and not 0 < top_p <= 1:
            raise ConfigError("--top-p must be in (0, 1]")
        if json_output and prompt is None:
            raise ConfigError("--json needs --prompt")
        chat = open_chat(target, model=model, api_key=api_key)
    except HomellmError as exc:
        _fail(exc)
    except KeyboardInterrupt:
        raise typer.Exit(130) from None
    sampling = {"max_tokens": max_tokens, "temperature": temperature, "top_p": top_p}
    messages: list[Message] = [{"role": "system", "content": system}] if system else []
    try:
        if prompt is None:
            _interactive(chat, messages, **sampling)
            return
        messages.append({"role": "user", "content": prompt})
        shown: list[str] = []

        def show(text: str) -> None:
            shown.append(text)
            _write(text)

        try:
            reply = answer(chat, messages, on_text=None if json_output else show,
                           **sampling)  # type: ignore[arg-type]
        except KeyboardInterrupt:
            raise typer.Exit(130) from None
        except HomellmError:
            if shown:
                _write("\n")  # the error gets a line of its own after a partial answer
            raise
        if json_output:
            print(json.dumps({"answer": reply.text, "tokens": reply.tokens,
                              "seconds": round(reply.seconds, 4),
                              "tokens_per_s": reply.tokens_per_s}))
        else:
            _write("\n")
            err_console.print(f"[dim]{_stats(reply)}[/]")
    except HomellmError as exc:
        _fail(exc)
    finally:
        chat.close()
