"""An OpenAI-compatible chat endpoint served from a producer's engine, so an agent written against
the `openai` client runs unchanged inside a rollout function, every call stitched into one
trajectory: `endpoint.py` (sessions, requests), `stitch.py` (the token-level trajectory),
`template.py` (chat template, tool-call parsing), `http.py` (the server). User view:
docs/agents.md.
"""

from streamrl.producers.agent.endpoint import ChatEndpoint, Session
from streamrl.producers.agent.template import ParsedReply, parse_tool_calls

__all__ = ["ChatEndpoint", "ParsedReply", "Session", "parse_tool_calls"]
