"""The local API described as OpenAPI 3.0; served at /v1/openapi.json and used to fuzz the API in tests."""

from __future__ import annotations

from typing import Any

from agent import __version__

_ERROR = {"$ref": "#/components/schemas/Error"}
# A maintenance reason ends up in logs, STATUS= lines and one-reason-per-line text: no control or
# invisible formatting characters (bidi overrides, BOM) and no lone surrogates.
REASON_PATTERN = (
    "^[^\\x00-\\x1f\\x7f-\\x9f\\u2028\\u2029\\u200b-\\u200f\\u202a-\\u202e\\u2066-\\u2069"
    "\\ufeff\\ud800-\\udfff]*$"
)


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _health(description: str) -> dict[str, Any]:
    """JSON by default; with ?format=text the status on the first line and one reason per line after it."""
    body = _json({"$ref": "#/components/schemas/Health"}, description)
    body["content"]["text/plain"] = {"schema": {"type": "string"}}
    return body


_NAME = {"name": "name", "in": "path", "required": True, "schema": {"type": "string", "minLength": 1}}

OPENAPI: dict[str, Any] = {
    "openapi": "3.0.3",
    "info": {"title": "vmesh-agent local API", "version": __version__,
             "description": "Served on the agent's unix socket (/run/vmesh-agent/agent.sock)."},
    "paths": {
        "/v1/health": {"get": {
            "summary": "Overall health, Consul's convention: 200 passing, 429 warning, 503 critical.",
            "parameters": [{"name": "format", "in": "query", "required": False,
                            "schema": {"type": "string", "enum": ["json", "text"]}}],
            "responses": {
                "200": _health("passing"),
                "429": _health("warning"),
                "503": _health("critical"),
                "400": _json(_ERROR, "bad format"),
            },
        }},
        "/v1/status": {"get": {
            "summary": "VM name, advertised address and why, cluster reachability, last sync and heartbeat.",
            "responses": {"200": _json({"$ref": "#/components/schemas/Status"}, "status")},
        }},
        "/v1/services": {"get": {
            "summary": "Every service of this VM with its registrations and checks.",
            "responses": {"200": _json({"type": "array", "items": {"$ref": "#/components/schemas/Service"}},
                                       "services")},
        }},
        "/v1/services/{name}": {"get": {
            "summary": "One service.",
            "parameters": [_NAME],
            "responses": {"200": _json({"$ref": "#/components/schemas/Service"}, "the service"),
                          "404": _json(_ERROR, "no such service")},
        }},
        "/v1/services/{name}/maintenance": {"put": {
            "summary": "Mark a service not ready for maintenance (kept across restarts), or end it.",
            "parameters": [_NAME],
            "requestBody": {"required": True, "content": {"application/json": {"schema": {
                "type": "object", "required": ["enable"], "additionalProperties": False,
                "properties": {"enable": {"type": "boolean"}, "reason": {"type": "string", "maxLength": 256,
                                                                        "pattern": REASON_PATTERN}},
            }}}},
            "responses": {
                "200": _json({"type": "object", "required": ["service", "maintenance"], "properties": {
                    "service": {"type": "string"},
                    "maintenance": {"type": "string", "nullable": True}}}, "done"),
                "400": _json(_ERROR, "malformed request"),
                "403": _json(_ERROR, "not root or the agent's user"),
                "404": _json(_ERROR, "no such service"),
            },
        }},
        "/metrics": {"get": {
            "summary": "Prometheus metrics: OpenMetrics 1.0 when Accept asks for"
                       " application/openmetrics-text, the text format 0.0.4 otherwise."
                       " Also served by the [metrics] listen TCP listener.",
            "responses": {"200": {"description": "metrics", "content": {
                "text/plain": {"schema": {"type": "string"}},
                "application/openmetrics-text": {"schema": {"type": "string"}}}}},
        }},
        "/v1/openapi.json": {"get": {
            "summary": "This document.",
            "responses": {"200": _json({"type": "object"}, "the OpenAPI document")},
        }},
    },
    "components": {"schemas": {
        "Error": {"type": "object", "required": ["error"], "properties": {"error": {"type": "string"}}},
        "Health": {"type": "object", "required": ["status", "reasons"], "properties": {
            "status": {"type": "string", "enum": ["passing", "warning", "critical"]},
            "reasons": {"type": "array", "items": {"type": "string"}}}},
        "Status": {"type": "object",
                   "required": ["vm", "namespace", "backend", "version", "address", "cluster"],
                   "properties": {
                       "vm": {"type": "string"}, "namespace": {"type": "string"},
                       "backend": {"type": "string"},
                       "version": {"type": "string"}, "health": {"type": "string"},
                       "address": {"type": "object", "properties": {
                           "advertised": {"type": "string", "nullable": True}, "reason": {"type": "string"},
                           "candidates": {"type": "array", "items": {"type": "string"}}}},
                       "cluster": {"type": "object", "properties": {
                           "server": {"type": "string"}, "reachable": {"type": "boolean"},
                           "last_error": {"type": "string", "nullable": True}}},
                       "stopping": {"type": "string", "nullable": True},
                       "python": {"type": "object", "properties": {
                           "version": {"type": "string"}, "executable": {"type": "string"},
                           "abi": {"type": "string"},
                           "built_for": {"type": "array", "items": {"type": "string"}},
                           "compiled_loaded": {"type": "array", "items": {"type": "string"}},
                           "compiled_failed": {"type": "object", "additionalProperties": {"type": "string"}},
                           "problem": {"type": "string", "nullable": True}}},
                   }},
        "Service": {"type": "object", "required": ["name", "registrations"], "properties": {
            "name": {"type": "string"},
            "maintenance": {"type": "string", "nullable": True},
            "registered": {"type": "boolean"},
            "error": {"type": "string", "nullable": True},
            "registrations": {"type": "array", "items": {"type": "object", "properties": {
                "port": {"type": "integer"}, "protocol": {"type": "string"}, "address": {"type": "string"},
                "present": {"type": "boolean"}, "ready": {"type": "boolean"},
                "maintenance": {"type": "string", "nullable": True},
                "check": {"type": "object", "nullable": True}}}}}},
    }},
}
