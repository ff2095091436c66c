"""Real verification by default: verifiers the operator declares (name, command template, time
limit) that coordinators choose by name; "snarkjs" declared out of the box when it is found;
"none" only when chosen explicitly, and then marked unverified in GetCeremony, each
contribution, and the transcript."""

from __future__ import annotations

import uuid

import grpc
import pytest

from coordd.config import ConfigError, load_settings
from coordd.domain.ceremony.verifier import contribution_hash
from coordd_client.transcript import verify_transcript
from coordd_client.v1 import ceremony_pb2 as pb
from tests.ceremony.e2e_ceremony.helpers import Ceremonies, dur, stamp
from tests.helpers import rpc_error
from tests.support.server import ServerHandle, bearer

# Valid when the file mentions "genesis" (every honest contribution here extends the
# genesis bytes); a contribution of other bytes is an invalid proof, not a transport fault.
EXTENDS_GENESIS = "sh -c 'grep -q genesis \"$0\"' {zkey}"
DECLARED = {"extends-genesis": {"command": EXTENDS_GENESIS, "timeout_s": 30}}


@pytest.fixture
def declared(settings_factory, clock):
    handle = ServerHandle(settings_factory(ceremony_verifiers=DECLARED, snarkjs_path="off"), clock)
    try:
        yield handle
    finally:
        handle.stop()


def _request(server, **verifier) -> pb.CreateCeremonyRequest:
    return pb.CreateCeremonyRequest(
        title="t",
        prefix=f"v-{uuid.uuid4().hex[:8]}",
        start_time=stamp(server, 3600),
        end_time=stamp(server, 7200),
        timeout=pb.TimeoutConfig(policy=pb.TIMEOUT_POLICY_FIXED, fixed_timeout=dur(60)),
        verifier=pb.Verifier(**verifier),
    )


def test_a_ceremony_naming_no_verifier_is_refused_when_the_default_is_not_declared(server):
    cer = Ceremonies(server)
    failure = rpc_error(
        grpc.StatusCode.FAILED_PRECONDITION,
        cer.stub.CreateCeremony,
        _request(server),
        metadata=bearer(cer.coordinator),
    )
    assert failure.reason == "NO_VERIFIER"
    assert "none" in failure.details and "unverified" in failure.details
    listed = cer.stub.ListCeremonies(pb.ListCeremoniesRequest(), metadata=bearer(cer.coordinator))
    assert not listed.ceremonies


def test_verifier_none_is_explicit_and_marked_unverified_everywhere(server):
    cer = Ceremonies(server)
    ceremony, (_circuit,) = cer.open(verifier=pb.Verifier(name="none"))
    assert ceremony.verifier.name == "none" and ceremony.verifier.unverified
    (alice,) = [server.make_user("participant")[1]]
    cer.join(ceremony, alice)
    reply = cer.contribute(ceremony, alice)
    assert reply.contribution.verifier == "none"
    transcript = cer.transcript(ceremony)
    assert transcript.unverified and transcript.ceremony.verifier.unverified
    report = verify_transcript(transcript, transcript.public_key)
    assert report.ok and report.unverified
    assert all(e.verifier == "none" for e in transcript.circuits[0].contributions)


def test_unknown_verifier_names_and_name_with_command_are_invalid(declared):
    cer = Ceremonies(declared)
    failure = rpc_error(
        grpc.StatusCode.INVALID_ARGUMENT,
        cer.stub.CreateCeremony,
        _request(declared, name="groth16-magic"),
        metadata=bearer(cer.coordinator),
    )
    assert failure.reason == "UNKNOWN_VERIFIER"
    assert "extends-genesis" in failure.details and "none" in failure.details
    _, admin = declared.make_user("admin")
    failure = rpc_error(
        grpc.StatusCode.INVALID_ARGUMENT,
        cer.stub.CreateCeremony,
        _request(declared, name="extends-genesis", command="true {zkey}"),
        metadata=bearer(admin),
    )
    assert "verifier.name" in failure.violations


def test_a_coordinator_chooses_a_declared_verifier_by_name_and_it_really_verifies(declared):
    cer = Ceremonies(declared)
    ceremony, (_circuit,) = cer.open(verifier=pb.Verifier(name="extends-genesis"), upload_retries=0)
    assert ceremony.verifier.name == "extends-genesis" and not ceremony.verifier.unverified
    assert ceremony.verifier.timeout.seconds == 30, "the operator's time limit"
    assert ceremony.verifier.command == "", "the template stays on the daemon"
    alice, bob = (declared.make_user("participant")[1] for _ in range(2))
    cer.join(ceremony, alice)
    cer.join(ceremony, bob)
    honest = cer.contribute(ceremony, alice)
    assert honest.contribution.state == pb.CONTRIBUTION_STATE_VALID
    assert honest.contribution.verifier == "extends-genesis"
    forged = cer.contribute(ceremony, bob, payload=b"not a zkey at all" * 10)
    assert forged.contribution.state == pb.CONTRIBUTION_STATE_INVALID
    assert "exit status 1" in forged.contribution.verifier_output
    assert not forged.contribution.transport_fault
    assert not cer.transcript(ceremony).unverified


def test_the_default_verifier_is_the_declared_one(settings_factory, clock):
    settings = settings_factory(ceremony_verifiers=DECLARED, ceremony_default_verifier="extends-genesis")
    handle = ServerHandle(settings, clock)
    try:
        cer = Ceremonies(handle)
        created = cer.stub.CreateCeremony(_request(handle), metadata=bearer(cer.coordinator)).ceremony
        assert created.verifier.name == "extends-genesis" and not created.verifier.unverified
    finally:
        handle.stop()


def test_snarkjs_is_declared_out_of_the_box_when_found(settings_factory, clock, tmp_path):
    fake = tmp_path / "bin" / "snarkjs"
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\nexit 0\n")
    fake.chmod(0o755)
    handle = ServerHandle(settings_factory(snarkjs_path=str(fake)), clock)
    try:
        cer = Ceremonies(handle)
        created = cer.stub.CreateCeremony(_request(handle), metadata=bearer(cer.coordinator)).ceremony
        assert created.verifier.name == "snarkjs" and not created.verifier.unverified
        assert created.verifier.timeout.seconds == 600
    finally:
        handle.stop()


@pytest.mark.parametrize(
    ("verifiers", "problem"),
    [
        ({"Bad Name": {"command": "true"}}, "a name is"),
        ({"none": {"command": "true"}}, "a name is"),
        ({"x": {"command": ""}}, "non-empty command"),
        ({"x": {"command": "true", "timeout_s": 0}}, "timeout_s"),
        ({"x": {"command": "true", "shell": True}}, "unknown keys"),
        ({"x": {"command": "'unclosed"}}, "cannot be parsed"),
    ],
)
def test_bad_verifier_declarations_stop_the_daemon_from_starting(verifiers, problem):
    with pytest.raises(ConfigError) as info:
        load_settings(None, env={}, ceremony_verifiers=verifiers)
    assert problem in str(info.value)


def test_verifiers_are_declared_from_the_environment_as_json():
    settings = load_settings(
        None, env={"COORDD_CEREMONY_VERIFIERS": '{"strict": {"command": "v {zkey}", "timeout_s": 5}}'}
    )
    assert settings.ceremony_verifiers == {"strict": {"command": "v {zkey}", "timeout_s": 5}}
    with pytest.raises(ConfigError):
        load_settings(None, env={"COORDD_CEREMONY_VERIFIERS": "{not json"})
    with pytest.raises(ConfigError):
        load_settings(None, env={}, ceremony_default_verifier="none")


def test_the_contribution_hash_is_the_newest_one_snarkjs_lists():
    # `snarkjs zkey verify` lists contributions newest first, a beacon's with extra lines.
    output = (
        "\x1b[32;22m[INFO]  \x1b[39;1msnarkJS\x1b[0m: contribution #2 Final:\n"
        "\t\tbda430c2 5f9254e9 19ad6517 371b434e\n\t\t359ca0d6 a7ecba23 09662f18 dca96b11\n"
        "\t\t8afebb99 bb738e05 469c0db7 426de7d9\n\t\t1fa92a8d 5a23c665 0e220729 dde514bb\n"
        "[INFO]  snarkJS: Beacon generator: 0102\n[INFO]  snarkJS: -------------------------\n"
        "[INFO]  snarkJS: contribution #1 alice:\n"
        "\t\tc6335d63 b7fa910d 8b88e778 f8c98fad\n\t\t4d38dd35 e6728694 d3d435b7 a4f1973a\n"
        "\t\t00c2c740 a124dcb3 0ddf8c46 58f37036\n\t\tfb0ddb7c fbc4bc17 9e9b3f08 85f831e1\n"
        "[INFO]  snarkJS: ZKey Ok!\n"
    )
    assert contribution_hash(output).startswith("bda430c25f9254e9") and len(contribution_hash(output)) == 128
    assert contribution_hash("[INFO]  snarkJS: ZKey Ok!") == ""
    unreadable = output.replace("bda430c2 5f9254e9", "bda430c2")
    assert contribution_hash(unreadable) == "", "never another contribution's hash"
