"""The single-object fingerprint of each schema file as fastavro computes it:
fingerprint(to_parsing_canonical_form(schema), "CRC-64-AVRO"), the 8 bytes a
Python service puts after C3 01. One line per file:
<record name> TAB <fingerprint, hex, header byte order> TAB <parsing form>.
Run by scripts/interop (python3 fingerprints.py <files...>)."""

import json
import sys

from fastavro.schema import fingerprint, parse_schema, to_parsing_canonical_form

for path in sys.argv[1:]:
    with open(path) as f:
        raw = json.load(f)
    form = to_parsing_canonical_form(parse_schema(raw))
    print(f"{raw['name']}\t{fingerprint(form, 'CRC-64-AVRO')}\t{form}")
