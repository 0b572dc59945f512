"""Parses an OpenMetrics text exposition (stdin) with prometheus_client's strict OpenMetrics
parser and prints its families as one JSON object:
{"NAME": {"type": TYPE, "unit": UNIT, "samples": [[SAMPLE_NAME, {LABELS}, VALUE], ...]}}.
Exits 1 with the parser's message on anything the format does not allow."""

import json
import math
import sys

from prometheus_client.openmetrics.parser import text_string_to_metric_families

try:
    families = {}
    for f in text_string_to_metric_families(sys.stdin.read()):
        samples = [[s.name, s.labels, None if math.isinf(s.value) else s.value] for s in f.samples]
        families[f.name] = {"type": f.type, "unit": f.unit, "samples": samples}
except Exception as e:  # the parser raises ValueError and others for what it refuses
    print(f"not valid OpenMetrics: {e}", file=sys.stderr)
    sys.exit(1)
print(json.dumps(families))
