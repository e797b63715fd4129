"""schemathesis hooks for tests/schemathesis/run.sh (loaded through SCHEMATHESIS_HOOKS).

The user import endpoint takes JSON lines (`application/x-ndjson`, `application/jsonl`),
which the document describes as a string: it is sent as-is, like `text/plain`.
"""

import schemathesis

schemathesis.serializer.alias("application/x-ndjson", "text/plain")
schemathesis.serializer.alias("application/jsonl", "text/plain")
