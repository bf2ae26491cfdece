"""The trainer signs what it publishes (OpenSSF model signing): `model.sig` beside the files, the subject digest
in the manifest, the digest pin unchanged; a key that cannot sign stops the run before training."""

from __future__ import annotations

import io
import json
import pathlib
from collections.abc import Callable

import pytest

from loraops_trainer import testing
from loraops_trainer.config import TrainConfig, parse_config
from loraops_trainer.errors import EXIT_CONFIG
from loraops_trainer.manifest import hash_directory, verify_directory
from loraops_trainer.progress import Reporter
from loraops_trainer.signing import SIGNATURE_FILE, SignatureError, verify_folder
from tests.signing_support import KeyPair, assert_no_key_material, make_keypair

from .conftest import Outcome

pytestmark = [pytest.mark.trainer, pytest.mark.adapters]


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> KeyPair:
    return make_keypair(tmp_path_factory.mktemp("signing-keys"))


@pytest.fixture(scope="module")
def signed(
    tiny_model: pathlib.Path,
    datasets: dict[str, pathlib.Path],
    keys: KeyPair,
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[pathlib.Path, dict[str, object], str]:
    from loraops_trainer.train import train

    output = tmp_path_factory.mktemp("signed") / "adapter"
    config = testing.train_config(
        tiny_model, datasets["completion"], output, max_steps=4, signing={"keyPath": str(keys.private)}
    )
    stream = io.StringIO()
    result = train(parse_config(TrainConfig, config, "t"), reporter=Reporter(stream=stream))
    return output, result, stream.getvalue()


def test_the_published_adapter_carries_a_signature_that_verifies(
    signed: tuple[pathlib.Path, dict[str, object], str], keys: KeyPair
) -> None:
    output, result, _ = signed
    assert (output / SIGNATURE_FILE).is_file()
    facts = verify_folder(output, public_key=keys.public)
    manifest = json.loads((output / "loraops-manifest.json").read_text())
    assert manifest["signature"]["subjectDigest"] == facts.subject_digest == result["signature_digest"]
    assert manifest["signature"]["signer"] == facts.signer and manifest["signature"]["file"] == SIGNATURE_FILE
    # The signature covers exactly the files of the digest rule, and the digest rule leaves the signature out.
    assert set(facts.files) == set(manifest["files"]) and SIGNATURE_FILE not in manifest["files"]
    assert hash_directory(output)[0] == manifest["digest"] == result["digest"]
    assert verify_directory(output, str(result["digest"])).ok


def test_a_change_to_the_published_weights_breaks_the_signature(
    signed: tuple[pathlib.Path, dict[str, object], str], keys: KeyPair, tmp_path: pathlib.Path
) -> None:
    import shutil

    copy = pathlib.Path(shutil.copytree(signed[0], tmp_path / "copy"))
    weights = copy / "adapter_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0x01
    weights.write_bytes(bytes(data))
    with pytest.raises(SignatureError) as caught:
        verify_folder(copy, public_key=keys.public)
    assert caught.value.reason == "SignatureInvalid" and "adapter_model.safetensors" in caught.value.message


def test_no_key_material_in_the_trainer_output(
    signed: tuple[pathlib.Path, dict[str, object], str], keys: KeyPair
) -> None:
    output, result, events = signed
    assert_no_key_material("progress events", events, keys)
    assert_no_key_material("result", result, keys)
    for path in output.rglob("*"):
        if path.is_file():
            assert_no_key_material(str(path.name), path.read_bytes().decode("latin-1"), keys)


def test_a_key_that_cannot_sign_stops_the_run_before_training(
    tiny_model: pathlib.Path,
    datasets: dict[str, pathlib.Path],
    tmp_path: pathlib.Path,
    cli: Callable[..., Outcome],
) -> None:
    bogus = tmp_path / "key.pem"
    bogus.write_text("-----BEGIN PRIVATE KEY-----\nnot really\n-----END PRIVATE KEY-----\n", encoding="utf-8")
    output = tmp_path / "out"
    config = testing.train_config(tiny_model, datasets["completion"], output, signing={"keyPath": str(bogus)})
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config), encoding="utf-8")
    outcome = cli("train", "--config", str(path))
    assert outcome.code == EXIT_CONFIG
    assert outcome.last["reason"] == "SigningKeyInvalid"
    assert not outcome.of("started"), "the run must stop before training starts"
    assert not output.exists() or not any(output.iterdir()), "nothing is written for a run that cannot sign"
    assert "not really" not in json.dumps(outcome.events)
