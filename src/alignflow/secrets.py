"""Keep credentials out of MLflow params, params.yaml artifacts and logs (docs/SECURITY.md).

Credentials reach alignflow only through the environment: orchestration.secrets,
orchestration.docker.env_passthrough and rank.llm.api_key_env hold names of Secrets and
variables, never values. A params override, a tracking URI or a log line can still carry one by
mistake; these pure functions mask them before anything is logged:

- `redact_secrets(mapping)`: a copy of a (nested or dotted-flat) mapping in which the value of
  every key that names a secret (token, key, secret, password, api_key, ...) is `REDACTED`, and
  every string value is passed through `redact_text`;
- `redact_text(text)`: the password of a `scheme://user:password@host` URL, and strings shaped
  like well-known API tokens (OpenAI `sk-`, Hugging Face `hf_`, GitHub, Slack, AWS access key
  ids, JWTs), replaced by `REDACTED`;
- `is_secret_key(key)`: the key-name test.

A key that holds the *name* of a variable or a secret (`api_key_env`, `orchestration.secrets`,
`image_pull_secrets`) is no secret and stays readable, unless its value looks like a credential
rather than a name.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from typing import Any

REDACTED = "***"

# Words (of a key split at _ - . and camelCase) that make the key a secret on their own.
_SECRET_WORDS = frozenset({
    "password", "passwords", "passwd", "passphrase", "secret", "token", "apikey", "credential", "credentials",
    "authorization", "cookie", "privatekey", "accesskey", "secretkey", "sessionkey",
})
# "<word> key" pairs: api_key, access_key, private_key, ... (a bare `key` too).
_KEY_QUALIFIERS = frozenset({"api", "access", "secret", "private", "signing", "encryption", "session", "auth",
                             "master", "client", "account", "license", "ssh"})
# "<word> token" that is a tokenizer's token or a count, not a credential: pad_token, max_token.
_NOT_SECRET_TOKEN = frozenset({"pad", "eos", "bos", "unk", "sep", "cls", "mask", "special", "max", "min",
                               "num", "n", "start", "end", "stop", "image", "audio"})
# A key ending in one of these holds a *name* (of an env var, a k8s Secret, a file), not a value.
_ENV_SUFFIXES = frozenset({"env", "var"})
_NAME_SUFFIXES = frozenset({"name", "names", "file", "path", "ref", "id", "secrets"})
_ENV_NAME = re.compile(r"^[A-Z_][A-Z0-9_]*$")  # OPENAI_API_KEY
_PLAIN_NAME = re.compile(r"^[A-Za-z0-9_./~\-]+$")  # a k8s Secret, an env var, a file

# Credential-shaped strings, wherever they appear.
_TOKEN_PATTERNS = (
    re.compile(r"\bsk-(?:proj-|ant-|live-|test-)?[A-Za-z0-9_\-]{16,}"),      # OpenAI / Anthropic / Stripe-like
    re.compile(r"\b(?:sk|rk|pk)_(?:live|test)_[A-Za-z0-9]{16,}"),           # Stripe
    re.compile(r"\bhf_[A-Za-z0-9]{30,}"),                                     # Hugging Face
    re.compile(r"\b(?:ghp|gho|ghu|ghs|ghr)_[A-Za-z0-9]{30,}"),               # GitHub
    re.compile(r"\bgithub_pat_[A-Za-z0-9_]{40,}"),
    re.compile(r"\bglpat-[A-Za-z0-9_\-]{20,}"),                               # GitLab
    re.compile(r"\bxox[abprs]-[A-Za-z0-9\-]{10,}"),                           # Slack
    re.compile(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"),                             # AWS access key id
    re.compile(r"\beyJ[A-Za-z0-9_\-]{8,}\.eyJ[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]{8,}"),  # JWT
    re.compile(r"(?i)\bBearer\s+[A-Za-z0-9._~+/\-]{16,}=*"),                 # an Authorization header value
)
# scheme://user:password@host -> scheme://user:***@host
_URL_CREDENTIALS = re.compile(r"(?P<head>\b[a-zA-Z][a-zA-Z0-9+.\-]*://[^\s:/@]*:)(?P<pw>[^\s@/]+)(?P<at>@)")
# key=value / key: value / "key": "value" in free text ("password=hunter2", "api_key: sk..."):
# masked when the key passes is_secret_key.
_INLINE_ASSIGNMENT = re.compile(
    r"(?P<key>\b[A-Za-z][\w.\-]*)(?P<kq>['\"]?)(?P<sep>[ \t]*[=:][ \t]*)(?P<quote>['\"]?)(?P<value>[^\s'\",;&}]+)"
)


def _words(key: str) -> list[str]:
    key = re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", key)  # camelCase -> camel_Case
    return [w for w in re.split(r"[^A-Za-z0-9]+", key.lower()) if w]


def is_secret_key(key: Any) -> bool:
    """Whether a key (its last dotted part) names a credential: token, key, secret, password,
    api_key, access_key, ... `max_new_tokens`, `pad_token`, `sort_key` are not."""
    if not isinstance(key, str):
        return False
    words = _words(key.rsplit(".", 1)[-1])
    if not words:
        return False
    if words == ["key"]:
        return True
    for i, word in enumerate(words):
        previous = words[i - 1] if i else ""
        if word == "token" and previous in _NOT_SECRET_TOKEN:
            continue
        if word == "auth" and i + 1 < len(words) and words[i + 1] in ("manager", "type", "method", "backend", "mode"):
            continue  # auth_manager, auth_type: a choice, not a credential
        if word in _SECRET_WORDS:
            return True
        if word == "key" and previous in _KEY_QUALIFIERS:
            return True
    return False


def _holds_a_name(key: str, value: Any) -> bool:
    """`api_key_env: OPENAI_API_KEY`, `token_secret_name: hf-token`: the value names where the
    credential is (an env var, a k8s Secret, a file), if it looks like such a name."""
    words = _words(key.rsplit(".", 1)[-1])
    if not words or (words[-1] not in _ENV_SUFFIXES and words[-1] not in _NAME_SUFFIXES):
        return False
    shape = _ENV_NAME if words[-1] in _ENV_SUFFIXES else _PLAIN_NAME
    values = value if isinstance(value, (list, tuple)) else [value]
    return all(v is None or (isinstance(v, str) and shape.match(v) and redact_text(v) == v) for v in values)


def redact_text(text: str) -> str:
    """`text` with URL passwords, `password=...`-style assignments and token-shaped strings masked."""
    if not isinstance(text, str) or not text:
        return text
    out = _URL_CREDENTIALS.sub(lambda m: f"{m['head']}{REDACTED}{m['at']}", text)
    for pattern in _TOKEN_PATTERNS:  # first: "Authorization: Bearer <token>" loses the whole value
        out = pattern.sub(REDACTED, out)
    return _INLINE_ASSIGNMENT.sub(
        # (a bare "key: ..." in prose is a cache or sort key far more often than a credential)
        lambda m: m.group(0) if m["value"] == REDACTED or not is_secret_key(m["key"]) or _words(m["key"]) == ["key"]
        else f"{m['key']}{m['kq']}{m['sep']}{m['quote']}{REDACTED}",
        out,
    )


def _mask(value: Any) -> Any:
    if value is None or isinstance(value, bool) or value == "":
        return value  # nothing to hide, and "unset" stays visible
    return REDACTED


def _redact(key: Any, value: Any) -> Any:
    if isinstance(key, str) and is_secret_key(key):
        if not _holds_a_name(key, value):
            if isinstance(value, Mapping):
                return {k: _mask(v) if not isinstance(v, Mapping) else _redact(key, v) for k, v in value.items()}
            return _mask(value)
    if isinstance(value, Mapping):
        return redact_secrets(value)
    if isinstance(value, (list, tuple)):
        return type(value)(_redact(None, v) for v in value)
    if isinstance(value, str):
        return redact_text(value)
    return value


def redact_secrets(mapping: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of `mapping` (nested, or flat with dotted keys) that is safe to log: secret-named
    keys keep their key and lose their value (`REDACTED`; None, "" and booleans stay as they are),
    and credentials inside other strings (URLs with a password, API tokens) are masked. The input
    is never modified."""
    return {k: _redact(k, v) for k, v in mapping.items()}


class RedactingFilter(logging.Filter):
    """A logging filter that runs `redact_text` over each record's message (arguments merged).
    Install on a handler: `handler.addFilter(RedactingFilter())`."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a malformed record: leave it to the handler's own error path
            return True
        clean = redact_text(message)
        if clean != message:
            record.msg, record.args = clean, None
        return True
