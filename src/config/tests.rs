//! Configuration tests: defaults, the shipped file, layers and every validation rule.

use super::*;
use std::path::Path;

/// Loads `text` with `insecure_no_auth` added, so tests of other sections need no credentials.
fn load_str(text: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
    load_exact(&format!("{text}\n[auth]\ninsecure_no_auth = true\n"), env)
}

fn load_exact(text: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
    let dir = std::env::temp_dir().join(format!("fp-relay-config-{}", uuid::Uuid::new_v4()));
    std::fs::write(&dir, text).unwrap();
    let env = env.iter().map(|(k, v)| (k.to_string(), v.to_string()));
    let result = Config::load(Some(&dir), env, &Overrides::default());
    std::fs::remove_file(&dir).ok();
    result
}

#[test]
fn shipped_example_config_parses_and_validates() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/relay.toml");
    // Credentials come from the environment, as the example's comments recommend.
    let env = vec![(
        "FP_RELAY_AUTH_PATH_TOKENS".to_owned(),
        r#"["0123456789abcdef"]"#.to_owned(),
    )];
    let config = Config::load(Some(&path), env, &Overrides::default()).unwrap();
    assert_eq!(config.http.path, "/webhooks/firstpromoter");
}

#[test]
fn empty_file_gives_documented_defaults() {
    let mut config = load_str("", &[]).unwrap();
    config.auth.insecure_no_auth = false;
    assert_eq!(config, Config::default());
    assert_eq!(config.http.max_body_bytes, 960 * 1024);
    assert_eq!(config.kafka.topic_template, "firstpromoter.{event_type}");
    assert_eq!(config.kafka.ack_timeout, Duration::from_secs(10));
}

#[test]
fn unknown_key_is_an_error_naming_it() {
    let err = load_str("[kafka]\nbrokerz = \"x:1\"\n", &[])
        .unwrap_err()
        .to_string();
    assert!(err.contains("brokerz"), "{err}");
}

#[test]
fn bad_value_names_the_field_path() {
    let err = load_str("[kafka]\nack_timeout = \"soon\"\n", &[])
        .unwrap_err()
        .to_string();
    assert!(err.starts_with("kafka.ack_timeout"), "{err}");
}

#[test]
fn ack_timeout_must_stay_below_firstpromoter_timeout() {
    let err = load_str("[kafka]\nack_timeout = \"15s\"\n", &[])
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with("kafka.ack_timeout (FP_RELAY_KAFKA_ACK_TIMEOUT): "),
        "{err}"
    );
}

#[test]
fn passthrough_property_conflicting_with_typed_setting_is_refused() {
    let err = load_str(
        "[kafka.properties]\n\"enable.idempotence\" = \"false\"\n",
        &[],
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("enable.idempotence"), "{err}");
}

#[test]
fn msk_iam_needs_a_region_and_no_other_token_source() {
    let iam = "[kafka.properties]\n\"sasl.mechanism\" = \"AWS_MSK_IAM\"\n";
    let config = load_str(&format!("[kafka]\naws_region = \"eu-west-1\"\n{iam}"), &[]).unwrap();
    assert_eq!(config.kafka.aws_region, "eu-west-1");
    let err = load_str(&format!("[kafka]\naws_region = \"EU West\"\n{iam}"), &[])
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("kafka.aws_region") && err.contains("EU West"),
        "{err}"
    );
    let err = load_str(
        &format!(
            "[kafka]\naws_region = \"eu-west-1\"\n{iam}\"sasl.oauthbearer.method\" = \"oidc\"\n"
        ),
        &[],
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("sasl.oauthbearer.method"), "{err}");
    // Without a region anywhere (only checkable where the process has none).
    if ["AWS_REGION", "AWS_DEFAULT_REGION"]
        .iter()
        .all(|name| std::env::var(name).map_or(true, |v| v.trim().is_empty()))
    {
        let err = load_str(iam, &[]).unwrap_err().to_string();
        assert!(err.contains("kafka.aws_region"), "{err}");
        assert!(
            err.contains("FP_RELAY_KAFKA_AWS_REGION"),
            "names the variable: {err}"
        );
    }
}

#[test]
fn environment_overrides_file_and_flags_override_environment() {
    let env = [
        ("FP_RELAY_KAFKA_BROKERS", "env:9092"),
        ("FP_RELAY_KAFKA_ACK_TIMEOUT", "3s"),
        ("FP_RELAY_FULFILMENT_MAX_IN_FLIGHT", "7"),
        ("FP_RELAY_KAFKA_PROPERTY_SASL_PASSWORD", "hunter2"),
    ];
    let config = load_str("[kafka]\nbrokers = \"file:9092\"\n", &env).unwrap();
    assert_eq!(config.kafka.brokers, "env:9092");
    assert_eq!(config.kafka.ack_timeout, Duration::from_secs(3));
    assert_eq!(config.fulfilment.max_in_flight, 7);
    assert_eq!(config.kafka.properties["sasl.password"], "hunter2");

    let mut overridden = config.clone();
    overridden.apply(&Overrides {
        brokers: Some("flag:9092".into()),
        ..Default::default()
    });
    assert_eq!(overridden.kafka.brokers, "flag:9092");
}

#[test]
fn unknown_environment_key_in_a_known_section_is_refused() {
    let err = load_str("", &[("FP_RELAY_KAFKA_BROKER", "x:1")])
        .unwrap_err()
        .to_string();
    assert!(err.contains("broker"), "{err}");
}

#[test]
fn fulfilment_statuses_are_checked_against_the_protocol() {
    for (text, field) in [
        (
            "[fulfilment]\npending_status = 200\n",
            "fulfilment.pending_status",
        ),
        (
            "[fulfilment]\ntimeout_status = 500\n",
            "fulfilment.timeout_status",
        ),
        (
            "[fulfilment]\nfailed_status = 204\n",
            "fulfilment.failed_status",
        ),
        ("[fulfilment]\ntimeout = \"20s\"\n", "fulfilment.timeout"),
    ] {
        let err = load_str(text, &[]).unwrap_err().to_string();
        assert!(err.starts_with(field), "{text}: {err}");
    }
    for long in ["15s", "14500ms", "20s"] {
        let text = format!("[fulfilment]\ntimeout = \"{long}\"\nallow_long_timeout = true\n");
        let err = load_str(&text, &[]).unwrap_err().to_string();
        assert!(err.starts_with("fulfilment.timeout"), "{long}: {err}");
    }
    assert!(load_str("[fulfilment]\ntimeout = \"14s\"\n", &[]).is_ok());
}

#[test]
fn a_reply_topic_shared_with_another_topic_is_refused() {
    for (text, shared) in [
        (
            "[fulfilment]\nreply_topic = \"firstpromoter.fulfilment_pending\"\n",
            "the fulfilment request topic",
        ),
        (
            "[fulfilment]\nreply_topic = \"firstpromoter.dead_letter\"\n",
            "kafka.dead_letter_topic",
        ),
        (
            "[kafka.topics]\nlead_signup = \"replies\"\n[fulfilment]\nreply_topic = \"replies\"\n",
            "kafka.topics.lead_signup",
        ),
        (
            "[fulfilment]\nreply_topic = \"firstpromoter.new_customer\"\n",
            "the topic of new_customer events",
        ),
    ] {
        let err = load_str(text, &[]).unwrap_err().to_string();
        assert!(
            err.starts_with("fulfilment.reply_topic") && err.contains(shared),
            "{text}: {err}"
        );
    }
    let err = load_str(
        "[kafka]\ndead_letter_topic = \"firstpromoter.fulfilment_pending\"\n",
        &[],
    )
    .unwrap_err()
    .to_string();
    assert!(err.starts_with("kafka.dead_letter_topic"), "{err}");
}

#[test]
fn masked_output_hides_credentials() {
    let config = load_str(
        "[kafka.properties]\n\"sasl.password\" = \"hunter2\"\n\"sasl.username\" = \"relay\"\n",
        &[],
    )
    .unwrap();
    let shown = config.to_masked_toml();
    assert!(!shown.contains("hunter2"), "{shown}");
    assert!(shown.contains("relay"), "{shown}");
    assert!(shown.contains(MASK));
}

#[test]
fn no_authentication_is_refused_unless_explicitly_insecure() {
    let err = load_exact("", &[]).unwrap_err().to_string();
    assert!(err.starts_with("auth:"), "{err}");
    assert!(load_exact("[auth]\npath_tokens = [\"0123456789abcdef\"]\n", &[]).is_ok());
    let env = [("FP_RELAY_AUTH_TOKENS", r#"["0123456789abcdef0"]"#)];
    assert_eq!(
        load_exact("", &env).unwrap().auth.tokens,
        vec!["0123456789abcdef0"]
    );
}

#[test]
fn weak_or_malformed_credentials_are_refused_naming_the_field() {
    for (text, field) in [
        ("[auth]\ntokens = [\"short\"]\n", "auth.tokens"),
        (
            "[auth]\npath_tokens = [\"has/slash/0123456789\"]\n",
            "auth.path_tokens",
        ),
        ("[auth]\nbasic = { fp = \"short\" }\n", "auth.basic.fp"),
        (
            "[auth]\nrequire_signature = true\ninsecure_no_auth = true\n",
            "auth.require_signature",
        ),
        (
            "[auth]\nallow_sources = [\"not-a-cidr\"]\ninsecure_no_auth = true\n",
            "auth.allow_sources",
        ),
    ] {
        let err = load_exact(text, &[]).unwrap_err().to_string();
        assert!(err.starts_with(field), "{text}: {err}");
    }
}

#[test]
fn masked_output_hides_every_auth_secret() {
    let config = load_exact(
        "[auth]\ntokens = [\"tok-0123456789abcdef\"]\nsignature_secrets = [\"sig-0123456789abcdef\"]\n\
         path_tokens = [\"pth-0123456789abcdef\"]\nbasic = { fp = \"pw-0123456789abcdef\" }\n",
        &[],
    )
    .unwrap();
    let shown = config.to_masked_toml();
    for secret in ["tok-", "sig-", "pth-", "pw-"] {
        assert!(!shown.contains(secret), "{secret} leaked: {shown}");
    }
}

#[test]
fn invalid_topic_names_are_refused() {
    let err = load_str("[kafka.topics]\nlead_signup = \"bad topic\"\n", &[])
        .unwrap_err()
        .to_string();
    assert!(err.starts_with("kafka.topics.lead_signup"), "{err}");
}

#[test]
fn dev_mode_listens_on_localhost_unless_an_address_was_chosen() {
    let mut config = Config::default();
    config.listen_locally_unless_chosen();
    assert_eq!(config.http.listen, "127.0.0.1:8080".parse().unwrap());
    let mut chosen = Config::default();
    chosen.http.listen = "0.0.0.0:9000".parse().unwrap();
    chosen.listen_locally_unless_chosen();
    assert_eq!(chosen.http.listen, "0.0.0.0:9000".parse().unwrap());
}

#[test]
fn environment_variables_set_tables_whole_or_one_entry_at_a_time() {
    let config = load_exact(
        "[auth]\nbasic = { from_file = \"password-in-file-0001\" }\n",
        &[
            ("FP_RELAY_AUTH_BASIC__FIRSTPROMOTER", "password-from-env-01"),
            (
                "FP_RELAY_KAFKA_TOPICS",
                r#"{ reward_created = "affiliate.rewards", "referral.created" = "affiliate.referrals" }"#,
            ),
        ],
    )
    .unwrap();
    assert_eq!(config.auth.basic["firstpromoter"], "password-from-env-01");
    assert_eq!(
        config.auth.basic["from_file"], "password-in-file-0001",
        "merged, not replaced"
    );
    assert_eq!(config.kafka.topics["reward_created"], "affiliate.rewards");
    assert_eq!(
        config.kafka.topics["referral.created"],
        "affiliate.referrals"
    );
}

#[test]
fn v2_fulfilment_needs_a_key_and_an_account_and_masks_the_key() {
    let err = load_str(
        "[fulfilment.v2]\nenabled = true\n[firstpromoter]\naccount_id = \"acc_1\"\n",
        &[],
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.starts_with("firstpromoter.api_key") && err.contains("fulfilment.v2.enabled"),
        "{err}"
    );
    let err = load_str(
        "[fulfilment.v2]\nenabled = true\n",
        &[("FP_RELAY_FIRSTPROMOTER_API_KEY", "fp_key_0123456789abcdef")],
    )
    .unwrap_err()
    .to_string();
    assert!(err.starts_with("firstpromoter.account_id"), "{err}");
    // docs/firstpromoter.md's three lines, all from the environment.
    let config = load_str(
        "",
        &[
            ("FP_RELAY_FULFILMENT_V2__ENABLED", "true"),
            ("FP_RELAY_FIRSTPROMOTER_ACCOUNT_ID", "acc_1"),
            ("FP_RELAY_FIRSTPROMOTER_API_KEY", "fp_key_0123456789abcdef"),
        ],
    )
    .unwrap();
    assert!(config.fulfilment.v2.enabled);
    assert_eq!(config.firstpromoter.account_id, "acc_1");
    assert_eq!(config.fulfilment.v2.units.len(), 5);
    assert!(config.deprecations.is_empty());
    let shown = config.to_masked_toml();
    assert!(!shown.contains("0123456789abcdef"), "{shown}");
    assert!(shown.contains("[fulfilment.v2]"), "{shown}");
    assert!(shown.contains("[firstpromoter]"), "{shown}");
    assert!(!format!("{config:?}").contains("0123456789abcdef"));
    let err = load_str(
        "[fulfilment.v2]\nenabled = true\nunits = [\"points\", \"cash\"]\n[firstpromoter]\napi_key = \"k\"\naccount_id = \"a\"\n",
        &[],
    )
    .unwrap_err()
    .to_string();
    assert!(err.starts_with("fulfilment.v2.units"), "{err}");
}

/// `[fulfilment.v2]` API settings of an older file keep working, moved to `[firstpromoter]`
/// with a warning each; given in both places differently, they are refused.
#[test]
fn api_settings_in_their_old_place_are_moved_with_a_warning() {
    let config = load_str(
        "[fulfilment.v2]\nenabled = true\naccount_id = \"acc_1\"\ncall_timeout = \"3s\"\n",
        &[("FP_RELAY_FULFILMENT_V2__API_KEY", "fp_key_0123456789abcdef")],
    )
    .unwrap();
    assert_eq!(config.firstpromoter.account_id, "acc_1");
    assert_eq!(config.firstpromoter.api_key, "fp_key_0123456789abcdef");
    assert_eq!(config.firstpromoter.call_timeout, Duration::from_secs(3));
    assert_eq!(config.deprecations.len(), 3, "{:?}", config.deprecations);
    assert!(config
        .deprecations
        .iter()
        .any(|d| d.contains("FP_RELAY_FIRSTPROMOTER_API_KEY")));
    let shown = config.to_masked_toml();
    assert!(!shown.contains("call_timeout = \"3s\"\n[") || shown.contains("[firstpromoter]"));
    assert!(!shown.contains("0123456789abcdef"), "{shown}");
    let v2_section = shown
        .split("[fulfilment.v2]")
        .nth(1)
        .unwrap()
        .split("\n[")
        .next()
        .unwrap();
    assert!(
        !v2_section.contains("account_id"),
        "shown in its new place only: {shown}"
    );
    let err = load_str(
        "[fulfilment.v2]\naccount_id = \"acc_1\"\n[firstpromoter]\naccount_id = \"acc_2\"\n",
        &[],
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.starts_with("fulfilment.v2.account_id")
            && err.contains("keep only firstpromoter.account_id"),
        "{err}"
    );
    let err = load_str(
        "[fulfilment.v2]\nenabled = true\napi_key = \"k\"\naccount_id = \"a\"\napi_url = \"http://fp.example\"\n",
        &[],
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.starts_with("fulfilment.v2.api_url (now firstpromoter.api_url)"),
        "an error names the place the setting was written: {err}"
    );
}

#[test]
fn reconciliation_needs_the_api_settings_and_sane_bounds() {
    let err = load_str("[firstpromoter.reconcile]\nenabled = true\n", &[])
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with("firstpromoter.api_key") && err.contains("firstpromoter.reconcile.enabled"),
        "{err}"
    );
    let err = load_str("[firstpromoter]\nrequests_per_minute = 1000\n", &[])
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with("firstpromoter.requests_per_minute"),
        "{err}"
    );
    let err = load_str(
        "[firstpromoter]\nwebhook_url = \"http://relay.example.com/x\"\n",
        &[],
    )
    .unwrap_err()
    .to_string();
    assert!(err.starts_with("firstpromoter.webhook_url"), "{err}");
    let config = load_str(
        "",
        &[
            ("FP_RELAY_FIRSTPROMOTER_RECONCILE__ENABLED", "true"),
            ("FP_RELAY_FIRSTPROMOTER_RECONCILE__INTERVAL", "1m"),
            ("FP_RELAY_FIRSTPROMOTER_API_KEY", "fp_key_0123456789abcdef"),
            ("FP_RELAY_FIRSTPROMOTER_ACCOUNT_ID", "acc_1"),
        ],
    )
    .unwrap();
    assert!(config.firstpromoter.reconcile.enabled);
    assert_eq!(
        config.firstpromoter.reconcile.interval,
        Duration::from_secs(60)
    );
}

#[test]
fn a_basic_user_keeps_its_case_from_the_environment_unless_written_in_capitals() {
    let config = load_exact(
        "",
        &[
            (
                "FP_RELAY_AUTH_BASIC__FirstPromoter",
                "password-mixed-case-1",
            ),
            ("FP_RELAY_AUTH_BASIC__SHOUTED", "password-in-capitals-1"),
        ],
    )
    .unwrap();
    assert_eq!(config.auth.basic["FirstPromoter"], "password-mixed-case-1");
    assert_eq!(config.auth.basic["shouted"], "password-in-capitals-1");
}

/// Kubernetes injects these for Services named fp-relay-admin, fp-relay-kafka, fp-relay-http
/// (unless enableServiceLinks is off); they must not stop the relay as unknown settings.
#[test]
fn kubernetes_service_link_variables_are_not_settings() {
    let config = load_str(
        "",
        &[
            ("FP_RELAY_ADMIN_SERVICE_HOST", "10.0.0.7"),
            ("FP_RELAY_ADMIN_SERVICE_PORT", "9090"),
            ("FP_RELAY_ADMIN_SERVICE_PORT_METRICS", "9090"),
            ("FP_RELAY_ADMIN_PORT", "tcp://10.0.0.7:9090"),
            ("FP_RELAY_ADMIN_PORT_9090_TCP", "tcp://10.0.0.7:9090"),
            ("FP_RELAY_ADMIN_PORT_9090_TCP_PROTO", "tcp"),
            ("FP_RELAY_ADMIN_PORT_9090_TCP_PORT", "9090"),
            ("FP_RELAY_ADMIN_PORT_9090_TCP_ADDR", "10.0.0.7"),
            ("FP_RELAY_KAFKA_SERVICE_HOST", "10.0.0.8"),
            ("FP_RELAY_KAFKA_PORT_9092_TCP_ADDR", "10.0.0.8"),
            ("FP_RELAY_HTTP_PORT_8080_UDP", "udp://10.0.0.9:8080"),
        ],
    );
    assert!(config.is_ok(), "{:?}", config.err());
    let err = load_str("", &[("FP_RELAY_ADMIN_PORTS", "1")])
        .unwrap_err()
        .to_string();
    assert!(err.contains("ports"), "a real typo is still refused: {err}");
}

#[test]
fn a_plain_http_api_url_is_refused_unless_explicitly_allowed() {
    let v2 = "[fulfilment.v2]\nenabled = true\n[firstpromoter]\napi_key = \"fp_live_0123456789abcdef\"\naccount_id = \"acc_1\"\n";
    let http = format!("{v2}api_url = \"http://api.firstpromoter.com/api/v2/company\"\n");
    let err = load_str(&http, &[]).unwrap_err().to_string();
    assert!(
        err.starts_with("firstpromoter.api_url") && err.contains("https"),
        "{err}"
    );
    assert!(load_str(&format!("{http}allow_insecure_http = true\n"), &[]).is_ok());
    assert!(load_str(v2, &[]).is_ok(), "the default URL is https");
}

#[test]
fn a_variable_that_names_no_section_is_refused_with_what_it_probably_meant() {
    for (variable, meant) in [
        ("FP_RELAY_BROKERS", "FP_RELAY_KAFKA_BROKERS"),
        ("FP_RELAY_KAFAK_BROKERS", "FP_RELAY_KAFKA_BROKERS"),
        ("FP_RELAY_HTPP_LISTEN", "FP_RELAY_HTTP_LISTEN"),
    ] {
        let err = load_str("", &[(variable, "x")]).unwrap_err().to_string();
        assert!(
            err.starts_with(variable) && err.contains(&format!("did you mean {meant}?")),
            "{variable}: {err}"
        );
    }
    let err = load_str("", &[("FP_RELAY_NONSENSE", "1")])
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with("FP_RELAY_NONSENSE: is not a setting"),
        "{err}"
    );
    assert!(
        load_str(
            "",
            &[
                ("FP_RELAY_CONFIG", "x"),
                ("FP_RELAY_SERVICE_HOST", "10.0.0.1")
            ]
        )
        .is_ok(),
        "the command line's variable and a Service named fp-relay are not settings"
    );
}

#[test]
fn errors_in_values_from_the_environment_name_the_variable() {
    let err = load_str("", &[("FP_RELAY_KAFKA_ACK_TIMEOUT", "soon")])
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with("kafka.ack_timeout") && err.contains("(set by FP_RELAY_KAFKA_ACK_TIMEOUT)"),
        "{err}"
    );
    let err = load_str("", &[("FP_RELAY_KAFKA_ACK_TIMEOUT", "20s")])
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("(set by FP_RELAY_KAFKA_ACK_TIMEOUT)"),
        "validation too: {err}"
    );
    let err = load_str("", &[("FP_RELAY_ADMIN_LISTN", "0.0.0.0:1")])
        .unwrap_err()
        .to_string();
    assert!(err.contains("(set by FP_RELAY_ADMIN_LISTN)"), "{err}");
}

#[test]
fn every_field_an_error_can_name_maps_to_the_variable_that_sets_it() {
    use super::env::variable_for;
    for (field, variable) in [
        ("kafka.ack_timeout", Some("FP_RELAY_KAFKA_ACK_TIMEOUT")),
        ("auth.path_tokens[0]", Some("FP_RELAY_AUTH_PATH_TOKENS")),
        ("auth.basic.ops", Some("FP_RELAY_AUTH_BASIC__OPS")),
        (
            "fulfilment.v2.enabled",
            Some("FP_RELAY_FULFILMENT_V2__ENABLED"),
        ),
        (
            "kafka.properties.sasl.password",
            Some("FP_RELAY_KAFKA_PROPERTY_SASL_PASSWORD"),
        ),
        // Underscores in a variable become dots: no variable can set this property.
        ("kafka.properties.sasl.oauthbearer.client_id", None),
        ("kafka.properties.\"enable.idempotence\"", None),
        ("kafka.topics.\"referral.created\"", None),
        ("relay.toml", None),
        ("FP_RELAY_KAFAK_BROKERS", None),
        ("fulfilment.v2.api_url (now firstpromoter.api_url)", None),
    ] {
        assert_eq!(variable_for(field).as_deref(), variable, "{field}");
    }
    // Each variable named sets the field it was named for: the environment layer agrees.
    for (field, variable) in [
        ("kafka.ack_timeout", "FP_RELAY_KAFKA_ACK_TIMEOUT"),
        ("auth.basic.ops", "FP_RELAY_AUTH_BASIC__OPS"),
        (
            "kafka.properties.sasl.password",
            "FP_RELAY_KAFKA_PROPERTY_SASL_PASSWORD",
        ),
    ] {
        let mut table = toml::Table::new();
        let (sources, _) =
            super::env::apply_env(&mut table, [(variable.to_owned(), "x".to_owned())]).unwrap();
        let set = &sources[0].0;
        assert!(
            field == set || field.starts_with(&format!("{set}.")),
            "{variable} sets {set}, not {field}"
        );
    }
}

#[test]
fn a_secret_setting_of_the_wrong_type_is_named_without_its_value() {
    let err = load_str("", &[("FP_RELAY_AUTH_TOKENS", "hunter2-hunter2-hunter2")])
        .unwrap_err()
        .to_string();
    assert!(!err.contains("hunter2"), "{err}");
    assert!(err.contains("FP_RELAY_AUTH_TOKENS='[\""), "{err}");
    let err = load_str("[firstpromoter]\napi_key = 12345678901234567\n", &[])
        .unwrap_err()
        .to_string();
    assert!(!err.contains("12345678901234567"), "{err}");
}

#[test]
fn urls_are_printed_without_the_credentials_they_carry() {
    use super::masked_url;
    let path = "/webhooks/firstpromoter";
    let cases = [
        (
            "https://relay.example.com/webhooks/firstpromoter",
            "https://relay.example.com/webhooks/firstpromoter",
        ),
        (
            "https://relay.example.com/webhooks/firstpromoter/p4th",
            "https://relay.example.com/webhooks/firstpromoter/********",
        ),
        (
            "https://relay.example.com/hooks/fp/9f86d081884c7d659a2f",
            "https://relay.example.com/hooks/fp/********",
        ),
        (
            "https://user:pass@relay.example.com/webhooks/firstpromoter?token=abc",
            "https://********@relay.example.com/webhooks/firstpromoter?********",
        ),
        (
            "https://relay.example.com/webhooks/firstpromoter-other",
            "https://relay.example.com/webhooks/firstpromoter-other",
        ),
    ];
    for (url, shown) in cases {
        assert_eq!(masked_url(url, path), shown, "{url}");
    }
    let mut config = Config::default();
    config.firstpromoter.webhook_url =
        Some("https://relay.example.com/webhooks/firstpromoter/s3cr3t-path-token".into());
    let shown = config.to_masked_toml();
    assert!(!shown.contains("s3cr3t-path-token"), "{shown}");
    assert!(shown.contains("https://relay.example.com/webhooks/firstpromoter/********"));
}

/// A syntax error says where, never what: the offending line may carry secrets, and the
/// parser's own message quotes it.
#[test]
fn a_syntax_error_names_its_line_and_never_its_text() {
    for (text, line) in [
        (
            "[auth]\ntokens = [\"v2-bearer-TOKEN-SECRET-0001\" \"second-SECRET-0002\"]\n",
            "line 2",
        ),
        (
            "[firstpromoter]\napi_key = \"fp_live_SECRET-UNTERMINATED\n",
            "line 2",
        ),
        ("[auth]\npath_tokens = ['SECRET-single' 'x']\n", "line 2"),
    ] {
        let err = load_exact(text, &[]).unwrap_err().to_string();
        assert!(!err.contains("SECRET"), "{err}");
        assert!(err.contains(line), "{err}");
    }
}

/// Masking a quoted value honours escapes and masks an unterminated one to the end.
#[test]
fn masking_handles_escaped_quotes_and_values_without_an_end() {
    let err = load_str(
        "",
        &[("FP_RELAY_AUTH_TOKENS", r#"tok"en-SECRET-TAIL-0123456789"#)],
    )
    .unwrap_err()
    .to_string();
    assert!(!err.contains("SECRET"), "{err}");
    assert_eq!(
        super::secrets::without_values(r#"invalid type: string "tok\"en-SECRET-TAIL", expected"#),
        r#"invalid type: string "********", expected"#
    );
    assert_eq!(
        super::secrets::without_values(r#"bad value "open-SECRET and the rest"#),
        r#"bad value "********"#
    );
}

/// Every property librdkafka marks sensitive (`_RK_SENSITIVE` in the vendored rdkafka_conf.c,
/// read here, not copied) is masked by check-config's output.
#[test]
fn every_property_librdkafka_marks_sensitive_is_masked() {
    let source = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("vendor/rdkafka-sys/librdkafka/src/rdkafka_conf.c"),
    )
    .unwrap();
    // `{_RK_GLOBAL | _RK_SENSITIVE, "name", ...` with the name on the same or the next line.
    let mut sensitive = Vec::new();
    for (at, _) in source.match_indices("_RK_SENSITIVE") {
        let rest = &source[at..];
        let Some(open) = rest.find('"') else { continue };
        if rest[..open].contains('}') || rest[..open].contains('(') {
            continue; // a use of the flag in code, not a property's declaration
        }
        let name = &rest[open + 1..];
        sensitive.push(name[..name.find('"').unwrap()].to_owned());
    }
    assert!(sensitive.len() >= 13, "{sensitive:?}");
    let mut config = Config::default();
    for name in &sensitive {
        assert!(
            super::secrets::is_secret_property(name),
            "{name} is sensitive to librdkafka"
        );
        config
            .kafka
            .properties
            .insert(name.clone(), format!("VALUE-OF-{name}"));
    }
    let shown = config.to_masked_toml();
    assert!(!shown.contains("VALUE-OF-"), "{shown}");
}

/// A configuration that routes a known event type into one of the relay's own topics is
/// refused at start (such events would be dead-lettered as reserved, never published): a
/// single-topic template unless fulfilment requests are set apart, an override naming the
/// dead-letter topic.
#[test]
fn routing_a_known_type_into_an_internal_topic_is_refused_naming_the_setting() {
    let err = load_str("[kafka]\ntopic_template = \"events\"\n", &[])
        .unwrap_err()
        .to_string();
    assert!(err.starts_with("kafka.topic_template"), "{err}");
    load_str(
        "[kafka]\ntopic_template = \"events\"\n[kafka.topics]\nfulfilment_pending = \"fp.requests\"\n",
        &[],
    )
    .expect("a single topic with the requests set apart");
    let err = load_str(
        "[kafka.topics]\nreward_created = \"firstpromoter.dead_letter\"\n",
        &[],
    )
    .unwrap_err()
    .to_string();
    assert!(err.starts_with("kafka.topics.reward_created"), "{err}");
}
