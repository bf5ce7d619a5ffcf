"""``serve --store`` settings: URLs and where the engine's password comes from
(never argv). Pure functions: no engine needed."""

from __future__ import annotations

import string

import pytest
from hypothesis import given
from hypothesis import strategies as st

from msgrlib.relay.cluster import PASSWORD_ENV, store_settings
from msgrlib.relay.engine import EngineConfigError

NAMES = st.text(string.ascii_uppercase + "_", min_size=1, max_size=20)
SECRETS = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\r\n"),
                  min_size=1, max_size=40)


@given(name=NAMES, secret=SECRETS)
def test_the_url_names_the_variable_and_the_variable_never_reaches_redis(name, secret):
    urls, password = store_settings([f"redis://127.0.0.1:6379/0?password_env={name}"],
                                    environ={name: secret})
    assert password == secret
    assert urls == ["redis://127.0.0.1:6379/0"]
    assert "password_env" not in urls[0]


def test_other_query_items_pass_through_untouched():
    url = "rediss://engine:6380/0?ssl_ca_certs=/etc/msgr/ca.pem"
    assert store_settings([url], environ={}) == ([url], None)
    urls, _ = store_settings([url + "&password_env=PW"], environ={"PW": "x"})
    assert urls == ["rediss://engine:6380/0?ssl_ca_certs=%2Fetc%2Fmsgr%2Fca.pem"]


def test_a_file_then_the_default_variable(tmp_path):
    secret = tmp_path / "pw"
    secret.write_text("from the file\nsecond line ignored\n")
    assert store_settings(["unix:///run/r.sock"], password_file=str(secret),
                          environ={PASSWORD_ENV: "env"})[1] == "from the file"
    assert store_settings(["unix:///run/r.sock"], environ={PASSWORD_ENV: "env"})[1] == "env"
    assert store_settings(["unix:///run/r.sock"], environ={})[1] is None


@pytest.mark.parametrize("urls, environ, match", [
    (["redis://:pw@127.0.0.1/0"], {}, "no password in the URL"),
    (["redis://127.0.0.1/0?password=pw"], {}, "no password in the URL"),
    (["redis://127.0.0.1/0?password_env=MISSING"], {}, "MISSING is not set"),
    (["redis://a/0?password_env=A", "redis://b/0?password_env=B"], {"A": "1", "B": "2"},
     "same password"),
    (["http://127.0.0.1/0"], {}, "use redis://"),
])
def test_refusals_are_one_clear_sentence(urls, environ, match):
    with pytest.raises(EngineConfigError, match=match):
        store_settings(urls, environ=environ)


def test_an_unreadable_password_file_is_named(tmp_path):
    with pytest.raises(EngineConfigError, match="cannot read the engine password file"):
        store_settings(["unix:///r.sock"], password_file=str(tmp_path / "nope"), environ={})
