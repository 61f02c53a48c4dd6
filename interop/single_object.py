"""Avro single-object records through fastavro, as a Python service does it
(fastavro has no single-object reader or writer of its own: the header is
C3 01 + fingerprint(to_parsing_canonical_form(schema), "CRC-64-AVRO")).
Every <in>/<Record>.<n>.avro is decoded (header and fingerprint checked),
printed as "<file> TAB <record as JSON>", and encoded again into
<out>/<same name>: what a Python service publishes.
Run by tests/it/interop.rs: python3 single_object.py <schemas dir> <in> <out>"""

import io
import json
import os
import sys

from fastavro import schemaless_reader, schemaless_writer
from fastavro.schema import fingerprint, parse_schema, to_parsing_canonical_form

schemas_dir, in_dir, out_dir = sys.argv[1:4]
by_fingerprint = {}
for name in os.listdir(schemas_dir):
    if name.endswith(".avsc"):
        with open(os.path.join(schemas_dir, name)) as f:
            schema = parse_schema(json.load(f))
        fp = bytes.fromhex(fingerprint(to_parsing_canonical_form(schema), "CRC-64-AVRO"))
        by_fingerprint[fp] = schema

for name in sorted(os.listdir(in_dir)):
    if not name.endswith(".avro"):
        continue
    with open(os.path.join(in_dir, name), "rb") as f:
        data = f.read()
    if data[:2] != b"\xc3\x01":
        sys.exit(f"{name}: no single-object header")
    schema = by_fingerprint.get(data[2:10])
    if schema is None:
        sys.exit(f"{name}: fingerprint {data[2:10].hex()} matches no schema in {schemas_dir}")
    value = schemaless_reader(io.BytesIO(data[10:]), schema)
    print(f"{name}\t{json.dumps(value, default=str, sort_keys=True)}")
    out = io.BytesIO()
    out.write(b"\xc3\x01" + data[2:10])
    schemaless_writer(out, schema, value)
    with open(os.path.join(out_dir, name), "wb") as f:
        f.write(out.getvalue())
