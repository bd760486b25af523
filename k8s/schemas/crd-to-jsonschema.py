#!/usr/bin/env python3
"""Convert a Kubernetes CustomResourceDefinition into a plain JSON Schema.

Reads a CRD YAML (a file path, an http(s) URL, or '-' for stdin), takes the
openAPIV3Schema of one of spec.versions[] (the served+storage version unless
--version is given) and writes draft-07 JSON Schema usable with Python
`jsonschema` (or kubeconform/check-jsonschema) to
<OUTDIR>/<kind-lowercase>-<group>-<version>.json.

Conversions (everything else, x-kubernetes-* included, is kept as is):
  * "$schema": draft-07 at the top.
  * strict fields, like `kubectl --validate=strict`: every object schema that
    has "properties", no "additionalProperties" and no
    "x-kubernetes-preserve-unknown-fields: true" gets
    "additionalProperties": false. Only structural positions are touched
    (properties / items / additionalProperties), never allOf/anyOf/oneOf/not
    branches, where it would reject valid input.
  * "x-kubernetes-int-or-string: true" without "type"/"anyOf" gets
    "anyOf": [{"type": "integer"}, {"type": "string"}].
  * "nullable: true" (OpenAPI) adds "null" to "type" (and to "enum").

Needs python3 and PyYAML.

Example:
  python3 k8s/schemas/crd-to-jsonschema.py \\
    https://raw.githubusercontent.com/kedacore/keda/v2.18.3/config/crd/bases/keda.sh_scaledobjects.yaml \\
    -o k8s/schemas
"""

import argparse
import json
import os
import re
import sys
import urllib.request

import yaml

SCHEMA_URI = "http://json-schema.org/draft-07/schema#"


class CrdLoader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2-like scalars: only true/false are booleans,
    and no timestamps, so enum values such as `on`/`yes` stay strings."""


CrdLoader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers
            if tag not in ("tag:yaml.org,2002:bool", "tag:yaml.org,2002:timestamp")]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
CrdLoader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
    list("tTfF"))


def read_text(src):
    if src == "-":
        return sys.stdin.read()
    if src.startswith(("http://", "https://")):
        with urllib.request.urlopen(src) as resp:
            return resp.read().decode("utf-8")
    with open(src, encoding="utf-8") as fh:
        return fh.read()


def convert(node, strict=True):
    """Convert one schema node in place, recursing into subschemas.

    strict=False inside allOf/anyOf/oneOf/not branches: there
    additionalProperties: false would only see the branch's own properties
    and reject valid objects, so it is never added."""
    if not isinstance(node, dict):
        return node

    # int-or-string
    if node.get("x-kubernetes-int-or-string") is True and "type" not in node \
            and not any(k in node for k in ("anyOf", "oneOf")):
        node["anyOf"] = [{"type": "integer"}, {"type": "string"}]

    # OpenAPI nullable
    if node.get("nullable") is True:
        t = node.get("type")
        if isinstance(t, str):
            node["type"] = [t, "null"]
        elif isinstance(t, list) and "null" not in t:
            t.append("null")
        if isinstance(node.get("enum"), list) and None not in node["enum"]:
            node["enum"].append(None)

    # unknown fields rejected at this level, as kubectl --validate=strict does
    if strict and "properties" in node and "additionalProperties" not in node \
            and node.get("x-kubernetes-preserve-unknown-fields") is not True:
        node["additionalProperties"] = False

    # structural children
    for sub in (node.get("properties") or {}).values():
        convert(sub, strict)
    items = node.get("items")
    for sub in (items if isinstance(items, list) else [items]):
        convert(sub, strict)
    if isinstance(node.get("additionalProperties"), dict):
        convert(node["additionalProperties"], strict)

    # value-validation branches
    for key in ("allOf", "anyOf", "oneOf"):
        for sub in node.get(key) or []:
            convert(sub, strict=False)
    convert(node.get("not"), strict=False)
    return node


def pick_version(crd, wanted):
    versions = crd["spec"]["versions"]
    if wanted:
        for v in versions:
            if v["name"] == wanted:
                return v
        sys.exit("version %s not in CRD (has: %s)" % (wanted, ", ".join(v["name"] for v in versions)))
    for v in versions:
        if v.get("served") and v.get("storage"):
            return v
    for v in versions:
        if v.get("served"):
            return v
    return versions[0]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("crd", help="CRD YAML: path, http(s) URL or - for stdin")
    ap.add_argument("-o", "--outdir", default=".", help="output folder (default .)")
    ap.add_argument("--version", help="spec.versions[].name to use (default: served+storage)")
    args = ap.parse_args()

    docs = [d for d in yaml.load_all(read_text(args.crd), Loader=CrdLoader)
            if isinstance(d, dict) and d.get("kind") == "CustomResourceDefinition"]
    if not docs:
        sys.exit("no CustomResourceDefinition in %s" % args.crd)
    for crd in docs:
        group = crd["spec"]["group"]
        kind = crd["spec"]["names"]["kind"]
        ver = pick_version(crd, args.version)
        schema = ver["schema"]["openAPIV3Schema"]
        convert(schema)
        out = {"$schema": SCHEMA_URI}
        out.update(schema)
        path = os.path.join(args.outdir, "%s-%s-%s.json" % (kind.lower(), group, ver["name"]))
        with open(path, "w", encoding="utf-8") as fh:
            json.dump(out, fh, indent=2, ensure_ascii=False)
            fh.write("\n")
        print(path)


if __name__ == "__main__":
    main()
