"""An independent HL7 v2 peer for tests/hl7.rs, built on the `hl7` package (python-hl7): sends
orders with its MLLP client, parses the answers with its parser, and runs its asyncio MLLP server
as the trust's results receiver. Every answer is printed as one JSON line.

    hl7_peer.py send HOST PORT [--encoding ENC] < message   (segments one a line)
    hl7_peer.py parse [--encoding ENC] < frame
    hl7_peer.py receive [--reply AA|AE|AR]...               (prints LISTENING <port> first)
"""

import asyncio
import json
import sys

import hl7
import hl7.client
import hl7.mllp


def unframe(data):
    return data.strip(b"\x0b\x1c\r\n")


def value(msg, segment, n, f, r=1, c=1, s=1):
    """Field f of the n-th segment named `segment`, unescaped; '' when absent. Uses the parser's
    own tree walk (extract_field), which follows HL7's numbering."""
    try:
        v = msg.extract_field(segment, n, f, r, c, s)
    except (KeyError, IndexError):
        return ""
    return msg.unescape(str(v)) if v else ""


def count(msg, segment):
    try:
        return len(msg.segments(segment))
    except KeyError:
        return 0


def describe(msg):
    """What a test needs to know of a message, as plain data."""
    out = {
        "type": value(msg, "MSH", 1, 9) + "^" + value(msg, "MSH", 1, 9, 1, 2),
        "control_id": value(msg, "MSH", 1, 10),
        "version": value(msg, "MSH", 1, 12),
        "charset": value(msg, "MSH", 1, 18),
        "segments": [str(s[0]) for s in msg],
    }
    out["msa"] = [value(msg, "MSA", 1, i) for i in (1, 2, 3)] if count(msg, "MSA") else None
    modern = out["version"] in ("2.5", "2.5.1")
    out["err"] = []
    for n in range(1, count(msg, "ERR") + 1):
        if modern:
            out["err"].append({
                "segment": value(msg, "ERR", n, 2, 1, 1),
                "field": value(msg, "ERR", n, 2, 1, 3),
                "code": value(msg, "ERR", n, 3, 1, 1),
                "severity": value(msg, "ERR", n, 4),
                "text": value(msg, "ERR", n, 8),
            })
        else:
            out["err"].append({
                "segment": value(msg, "ERR", n, 1, 1, 1),
                "field": value(msg, "ERR", n, 1, 1, 3),
                "code": value(msg, "ERR", n, 1, 1, 4, 1),
                "severity": "",
                "text": value(msg, "ERR", n, 1, 1, 4, 2),
            })
    if count(msg, "PID"):
        out["pid3"] = value(msg, "PID", 1, 3)
        out["pid3_type"] = value(msg, "PID", 1, 3, 1, 5)
        out["family"] = value(msg, "PID", 1, 5)
        out["given"] = value(msg, "PID", 1, 5, 1, 2)
        out["dob"] = value(msg, "PID", 1, 7)
    out["orc_status"] = value(msg, "ORC", 1, 5) if count(msg, "ORC") else ""
    out["obr"] = [
        {
            "placer": value(msg, "OBR", n, 2),
            "filler": value(msg, "OBR", n, 3),
            "test": value(msg, "OBR", n, 4),
            "local": value(msg, "OBR", n, 4, 1, 4),
            "collected": value(msg, "OBR", n, 7),
            "status": value(msg, "OBR", n, 25),
        }
        for n in range(1, count(msg, "OBR") + 1)
    ]
    out["obx"] = [
        {
            "type": value(msg, "OBX", n, 2),
            "code": value(msg, "OBX", n, 3),
            "value": value(msg, "OBX", n, 5),
            "units": value(msg, "OBX", n, 6),
            "range": value(msg, "OBX", n, 7),
            "flag": value(msg, "OBX", n, 8),
            "status": value(msg, "OBX", n, 11),
            "producer": value(msg, "OBX", n, 15),
        }
        for n in range(1, count(msg, "OBX") + 1)
    ]
    out["nte"] = [value(msg, "NTE", n, 3) for n in range(1, count(msg, "NTE") + 1)]
    return out


def send(host, port, encoding):
    text = sys.stdin.buffer.read().replace(b"\r\n", b"\n").strip(b"\n").replace(b"\n", b"\r")
    with hl7.client.MLLPClient(host, int(port), encoding=encoding) as client:
        answer = client.send_message(text)
        # The client reads once; an answer may arrive in more than one piece.
        while not answer.endswith(b"\x1c\r"):
            more = client.socket.recv(4096)
            if not more:
                break
            answer += more
    print(json.dumps(describe(hl7.parse(unframe(answer).decode(encoding)))))


def parse(encoding):
    data = sys.stdin.buffer.read()
    print(json.dumps(describe(hl7.parse(unframe(data).decode(encoding)))))


async def receive(replies):
    """Answers each result message with the next reply code (the last one repeats)."""
    state = {"n": 0}

    async def on_client(reader, writer):
        try:
            while not writer.is_closing():
                msg = await reader.readmessage()
                code = replies[min(state["n"], len(replies) - 1)]
                state["n"] += 1
                info = describe(msg)
                info["answered"] = code
                print(json.dumps(info), flush=True)
                writer.writemessage(msg.create_ack(ack_code=code))
                await writer.drain()
        except asyncio.IncompleteReadError:
            pass
        finally:
            writer.close()

    server = await hl7.mllp.start_hl7_server(on_client, "127.0.0.1", 0, encoding="utf-8")
    port = server.sockets[0].getsockname()[1]
    print(f"LISTENING {port}", flush=True)
    async with server:
        await server.serve_forever()


def main(argv):
    if argv[1] == "send":
        encoding = argv[5] if len(argv) > 5 and argv[4] == "--encoding" else "utf-8"
        send(argv[2], argv[3], encoding)
    elif argv[1] == "parse":
        encoding = argv[3] if len(argv) > 3 and argv[2] == "--encoding" else "utf-8"
        parse(encoding)
    elif argv[1] == "receive":
        replies = [argv[i + 1] for i in range(2, len(argv) - 1) if argv[i] == "--reply"] or ["AA"]
        asyncio.run(receive(replies))
    else:
        sys.exit(f"unknown command {argv[1]}")


if __name__ == "__main__":
    main(sys.argv)
