"""Who is acting: the settings' name, else the OS login (recorded on every change)."""

from __future__ import annotations

import getpass

from nmid_desktop.core.config import Settings, current_user, load_settings, save_settings


def test_settings_name_wins_over_the_login() -> None:
    assert current_user(Settings(user="  Ann Lee ")) == "Ann Lee"
    assert current_user(Settings()) == getpass.getuser()
    save_settings(Settings(user="bob", shared_folder="/mnt/lab/nmid"))
    assert current_user() == "bob" and load_settings().shared_folder == "/mnt/lab/nmid"
