"""The teacher: a chat model behind a cache, retries, a rate limit and batching.

The transport is the LLM judge's (rlhf/judges.py): `HTTPChatBackend` for an OpenAI-compatible
endpoint (a vLLM server on a GPU in production), `LocalChatBackend` for a model in this process.
What this module adds is what a few thousand calls need:

- a cache keyed by a hash of the request (teacher, messages, sampling settings, a salt): every
  answer is appended to a JSON Lines file the moment it arrives, so a re-run, or a run resumed
  after a kill, asks only what is not there yet (a torn last line is skipped on reading);
- batching: batched generate() calls in-process, `batch_size` concurrent requests over HTTP;
- retries with exponential backoff on transient failures (HTTP 429/5xx, a malformed body) and a
  client-side rate limit (`requests_per_minute`); a failed request is not cached, so the next
  run asks it again. An endpoint that refuses (connection refused, HTTP 4xx) stops the stage
  with one line naming the parameter.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

from alignflow.config.synthesis import TeacherParams
from alignflow.io import InputError

log = logging.getLogger(__name__)
Messages = list[dict]


class TeacherUnavailable(InputError):
    """The endpoint cannot be reached or refuses the request (not a transient failure)."""


@dataclass(frozen=True)
class Request:
    messages: Messages
    salt: str = ""  # tells apart two samples of the same prompt (the cache would return one answer twice)


class ChatCache:
    """Append-only JSON Lines, one {"key", "reply"} per line; None path = no cache."""

    def __init__(self, path: Path | None):
        self.path, self.replies, self.lock = path, {}, threading.Lock()
        if path is None or not path.exists():
            return
        with open(path, encoding="utf-8") as fh:
            for line in fh:
                try:
                    row = json.loads(line)
                    self.replies[row["key"]] = row["reply"]
                except (ValueError, KeyError, TypeError):
                    continue  # the line a kill cut short

    def get(self, key: str) -> str | None:
        return self.replies.get(key)

    def put(self, key: str, reply: str) -> None:
        with self.lock:
            self.replies[key] = reply
            if self.path is None:
                return
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a", encoding="utf-8") as fh:  # one short write per answer: a kill loses at most it
                fh.write(json.dumps({"key": key, "reply": reply}, ensure_ascii=False) + "\n")


def digest(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, ensure_ascii=False).encode("utf-8")).hexdigest()


class Teacher:
    """`ask(requests)` -> one reply (or None: failed after retries) per request, in order."""

    def __init__(self, p: TeacherParams, where: str, backend=None):
        self.p, self.where = p, where
        self._backend = backend  # built on the first uncached request: a fully cached run loads no model
        self.identity = {"backend": p.backend, "model": p.model, **({"base_url": p.base_url} if p.backend == "http" else {})}
        name = "".join(c if c.isalnum() else "-" for c in p.model)[-40:]
        path = Path(p.cache_dir) / f"{name}-{digest(self.identity)[:12]}.jsonl" if p.cache_dir else None
        self.cache = ChatCache(path)
        self.stats: Counter = Counter()
        self._next_slot, self._slot_lock = 0.0, threading.Lock()

    @property
    def label(self) -> str:
        return f"{self.p.backend}:{self.p.model}"

    @property
    def backend(self):
        if self._backend is None:
            from alignflow.rlhf import judges

            p = self.p
            if p.backend == "http":
                self._backend = judges.HTTPChatBackend(p.base_url, p.model, p.api_key_env, p.timeout_s, p.max_new_tokens,
                                                       temperature=p.temperature, top_p=p.top_p)
            else:
                self._backend = judges.LocalChatBackend(p.model, p.max_new_tokens, temperature=p.temperature,
                                                        top_p=p.top_p, batch_size=p.batch_size)
        return self._backend

    def ask(self, requests: list[Request], *, max_new_tokens: int | None = None,
            temperature: float | None = None) -> list[str | None]:
        settings = {"max_new_tokens": max_new_tokens or self.p.max_new_tokens, "top_p": self.p.top_p,
                    "temperature": self.p.temperature if temperature is None else temperature}
        keys = [digest(self.identity, settings, r.messages, r.salt) for r in requests]
        out: list[str | None] = [self.cache.get(k) for k in keys]
        todo = [i for i, reply in enumerate(out) if reply is None]
        self.stats["cache_hits"] += len(requests) - len(todo)
        if not todo:
            return out
        started = time.perf_counter()

        def record(i: int, reply: str | None) -> None:
            self.stats["calls"] += 1
            if reply is None:
                self.stats["failed"] += 1
            else:
                self.cache.put(keys[i], reply)
                out[i] = reply

        try:
            if self.p.backend == "http":
                self._ask_http([(i, requests[i].messages) for i in todo], settings, record)
            else:
                self._ask_local(todo, requests, keys, settings, record)
        finally:
            self.stats["seconds"] += time.perf_counter() - started
        return out

    def _ask_local(self, todo, requests, keys, settings, record) -> None:
        size = self.p.batch_size
        for start in range(0, len(todo), size):
            chunk = todo[start : start + size]
            seed = int(keys[chunk[0]][:8], 16)  # a batch's samples follow from what it holds
            replies = self.backend.chat_many([requests[i].messages for i in chunk], settings["max_new_tokens"],
                                             settings["temperature"], seed=seed)
            for i, reply in zip(chunk, replies):
                record(i, reply)

    def _ask_http(self, items: list[tuple[int, Messages]], settings, record) -> None:
        from alignflow.rlhf.judges import JudgeUnavailable

        backend = self.backend  # built once, before the threads
        error = None
        with ThreadPoolExecutor(max_workers=self.p.batch_size) as pool:
            futures = {pool.submit(self._one, backend, messages, settings): i for i, messages in items}
            for fut in as_completed(futures):
                if fut.cancelled():
                    continue
                try:
                    record(futures[fut], fut.result())
                except JudgeUnavailable as err:
                    if error is None:
                        error = err
                        for other in futures:
                            other.cancel()  # queued requests only; the running ones finish and are cached
        if error is not None:
            raise TeacherUnavailable(f"{self.where}: {error}") from None

    def _one(self, backend, messages: Messages, settings) -> str | None:
        for attempt in range(self.p.max_retries + 1):
            self._throttle()
            reply = backend.chat(messages, max_tokens=settings["max_new_tokens"], temperature=settings["temperature"])
            if reply is not None:
                return reply
            if attempt < self.p.max_retries:
                with self._slot_lock:  # worker threads: a Counter update is not atomic
                    self.stats["retries"] += 1
                time.sleep(self.p.retry_backoff_s * 2**attempt)
        return None

    def _throttle(self) -> None:
        """Space the requests `60 / requests_per_minute` seconds apart (across threads)."""
        if not self.p.requests_per_minute:
            return
        with self._slot_lock:
            now = time.monotonic()
            slot = max(now, self._next_slot)
            self._next_slot = slot + 60.0 / self.p.requests_per_minute
        if slot > now:
            time.sleep(slot - now)
