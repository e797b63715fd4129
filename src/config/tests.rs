//! The config module's tests: defaults, every error at once, env overrides, the example.

use super::*;

const SECRET: &str = "0123456789abcdef0123456789abcdef";

fn minimal() -> String {
    format!("[upstream]\nurl = \"http://127.0.0.1:3000\"\n[tokens]\nsecret = \"{SECRET}\"\n")
}

fn no_env() -> Vec<(String, String)> {
    Vec::new()
}

fn errors_of(text: &str, env: Vec<(String, String)>) -> Vec<String> {
    match Config::from_toml(text, env) {
        Ok(_) => Vec::new(),
        Err(e) => e.0.iter().map(|e| e.to_string()).collect(),
    }
}

#[test]
fn minimal_config_is_valid_and_defaults_are_safe() {
    let config = Config::from_toml(&minimal(), no_env()).unwrap();
    assert_eq!(config.upstream.url.authority.as_str(), "127.0.0.1:3000");
    assert_eq!(config.tokens.access_ttl, Duration::from_secs(900));
    assert_eq!(config.auth.prefix, "/auth");
    assert!(!config.headers.forward_authorization);
    assert!(config.rate_limits.proxy.is_none());
    assert!(config.rate_limits.login.is_some());
}

#[test]
fn every_bad_key_is_reported_at_once() {
    let text = r#"
        [server]
        listen = "nowhere"
        trusted_proxies = ["10.0.0.0/33"]
        [upstream]
        url = "127.0.0.1:3000"
        timeout = "soon"
        [tokens]
        secret = "short"
        [auth]
        registration = "maybe"
        [rate_limits]
        login = "5 per minute"
        [[routes]]
        path = "/a/**"
        roles = ["ghost"]
    "#;
    let errors = errors_of(text, no_env());
    for key in [
        "server.listen",
        "server.trusted_proxies[0]",
        "upstream.url",
        "upstream.timeout",
        "tokens.secret",
        "auth.registration",
        "rate_limits.login",
        "routes[0]",
    ] {
        assert!(
            errors.iter().any(|e| e.starts_with(key)),
            "no error for {key} in {errors:#?}"
        );
    }
}

#[test]
fn unknown_keys_are_errors() {
    let text = format!("{}\n[server]\nlisten_addr = \"0.0.0.0:1\"\n", minimal());
    let errors = errors_of(&text, no_env());
    assert!(
        errors.iter().any(|e| e.contains("listen_addr")),
        "{errors:?}"
    );
}

#[test]
fn env_overrides_scalars_and_lists() {
    let env = vec![
        ("GATEHOUSE_TOKENS_SECRET".into(), "z".repeat(40)),
        (
            "GATEHOUSE_UPSTREAM_URL".into(),
            "http://10.1.1.1:9000/api/".into(),
        ),
        ("GATEHOUSE_SERVER_WORKERS".into(), "3".into()),
        (
            "GATEHOUSE_SERVER_TRUSTED_PROXIES".into(),
            "10.0.0.0/8, 192.168.1.1".into(),
        ),
        ("GATEHOUSE_AUTH_LOCKOUT_MAX_FAILURES".into(), "9".into()),
        (
            "GATEHOUSE_HEADERS_FORWARD_AUTHORIZATION".into(),
            "true".into(),
        ),
        ("PATH".into(), "/usr/bin".into()),
    ];
    let config = Config::from_toml(&minimal(), env).unwrap();
    assert_eq!(config.tokens.secret, "z".repeat(40).into_bytes());
    assert_eq!(config.upstream.url.authority.as_str(), "10.1.1.1:9000");
    assert_eq!(config.upstream.url.base_path, "/api");
    assert_eq!(config.server.workers, 3);
    assert_eq!(config.server.trusted_proxies.len(), 2);
    assert_eq!(config.auth.lockout.max_failures, 9);
    assert!(config.headers.forward_authorization);
}

#[test]
fn unknown_or_mistyped_env_overrides_are_errors() {
    let env = vec![
        ("GATEHOUSE_TOKEN_SECRET".into(), "x".into()),
        ("GATEHOUSE_SERVER_WORKERS".into(), "many".into()),
    ];
    let errors = errors_of(&minimal(), env);
    assert!(
        errors
            .iter()
            .any(|e| e.starts_with("GATEHOUSE_TOKEN_SECRET")),
        "{errors:?}"
    );
    assert!(
        errors
            .iter()
            .any(|e| e.starts_with("GATEHOUSE_SERVER_WORKERS")),
        "{errors:?}"
    );
}

/// Every declared key can be set from its env variable: setting each one to its own default
/// (the secret and the upstream to working values) loads without an error, so no variable is
/// taken for a typo and every kind parses from a string.
#[test]
fn every_key_has_an_env_override() {
    let keys = keys();
    assert!(keys.len() > 50, "{} keys", keys.len());
    let mut names: Vec<&str> = keys.iter().map(|k| k.env.as_str()).collect();
    names.sort_unstable();
    names.dedup();
    assert_eq!(names.len(), keys.len(), "two keys share an env variable");
    let env = keys.iter().map(|k| {
        let value = match (k.path.as_str(), &k.default) {
            ("tokens.secret", _) => SECRET.to_string(),
            ("upstream.url", _) => "http://127.0.0.1:3000".to_string(),
            (_, toml::Value::String(s)) => s.clone(),
            (_, toml::Value::Array(items)) => items
                .iter()
                .filter_map(toml::Value::as_str)
                .collect::<Vec<_>>()
                .join(","),
            (_, other) => other.to_string(),
        };
        (k.env.clone(), value)
    });
    let config = Config::from_toml("", env).unwrap();
    assert_eq!(config.tokens.secret, SECRET.as_bytes().to_vec());
}

/// The documented example is valid, documents every key, and shows each key's default.
#[test]
fn example_config_is_valid_and_complete() {
    let text = include_str!("../../config.toml.example");
    let env = vec![("GATEHOUSE_TOKENS_SECRET".to_string(), SECRET.to_string())];
    Config::from_toml(text, env).unwrap();
    let example: toml::Table = text.parse().unwrap();
    for key in keys() {
        let mut value = Some(&example);
        let mut found = None;
        for part in key.path.split('.') {
            found = value.and_then(|t| t.get(part));
            value = found.and_then(toml::Value::as_table);
        }
        let Some(found) = found else {
            panic!("{} is not in config.toml.example", key.path);
        };
        // The example gives the one required key a working value.
        if key.path != "upstream.url" {
            assert_eq!(
                *found, key.default,
                "config.toml.example shows {} with a value other than its default",
                key.path
            );
        }
    }
}

/// Many mistakes at once, of every kind the reader knows, each reported under its key,
/// in one pass: the golden list of what `check-config` prints.
#[test]
fn every_kind_of_mistake_is_reported_at_once() {
    let text = r#"
        [sever]
        listen = "0.0.0.0:1"

        [server]
        admin_listn = "127.0.0.1:9090"
        workers = "4"
        max_connections = 0
        trusted_proxies = ["10.0.0.0/8", 7]

        [server.tls]
        cert = "/tls/cert.pem"

        [upstream]
        url = "http://127.0.0.1:3000"
        timeout = "0"

        [tokens]
        secret = "0123456789abcdef0123456789abcdef"

        [auth]
        registration = "maybe"
        [auth.lockout]
        max_failures = -1
        [auth.paths]
        logn = "/signin"

        [roles]
        owner = { inherit = ["admin"] }
        reader = {}

        [[routes]]
        path = "/public/**"
        access = "public"

        [[routes]]
        path = "/api/**"
        methods = ["GET"]
        roles = ["reader"]

        [[routes]]
        path = "/admin/**"
        acess = "deny"
    "#;
    let env = vec![
        ("GATEHOUSE_SERVER_LISTEN".to_string(), "nowhere".to_string()),
        ("GATEHOUSE_TOKEN_SECRET".to_string(), "x".to_string()),
        ("GATEHOUSE_LOG_ACCESS".to_string(), "yes".to_string()),
    ];
    let errors = errors_of(text, env);
    let expected = [
        r#"GATEHOUSE_SERVER_LISTEN (server.listen): "nowhere" is not an address like 0.0.0.0:8080"#,
        "server.trusted_proxies: expected a list of strings, found an integer",
        "server.tls: cert and key must be given together",
        "server.workers: expected an integer, found a string",
        "server.max_connections: must be at least 1",
        "server.admin_listn: unknown key; did you mean server.admin_listen?",
        "upstream.timeout: 0 is out of range: must be between 100ms and 1h",
        r#"auth.registration: "maybe" is not open or closed"#,
        "auth.lockout.max_failures: -1 is out of range (0 to 4294967295)",
        "auth.paths.logn: unknown endpoint; did you mean login? (one of register, login, refresh, logout, verify, me, change_password, forgot_password, reset_password, reset_password_validate, verify_email, verify_email_resend, admin, ws)",
        "routes[2].acess: unknown key; did you mean routes[2].access?",
        "roles.owner.inherit: unknown key; did you mean roles.owner.inherits?",
        // With its typo ignored, routes[2] says nothing about access; the policy says so.
        "routes[2]: set `access` (public, authenticated or deny) or a non-empty `roles` list",
        "GATEHOUSE_LOG_ACCESS (log.access): expected true or false",
        "sever: unknown section; did you mean server?",
        "GATEHOUSE_TOKEN_SECRET: unknown environment override (no such config key); did you mean GATEHOUSE_TOKENS_SECRET?",
    ];
    assert_eq!(errors, expected);
}

#[test]
fn auth_channel_keys_are_checked() {
    let config = Config::from_toml(&minimal(), no_env()).unwrap();
    let ws = &config.auth.ws;
    assert!(ws.enabled);
    assert_eq!(ws.max_message_bytes, 64 * 1024);
    assert_eq!(ws.idle_timeout, Duration::from_secs(60));
    assert_eq!(
        ws.message_rate.map(|r| r.to_string()).as_deref(),
        Some("20/10s")
    );
    assert!(ws.allowed_origins.is_empty());

    let text = format!(
        "{}\n[auth.ws]\nallowed_origins = [\"HTTPS://App.Example.com:443\", \"*\"]\n",
        minimal()
    );
    let config = Config::from_toml(&text, no_env()).unwrap();
    assert_eq!(
        config.auth.ws.allowed_origins,
        ["https://app.example.com", "*"]
    );

    let text = format!(
        "{}\n[auth.ws]\nmax_message_bytes = 10\nidle_timeout = \"0\"\nmessage_rate = \"x\"\n\
         allowed_origins = [\"https://a.example/app\"]\nmax_connections = 0\n",
        minimal()
    );
    let errors = errors_of(&text, no_env());
    for key in [
        "auth.ws.max_message_bytes",
        "auth.ws.idle_timeout",
        "auth.ws.message_rate",
        "auth.ws.allowed_origins",
        "auth.ws.max_connections",
    ] {
        assert!(
            errors.iter().any(|e| e.starts_with(&format!("{key}: "))),
            "{key} not reported: {errors:?}"
        );
    }
}

#[test]
fn toml_syntax_errors_have_line_and_column() {
    let text = "[server]\nlisten = \"0.0.0.0:1\"\nworkers = = 3\n";
    let errors = errors_of(text, no_env());
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(
        errors[0].starts_with("line 3, column 11: TOML syntax:"),
        "{errors:?}"
    );
    let errors = errors_of("[server]\n[server]\n", no_env());
    assert!(errors[0].starts_with("line 2, column 1:"), "{errors:?}");
}

/// A value from the environment is reported under its variable (what the operator has to
/// change) and its key; a typo in one variable hides nothing else.
#[test]
fn env_values_are_reported_under_their_variable() {
    let text = format!("{}\n[server]\nmax_uri_bytes = 10\n", minimal());
    let env = vec![
        ("GATEHOUSE_TOKENS_SECRET".to_string(), "short".to_string()),
        (
            "GATEHOUSE_SERVER_TRUSTED_PROXIES".to_string(),
            "10.0.0.0/8,nope".to_string(),
        ),
        ("GATEHOUSE_SERVR_WORKERS".to_string(), "2".to_string()),
    ];
    let errors = errors_of(&text, env);
    for want in [
        "GATEHOUSE_TOKENS_SECRET (tokens.secret): is 5 bytes; HS256 needs at least 32",
        r#"GATEHOUSE_SERVER_TRUSTED_PROXIES (server.trusted_proxies[1]): "nope" is not a CIDR like 10.0.0.0/8"#,
        "server.max_uri_bytes: must be at least 256",
        "GATEHOUSE_SERVR_WORKERS: unknown environment override (no such config key); did you mean GATEHOUSE_SERVER_WORKERS?",
    ] {
        assert!(
            errors.iter().any(|e| e == want),
            "no {want:?} in {errors:#?}"
        );
    }
    assert!(!errors.iter().any(|e| e.contains("short")), "{errors:#?}");
}

/// Wrong shapes are errors under their key, not a serde message about the whole file.
#[test]
fn wrong_shapes_are_reported_under_their_key() {
    let text = format!(
        "store = \"/data\"\nroutes = {{ path = \"/x\" }}\n{}\n[headers]\nforward_authorization = \"yes\"\n",
        minimal()
    );
    let errors = errors_of(&text, no_env());
    for want in [
        "store: expected a table, found a string",
        "routes: expected an array of tables ([[routes]]), found a table",
        "headers.forward_authorization: expected true or false, found a string",
    ] {
        assert!(
            errors.iter().any(|e| e == want),
            "no {want:?} in {errors:#?}"
        );
    }
}

#[test]
fn auth_endpoints_can_be_renamed() {
    let text = format!(
        "{}\n[auth.paths]\nlogin = \"/signin\"\nadmin = \"/manage\"\n",
        minimal()
    );
    let config = Config::from_toml(&text, no_env()).unwrap();
    let auth = &config.auth;
    assert_eq!(auth.canonical("/signin").as_deref(), Some("/login"));
    assert_eq!(auth.canonical("/login"), None);
    assert_eq!(
        auth.canonical("/manage/users/7").as_deref(),
        Some("/admin/users/7")
    );
    assert_eq!(auth.canonical("/admin/users"), None);
    assert_eq!(auth.canonical("/register").as_deref(), Some("/register"));
    assert_eq!(auth.path_of("/login"), "/auth/signin");
    for bad in [
        "nope = \"/x\"",
        "login = \"signin\"",
        "login = \"/register\"",
        "login = \"/a/../b\"",
    ] {
        let text = format!("{}\n[auth.paths]\n{bad}\n", minimal());
        assert!(!errors_of(&text, no_env()).is_empty(), "{bad} accepted");
    }
}

#[test]
fn durations_parse() {
    assert_eq!(parse_duration("900ms").unwrap(), Duration::from_millis(900));
    assert_eq!(parse_duration("15m").unwrap(), Duration::from_secs(900));
    assert_eq!(
        parse_duration("30d").unwrap(),
        Duration::from_secs(30 * 86400)
    );
    assert_eq!(parse_duration("0").unwrap(), Duration::ZERO);
    assert_eq!(parse_duration("1h30m").unwrap(), Duration::from_secs(5400));
    assert_eq!(
        parse_duration("1d2h3m4s5ms").unwrap(),
        Duration::from_millis(93_784_005)
    );
    // One syntax: no spaces, no long unit names, no fractions, no bare numbers, units
    // largest first and once each.
    for bad in [
        "soon",
        "",
        "15 minutes",
        "15min",
        "1h 30m",
        " 15m",
        "1.5h",
        "15",
        "30m1h",
        "1m1m",
        "-1s",
        "m",
        "1y",
        "0s0",
    ] {
        let err = parse_duration(bad).expect_err(bad);
        assert!(err.contains("\"1h30m\""), "{bad}: {err}");
    }
    for d in ["900ms", "15m", "1h30m", "30d", "1d2h3m4s5ms", "0"] {
        assert_eq!(format_duration(parse_duration(d).unwrap()), d);
    }
}

#[test]
fn durations_have_ranges() {
    for (line, expect) in [
        (
            "[auth]\nreset_token_ttl = \"1000d\"",
            "auth.reset_token_ttl: 1000d is out of range: must be between 1m and 7d",
        ),
        (
            "[server]\nshutdown_timeout = \"1h\"",
            "server.shutdown_timeout: 1h is out of range: must be between 0 and 10m",
        ),
        (
            "[auth.lockout]\nwindow = \"15 minutes\"",
            "auth.lockout.window: \"15 minutes\" is not a duration",
        ),
    ] {
        let text = format!("{}\n{line}\n", minimal());
        let errors = errors_of(&text, no_env());
        assert!(
            errors.iter().any(|e| e.starts_with(expect)),
            "{line}: {errors:?}"
        );
    }
}

#[test]
fn upstream_url_rules() {
    assert!(parse_upstream_url("http://a:1").is_ok());
    assert!(parse_upstream_url("https://a").is_ok());
    assert!(parse_upstream_url("a:1").is_err());
    assert!(parse_upstream_url("ftp://a").is_err());
    assert!(parse_upstream_url("http://u:p@a").is_err());
    assert!(parse_upstream_url("").is_err());
}

#[test]
fn sign_up_roles_cannot_inherit_admin() {
    let text = format!(
        "{}\n[auth]\nselectable_roles = [\"owner\"]\n[roles]\nowner = {{ inherits = [\"admin\"] }}\n",
        minimal()
    );
    let errors = errors_of(&text, no_env());
    assert!(
        errors
            .iter()
            .any(|e| e.starts_with("auth.selectable_roles")),
        "{errors:?}"
    );
    let env = vec![(
        "GATEHOUSE_AUTH_DEFAULT_ROLES".to_string(),
        "admin".to_string(),
    )];
    let errors = errors_of(&minimal(), env);
    assert!(
        errors.iter().any(|e| e.starts_with("auth.default_roles")),
        "{errors:?}"
    );
}

#[test]
fn admin_role_cannot_be_self_selected() {
    let text = format!("{}\n[auth]\nselectable_roles = [\"admin\"]\n", minimal());
    let errors = errors_of(&text, no_env());
    assert!(
        errors
            .iter()
            .any(|e| e.starts_with("auth.selectable_roles")),
        "{errors:?}"
    );
}

#[test]
fn secrets_do_not_leak_through_debug() {
    let config = Config::from_toml(&minimal(), no_env()).unwrap();
    assert!(!format!("{config:?}").contains(SECRET));
}

/// Found by the config fuzzer: an empty or dotted key must be reported as TOML spells it,
/// never as an empty key or as the section around it.
#[test]
fn odd_unknown_keys_are_quoted() {
    let base = "upstream.url = \"http://127.0.0.1:1\"\ntokens.secret = \"0123456789abcdef0123456789abcdef\"\n";
    for (extra, key) in [
        ("\"\" = 1\n", "\"\""),
        ("[\"\"]\nx = 1\n", "\"\""),
        ("\"a.b\" = 1\n", "\"a.b\""),
        ("[server]\n\"\" = 1\n", "server.\"\""),
    ] {
        let errors = Config::from_toml(&format!("{base}{extra}"), Vec::new())
            .err()
            .unwrap_or_else(|| panic!("{extra:?} was accepted"));
        assert!(
            errors.0.iter().any(|e| e.key == key),
            "{extra:?}: {:?}",
            errors.0
        );
    }
}
