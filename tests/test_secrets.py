"""Secrets are masked in everything opsbook writes."""
from ops_lib.secrets import Masker, mask_url

ENV = {
    "DATABASE_URL": "postgresql://app:S3cr3t-pa55@db.internal:5432/app",
    "STRIPE_API_KEY": "rk_test_abcdef1234567890",
    "STRIPE_WEBHOOK_SECRET": "whsec_0123456789abcdef",
    "OPSBOOK_WEBHOOK_URL": "https://app.example/hooks/stripe?token=tok-998877",
}


def test_url_passwords_are_masked_but_the_rest_stays_readable():
    assert mask_url(ENV["DATABASE_URL"]) == "postgresql://app:***@db.internal:5432/app"


def test_every_secret_value_is_masked_wherever_it_appears():
    masker = Masker.from_env(ENV)
    text = (
        "connect failed for password S3cr3t-pa55; key rk_test_abcdef1234567890 "
        "secret whsec_0123456789abcdef url https://app.example/hooks/stripe?token=tok-998877"
    )
    masked = masker.text(text)
    for secret in ("S3cr3t-pa55", "rk_test_abcdef1234567890", "whsec_0123456789abcdef", "tok-998877"):
        assert secret not in masked


def test_secret_shaped_values_are_masked_even_without_a_variable():
    masked = Masker().text("sk_test_51Habcdefgh and whsec_zyxwvutsrq and postgres://u:pw@h/db and password=hunter2")
    assert "51Habcdefgh" not in masked and "zyxwvutsrq" not in masked
    assert ":pw@" not in masked and "hunter2" not in masked


def test_nested_structures_are_masked_keys_included():
    masker = Masker.from_env(ENV)
    data = {"a": ["S3cr3t-pa55", {"S3cr3t-pa55": 1}], "n": 3}
    assert masker.obj(data) == {"a": ["***", {"***": 1}], "n": 3}


def test_sql_password_literals_are_masked():
    masked = Masker().text("ALTER ROLE app WITH LOGIN PASSWORD 'it''s-a-secret' VALID UNTIL 'infinity'")
    assert "it''s-a-secret" not in masked and "PASSWORD '***'" in masked and "infinity" in masked


def test_secrets_are_masked_in_json_text_even_when_json_escapes_them():
    import json

    masker = Masker(['pa"ss\\\\word-ü'])
    document = json.dumps({"output": 'login with pa"ss\\\\word-ü failed'})
    masked = masker.json_text(document)
    assert json.loads(masked)["output"] == "login with *** failed"
    assert "word-" not in masked
