"""Who is acting: the settings' name, else the OS login (recorded on every change)."""

from __future__ import annotations

import getpass

import pytest

from nmid_desktop.core.config import Settings, current_user, load_settings, save_settings
from nmid_desktop.core.errors import ConfigError


def test_settings_name_wins_over_the_login() -> None:
    assert current_user(Settings(user="  Ann Lee ")) == "Ann Lee"
    assert current_user(Settings()) == getpass.getuser()
    save_settings(Settings(user="bob", shared_folder="/mnt/lab/nmid"))
    assert current_user() == "bob" and load_settings().shared_folder == "/mnt/lab/nmid"


def test_settings_never_store_a_database_password() -> None:
    with pytest.raises(ConfigError, match="never store"):
        save_settings(Settings(library="postgresql://ann:s3cret@lab/nmid"))
    save_settings(Settings(library="postgresql://ann@lab/nmid"))
    assert load_settings().library == "postgresql://ann@lab/nmid"
