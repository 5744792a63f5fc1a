#!/usr/bin/env python3
"""Validate Ward's FHIR audit export: NDJSON on stdin, one AuditEvent (or Bundle) per line.

Each line is parsed by the `fhir.resources` models (types, cardinalities, required elements,
unknown elements, primitive patterns), then checked for what those models do not enforce:
ele-1 (no empty or null values), control characters in strings, literal references, Ward's
own guarantees, and the constraints of every BALP profile a resource claims.

    cargo run -q --example dump | .venv/bin/python validate.py [--ward-actions EVENT_RS]

Which FHIR release depends on the installed fhir.resources:
  - 7.x / 8.x: `fhir.resources.R4B` (FHIR 4.3.0);
  - 6.1.x and older: `fhir.resources` itself is R4 (FHIR 4.0.1) (needs pydantic < 2).

Exits 1 on the first bad line (after reporting all of them), prints the count otherwise.
"""
import argparse
import json
import re
import sys

import fhir.resources

VERSION = fhir.resources.__version__
MAJOR = int(VERSION.split(".")[0])
if MAJOR >= 7:
    from fhir.resources.R4B.auditevent import AuditEvent
    from fhir.resources.R4B.bundle import Bundle

    RELEASE = "R4B (4.3.0)"

    def parse(model, obj):
        return model.model_validate(obj)

else:
    from fhir.resources.auditevent import AuditEvent
    from fhir.resources.bundle import Bundle

    RELEASE = "R4 (4.0.1)" if VERSION.startswith(("6.0", "6.1")) else "R4B (4.3.0)"

    def parse(model, obj):
        return model.parse_obj(obj)


WARD_ACTION_SYSTEM = "urn:ward:audit-action"
DCM = "http://dicom.nema.org/resources/ontology/DCM"
DISCLOSURE_SOURCE = (
    "https://profiles.ihe.net/ITI/BALP/StructureDefinition/"
    "IHE.BasicAudit.PrivacyDisclosure.Source"
)
INSTANT_MS_UTC = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")
LITERAL_REFERENCE = re.compile(r"^[A-Z][A-Za-z]+/[A-Za-z0-9\-.]{1,64}$")
ID = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")


def walk(value, path, problems):
    """ele-1 and FHIR string rules, everywhere."""
    if value is None:
        problems.append(f"{path}: null")
    elif isinstance(value, str):
        if not value.strip():
            problems.append(f"{path}: empty string")
        bad = [c for c in value if ord(c) < 32 and c not in "\t\r\n"]
        if bad:
            problems.append(f"{path}: control characters {bad!r}")
    elif isinstance(value, list):
        if not value:
            problems.append(f"{path}: empty array")
        for i, item in enumerate(value):
            walk(item, f"{path}[{i}]", problems)
    elif isinstance(value, dict):
        if not value:
            problems.append(f"{path}: empty object")
        for key, item in value.items():
            if key == "reference" and not LITERAL_REFERENCE.match(item or ""):
                problems.append(f"{path}.reference: not a literal reference: {item!r}")
            walk(item, f"{path}.{key}", problems)


def has_coding(codings, system, code):
    return any(c.get("system") == system and c.get("code") == code for c in codings or [])


def agent_code(agent):
    return [(c.get("system"), c.get("code")) for c in agent.get("type", {}).get("coding", [])]


def check_disclosure_source(event, problems):
    """IHE.BasicAudit.PrivacyDisclosure.Source (BALP 1.1.x), as far as it can be checked
    without the IG package: fixed values, slices, cardinalities, val-audit-source."""
    p = "PrivacyDisclosure.Source"
    t = event.get("type", {})
    if (t.get("system"), t.get("code")) != (DCM, "110106"):
        problems.append(f"{p}: type must be DCM#110106")
    if event.get("action") != "R":
        problems.append(f"{p}: action must be R")
    if not has_coding(
        event.get("subtype"), "http://terminology.hl7.org/CodeSystem/iso-21089-lifecycle", "disclose"
    ):
        problems.append(f"{p}: subtype must include iso-21089-lifecycle#disclose")
    if "outcome" not in event:
        problems.append(f"{p}: outcome 1..1")
    agents = event.get("agent", [])
    sources = [a for a in agents if (DCM, "110153") in agent_code(a)]
    recipients = [a for a in agents if (DCM, "110152") in agent_code(a)]
    if len(sources) != 1 or len(recipients) != 1:
        problems.append(f"{p}: needs exactly one source and one recipient agent")
    for a in sources + recipients:
        if "who" not in a or "network" not in a:
            problems.append(f"{p}: source/recipient agents need who and network")
    for a in sources:
        if a.get("who") != event.get("source", {}).get("observer"):
            problems.append(f"{p}: val-audit-source: source agent who != source.observer")
    entities = event.get("entity", [])
    if len(entities) < 2:
        problems.append(f"{p}: entity 2..*")
    patients = [
        e
        for e in entities
        if (e.get("type", {}).get("code"), e.get("role", {}).get("code")) == ("1", "1")
    ]
    if len(patients) != 1:
        problems.append(f"{p}: exactly one patient entity")
    for e in patients:
        what = e.get("what", {})
        if not (what.get("reference", "").startswith("Patient/") or what.get("type") == "Patient"):
            problems.append(f"{p}: patient entity what must be Reference(Patient)")


PROFILE_CHECKS = {DISCLOSURE_SOURCE: check_disclosure_source}


def check_audit_event(event, problems, seen_actions):
    parse(AuditEvent, event)
    walk(event, "AuditEvent", problems)
    if not ID.match(event.get("id", "")) or not event["id"].startswith("ward-"):
        problems.append(f"id {event.get('id')!r}")
    if not INSTANT_MS_UTC.match(event.get("recorded", "")):
        problems.append(f"recorded {event.get('recorded')!r} is not UTC with milliseconds")
    for i, agent in enumerate(event.get("agent", [])):
        if not isinstance(agent.get("requestor"), bool):
            problems.append(f"agent[{i}].requestor missing")
    if not any(a.get("requestor") is True for a in event.get("agent", [])):
        problems.append("no requesting agent")
    if "observer" not in event.get("source", {}):
        problems.append("source.observer missing")
    ward = [c["code"] for c in event.get("subtype", []) if c.get("system") == WARD_ACTION_SYSTEM]
    if len(ward) != 1:
        problems.append("exactly one urn:ward:audit-action subtype expected")
    seen_actions.update(ward)
    for profile in event.get("meta", {}).get("profile", []):
        check = PROFILE_CHECKS.get(profile)
        if check is None:
            problems.append(f"claims profile {profile} that this script cannot check")
        else:
            check(event, problems)


def ward_actions(path):
    source = open(path, encoding="utf-8").read()
    block = re.search(r"pub const ACTIONS[^=]*=\s*&\[(.*?)\];", source, re.S)
    if not block:
        sys.exit(f"no ACTIONS list in {path}")
    return re.findall(r'"([^"]+)"', block.group(1))


def main():
    args = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    args.add_argument(
        "--ward-actions",
        metavar="EVENT_RS",
        help="Ward's src/audit/event.rs: fail unless every action in ACTIONS was seen",
    )
    opts = args.parse_args()

    failures = 0
    resources = 0
    seen_actions = set()
    lines = sys.stdin.read().split("\n")
    if lines and lines[-1] == "":
        lines.pop()  # the trailing newline
    else:
        print("input does not end in a newline", file=sys.stderr)
        failures += 1
    for number, line in enumerate(lines, 1):
        problems = []
        try:
            obj = json.loads(line)
            kind = obj.get("resourceType")
            if kind == "AuditEvent":
                check_audit_event(obj, problems, seen_actions)
                resources += 1
            elif kind == "Bundle":
                parse(Bundle, obj)
                walk({k: v for k, v in obj.items() if k != "entry"}, "Bundle", problems)
                urls = [e.get("fullUrl") for e in obj.get("entry", [])]
                if len(set(urls)) != len(urls) or not all(
                    re.match(r"^urn:uuid:[0-9a-f-]{36}$", u or "") for u in urls
                ):
                    problems.append("Bundle.entry.fullUrl must be unique urn:uuid values")
                for i, entry in enumerate(obj.get("entry", [])):
                    entry_problems = []
                    check_audit_event(entry["resource"], entry_problems, seen_actions)
                    problems += [f"entry[{i}]: {p}" for p in entry_problems]
                    resources += 1
            else:
                problems.append(f"unexpected resourceType {kind!r}")
        except Exception as e:  # a validation error, bad JSON, a missing key
            problems.append(f"{type(e).__name__}: {e}")
        if problems:
            failures += 1
            for p in problems:
                print(f"line {number}: {p}", file=sys.stderr)

    if opts.ward_actions:
        missing = sorted(set(ward_actions(opts.ward_actions)) - seen_actions)
        if missing:
            failures += 1
            print(f"actions with no sample: {', '.join(missing)}", file=sys.stderr)

    if failures or not resources:
        what = f"{failures} bad line(s) of {len(lines)}" if resources else "no resources read"
        print(f"FAILED: {what}", file=sys.stderr)
        sys.exit(1)
    print(
        f"{resources} AuditEvent resources in {len(lines)} line(s) valid as FHIR {RELEASE}"
        f" (fhir.resources {VERSION}); {len(seen_actions)} distinct Ward actions"
    )


if __name__ == "__main__":
    main()
