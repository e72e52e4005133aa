"""`aistack acme rollover` against a real pebble: the CA's account keeps its URI and
takes only the new key, and a rollover cut short at either side of the CA's answer leaves
a client that still works (the process killed at a failpoint)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from acme import client, errors, messages

from aistack.acme import keys
from aistack.acme.account import AccountStore
from aistack.errors import Failure
from tests.pebble import Pebble, running_pebble
from tests.test_acme import acme_config, aistack, config_file


@pytest.fixture(scope="module")
def pebble(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pebble]:
    yield from running_pebble(tmp_path_factory.mktemp("pebble"))


def library_client(pebble: Pebble, key_pem: bytes) -> client.ClientV2:
    """The acme library's own client for this key, none of our code in between."""
    jwk, algorithm = keys.account_jwk(keys.load_pem(key_pem))
    net = client.ClientNetwork(jwk, alg=algorithm, verify_ssl=str(pebble.ca_file))  # type: ignore[arg-type]
    return client.ClientV2(client.ClientV2.get_directory(pebble.directory_url, net), net)


def account_of(pebble: Pebble, key_pem: bytes) -> str | None:
    """The account pebble holds this key for (newAccount, onlyReturnExisting); None when
    the key is no account's."""
    acme = library_client(pebble, key_pem)
    try:
        acme.new_account(messages.NewRegistration(only_return_existing=True))
    except errors.ConflictError as found:
        return str(found.location)
    except messages.Error as error:
        assert error.code == "accountDoesNotExist", error
        return None
    raise AssertionError("pebble made an account for onlyReturnExisting")


def store(tmp_path: Path, pebble: Pebble) -> AccountStore:
    config = acme_config(tmp_path, pebble)
    return AccountStore(Path(config.state_dir), config.directory)


def issued_with_an_account(tmp_path: Path, pebble: Pebble) -> tuple[Path, AccountStore, str]:
    path = config_file(tmp_path, pebble)
    assert aistack("acme", "renew", "--config", str(path)).returncode == 0
    account = store(tmp_path, pebble)
    registration = account.load_registration()
    assert registration is not None
    return path, account, registration["uri"]


def rollover_killed_at(path: Path, failpoint: str) -> None:
    killed = aistack(
        "acme", "rollover", "--config", str(path), env={"AISTACK_FAILPOINTS": failpoint}
    )
    assert killed.returncode == -9


def test_rollover_keeps_the_account_and_retires_the_old_key(tmp_path, pebble):
    path, account, uri = issued_with_an_account(tmp_path, pebble)
    old_key = account.key_file.read_bytes()
    assert account_of(pebble, old_key) == uri

    result = aistack("acme", "rollover", "--config", str(path))
    assert result.returncode == 0, result.stderr
    assert f"account {uri}: new account key in {account.key_file}" in result.stderr
    new_key = account.key_file.read_bytes()
    assert new_key != old_key and not account.next_key_file.exists()
    assert account.key_file.stat().st_mode & 0o777 == 0o600
    assert account_of(pebble, old_key) is None
    assert account_of(pebble, new_key) == uri

    # The next renewal signs with the new key, for the same account.
    forced = aistack("acme", "renew", "--config", str(path), "--force")
    assert forced.returncode == 0, forced.stderr
    assert account.load_registration()["uri"] == uri  # type: ignore[index]
    status = aistack("acme", "status", "--config", str(path))
    assert f"account key: rolled over at {account.rolled_over()}" in status.stdout
    (data,) = json.loads(aistack("acme", "status", "--config", str(path), "--json").stdout)
    assert data["account_key_rolled_over"] == account.rolled_over() is not None


def test_killed_after_the_ca_took_the_new_key_the_next_run_keeps_it(tmp_path, pebble):
    path, account, uri = issued_with_an_account(tmp_path, pebble)
    old_key = account.key_file.read_bytes()
    rollover_killed_at(path, "acme.rollover_accepted")
    # The CA holds the new key; the swap was not done: key.pem is the retired key.
    pending = account.next_key_file.read_bytes()
    assert account.key_file.read_bytes() == old_key
    assert account_of(pebble, old_key) is None and account_of(pebble, pending) == uri

    forced = aistack("acme", "renew", "--config", str(path), "--force")
    assert forced.returncode == 0, forced.stderr
    assert "event=acme.account_key_rollover_completed" in forced.stderr
    assert account.key_file.read_bytes() == pending and not account.next_key_file.exists()
    assert account.load_registration()["uri"] == uri  # type: ignore[index]
    assert account.rolled_over() is not None


def test_killed_before_asking_the_ca_the_next_run_keeps_the_old_key(tmp_path, pebble):
    path, account, uri = issued_with_an_account(tmp_path, pebble)
    old_key = account.key_file.read_bytes()
    rollover_killed_at(path, "acme.rollover_key_written")
    assert account.next_key_file.exists()

    forced = aistack("acme", "renew", "--config", str(path), "--force")
    assert forced.returncode == 0, forced.stderr
    assert "event=acme.account_key_rollover_abandoned" in forced.stderr
    assert account.key_file.read_bytes() == old_key and not account.next_key_file.exists()
    assert account_of(pebble, old_key) == uri and account.rolled_over() is None
    # And a rollover after it works.
    assert aistack("acme", "rollover", "--config", str(path)).returncode == 0
    assert account_of(pebble, account.key_file.read_bytes()) == uri


def test_a_refused_rollover_keeps_the_old_key(tmp_path, pebble):
    """A deactivated account (as after certbot unregister): pebble refuses its requests."""
    path, account, uri = issued_with_an_account(tmp_path, pebble)
    old_key = account.key_file.read_bytes()
    acme = library_client(pebble, old_key)
    regr = messages.RegistrationResource(uri=uri, body=messages.Registration())
    acme.net.account = regr
    acme.deactivate_registration(regr)

    result = aistack("acme", "rollover", "--config", str(path))
    assert result.returncode == 1 and result.stderr.count("\n") == 1, result.stderr
    assert "the account key rollover failed: the CA answered" in result.stderr
    assert "the old key stays" in result.stderr
    assert account.key_file.read_bytes() == old_key and not account.next_key_file.exists()
    assert account.rolled_over() is None


def test_a_ca_gone_mid_rollover_keeps_both_keys(tmp_path_factory, tmp_path):
    """The CA stops answering between the directory and the key change (pebble stopped):
    no answer, so both keys stay for the next run to settle."""
    from aistack.acme.protocol import AcmeClient
    from aistack.acme.rollover import roll_over_with

    for server in running_pebble(tmp_path_factory.mktemp("gone")):
        config = acme_config(tmp_path, server)
        with AcmeClient(config, Path(config.state_dir)) as acme:
            acme.register()
            old_key = acme.accounts.key_file.read_bytes()
            server.stop()
            with pytest.raises(Failure) as failed:
                roll_over_with(acme)
        assert "talking to the CA failed" in str(failed.value)
        assert str(failed.value).endswith(
            "both keys are kept and the next acme command keeps the one the CA holds"
        )
        assert acme.accounts.key_file.read_bytes() == old_key
        assert acme.accounts.pending_key() is not None


def test_a_half_done_rollover_the_ca_cannot_settle_keeps_both_keys(tmp_path_factory, tmp_path):
    """Pebble refusing every nonce: which key is the account's cannot be asked, so the run
    fails, saying so, and keeps both."""
    from aistack.acme.protocol import AcmeClient, AcmeFailure

    for server in running_pebble(tmp_path_factory.mktemp("nonces"), nonce_reject_percent=100):
        config = acme_config(tmp_path, server)
        account = store(tmp_path, server)
        old_key = keys.to_pem(account.load_key())
        account.write_next_key(keys.generate("ec256"))
        pending = account.next_key_file.read_bytes()
        with pytest.raises(AcmeFailure) as failed:
            AcmeClient(config, Path(config.state_dir))
        assert "cannot tell which account key the CA holds" in str(failed.value)
        assert "badNonce" in str(failed.value)
        assert account.key_file.read_bytes() == old_key
        assert account.next_key_file.read_bytes() == pending


def test_a_process_waits_for_the_one_that_holds_the_account(tmp_path, pebble):
    # A rollover in flight holds the account's lock while it waits for the CA; another
    # process (the timer's renewal) must wait, not settle and throw away the new key.
    path = config_file(tmp_path, pebble)
    config = acme_config(tmp_path, pebble)
    assert aistack("acme", "renew", "--config", str(path)).returncode == 0
    store = AccountStore(Path(config.state_dir), config.directory)
    released = tmp_path / "released"
    holder = subprocess.Popen(
        [
            sys.executable, "-c",
            "import sys, time; from pathlib import Path;"
            "from aistack.acme.account import AccountStore;"
            "AccountStore(Path(sys.argv[1]), sys.argv[2]).lock(); print('locked', flush=True);"
            "time.sleep(3); Path(sys.argv[3]).write_text('yes')",
            config.state_dir, config.directory, str(released),
        ],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert holder.stdout is not None and holder.stdout.readline() == "locked\n"
    assert (store.path / ".lock").exists()
    forced = aistack("acme", "renew", "--config", str(path), "--force")
    assert forced.returncode == 0, forced.stderr
    assert released.exists()  # it ran only after the holder let go
    holder.communicate(timeout=10)
