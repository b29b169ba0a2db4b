"""ACME state on disk: 0700 directories, 0600 files, atomic replacement, the account key
kept, the placeholder until an issued certificate exists, names that cannot escape."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from ferryman.acme import certs
from ferryman.acme.challenges import Http01Responder
from ferryman.acme.storage import Storage, check_storage, safe_name


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_directories_are_0700_and_files_0600(tmp_path: Path) -> None:
    root = tmp_path / "acme"
    storage = Storage(root)
    key = storage.account_key("https://ca.test/dir")
    storage.save_account("https://ca.test/dir", {"url": "https://ca.test/acct/1"})
    placeholder = Path(storage.serving_file("site", ("a.test",)))
    token = storage.http01_path("tok-1")
    storage.publish(token, b"tok-1.thumb")
    for folder in (root, root / "accounts", root / "certificates", root / "challenges" / "http-01", storage.account_dir("https://ca.test/dir")):
        assert _mode(folder) == 0o700, folder
    for file in (storage.account_dir("https://ca.test/dir") / "key.pem", storage.account_dir("https://ca.test/dir") / "account.json", placeholder, token):
        assert _mode(file) == 0o600, file
    assert not [p for p in root.rglob("*.tmp")]  # temporaries renamed, none left
    assert storage.account_key("https://ca.test/dir").private_numbers() == key.private_numbers()  # kept, not remade
    assert storage.account("https://ca.test/dir") == {"url": "https://ca.test/acct/1"}


def test_an_existing_root_keeps_its_mode_with_a_warning_and_our_folders_are_tightened(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = tmp_path / "acme"
    (root / "accounts").mkdir(parents=True)
    os.chmod(root, 0o755)  # e.g. /etc/ferryman, shared with other files
    os.chmod(root / "accounts", 0o755)
    with caplog.at_level("WARNING", logger="ferryman.acme.storage"):
        Storage(root).prepare()
    assert _mode(root) == 0o755 and "can be entered by other users" in caplog.text
    assert _mode(root / "accounts") == 0o700 and _mode(root / "certificates") == 0o700


def test_accounts_are_kept_apart_per_directory(tmp_path: Path) -> None:
    storage = Storage(tmp_path)
    staging = storage.account_key("https://ca.test/staging/dir")
    production = storage.account_key("https://ca.test/dir")
    assert staging.private_numbers() != production.private_numbers()


def test_the_placeholder_serves_until_a_certificate_is_issued(tmp_path: Path) -> None:
    storage = Storage(tmp_path)
    first = storage.serving_file("site", ("a.test",))
    assert first.endswith("site.placeholder.pem")
    before = Path(first).read_bytes()
    assert storage.serving_file("site", ("a.test",)) == first and Path(first).read_bytes() == before  # reused
    storage.serving_file("site", ("a.test", "b.test"))  # other names: made anew
    assert certs.inspect(Path(first).read_bytes()).names == ("a.test", "b.test")
    assert storage.issued("site") is None
    storage.save_certificate("site", certs.placeholder(("a.test",)).replace(b"ferryman placeholder", b"x"))  # any readable file
    assert storage.serving_file("site", ("a.test",)).endswith("certificates/site.pem")


def test_an_unreadable_stored_certificate_counts_as_none(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    storage = Storage(tmp_path)
    storage.save_certificate("site", b"garbage")
    assert storage.issued("site") is None
    assert "unreadable" in caplog.text


def test_names_tokens_and_hosts_cannot_leave_the_directory(tmp_path: Path) -> None:
    storage = Storage(tmp_path)
    for bad in ("../x", ".hidden", "a/b", "", "a..b"):
        with pytest.raises(ValueError):
            safe_name(bad)
    with pytest.raises(ValueError):
        storage.http01_path("../../etc/passwd")
    with pytest.raises(ValueError):
        storage.tls_alpn_path("../a.test")
    responder = Http01Responder((storage,))
    storage.publish(storage.http01_path("ok_Token-1"), b"ok_Token-1.thumb")
    assert responder.key_authorization("ok_Token-1") == b"ok_Token-1.thumb"
    assert responder.key_authorization("../ok_Token-1") is None
    assert responder.key_authorization("missing") is None


def test_check_storage_says_what_is_wrong_without_creating_anything(tmp_path: Path) -> None:
    assert check_storage(str(tmp_path / "new" / "acme")) is None
    assert not (tmp_path / "new").exists()
    assert "absolute" in check_storage("relative/acme")  # type: ignore[operator]
    file = tmp_path / "file"
    file.write_text("x")
    assert "not a directory" in check_storage(str(file / "acme"))  # type: ignore[operator]
