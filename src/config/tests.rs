//! The configuration's rules: sources and their order, validation, the example file.

use super::*;

#[test]
fn example_file_shows_every_default() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("rpchub.example.toml");
    let text = std::fs::read_to_string(&path).expect("rpchub.example.toml at the repository root");
    let parsed: Config = Figment::from(Toml::string(&text)).extract().expect("example parses");
    // The example adds one namespace and one token to show their shape; the rest must be
    // exactly the defaults.
    let expected = Config {
        namespaces: parsed.namespaces.clone(),
        tokens: parsed.tokens.clone(),
        instances: parsed.instances.clone(),
        ..Config::default()
    };
    assert_eq!(parsed, expected);
    assert_eq!(parsed.namespaces.get("trades"), Some(&NamespaceConfig::default()));
    for key in ENV_KEYS {
        assert!(text.contains(&format!("{key} =")) || text.contains(&format!("[{key}]")), "{key} missing");
    }
}

#[test]
fn overrides_win_and_strings_need_no_quotes() {
    let c = Config::load(
        None,
        &[
            ("limits.ping_interval".into(), "5s".into()),
            ("limits.pong_timeout".into(), "7s".into()),
            ("limits.max_connections".into(), "12".into()),
            ("allowed_origins".into(), "https://a.example,https://b.example".into()),
        ],
    )
    .unwrap();
    assert_eq!(c.limits.ping_interval, Duration::from_secs(5));
    assert_eq!(c.limits.max_connections, 12);
    assert_eq!(c.allowed_origins, vec!["https://a.example", "https://b.example"]);
}

#[test]
fn bad_values_are_explained() {
    let e = Config::load(None, &[("limits.pong_timeout".into(), "1s".into())]).unwrap_err();
    assert!(e.0.contains("pong_timeout"), "{e}");
    let e = Config::load(None, &[("limits.max_conections".into(), "1".into())]).unwrap_err();
    assert!(e.0.contains("max_conections"), "{e}");
    let e = Config::load(None, &[("broker".into(), "kafka://x".into())]).unwrap_err();
    assert!(e.0.contains("broker"), "{e}");
    for ok in [
        "redis://127.0.0.1:6379",
        "redis://user:pw@redis.internal:6380/2",
        "redis+cluster://a:7000,b:7001",
        "rediss://u:pw@h:6379",
        "rediss+cluster://h:1,h:2",
    ] {
        let c = Config::load(None, &[("broker".into(), ok.into())]).unwrap();
        assert_eq!(c.broker, ok);
    }
    let e = Config::load(None, &[("broker".into(), "rediss+cluster://u:s3cret@h:1,h:x".into())]).unwrap_err();
    assert!(e.0.contains("broker") && !e.0.contains("s3cret"), "{e}");
    let tls = |broker: &str, key: &str| {
        Config::load(
            None,
            &[("broker".into(), broker.into()), (format!("broker_tls.{key}"), "/x.pem".into())],
        )
    };
    let c = tls("rediss://h:6379", "ca_file").unwrap();
    assert_eq!(c.broker_tls.ca_file.as_deref(), Some(Path::new("/x.pem")));
    let e = tls("redis://u:s3cret@h:6379", "ca_file").unwrap_err();
    assert!(e.0.contains("not a TLS URL") && !e.0.contains("s3cret"), "{e}");
    let e = tls("rediss://h:6379", "cert_file").unwrap_err();
    assert!(e.0.contains("key_file"), "a certificate without its key: {e}");
    for share in ["0", "0.0", "-0.5", "1.5", "nan"] {
        let e = Config::load(None, &[("limits.anonymous_channel_share".into(), share.into())]).unwrap_err();
        assert!(e.0.contains("anonymous_channel_share"), "{share}: {e}");
    }
    let c = Config::load(None, &[("limits.anonymous_channel_share".into(), "1".into())]).unwrap();
    assert_eq!(c.limits.anonymous_channel_share, 1.0, "all of max_channels is a share too");
}

#[test]
#[allow(clippy::result_large_err)] // figment's Jail returns its own error type
fn environment_sets_keys_and_ignores_other_rpchub_variables() {
    figment::Jail::expect_with(|jail| {
        jail.set_env("RPCHUB_ADMIN_TOKEN", "from-the-env-123");
        jail.set_env("RPCHUB_LIMITS__MAX_CONNECTIONS", "77");
        jail.set_env("RPCHUB_BIN", "/not/a/config/key");
        jail.set_env("ALLOWED_WS_ORIGINS", "https://a.example, https://b.example");
        let c = Config::load(None, &[("limits.max_connections".into(), "78".into())]).unwrap();
        assert_eq!(c.admin_token.as_ref().map(Secret::expose), Some("from-the-env-123"));
        assert_eq!(c.limits.max_connections, 78, "flags win over the environment");
        assert_eq!(c.allowed_origins, vec!["https://a.example", "https://b.example"]);
        let c = Config::load(None, &[]).unwrap();
        assert_eq!(c.limits.max_connections, 77);
        Ok(())
    });
}

#[test]
fn secrets_do_not_print() {
    let c = Config { admin_token: Some(Secret("super-secret-token".into())), ..Config::default() };
    assert!(!format!("{c:?}").contains("super-secret"));
}

#[test]
fn namespace_lookup_falls_back_to_the_default() {
    let c = Config::default().with_demo_namespaces();
    assert_eq!(c.namespace_of("l2Book:BTC").history_size, 1);
    assert_eq!(c.namespace_of("trades:SOL").history_size, DEFAULT_HISTORY_SIZE);
    assert_eq!(c.namespace_of("other:x"), &c.default_namespace);
    assert_eq!(c.namespace_of("bare"), &c.default_namespace);
}

#[test]
#[allow(clippy::result_large_err)] // figment's Jail returns its own error type
fn backend_and_upstream_come_from_every_source_and_are_checked() {
    figment::Jail::expect_with(|jail| {
        jail.set_env("RPCHUB_BACKEND__URL", "http://127.0.0.1:7420");
        jail.set_env("RPCHUB_BACKEND__METHODS", "[\"chat\", \"eth_*\"]");
        jail.set_env("RPCHUB_UPSTREAM__URL", "http://127.0.0.1:8545/rpc");
        let c = Config::load(None, &[("backend.timeout".into(), "3s".into())]).unwrap();
        assert_eq!(c.backend.url, "http://127.0.0.1:7420");
        assert_eq!(c.backend.methods, ["chat", "eth_*"]);
        assert_eq!(c.backend.timeout, Duration::from_secs(3));
        assert_eq!(c.upstream.url, "http://127.0.0.1:8545/rpc");
        Ok(())
    });
    let load = |sets: &[(&str, &str)]| {
        let sets: Vec<_> = sets.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Config::load(None, &sets)
    };
    let on = ("backend.url", "http://127.0.0.1:7420");
    for (sets, says) in [
        (vec![("backend.url", "https://api.example.com")], "http:// URL"),
        (vec![("backend.url", "http://")], "http://HOST:PORT"),
        (vec![("upstream.url", "ftp://node")], "upstream.url"),
        (vec![on, ("backend.hooks", "[\"connect\", \"reconnect\"]")], "reconnect"),
        (vec![on, ("backend.max_in_flight", "0")], "max_in_flight"),
        (vec![on, ("backend.stream_timeout", "1s")], "stream_timeout"),
        (vec![on, ("backend.forward_headers", "[\"bad header\"]")], "forward_headers"),
        (vec![on, ("backend.schemas.chat", "\"chat.json\"")], "not among backend.methods"),
        (vec![("backend.methods", "[\"chat\"]")], "need backend.url"),
        (vec![("default_namespace.subscribe_proxy", "true")], "need a backend"),
    ] {
        let e = load(&sets).expect_err(says).0;
        assert!(e.contains(says), "{sets:?}: {e}");
    }
    let c =
        load(&[on, ("backend.methods", "[\"chat\"]"), ("backend.schemas.chat", "\"chat.json\"")]).unwrap();
    assert!(c.backend.is_on() && !c.upstream.is_on());
}

#[test]
fn a_heartbeat_out_of_bounds_is_refused_with_its_namespace() {
    for (value, ok) in [("5s", true), ("100ms", true), ("1h", true), ("10ms", false), ("2h", false)] {
        let r = Config::load(None, &[("namespaces.trades.heartbeat".into(), value.into())]);
        match r {
            Ok(c) => {
                assert!(ok, "{value} accepted");
                assert_eq!(c.namespaces["trades"].heartbeat, Some(humantime::parse_duration(value).unwrap()));
            }
            Err(e) => {
                assert!(!ok, "{value}: {e}");
                assert!(e.to_string().contains("namespaces.trades.heartbeat"), "{e}");
            }
        }
    }
}

#[test]
fn pattern_options_load_and_their_bounds_are_checked() {
    let c = Config::load(None, &[("namespaces.trades.patterns".into(), "true".into())]).unwrap();
    assert!(c.namespaces["trades"].patterns);
    assert_eq!(c.namespaces["trades"].max_pattern_channels, DEFAULT_MAX_PATTERN_CHANNELS);
    assert!(!c.default_namespace.patterns, "off by default");
    for (value, ok) in [("1", true), ("100000", true), ("0", false), ("100001", false)] {
        let r = Config::load(None, &[("namespaces.trades.max_pattern_channels".into(), value.into())]);
        match r {
            Ok(c) => {
                assert!(ok && c.namespaces["trades"].max_pattern_channels.to_string() == value, "{value}")
            }
            Err(e) => {
                assert!(!ok, "{value}: {e}");
                assert!(e.to_string().contains("namespaces.trades.max_pattern_channels"), "{e}");
            }
        }
    }
    for (value, ok) in [("10", true), ("60000", true), ("9", false), ("60001", false)] {
        let r = Config::load(None, &[("namespaces.books.conflate_ms".into(), value.into())]);
        match r {
            Ok(c) => assert!(ok && c.namespaces["books"].conflate_ms == value.parse().ok(), "{value}"),
            Err(e) => {
                assert!(!ok, "{value}: {e}");
                assert!(e.to_string().contains("namespaces.books.conflate_ms"), "{e}");
            }
        }
    }
}

#[test]
fn state_channels_are_not_conflated_and_work_with_every_broker() {
    let ok = Config::load(None, &[("namespaces.book.mode".into(), "\"state\"".into())]).unwrap();
    assert_eq!(ok.namespaces["book"].mode, Mode::State);
    assert_eq!(Config::default().default_namespace.mode, Mode::Stream, "streams by default");
    let on_redis = Config::load(
        None,
        &[
            ("namespaces.book.mode".into(), "\"state\"".into()),
            ("broker".into(), "\"redis://127.0.0.1:6379\"".into()),
        ],
    )
    .unwrap();
    assert_eq!(on_redis.namespaces["book"].mode, Mode::State);
    for (extra, says) in [
        (("namespaces.book.conflate_ms", "200"), "not conflated"),
        (("namespaces.book.on_slow", "\"conflate\""), "not conflated"),
    ] {
        let e = Config::load(
            None,
            &[("namespaces.book.mode".into(), "\"state\"".into()), (extra.0.into(), extra.1.into())],
        )
        .unwrap_err();
        assert!(e.to_string().contains(says) && e.to_string().contains("namespaces.book"), "{e}");
    }
    let demo = Config::default().with_demo_namespaces();
    assert_eq!(demo.namespaces["ticker"].mode, Mode::State);
}

#[test]
fn conversation_options_load_and_auto_subscribe_needs_user_channels() {
    let c = Config::load(None, &[("namespaces.notifications.user_channels".into(), "true".into())]).unwrap();
    assert!(c.namespaces["notifications"].user_channels);
    assert!(c.check_channel("notifications:#alice").is_ok());
    assert!(c.check_channel("trades:#alice").unwrap_err().contains("user_channels"));
    let c = Config::load(
        None,
        &[
            ("namespaces.chat.presence".into(), "true".into()),
            ("namespaces.chat.join_leave".into(), "true".into()),
        ],
    )
    .unwrap();
    assert!(c.namespaces["chat"].presence && c.namespaces["chat"].join_leave);
    let e = Config::load(None, &[("namespaces.chat.auto_subscribe".into(), "true".into())]).unwrap_err();
    assert!(
        e.to_string().contains("namespaces.chat.auto_subscribe")
            && e.to_string().contains("user_channels = true"),
        "{e}"
    );
    let c = Config::load(
        None,
        &[
            ("namespaces.notifications.user_channels".into(), "true".into()),
            ("namespaces.notifications.auto_subscribe".into(), "true".into()),
        ],
    )
    .unwrap();
    assert!(c.namespaces["notifications"].auto_subscribe);
    for (value, ok) in [("\"1s\"", true), ("\"999ms\"", false)] {
        let r = Config::load(None, &[("presence_ttl".into(), value.into())]);
        assert_eq!(r.is_ok(), ok, "{value}: {r:?}");
    }
}

#[test]
fn compression_is_auto_or_off_with_a_threshold() {
    let c = Config::load(None, &[]).unwrap();
    assert_eq!((c.compression, c.compression_min_bytes), (Compression::Auto, 256));
    let c = Config::load(
        None,
        &[("compression".into(), "\"off\"".into()), ("compression_min_bytes".into(), "64".into())],
    )
    .unwrap();
    assert_eq!((c.compression, c.compression_min_bytes), (Compression::Off, 64));
    let e = Config::load(None, &[("compression".into(), "\"gzip\"".into())]).unwrap_err();
    assert!(e.to_string().contains("compression"), "{e}");
}
