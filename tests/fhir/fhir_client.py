#!/usr/bin/env python3
"""An independent FHIR client for labaid-edge's tests (tests/fhir.rs).

Builds every request with the fhir.resources R4B models (the UK Core-style fixtures in
tests/fixtures/fhir/ are loaded into them and changed through them) and parses every answer
with them, so a response that is not valid FHIR fails the test. Lab actions go through the real
labctl. Usage: fhir_client.py SCENARIO [ARG...]; environment: FHIR_BASE, LABCTL, LABAID_ADDR,
FIXTURES, and FHIR_CA for HTTPS, FHIR_PKI (a directory of <name>.pem and <name>.key) for client certificates,
FHIR_CATALOGUE_SYSTEM for the deployment's catalogue code system. Prints one line per check; exits non-zero at the first failure.
"""

import datetime
import http.client
import json
import os
import ssl
import subprocess
import sys
import urllib.parse

from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.capabilitystatement import CapabilityStatement
from fhir.resources.R4B.codeableconcept import CodeableConcept
from fhir.resources.R4B.coding import Coding
from fhir.resources.R4B.diagnosticreport import DiagnosticReport
from fhir.resources.R4B.observation import Observation
from fhir.resources.R4B.operationoutcome import OperationOutcome
from fhir.resources.R4B.patient import Patient
from fhir.resources.R4B.servicerequest import ServiceRequest
from fhir.resources.R4B.specimen import Specimen
from fhir.resources.R4B.task import Task

BASE = os.environ["FHIR_BASE"]
FIXTURES = os.environ.get("FIXTURES", "tests/fixtures/fhir")
NHS = "https://fhir.nhs.uk/Id/nhs-number"
LOINC = "http://loinc.org"
# Demo tokens by default; a broker with configured tokens passes its own.
RJ1 = os.environ.get("FHIR_TOKEN_RJ1", "demo:RJ1")
RJZ = os.environ.get("FHIR_TOKEN_RJZ", "demo:RJZ")
CATALOGUE = os.environ.get("FHIR_CATALOGUE_SYSTEM", "urn:labaid:catalogue")


def check(condition, what):
    if not condition:
        raise AssertionError(what)
    print(f"ok: {what}")


# ---- HTTP: each answer parsed with the R4B model it must be ----


def call(method, path, token=RJ1, body=None, content_type="application/fhir+json", headers=None, client=None):
    """One call; `client` names the certificate (FHIR_PKI/<client>.pem) to present."""
    url = urllib.parse.urlsplit(BASE)
    if url.scheme == "https":
        context = ssl.create_default_context(cafile=os.environ["FHIR_CA"])
        if client:
            pki = os.environ["FHIR_PKI"]
            context.load_cert_chain(f"{pki}/{client}.pem", f"{pki}/{client}.key")
        conn = http.client.HTTPSConnection(url.hostname, url.port, context=context, timeout=30)
    else:
        conn = http.client.HTTPConnection(url.hostname, url.port, timeout=30)
    sent = dict(headers or {})
    if token:
        sent["Authorization"] = f"Bearer {token}"
    if body is not None:
        sent["Content-Type"] = content_type
    if isinstance(body, str):
        body = body.encode()
    conn.request(method, path if path.startswith("/") else "/" + path, body=body, headers=sent)
    response = conn.getresponse()
    text = response.read().decode()
    conn.close()
    return response.status, response, text


def expect(model, method, path, status=200, **kwargs):
    code, response, text = call(method, path, **kwargs)
    check(code == status, f"{method} {path.split('?')[0]} answers {status} (got {code}: {text[:300]})")
    kind = response.getheader("Content-Type", "")
    check(kind.startswith("application/fhir+json"), f"answer is application/fhir+json ({kind})")
    return model.model_validate_json(text), response


def outcome(method, path, status, code, expression=None, **kwargs):
    """A failure: the right status, an OperationOutcome with this issue code and element."""
    got, response, text = call(method, path, **kwargs)
    check(got == status, f"{method} {path.split('?')[0]} refused with {status} (got {got}: {text[:300]})")
    parsed = OperationOutcome.model_validate_json(text)
    issue = parsed.issue[0]
    check(issue.code == code, f"issue code {code} (got {issue.code}: {issue.diagnostics})")
    if expression is not None:
        paths = issue.expression or []
        check(any(expression in p for p in paths), f"issue names {expression} (got {paths})")
    check("Traceback" not in text and "panicked" not in text, "no stack trace in the answer")
    return issue


# ---- building orders from the fixtures, through the models ----


def now_minus(minutes):
    t = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(minutes=minutes)
    return t.replace(microsecond=0).isoformat()


def order_bundle(order_number, collected_minutes_ago=20):
    bundle = Bundle.model_validate_json(open(f"{FIXTURES}/transaction-potassium.json").read())
    bundle.entry[1].resource.identifier[0].value = order_number
    bundle.entry[2].resource.collection.collectedDateTime = now_minus(collected_minutes_ago)
    return bundle


def contained_request(order_number):
    request = ServiceRequest.model_validate_json(open(f"{FIXTURES}/servicerequest-contained.json").read())
    request.identifier[0].value = order_number
    request.contained[1].collection.collectedDateTime = now_minus(30)
    return request


def as_json(resource):
    return resource.model_dump_json(exclude_none=True)


def post_order(bundle, status="201 Created", **kwargs):
    answer, _ = expect(Bundle, "POST", "/", body=as_json(bundle), **kwargs)
    check(answer.type == "transaction-response", "a transaction-response Bundle")
    check(len(answer.entry) == 4, "one answer per entry")
    locations = [e.response.location for e in answer.entry]
    check(all(e.response.status == status for e in answer.entry), f"every entry {status}")
    kinds = [l.split("/")[0] for l in locations]
    check(kinds == ["Patient", "ServiceRequest", "Specimen", "Task"], f"locations in entry order {kinds}")
    ids = {l.split("/")[1] for l in locations}
    check(len(ids) == 1, "every resource of the order carries the request's id")
    check(all("/_history/" in l for l in locations), "locations are versioned")
    return ids.pop()


def labctl(token, *args):
    env = dict(os.environ, LABAID_TOKEN=token)
    done = subprocess.run([os.environ["LABCTL"], *args], env=env, capture_output=True, text=True)
    check(done.returncode == 0, f"labctl {' '.join(args[:2])} ({done.stderr.strip()})")


def task(id, token=RJ1, **kwargs):
    parsed, response = expect(Task, "GET", f"/Task/{id}", token=token, **kwargs)
    return parsed, response.getheader("ETag")


# ---- scenarios ----


def life_cycle():
    meta, _ = expect(CapabilityStatement, "GET", "/metadata", token=None)
    check(meta.fhirVersion == "4.0.1", "CapabilityStatement for FHIR 4.0.1")
    kinds = {r.type for r in meta.rest[0].resource}
    check(kinds == {"Task", "ServiceRequest", "Patient", "Specimen", "DiagnosticReport", "Observation"}, f"resources {kinds}")
    check(meta.rest[0].interaction[0].code == "transaction", "transaction listed")

    # One Bundle, posted twice: built twice, its collection times (to the second) could differ.
    order = order_bundle("GST-ED-000123")
    id = post_order(order)
    again = post_order(order, status="200 OK")
    check(again == id, "the same Bundle again returns the original request")

    t, _ = task(id)
    check(t.status == "requested", f"Task requested (got {t.status})")
    check(t.intent == "order" and t.priority == "stat", "Task intent order, priority stat")
    check(t.businessStatus.coding[0].code == "offered", f"businessStatus offered ({t.businessStatus.text})")
    lab = t.owner.identifier.value
    check(lab, f"offered to {lab}")

    labctl(f"demo:{lab}", "jobs", "accept", id)
    t, _ = task(id)
    check(t.status == "accepted", f"Task accepted after the lab accepted (got {t.status})")
    labctl(f"demo:{lab}", "jobs", "receive", id)
    t, _ = task(id)
    check(t.status == "in-progress", f"Task in-progress once the sample arrived (got {t.status})")
    labctl(f"demo:{lab}", "jobs", "result", id, "--obs", "K=7.1mmol/L;ref=3.5-5.3")
    t, _ = task(id)
    check(t.status == "completed", f"Task completed with results (got {t.status})")
    check(t.output[0].valueReference.reference == f"DiagnosticReport/{id}", "Task.output names the report")

    sr, _ = expect(ServiceRequest, "GET", f"/ServiceRequest/{id}")
    check(sr.status == "completed" and sr.priority == "stat", "ServiceRequest completed, stat")
    codes = {(c.system, c.code) for c in sr.code.coding}
    check((LOINC, "2823-3") in codes, "ServiceRequest.code carries the LOINC code")
    check(sr.identifier[0].value == "GST-ED-000123", "placer identifier is the order number")
    patient, _ = expect(Patient, "GET", f"/Patient/{id}")
    check(patient.identifier[0].system == NHS and patient.identifier[0].value == "9434765919", "Patient's NHS number")
    specimen, _ = expect(Specimen, "GET", f"/Specimen/{id}")
    check(specimen.collection.collectedDateTime is not None, "Specimen collection time")

    bundle, _ = expect(Bundle, "GET", f"/DiagnosticReport?based-on=ServiceRequest/{id}&_include=DiagnosticReport:result")
    check(bundle.type == "searchset" and len(bundle.entry) == 2, "the report and its observation")
    report = bundle.entry[0].resource
    check(isinstance(report, DiagnosticReport) and report.status == "final", "DiagnosticReport final")
    check(bundle.entry[1].search.mode == "include", "the Observation is included")
    obs = bundle.entry[1].resource
    check(isinstance(obs, Observation) and obs.status == "final", "Observation final")
    check(float(obs.valueQuantity.value) == 7.1, f"potassium 7.1 (got {obs.valueQuantity.value})")
    check(obs.valueQuantity.system == "http://unitsofmeasure.org" and obs.valueQuantity.code == "mmol/L", "UCUM mmol/L")
    check(obs.interpretation[0].coding[0].code == "HH", "critical high: HH")
    check(float(obs.referenceRange[0].low.value) == 3.5 and float(obs.referenceRange[0].high.value) == 5.3, "reference range 3.5-5.3")
    check(report.result[0].reference == f"Observation/{obs.id}", "the report lists its observation")
    single, _ = expect(Observation, "GET", f"/Observation/{obs.id}")
    check(single.id == obs.id, "the Observation reads by id")
    single, _ = expect(DiagnosticReport, "GET", f"/DiagnosticReport/{id}")
    check(single.basedOn[0].reference == f"ServiceRequest/{id}", "the report reads by id")

    # A second order, the simpler way: a ServiceRequest with its Patient and Specimen contained.
    request = contained_request("GST-WARD-000456")
    created, response = expect(ServiceRequest, "POST", "/ServiceRequest", status=201, body=as_json(request))
    second = created.id
    check(response.getheader("Location", "").find(f"/ServiceRequest/{second}/_history/") > 0, "Location of the new ServiceRequest")
    check({c.code for c in created.code.coding if c.system == LOINC} == {"24362-6", "1988-5"}, "U&E and CRP by LOINC")
    replay, _ = expect(ServiceRequest, "POST", "/ServiceRequest", status=200, body=as_json(request))
    check(replay.id == second, "the same ServiceRequest again returns the original")

    # Search: by status and last update, and in pages.
    found, _ = expect(Bundle, "GET", "/Task?status=completed")
    check([e.resource.id for e in found.entry] == [id], "status=completed finds the resulted Task")
    later = (datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    found, _ = expect(Bundle, "GET", f"/Task?_lastUpdated=gt{later}")
    check(not found.entry, "_lastUpdated in the future finds nothing")
    found, _ = expect(Bundle, "GET", "/Task?_lastUpdated=gt2024-01-01&status=requested,completed")
    check({e.resource.id for e in found.entry} == {id, second}, "two statuses at once, updated since 2024")
    page, _ = expect(Bundle, "GET", "/Task?_count=1")
    seen = [e.resource.id for e in page.entry]
    while any(l.relation == "next" for l in page.link):
        url = urllib.parse.urlsplit(next(l.url for l in page.link if l.relation == "next"))
        page, _ = expect(Bundle, "GET", f"{url.path}?{url.query}")
        seen += [e.resource.id for e in page.entry]
    check(seen == [second, id], f"_count=1 pages through both Tasks newest first ({seen})")

    # Cancel with a conditional patch: a stale ETag is refused, the current one cancels.
    _, etag = task(second)
    patch = json.dumps([
        {"op": "replace", "path": "/status", "value": "cancelled"},
        {"op": "add", "path": "/statusReason", "value": {"text": "patient discharged"}},
    ])
    kind = "application/json-patch+json"
    outcome("PATCH", f"/Task/{second}", 412, "conflict", body=patch, content_type=kind, headers={"If-Match": 'W/"1"'})
    t, _ = expect(Task, "PATCH", f"/Task/{second}", body=patch, content_type=kind, headers={"If-Match": etag})
    check(t.status == "cancelled", "the patch cancelled the Task")
    check("patient discharged" in (t.statusReason.text or ""), "with the reason given")
    outcome("PATCH", f"/Task/{second}", 409, "business-rule", body=patch, content_type=kind)
    found, _ = expect(Bundle, "GET", "/Task?status=cancelled")
    check([e.resource.id for e in found.entry] == [second], "status=cancelled finds it")
    print(f"ids {id} {second}")


def need_to_know(id):
    outcome("GET", f"/Task/{id}", 404, "not-found", token="demo:RJZ")
    outcome("GET", f"/ServiceRequest/{id}", 404, "not-found", token="demo:RJZ")
    outcome("GET", f"/Patient/{id}", 404, "not-found", token="demo:RJZ")
    found, _ = expect(Bundle, "GET", f"/DiagnosticReport?based-on=ServiceRequest/{id}", token="demo:RJZ")
    check(not found.entry, "another trust's report search finds nothing")
    found, _ = expect(Bundle, "GET", "/Task", token="demo:RJZ")
    check(not found.entry, "another trust lists none of RJ1's Tasks")
    outcome("GET", f"/Task/{id}", 401, "login", token=None)
    outcome("GET", f"/Task/{id}", 401, "login", token="not-a-token")
    outcome("GET", f"/Task/{id}", 403, "forbidden", token="demo:R1H")
    outcome("GET", "/Task/not-a-uuid", 404, "not-found")


def bad_inputs():
    before, _ = expect(Bundle, "GET", "/Task")

    def refused(bundle, status, code, expression):
        outcome("POST", "/", status, code, expression, body=as_json(bundle))

    b = order_bundle("BAD-1")
    b.entry[0].resource.identifier = None
    refused(b, 422, "required", "Bundle.entry[0].resource.identifier")

    b = order_bundle("BAD-2")
    b.entry[0].resource.identifier[0].system = "https://example.org/Id/nhs-number"
    issue = outcome("POST", "/", 422, "value", "Bundle.entry[0].resource.identifier", body=as_json(b))
    check("https://fhir.nhs.uk/Id/nhs-number" in issue.diagnostics, "the wrong system is explained")

    b = order_bundle("BAD-3")
    b.entry[0].resource.identifier[0].value = "9434765918"
    issue = outcome("POST", "/", 422, "value", "Bundle.entry[0].resource.identifier[0].value", body=as_json(b))
    check("check digit" in issue.diagnostics and "9434765918" not in issue.diagnostics, "check digit named, number not echoed")

    b = order_bundle("BAD-4")
    b.entry[1].resource.code.coding[1].code = "99999-9"
    issue = outcome("POST", "/", 422, "code-invalid", "Bundle.entry[1].resource.code.coding[1]", body=as_json(b))
    check("99999-9" in issue.diagnostics, "the unknown code is named")

    b = order_bundle("BAD-5")
    b.type = "batch"
    outcome("POST", "/", 400, "invalid", "Bundle.type", body=as_json(b))
    b.type = "collection"
    outcome("POST", "/", 400, "invalid", "Bundle.type", body=as_json(b))

    outcome("POST", "/", 400, "structure", body='{"resourceType": "Bundle", "type": "transaction", ')
    outcome("POST", "/", 400, "structure", body="<Bundle xmlns='http://hl7.org/fhir'/>")
    outcome("POST", "/", 415, "not-supported", body="<Bundle/>", content_type="application/fhir+xml")
    outcome("POST", "/", 413, "too-costly", body=" " * (10 * 1024 * 1024))

    b = order_bundle("BAD-6")
    b.entry[2].resource.collection.collectedDateTime = (
        datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(hours=2)
    ).replace(microsecond=0).isoformat()
    outcome("POST", "/", 422, "invalid", "Bundle.entry[2].resource.collection.collectedDateTime", body=as_json(b))

    b = order_bundle("BAD-7")
    b.entry[1].resource.subject.reference = "urn:uuid:00000000-0000-0000-0000-000000000000"
    outcome("POST", "/", 422, "value", "Bundle.entry[1].resource.subject", body=as_json(b))

    b = order_bundle("BAD-8")
    b.entry[3].resource.intent = "proposal"
    outcome("POST", "/", 422, "value", "Bundle.entry[3].resource.intent", body=as_json(b))

    request = contained_request("BAD-9")
    request.code.coding[0].code = "0000-0"
    outcome("POST", "/ServiceRequest", 422, "code-invalid", "ServiceRequest.code.coding[0]", body=as_json(request))
    request = contained_request("BAD-10")
    request.contained = [request.contained[1]]
    outcome("POST", "/ServiceRequest", 422, "required", "ServiceRequest.contained", body=as_json(request))

    outcome("POST", "/", 401, "login", token=None, body=as_json(order_bundle("BAD-11")))
    outcome("GET", "/Task?colour=blue", 400, "invalid", "colour")
    outcome("GET", "/Task?status=on-hold", 400, "invalid", "status")
    outcome("GET", "/Medication/1", 404, "not-supported")

    after, _ = expect(Bundle, "GET", "/Task")
    check(len(after.entry or []) == len(before.entry or []), "no bad input created a request")

    # A conflicting resubmission: the same placer identifier with other tests.
    post_order(order_bundle("GST-ED-000777"))
    b = order_bundle("GST-ED-000777")
    b.entry[1].resource.code.coding = [Coding(system=LOINC, code="1988-5")]
    outcome("POST", "/", 409, "duplicate", body=as_json(b))


def unavailable(id):
    outcome("GET", f"/Task/{id}", 503, "transient")
    outcome("POST", "/", 503, "transient", body=as_json(order_bundle("DOWN-1")))
    meta, _ = expect(CapabilityStatement, "GET", "/metadata", token=None)
    check(meta.status == "active", "metadata still served")


def tls_broker():
    """Over a broker that takes configured tokens on TLS: each caller's token is forwarded."""
    id = post_order(order_bundle("GST-TLS-1"))
    t, _ = task(id)
    check(t.status == "requested", "RJ1 reads its Task through the edge")
    outcome("GET", f"/Task/{id}", 404, "not-found", token=RJZ)
    outcome("GET", f"/Task/{id}", 401, "login", token="demo:RJ1")
    print(f"ids {id}")


def single_org(id):
    """An edge holding RJ1's certificate: RJ1's token works, another trust's is refused."""
    t, _ = task(id)
    check(t.id == id, "RJ1 reads its Task through RJ1's edge")
    outcome("GET", f"/Task/{id}", 401, "login", token=RJZ)


def cert_callers():
    """Callers by client certificate: the edge calls for each with its own credential, naming
    the certificate's organisation, and the broker decides what each may see."""
    meta, _ = expect(CapabilityStatement, "GET", "/metadata", token=None)
    security = meta.rest[0].security
    check(security.service[0].coding[0].code == "Certificates", "certificates are listed as a security service")
    ordering = next(r for r in meta.rest[0].resource if r.type == "ServiceRequest")
    check(CATALOGUE in ordering.documentation, f"the catalogue's system {CATALOGUE} is stated")

    as_rj1 = dict(token=None, client="RJ1")
    id = post_order(order_bundle("GST-CERT-1"), **as_rj1)
    t, _ = task(id, **as_rj1)
    check(t.status == "requested", "RJ1's certificate reads RJ1's Task")
    sr, _ = expect(ServiceRequest, "GET", f"/ServiceRequest/{id}", **as_rj1)
    systems = [c.system for c in sr.code.coding]
    check(systems[0] == CATALOGUE, f"the test is coded first in the deployment's catalogue system ({systems})")

    # The catalogue's own code, in the deployment's system, orders; the default system is foreign.
    request = contained_request("GST-CERT-2")
    request.code = CodeableConcept(coding=[Coding(system=CATALOGUE, code="K")])
    ordered, _ = expect(ServiceRequest, "POST", "/ServiceRequest", status=201, body=as_json(request), **as_rj1)
    check([c.code for c in ordered.code.coding][0] == "K", "ordered by the catalogue code")
    request = contained_request("GST-CERT-3")
    request.code = CodeableConcept(coding=[Coding(system="urn:labaid:catalogue", code="K")])
    outcome("POST", "/ServiceRequest", 422, "code-invalid", body=as_json(request), **as_rj1)

    # Another trust's certificate: not found, as over gRPC. An organisation the edge may not
    # speak for: forbidden. A certificate naming no organisation, both credentials, or none: login.
    outcome("GET", f"/Task/{id}", 404, "not-found", token=None, client="RJZ")
    outcome("GET", f"/Task/{id}", 403, "forbidden", token=None, client="R1H")
    outcome("GET", f"/Task/{id}", 401, "login", token=None, client="edge-gstt-fhir")
    outcome("GET", f"/Task/{id}", 401, "login", token=RJ1, client="RJ1")
    outcome("GET", f"/Task/{id}", 401, "login", token=None)
    # A bearer token still works on the same listener, forwarded as before.
    t, _ = task(id)
    check(t.id == id, "RJ1's token reads the Task too")
    print(f"ids {id} {ordered.id}")


def metadata():
    meta, _ = expect(CapabilityStatement, "GET", "/metadata", token=None)
    check(meta.implementation.url.startswith("https://"), f"served over HTTPS ({meta.implementation.url})")


if __name__ == "__main__":
    scenario, args = sys.argv[1], sys.argv[2:]
    {
        "life_cycle": life_cycle,
        "need_to_know": need_to_know,
        "bad_inputs": bad_inputs,
        "unavailable": unavailable,
        "metadata": metadata,
        "tls_broker": tls_broker,
        "single_org": single_org,
        "cert_callers": cert_callers,
    }[scenario](*args)
