#!/usr/bin/env python3
"""A labaid client in another language, generated from proto/ alone.

Usage: python_client.py BROKER_ADDR PROTO_DIR

Generates Python stubs from the .proto files with grpcio-tools, then, as trust RJ1 and as
whichever lab the request is offered to, takes one request from submission to result with a call
per step while following the trust's event stream, and a second one over the lab's Work stream
(events and tagged actions on one bidirectional stream). Exits non-zero on any mismatch.
"""
import importlib
import os
import queue
import subprocess
import sys
import tempfile
import time


def main() -> int:
    addr, proto_dir = sys.argv[1], sys.argv[2]
    out = tempfile.mkdtemp(prefix="labaid-py-")
    protos = [os.path.join(proto_dir, "labaid", "v1", f) for f in sorted(os.listdir(os.path.join(proto_dir, "labaid", "v1")))]
    subprocess.run(
        [sys.executable, "-m", "grpc_tools.protoc", f"-I{proto_dir}", f"--python_out={out}", f"--grpc_python_out={out}", *protos],
        check=True,
    )
    sys.path.insert(0, out)
    import grpc
    from google.protobuf import timestamp_pb2

    common = importlib.import_module("labaid.v1.common_pb2")
    req = importlib.import_module("labaid.v1.requests_pb2")
    req_grpc = importlib.import_module("labaid.v1.requests_pb2_grpc")
    labs = importlib.import_module("labaid.v1.labs_pb2")
    labs_grpc = importlib.import_module("labaid.v1.labs_pb2_grpc")

    channel = grpc.insecure_channel(addr)
    trust = req_grpc.RequestServiceStub(channel)
    lab_stub = labs_grpc.LabServiceStub(channel)
    as_trust = [("authorization", "Bearer demo:RJ1")]

    collected = timestamp_pb2.Timestamp()
    collected.FromSeconds(int(time.time()) - 15 * 60)
    submitted = trust.SubmitRequest(
        req.SubmitRequestRequest(
            order_number=f"PY-{int(time.time() * 1000)}",
            patient=common.Patient(nhs_number="6541003238"),
            tests=["K", "UE"],
            priority=common.PRIORITY_STAT,
            collected_at=collected,
        ),
        metadata=as_trust,
    ).request
    assert submitted.state == common.REQUEST_STATE_OFFERED, submitted
    as_lab = [("authorization", f"Bearer demo:{submitted.lab}")]
    events = trust.WatchRequestEvents(req.WatchRequestEventsRequest(after_sequence=0), metadata=as_trust)

    lab_stub.AcceptJob(labs.AcceptJobRequest(id=submitted.id), metadata=as_lab)
    lab_stub.ReceiveSample(labs.ReceiveSampleRequest(id=submitted.id), metadata=as_lab)
    lab_stub.PostResults(
        labs.PostResultsRequest(
            id=submitted.id,
            observations=[
                common.Observation(test="K", value="4.4", unit="mmol/L", reference_range="3.5-5.3"),
                common.Observation(test="UE", analyte="UREA", value="5.0", unit="mmol/L", reference_range="2.5-7.8"),
            ],
        ),
        metadata=as_lab,
    )
    states = []
    for event in events:
        if event.request.id != submitted.id:
            continue
        states.append(event.request.state)
        if event.request.state == common.REQUEST_STATE_RESULTED:
            assert len(event.request.results) == 2, event.request
            break
    events.cancel()
    expected = [common.REQUEST_STATE_OFFERED, common.REQUEST_STATE_ACCEPTED, common.REQUEST_STATE_RECEIVED, common.REQUEST_STATE_RESULTED]
    assert states == expected, states
    print(f"python client: request {submitted.id} went {len(states)} states to RESULTED via {submitted.lab}")

    # The second request, worked by its lab over one Work stream: watch first, then each step as
    # a tagged action, sent once the answer to the one before has come back.
    second = trust.SubmitRequest(
        req.SubmitRequestRequest(
            order_number=f"PY-W-{int(time.time() * 1000)}",
            patient=common.Patient(nhs_number="6541003238"),
            tests=["K"],
            priority=common.PRIORITY_URGENT,
            collected_at=collected,
        ),
        metadata=as_trust,
    ).request
    outbox = queue.Queue()

    def outgoing():
        while (message := outbox.get()) is not None:
            yield message

    outbox.put(labs.WorkRequest(watch=labs.WatchOffersRequest(kinds=[labs.JOB_EVENT_KIND_OFFERED])))
    steps = [
        labs.WorkRequest(tag=1, accept=labs.AcceptJobRequest(id=second.id)),
        labs.WorkRequest(tag=2, receive=labs.ReceiveSampleRequest(id=second.id)),
        labs.WorkRequest(
            tag=3,
            post_results=labs.PostResultsRequest(
                id=second.id,
                observations=[common.Observation(test="K", value="4.1", unit="mmol/L", reference_range="3.5-5.3")],
            ),
        ),
    ]
    replies = lab_stub.Work(outgoing(), metadata=[("authorization", f"Bearer demo:{second.lab}")])
    worked = []
    for reply in replies:
        if reply.WhichOneof("item") == "event":
            assert reply.event.kind == labs.JOB_EVENT_KIND_OFFERED, reply
            if reply.event.job.id == second.id and not worked:
                outbox.put(steps[0])
            continue
        answer = reply.result
        assert not answer.HasField("error"), answer
        assert answer.tag == len(worked) + 1, answer
        worked.append(answer.job.state)
        if len(worked) == len(steps):
            break
        outbox.put(steps[len(worked)])
    outbox.put(None)
    replies.cancel()
    assert worked == [common.REQUEST_STATE_ACCEPTED, common.REQUEST_STATE_RECEIVED, common.REQUEST_STATE_RESULTED], worked
    final = trust.GetRequest(req.GetRequestRequest(id=second.id), metadata=as_trust)
    assert final.state == common.REQUEST_STATE_RESULTED and final.results[0].value == "4.1", final
    print(f"python client: request {second.id} worked to RESULTED over a Work stream via {second.lab}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
