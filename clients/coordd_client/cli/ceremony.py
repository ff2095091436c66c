"""coordctl ceremony contribute | transcript.

`contribute` is what a contributor runs and leaves running: it joins, shows a live status
line while waiting (position, queue length, estimated wait, who is contributing), and for
each circuit in turn downloads the latest contribution (resumable, BLAKE2b-512 checked),
runs the contribution command with entropy from the OS, uploads (resuming after a dropped
connection from the committed offset) and prints the signed receipt. Ctrl-C leaves cleanly.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import secrets
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from google.protobuf import duration_pb2, field_mask_pb2, timestamp_pb2

from coordd_client import contributions as transfers
from coordd_client import transcript as transcript_check
from coordd_client.cli import ceremony_manage
from coordd_client.cli.common import Context, emit, enum_word, resource_name
from coordd_client.client import resume_stream
from coordd_client.errors import AlreadyExists, CoorddError
from coordd_client.v1 import ceremony_pb2 as pb

CHUNK = 256 * 1024
UNVERIFIED_NOTE = "; WARNING: no real verifier checked the proofs (verifier none)"
DEFAULT_CMD = "snarkjs zkey contribute {in} {out} --name={name} -e={entropy}"


def _status(value: int) -> str:
    return enum_word(pb.ParticipantStatus, value)


def _ceremony_name(text: str) -> str:
    return resource_name("ceremonies", text)


def register(sub: Any) -> None:
    cer = sub.add_parser("ceremony", help="trusted-setup ceremonies").add_subparsers(
        dest="ceremony_command", required=True
    )
    contribute = cer.add_parser("contribute", help="join and contribute to every circuit in turn")
    contribute.add_argument("ceremony", help="ceremonies/{id} or the id")
    contribute.add_argument(
        "--contribute-cmd",
        default=None,
        help="placeholders {in} {out} {entropy} {name}; default when snarkjs is on PATH: " + DEFAULT_CMD,
    )
    contribute.add_argument(
        "--workdir", default=None, help="where downloads and contributions go (kept for resume)"
    )
    contribute.add_argument(
        "--public-key", help="the coordinator key you trust; default: pinned on first use"
    )
    contribute.set_defaults(func=_contribute)
    create = cer.add_parser("create", help="(coordinator) create a ceremony")
    create.add_argument("--title", required=True)
    create.add_argument("--prefix", required=True, help="short unique slug")
    create.add_argument("--description", default="")
    create.add_argument("--start-in", type=float, default=0, help="seconds from now (default: now)")
    create.add_argument("--duration", type=float, default=86400, help="seconds it stays open")
    create.add_argument("--turn-timeout", type=float, default=600, help="FIXED seconds per turn")
    create.add_argument(
        "--dynamic", type=int, metavar="PERCENT", help="DYNAMIC turns: average x (1 + PERCENT/100)"
    )
    create.add_argument("--start-window", type=float, default=60)
    create.add_argument("--penalty", type=float, default=60)
    create.add_argument(
        "--verifier",
        default="",
        help="a verifier the daemon declares, e.g. snarkjs (the default), or 'none' (unverified)",
    )
    create.add_argument(
        "--verifier-cmd", default="", help="e.g. 'snarkjs zkey verify {r1cs} {ptau} {zkey}' (admin)"
    )
    create.add_argument("--upload-retries", type=int, help="damaged uploads resent per turn (default 2)")
    create.set_defaults(func=_create)
    add = cer.add_parser(
        "add-circuit", help="(coordinator) add a circuit with its genesis zkey and artifacts"
    )
    add.add_argument("ceremony")
    add.add_argument("--name", required=True)
    add.add_argument("--genesis", required=True, help="the index-0 zkey")
    add.add_argument("--r1cs", help="the circuit's r1cs (snarkjs verification needs it)")
    add.add_argument("--ptau", help="the final powers of tau (snarkjs verification needs it)")
    add.set_defaults(func=_add_circuit)
    update = cer.add_parser("update", help="(coordinator) change a SCHEDULED ceremony, e.g. start it now")
    update.add_argument("ceremony")
    update.add_argument("--title")
    update.add_argument("--start-in", type=float, help="seconds from now (0: open at once)")
    update.add_argument("--end-in", type=float, help="seconds from now")
    update.set_defaults(func=_update)
    close = cer.add_parser("close", help="(coordinator) stop new turns")
    close.add_argument("ceremony")
    close.set_defaults(func=_close)
    fin = cer.add_parser("finalize", help="(coordinator) apply a beacon to every circuit and finalize")
    fin.add_argument("ceremony")
    fin.add_argument("--beacon", required=True, help="beacon hash, hex")
    fin.add_argument("--iterations", type=int, default=10, help="beacon iterations exponent")
    fin.add_argument(
        "--beacon-cmd",
        default="snarkjs zkey beacon {in} {out} {beacon} {iterations} -n=Final",
        help="placeholders {in} {out} {beacon} {iterations}",
    )
    fin.add_argument("--workdir", default=None)
    fin.set_defaults(func=_finalize)
    tr = cer.add_parser(
        "transcript", help="the public transcript; --verify checks every receipt and hash chain"
    )
    tr.add_argument("ceremony")
    tr.add_argument("--verify", action="store_true")
    tr.add_argument("--key-id", help="pin the coordinator key id you trust")
    tr.add_argument(
        "--public-key", help="the coordinator key you trust (hex, base64 or a file); default: the pinned one"
    )
    ceremony_manage.register(cer)
    tr.set_defaults(func=_transcript)


class _Contributor:
    def __init__(self, ctx: Context, args: argparse.Namespace) -> None:
        self.ctx = ctx
        self.public_key = args.public_key
        self.ceremony = _ceremony_name(args.ceremony)
        command = args.contribute_cmd
        if command is None and shutil.which("snarkjs"):
            command = DEFAULT_CMD
        self.command = command
        self.workdir = Path(args.workdir or Path.cwd() / f".coordctl-{self.ceremony.replace('/', '-')}")
        self.stub = ctx.client.ceremony
        self.receipts: list[dict[str, Any]] = []
        self.last_line = ""
        self.coordinator_key = b""
        self.turns_taken: set[tuple[str, str]] = set()

    # -- output ---------------------------------------------------------------------------

    def event(self, text: str, **data: Any) -> None:
        if self.ctx.as_json:
            print(json.dumps({"event": text, **data}, sort_keys=True, default=str), flush=True)
        else:
            self._clear()
            print(text + "".join(f" {k}={v}" for k, v in data.items()), flush=True)

    def status_line(self, text: str) -> None:
        """One line rewritten in place on a terminal; a new line (only on change) otherwise."""
        if self.ctx.as_json or text == self.last_line:
            return
        self.last_line = text
        if sys.stdout.isatty():
            print("\r\033[K" + text, end="", flush=True)
        else:
            print(text, flush=True)

    def _clear(self) -> None:
        if sys.stdout.isatty() and self.last_line:
            print("\r\033[K", end="")
            self.last_line = ""

    def progress(self, label: str, done: int, total: int) -> None:
        if total and not self.ctx.as_json:
            width = 30
            filled = int(width * done / total)
            bar = "#" * filled + "-" * (width - filled)
            self.status_line(f"{label} [{bar}] {done * 100 // total}% ({done}/{total} bytes)")

    # -- the run --------------------------------------------------------------------------

    def run(self) -> int:
        if not self.command:
            print("error: snarkjs is not on PATH; give --contribute-cmd", file=sys.stderr)
            return 2
        self.workdir.mkdir(parents=True, exist_ok=True)
        # Pinned (trust on first use): receipts are checked against the key first trusted.
        self.coordinator_key = ceremony_manage.coordinator_key(self.ctx, self.public_key)[0]
        try:
            me = self.stub.JoinCeremony(pb.JoinCeremonyRequest(ceremony=self.ceremony)).participant
            self.event("joined", participant=me.name)
        except AlreadyExists:
            me = self.stub.GetMyParticipation(
                pb.GetMyParticipationRequest(ceremony=self.ceremony)
            ).participant
            self.event("already joined; resuming", participant=me.name, status=_status(me.status))
        try:
            return self.follow_queue()
        except KeyboardInterrupt:
            self._clear()
            try:
                self.stub.LeaveCeremony(pb.LeaveCeremonyRequest(ceremony=self.ceremony), timeout=10)
                self.event("left the ceremony")
            except CoorddError as exc:
                self.event("could not leave cleanly", error=exc.message)
            return 130

    def follow_queue(self) -> int:
        """Watches the queue (re-opened if the daemon or a proxy drops it) until DONE."""

        def reconnecting(error: CoorddError, delay: float) -> None:
            self.event("connection lost; reconnecting", error=error.message, retry_in_s=round(delay, 2))

        stream = resume_stream(
            lambda: self.stub.WatchQueue(pb.WatchQueueRequest(ceremony=self.ceremony), timeout=None),
            attempts=None,
            on_resume=reconnecting,
        )
        for message in stream:
            participant = message.participant
            if participant.status == pb.PARTICIPANT_STATUS_DONE:
                self._clear()
                self.event("done", receipts=len(self.receipts))
                return 0
            if participant.status == pb.PARTICIPANT_STATUS_READY:
                # Messages sent while a turn ran still say READY for that turn (the
                # queue behind us changed); a new turn has a new start deadline.
                turn = (participant.circuit, participant.deadline.ToJsonString())
                if turn not in self.turns_taken:
                    self.turns_taken.add(turn)
                    self.take_turn(participant.circuit)
                continue
            self.status_line(self.describe(message))
        # The stream ended without DONE (e.g. the ceremony closed): ask once more.
        me = self.stub.GetMyParticipation(pb.GetMyParticipationRequest(ceremony=self.ceremony)).participant
        if me.status == pb.PARTICIPANT_STATUS_DONE:
            self.event("done", receipts=len(self.receipts))
            return 0
        self.event("stream ended", status=_status(me.status))
        return 1

    @staticmethod
    def describe(message: pb.WatchQueueResponse) -> str:
        status = _status(message.participant.status)
        wait = message.estimated_wait.ToTimedelta()
        current = message.current_contributor or "nobody"
        if message.participant.status == pb.PARTICIPANT_STATUS_WAITING:
            return (
                f"waiting: position {message.position}/{message.queue_length} on "
                f"{message.participant.circuit}, ~{int(wait.total_seconds())}s, contributing now: {current}"
            )
        return f"{status} on {message.participant.circuit or '-'} (contributing now: {current})"

    def take_turn(self, circuit: str) -> None:
        self._clear()
        self.event("my turn", circuit=circuit)
        slug = circuit.replace("/", "-")
        previous = self.workdir / f"{slug}.in.zkey"
        mine = self.workdir / f"{slug}.out.zkey"
        self.download(circuit, previous)
        self.stub.ReportProgress(
            pb.ReportProgressRequest(ceremony=self.ceremony, step=pb.CONTRIBUTION_STEP_COMPUTING)
        )
        entropy = secrets.token_hex(32)  # from the OS CSPRNG, never a constant
        argv = [
            a.replace("{in}", str(previous))
            .replace("{out}", str(mine))
            .replace("{entropy}", entropy)
            .replace("{name}", self.ctx.config.get("email", "coordctl"))
            for a in shlex.split(self.command)
        ]
        started = time.monotonic()
        proc = subprocess.run(argv, capture_output=True, text=True)
        if proc.returncode != 0:
            raise SystemExit(f"contribution command failed ({proc.returncode}): {proc.stderr[-500:]}")
        self.event("computed", seconds=round(time.monotonic() - started, 2))
        self.stub.ReportProgress(
            pb.ReportProgressRequest(ceremony=self.ceremony, step=pb.CONTRIBUTION_STEP_UPLOADING)
        )
        reply = self.upload(circuit, mine)
        contribution = reply.contribution
        state = enum_word(pb.ContributionState, contribution.state)
        try:
            # Checked at once against the coordinator key: a receipt that does not verify is worthless.
            receipt = transcript_check.verify_contribution(self.coordinator_key, contribution)
        except transcript_check.ReceiptError as exc:
            raise SystemExit(f"the coordinator's receipt does not verify: {exc}") from None
        self.receipts.append(receipt)
        self.event(
            "contribution " + state,
            contribution=contribution.name,
            hash=contribution.hash_hex[:32] + "…",
            receipt=receipt,
            receipt_key=contribution.receipt.key_id,
        )
        for path in (previous, mine):
            path.unlink(missing_ok=True)

    def download(self, circuit: str, path: Path) -> None:
        try:
            transfers.download(
                self.ctx.client, circuit, path, progress=lambda d, t: self.progress("downloading", d, t)
            )
        except transfers.TransferError as exc:
            raise SystemExit(str(exc)) from None
        self._clear()
        self.event("downloaded", bytes=path.stat().st_size)

    def upload(self, circuit: str, path: Path) -> pb.UploadContributionResponse:
        try:
            reply = transfers.upload(
                self.ctx.client, circuit, path, progress=lambda d, t: self.progress("uploading", d, t)
            )
        except transfers.TransferError as exc:
            raise SystemExit(str(exc)) from None
        self._clear()
        return reply


def _contribute(ctx: Context, args: argparse.Namespace) -> int:
    return _Contributor(ctx, args).run()


def _duration(seconds: float) -> duration_pb2.Duration:
    out = duration_pb2.Duration()
    out.FromNanoseconds(int(seconds * 1e9))
    return out


def _timestamp(seconds_from_now: float) -> timestamp_pb2.Timestamp:
    out = timestamp_pb2.Timestamp()
    out.FromDatetime(datetime.now(UTC) + timedelta(seconds=seconds_from_now))
    return out


def _create(ctx: Context, args: argparse.Namespace) -> int:
    timeout = pb.TimeoutConfig(start_window=_duration(args.start_window), penalty=_duration(args.penalty))
    if args.dynamic is not None:
        timeout.policy = pb.TIMEOUT_POLICY_DYNAMIC
        timeout.dynamic_threshold_percent = args.dynamic
        timeout.dynamic_floor.CopyFrom(_duration(args.turn_timeout))
    else:
        timeout.policy = pb.TIMEOUT_POLICY_FIXED
        timeout.fixed_timeout.CopyFrom(_duration(args.turn_timeout))
    ceremony = ctx.client.ceremony.CreateCeremony(
        pb.CreateCeremonyRequest(
            title=args.title,
            description=args.description,
            prefix=args.prefix,
            start_time=_timestamp(args.start_in),
            end_time=_timestamp(args.start_in + args.duration),
            timeout=timeout,
            verifier=pb.Verifier(command=args.verifier_cmd, name=args.verifier),
            upload_retries=args.upload_retries,
        )
    ).ceremony
    emit(ctx, ceremony, f"{ceremony.name} created ({enum_word(pb.CeremonyState, ceremony.state)})")
    return 0


def _file_messages(header: Any, path: Path, message: Any, **header_fields: Any) -> Iterator[Any]:
    data_size = path.stat().st_size
    digest = hashlib.blake2b(path.read_bytes(), digest_size=64).digest()
    yield message(header=header(size_bytes=data_size, blake2b_512=digest, **header_fields))
    with open(path, "rb") as fh:
        offset = 0
        while block := fh.read(CHUNK):
            yield message(chunk=pb.UploadChunk(offset=offset, data=block))
            offset += len(block)


def _add_circuit(ctx: Context, args: argparse.Namespace) -> int:
    stub = ctx.client.ceremony
    circuit = stub.AddCircuit(
        pb.AddCircuitRequest(parent=_ceremony_name(args.ceremony), display_name=args.name)
    ).circuit
    for kind, path in ((pb.ARTIFACT_KIND_R1CS, args.r1cs), (pb.ARTIFACT_KIND_PTAU, args.ptau)):
        if path:
            messages = list(
                _file_messages(pb.UploadHeader, Path(path), pb.UploadArtifactRequest, circuit=circuit.name)
            )
            messages[0].kind = kind
            stub.UploadArtifact(iter(messages), timeout=None)
    reply = stub.UploadGenesis(
        _file_messages(pb.UploadHeader, Path(args.genesis), pb.UploadGenesisRequest, circuit=circuit.name),
        timeout=None,
    )
    state = enum_word(pb.ContributionState, reply.contribution.state)
    emit(ctx, {"circuit": circuit.name, "genesis": state}, f"{circuit.name} added; genesis {state}")
    return 0 if reply.contribution.state == pb.CONTRIBUTION_STATE_VALID else 1


def _update(ctx: Context, args: argparse.Namespace) -> int:
    ceremony = pb.Ceremony(name=_ceremony_name(args.ceremony))
    mask = []
    if args.title is not None:
        ceremony.title = args.title
        mask.append("title")
    if args.start_in is not None:
        ceremony.start_time.CopyFrom(_timestamp(args.start_in))
        mask.append("start_time")
    if args.end_in is not None:
        ceremony.end_time.CopyFrom(_timestamp(args.end_in))
        mask.append("end_time")
    if not mask:
        print("error: nothing to update", file=sys.stderr)
        return 2
    updated = ctx.client.ceremony.UpdateCeremony(
        pb.UpdateCeremonyRequest(ceremony=ceremony, update_mask=field_mask_pb2.FieldMask(paths=mask))
    )
    emit(ctx, updated.ceremony, f"{updated.ceremony.name} updated ({', '.join(mask)})")
    return 0


def _close(ctx: Context, args: argparse.Namespace) -> int:
    ceremony = ctx.client.ceremony.CloseCeremony(
        pb.CloseCeremonyRequest(name=_ceremony_name(args.ceremony))
    ).ceremony
    emit(ctx, ceremony, f"{ceremony.name} {enum_word(pb.CeremonyState, ceremony.state)}")
    return 0


def _finalize(ctx: Context, args: argparse.Namespace) -> int:
    """For each circuit: record the beacon, download the last valid zkey, apply the beacon
    with the command, upload the final contribution (verified like any other); then finalize."""
    stub = ctx.client.ceremony
    name = _ceremony_name(args.ceremony)
    workdir = Path(args.workdir or Path.cwd() / f".coordctl-final-{name.replace('/', '-')}")
    workdir.mkdir(parents=True, exist_ok=True)
    circuits = stub.ListCircuits(pb.ListCircuitsRequest(parent=name)).circuits
    for circuit in circuits:
        stub.FinalizeCircuit(
            pb.FinalizeCircuitRequest(
                circuit=circuit.name, beacon_hash_hex=args.beacon, beacon_iterations_exponent=args.iterations
            )
        )
        slug = circuit.name.replace("/", "-")
        previous, final = workdir / f"{slug}.last.zkey", workdir / f"{slug}.final.zkey"
        with open(previous, "wb") as fh:
            for part in stub.DownloadContribution(
                pb.DownloadContributionRequest(circuit=circuit.name), timeout=None
            ):
                fh.write(part.data)
        argv = [
            a.replace("{in}", str(previous))
            .replace("{out}", str(final))
            .replace("{beacon}", args.beacon)
            .replace("{iterations}", str(args.iterations))
            for a in shlex.split(args.beacon_cmd)
        ]
        proc = subprocess.run(argv, capture_output=True, text=True)
        if proc.returncode != 0:
            print(f"error: beacon command failed: {proc.stderr[-500:]}", file=sys.stderr)
            return 1
        reply = stub.UploadContribution(
            _file_messages(pb.UploadHeader, final, pb.UploadContributionRequest, circuit=circuit.name),
            timeout=None,
        )
        state = enum_word(pb.ContributionState, reply.contribution.state)
        if not ctx.as_json:
            print(f"{circuit.name}: final contribution {state}")
        if reply.contribution.state != pb.CONTRIBUTION_STATE_VALID:
            print(
                f"error: final contribution rejected: {reply.contribution.verifier_output[-500:]}",
                file=sys.stderr,
            )
            return 1
    ceremony = stub.FinalizeCeremony(pb.FinalizeCeremonyRequest(name=name)).ceremony
    emit(ctx, ceremony, f"{ceremony.name} {enum_word(pb.CeremonyState, ceremony.state)}")
    return 0


def _transcript(ctx: Context, args: argparse.Namespace) -> int:
    reply = ctx.client.ceremony.GetTranscript(pb.GetTranscriptRequest(ceremony=_ceremony_name(args.ceremony)))
    if not args.verify:
        emit(
            ctx,
            reply,
            f"{reply.ceremony.name}: {sum(len(c.contributions) for c in reply.circuits)} contributions",
        )
        return 0
    try:
        public_key, source = ceremony_manage.coordinator_key(ctx, args.public_key)
    except ceremony_manage.KeyMismatch as exc:
        emit(ctx, {"verified": False, "problems": [str(exc.code)]}, str(exc.code))
        return 1
    key_id = transcript_check.key_id(public_key)
    if args.key_id and key_id != args.key_id:
        emit(
            ctx,
            {"verified": False, "problems": [f"coordinator key is {key_id}, pinned {args.key_id}"]},
            f"coordinator key {key_id} is not the pinned {args.key_id}",
        )
        return 1
    report = transcript_check.verify_transcript(reply, public_key)
    summary = {
        "verified": report.ok,
        "unverified_contributions": report.unverified,
        "key_source": source,
        "key_id": key_id,
        "receipts": report.receipts,
        "valid": report.valid,
        "invalid": report.invalid,
        "heads": report.heads,
        "problems": report.problems,
    }
    human = (
        f"transcript verified: {report.receipts} receipts ({report.valid} valid, {report.invalid} invalid), "
        f"key {key_id} ({source})"
        + ("; WARNING: no real verifier checked them (verifier none)" if report.unverified else "")
        if report.ok
        else "transcript does NOT verify:\n  " + "\n  ".join(report.problems)
    )
    emit(ctx, summary, human)
    return 0 if report.ok else 1
