"""An independent HL7 v2 peer for tests/hl7.rs, built on the `hl7` package (python-hl7): sends
orders with its MLLP client, parses the answers with its parser, and runs its asyncio MLLP server
as the trust's results receiver. Every answer is printed as one JSON line.

    hl7_peer.py send HOST PORT [--encoding ENC] [--tls-ca CA] < message   (segments one a line)
    hl7_peer.py parse [--encoding ENC] < frame
    hl7_peer.py receive [--port N] [--reply AA|AE|AR]... [--tls-cert C --tls-key K]
        (prints LISTENING <port> first; the replies are used in turn, the last repeating)
"""

import argparse
import asyncio
import json
import ssl
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


def send(args):
    text = sys.stdin.buffer.read().replace(b"\r\n", b"\n").strip(b"\n").replace(b"\n", b"\r")
    with hl7.client.MLLPClient(args.host, args.port, encoding=args.encoding) as client:
        if args.tls_ca:
            context = ssl.create_default_context(cafile=args.tls_ca)
            if args.tls_cert:
                context.load_cert_chain(args.tls_cert, args.tls_key)
            client.socket = context.wrap_socket(client.socket, server_hostname=args.tls_name)
        answer = client.send_message(text)
        # The client reads once; an answer may arrive in more than one piece.
        while not answer.endswith(b"\x1c\r"):
            more = client.socket.recv(4096)
            if not more:
                break
            answer += more
    print(json.dumps(describe(hl7.parse(unframe(answer).decode(args.encoding)))))


def parse(args):
    data = sys.stdin.buffer.read()
    print(json.dumps(describe(hl7.parse(unframe(data).decode(args.encoding)))))


async def receive(args):
    """Answers each result message with the next reply code (the last one repeats)."""
    replies = args.reply or ["AA"]
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
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    context = None
    if args.tls_cert:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(args.tls_cert, args.tls_key)
    server = await hl7.mllp.start_hl7_server(
        on_client, "127.0.0.1", args.port, encoding="utf-8", ssl=context
    )
    port = server.sockets[0].getsockname()[1]
    print(f"LISTENING {port}", flush=True)
    async with server:
        await server.serve_forever()


def main():
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("send")
    p.add_argument("host")
    p.add_argument("port", type=int)
    p.add_argument("--encoding", default="utf-8")
    p.add_argument("--tls-ca")
    p.add_argument("--tls-name", default="localhost")
    p.add_argument("--tls-cert")
    p.add_argument("--tls-key")
    p = sub.add_parser("parse")
    p.add_argument("--encoding", default="utf-8")
    p = sub.add_parser("receive")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--reply", action="append", choices=["AA", "AE", "AR"])
    p.add_argument("--tls-cert")
    p.add_argument("--tls-key")
    args = parser.parse_args()
    if args.command == "send":
        send(args)
    elif args.command == "parse":
        parse(args)
    else:
        asyncio.run(receive(args))


if __name__ == "__main__":
    main()
