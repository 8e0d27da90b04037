"""Parse Prometheus text exposition from stdin with the Prometheus
project's own Python parser; print every sample as a JSON line
{"family", "type", "name", "labels", "value"}. Exit 1 on a parse error."""
import json
import sys

from prometheus_client.parser import text_string_to_metric_families


def main() -> int:
    text = sys.stdin.read()
    try:
        families = list(text_string_to_metric_families(text))
    except Exception as e:  # the parser's own error: the text is not valid
        print(f"parse error: {e}", file=sys.stderr)
        return 1
    for fam in families:
        for s in fam.samples:
            print(json.dumps({
                "family": fam.name,
                "type": fam.type,
                "name": s.name,
                "labels": s.labels,
                "value": s.value,
            }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
