"""Reads and checks rendered Kubernetes manifests and compose files for
tests/tests/deploy.rs (which makes the assertions).

  manifests.py json FILE              the YAML documents of FILE as a JSON list
  manifests.py crds FILE SCHEMA_DIR   validate every custom resource in FILE
                                      against SCHEMA_DIR/<kind>-<group>-<version>.json
  manifests.py compose FILE SCHEMA    validate a compose file (JSON Schema draft 7)

`crds` and `compose` print a JSON object {"checked": [...], "errors": [...]}
and exit 0 either way: the test decides.
"""
import json
import pathlib
import sys

import jsonschema
import yaml


def documents(path):
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


def is_builtin(group):
    # Core ("v1"), the unqualified built-in groups (apps, batch, policy, ...)
    # and the *.k8s.io ones are kubernetes-validate's business.
    return "." not in group or group.endswith(".k8s.io")


def crds(path, schema_dir):
    checked, errors = [], []
    for doc in documents(path):
        api = doc.get("apiVersion", "")
        group, _, version = api.rpartition("/")
        if is_builtin(group):
            continue
        name = f"{doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
        schema_file = pathlib.Path(schema_dir) / f"{doc.get('kind', '').lower()}-{group}-{version}.json"
        if not schema_file.is_file():
            errors.append(f"{name}: no schema {schema_file.name} for {api}")
            continue
        schema = json.loads(schema_file.read_text())
        validator = jsonschema.Draft7Validator(schema)
        for e in validator.iter_errors(doc):
            where = "/".join(str(p) for p in e.absolute_path)
            errors.append(f"{name}: {where}: {e.message}")
        checked.append(name)
    return {"checked": checked, "errors": errors}


def compose(path, schema_path):
    doc = documents(path)[0]
    schema = json.loads(pathlib.Path(schema_path).read_text())
    # The schema names draft 7 in a spelling jsonschema does not map.
    validator = jsonschema.Draft7Validator(schema)
    errors = []
    for e in validator.iter_errors(doc):
        where = "/".join(str(p) for p in e.absolute_path)
        errors.append(f"{where}: {e.message}")
    return {"checked": sorted(doc.get("services", {})), "errors": errors}


def main(argv):
    if len(argv) >= 2 and argv[0] == "json":
        out = documents(argv[1])
    elif len(argv) >= 3 and argv[0] == "crds":
        out = crds(argv[1], argv[2])
    elif len(argv) >= 3 and argv[0] == "compose":
        out = compose(argv[1], argv[2])
    else:
        sys.exit(__doc__)
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main(sys.argv[1:])
