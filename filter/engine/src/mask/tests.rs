use super::*;

fn mask(s: &str) -> (String, u64) {
    let mut report = MaskReport::default();
    let out = Masker::default().mask_body(s.as_bytes(), &mut report);
    (String::from_utf8(out).unwrap(), report.total())
}

fn mask_json_str(m: &Masker, s: &str) -> (String, MaskReport) {
    let mut report = MaskReport::detailed();
    let out = m.mask_json(s.as_bytes(), &mut report).unwrap();
    (String::from_utf8(out).unwrap(), report)
}

#[test]
fn masks_grouped_and_plain_pans() {
    assert_eq!(
        mask("card 4111111111111111 ok"),
        ("card ************1111 ok".into(), 1)
    );
    assert_eq!(
        mask(r#"{"pan":"5555-5555-5555-4444"}"#),
        (r#"{"pan":"****-****-****-4444"}"#.into(), 1)
    );
    assert_eq!(
        mask("amex 3782 822463 10005"),
        ("amex **** ****** *0005".into(), 1)
    );
    assert_eq!(
        mask("dots 4111.1111.1111.1111."),
        ("dots ****.****.****.1111.".into(), 1)
    );
    assert_eq!(
        mask("nbsp 4111\u{a0}1111\u{a0}1111\u{a0}1111"),
        ("nbsp ****\u{a0}****\u{a0}****\u{a0}1111".into(), 1)
    );
    assert_eq!(
        mask("unionpay 6250 9410 0652 8599 124"),
        ("unionpay **** **** **** 8599 124".into(), 1)
    );
}

#[test]
fn leaves_non_pans_alone() {
    for s in [
        "4111111111111112",
        "order 12345678901234567890123",
        "imei 352099001761481",
        "iccid 8944500102198304826",
        "ts 1700000000000",
        "phone +1 415-555-0132",
        "uuid 123e4567-e89b-12d3-a456-426614174000",
        "iban DE89 3704 0044 0532 0130 00",
        "double  space 4111  1111  1111  1111",
        "20 digits x41111111111111111113y",
    ] {
        assert_eq!(mask(s), (s.into(), 0), "{s}");
    }
}

#[test]
fn letters_next_to_a_card_do_not_hide_it() {
    for (input, want) in [
        ("PAN4111111111111111", "PAN************1111"),
        ("card:4111111111111111X", "card:************1111X"),
        ("ref=4111111111111111abc", "ref=************1111abc"),
        ("x5500000000000004y", "x************0004y"),
        ("id a4111111111111111", "id a************1111"),
        ("id 4111111111111111b", "id ************1111b"),
        ("PAN4111 1111 1111 1111z", "PAN**** **** **** 1111z"),
        ("Karte4111-1111-1111-1111.", "Karte****-****-****-1111."),
        // A short hex word is text, not a hash.
        ("sha 3b4c4111111111111111a9", "sha 3b4c************1111a9"),
        // Other scripts' digits are never part of a hex token.
        (
            "PAN\u{FF14}\u{FF11}\u{FF11}\u{FF11}111111111111x",
            "PAN************1111x",
        ),
        (r"\u0050AN4111111111111111", r"\u0050AN************1111"),
    ] {
        assert_eq!(mask(input), (want.to_string(), 1), "{input}");
    }
    let bin = Masker::new(MaskConfig {
        display: Display::BinLastFour,
        ..MaskConfig::default()
    })
    .unwrap();
    let mut r = MaskReport::default();
    assert_eq!(
        bin.mask_body(b"PAN4111111111111111", &mut r),
        b"PAN411111******1111"
    );
}

#[test]
fn hashes_uuids_and_ibans_are_not_cards() {
    // Each holds a Luhn-valid run in an issuer range, glued to hex letters or in an IBAN.
    for s in [
        "sha256 e3b0c44a4111111111111111fc1c149afbf4c8996fb92427ae41e464b934ca49",
        "sha1 da39a3ee4111111111111111ef95601890afd807",
        "md5 d41d8cdf5500000000000004e9800998",
        "objectid ab4111111111111111cdef12",
        "trace=4111111111111111abcdef0123456789",
        "uuid abcd4111-1111-4111-8110-c11111111111",
        "UUID ABCD4111-1111-4111-8110-C11111111111 ok",
        "iban GB92NWBK36000000000008",
    ] {
        assert_eq!(mask(s), (s.into(), 0), "{s}");
        let json = serde_json::json!({ "v": s }).to_string();
        let (out, r) = mask_json_str(&Masker::default(), &json);
        assert_eq!((out, r.total()), (json, 0));
    }
    // The same digits outside those shapes are cards.
    assert_eq!(mask("iban XX92NWBK36000000000008").1, 1);
    assert_eq!(mask("uuid abcd4111-1111-4111-8110-c1111111111").1, 1);
}

#[test]
fn hash_rule_reads_the_masked_output() {
    // In each, a card is glued to a hex run of 24 or more, or to a UUID, that loses digits to
    // another card's masking: it is judged in the same pass, as a second pass would judge it.
    for (input, want) in [
        // A card with a fullwidth digit, then track data, on the right.
        (
            "4000000000006a30400000000006\u{ff13}095 0000 0000 00",
            "*********0006a****************** **** **** **",
        ),
        (
            "4000 0000 00006a4222222222222D2512101000",
            "**** **** *0006a*********2222D**********",
        ),
        // Track data and a card with a fullwidth digit, on the left.
        (
            "4111111111111111D25121010000000abcdef4000000000006",
            "************1111D**************abcdef*********0006",
        ),
        (
            "4111111111111111=25121010000abcdef4000000000006",
            "************1111=***********abcdef*********0006",
        ),
        (
            "\u{ff14}111111111111111abc4000000000006",
            "************1111abc*********0006",
        ),
        // A UUID that loses digits to a card is no longer a UUID.
        (
            "41111111-1111-4008-0000-12345678abcd",
            "********-****-****-****-****5678abcd",
        ),
        (
            "4111 1111 1111 0006abcd-1234-1234-4111-111111111103",
            "**** **** **** 0006abcd-1234-1234-****-********1103",
        ),
    ] {
        // Two cards, counted once each however many times the text was scanned.
        assert_eq!(mask(input), (want.to_string(), 2), "{input}");
        assert_eq!(mask(want), (want.to_string(), 0), "{input}");
        let json = serde_json::json!({ "v": input }).to_string();
        let (out, _) = mask_json_str(&Masker::default(), &json);
        assert_eq!(out, serde_json::json!({ "v": want }).to_string(), "{input}");
    }
    let mut r = MaskReport::detailed();
    Masker::default().mask_body(
        "card 4111111111111111 then 4000000000006a30400000000006\u{ff13}095".as_bytes(),
        &mut r,
    );
    let found: Vec<(usize, &str)> = r
        .findings
        .iter()
        .map(|f| (f.offset, f.masked.as_str()))
        .collect();
    assert_eq!(
        found,
        [
            (5, "************1111"),
            (27, "*********0006"),
            (41, "**************3095")
        ]
    );
    // Hashes whose digits stay are untouched, cards next to them masked.
    let s = "sha1 da39a3ee4111111111111111ef95601890afd807 card 4111111111111111";
    assert_eq!(
        mask(s),
        (
            "sha1 da39a3ee4111111111111111ef95601890afd807 card ************1111".into(),
            1
        )
    );
}

#[test]
fn track_two_equivalent_data() {
    let m = Masker::default();
    for (input, want) in [
        (
            "4111111111111111D25121010000000000F",
            "************1111D*****************F",
        ),
        (
            "tag57=4111111111111111d2512101123?",
            "tag57=************1111d**********?",
        ),
        (
            ";4111111111111111=25121010000000000?",
            ";************1111=*****************?",
        ),
        (
            "PAN4111111111111111=2512101000?",
            "PAN************1111=**********?",
        ),
        // Not a month: no track data, and the card alone is masked.
        ("4111111111111111D2513", "************1111D2513"),
    ] {
        let mut r = MaskReport::detailed();
        let out = m.mask_body(input.as_bytes(), &mut r);
        assert_eq!(String::from_utf8(out).unwrap(), want, "{input}");
        assert_eq!(r.by_brand.get("visa"), Some(&1), "{input}");
        assert_eq!(r.total(), 1, "{input}");
        assert_eq!(r.findings[0].masked, "************1111", "{input}");
    }
    // Inside JSON and a stream split anywhere.
    let (out, r) = mask_json_str(&m, r#"{"t2":"4111111111111111D25121010000000000F"}"#);
    assert_eq!(out, r#"{"t2":"************1111D*****************F"}"#);
    assert_eq!(r.total(), 1);
    let body = "data: {\"t2\":\"4111111111111111D25121010000000000F\"}\n\n";
    let whole = m.mask_content(
        Some("text/event-stream"),
        body.as_bytes(),
        &mut MaskReport::default(),
    );
    for cut in 0..body.len() {
        let mut s = StreamMasker::default();
        let mut r = MaskReport::default();
        let mut out = s.push(&m, &body.as_bytes()[..cut], &mut r);
        out.extend(s.push(&m, &body.as_bytes()[cut..], &mut r));
        out.extend(s.finish(&m, &mut r));
        assert_eq!(out, whole, "cut at {cut}");
        assert_eq!(r.total(), 1);
    }
}

#[test]
fn stream_glued_pans_split_across_chunks_and_events() {
    // Text stream mode (an event larger than the limit): the scanner waits for what follows a
    // group before deciding, whatever the chunk size.
    let m = Masker::new(MaskConfig {
        max_event_bytes: 256,
        ..MaskConfig::default()
    })
    .unwrap();
    let filler = "lorem ipsum ".repeat(40);
    let cases = [
        ("PAN4111111111111111 ", "PAN************1111 ", 1),
        ("ref=4111111111111111abc ", "ref=************1111abc ", 1),
        ("x5500000000000004y ", "x************0004y ", 1),
        (
            "4111111111111111D25121010000000000F ",
            "************1111D*****************F ",
            1,
        ),
        (
            "e3b0c44a4111111111111111fc1c149afbf4c8996fb92427ae41e464b934ca49 ",
            "e3b0c44a4111111111111111fc1c149afbf4c8996fb92427ae41e464b934ca49 ",
            0,
        ),
        (
            "abcd4111-1111-4111-8110-c11111111111 ",
            "abcd4111-1111-4111-8110-c11111111111 ",
            0,
        ),
    ];
    for (input, want, n) in cases {
        let body = format!("data: {filler}{input}end\n\n");
        let expect = format!("data: {filler}{want}end\n\n");
        for chunk in [1, 2, 3, 5, 7, 16, 64] {
            let mut s = StreamMasker::default();
            let mut r = MaskReport::default();
            let mut out = Vec::new();
            for c in body.as_bytes().chunks(chunk) {
                out.extend(s.push(&m, c, &mut r));
            }
            out.extend(s.finish(&m, &mut r));
            assert_eq!(String::from_utf8(out).unwrap(), expect, "chunk {chunk}");
            assert_eq!(r.total(), n, "{input} chunk {chunk}");
        }
    }
    // Buffered events, and a number split over two events.
    let m = Masker::default();
    for (a, b) in [
        ("paid PAN41111111", "11111111X ok"),
        ("ref=4111111111111111", "abc ok"),
        ("x550000000", "0000004y"),
    ] {
        let mut s = StreamMasker::default();
        let mut r = MaskReport::default();
        let input = format!("data: {a}\n\ndata: {b}\n\ndata: end\n\n");
        let mut out = Vec::new();
        for c in input.as_bytes().chunks(5) {
            out.extend(s.push(&m, c, &mut r));
        }
        out.extend(s.finish(&m, &mut r));
        let out = String::from_utf8(out).unwrap();
        let digits: String = out.chars().filter(char::is_ascii_digit).collect();
        assert!(!digits.contains("111111111"), "{out}");
        assert!(!digits.contains("000000000"), "{out}");
        assert_eq!(r.total(), 1, "{out}");
    }
}

#[test]
fn sub_windows_of_longer_runs() {
    // The checker looks at every window of whole groups; so do we.
    assert_eq!(
        mask("ref 12 4111 1111 1111 1111 99"),
        ("ref 12 **** **** **** 1111 99".into(), 1)
    );
    assert_eq!(
        mask("x1234 4111 1111 1111 1111"),
        ("x1234 **** **** **** 1111".into(), 1)
    );
    assert_eq!(
        mask("4111 1111 1111 1111 1234y"),
        ("**** **** **** 1111 1234y".into(), 1)
    );
}

#[test]
fn unicode_and_escaped_digits() {
    assert_eq!(
        mask("\u{FF14}\u{FF11}\u{FF11}\u{FF11}111111111111"),
        (
            "***************1".replace("***************1", "************") + "1111",
            1
        )
    );
    let (out, n) = mask(r"pan \u0034111111111111111 end");
    assert_eq!((out.as_str(), n), (r"pan \u002a***********1111 end", 1));
    let (out, n) = mask("\u{0664}\u{0661}\u{0661}\u{0661}-1111-1111-1111");
    assert_eq!((out.as_str(), n), ("****-****-****-1111", 1));
}

#[test]
fn displays() {
    let bin = Masker::new(MaskConfig {
        display: Display::BinLastFour,
        ..MaskConfig::default()
    })
    .unwrap();
    let mut r = MaskReport::default();
    assert_eq!(
        bin.mask_body(b"4111 1111 1111 1111", &mut r),
        b"4111 11** **** 1111"
    );
    let cfg: MaskConfig =
        serde_json::from_str(r#"{"display":"panRef","panRefKey":"0123456789abcdef0123"}"#).unwrap();
    let pr = Masker::new(cfg).unwrap();
    let a = pr.mask_body(b"a 4111 1111 1111 1111 b", &mut r);
    let b = pr.mask_body(b"4111111111111111", &mut r);
    let a = String::from_utf8(a).unwrap();
    let b = String::from_utf8(b).unwrap();
    assert!(a.starts_with("a pan_ref:") && a.ends_with(" b"), "{a}");
    assert_eq!(&a[2..a.len() - 2], b);
    assert_eq!(b.len(), "pan_ref:".len() + 24);
}

#[test]
fn config_errors() {
    let bad = |j: &str| Masker::new(serde_json::from_str(j).unwrap()).unwrap_err();
    assert_eq!(
        bad(r#"{"display":"panRef"}"#),
        MaskConfigError::MissingPanRefKey
    );
    assert_eq!(
        bad(r#"{"display":"panRef","panRefKey":"short"}"#),
        MaskConfigError::ShortPanRefKey
    );
    assert!(matches!(
        bad(r#"{"customPatterns":[{"name":"x","regex":"("}]}"#),
        MaskConfigError::InvalidPattern { .. }
    ));
    assert!(matches!(
        bad(r#"{"customPatterns":[{"name":"x","regex":"a*"}]}"#),
        MaskConfigError::EmptyMatch { .. }
    ));
    assert!(serde_json::from_str::<MaskConfig>(r#"{"nope":1}"#).is_err());
    let dbg = format!(
        "{:?}",
        MaskConfig {
            pan_ref_key: Some("supersecretkey-123456".into()),
            ..MaskConfig::default()
        }
    );
    assert!(!dbg.contains("supersecret"), "{dbg}");
}

#[test]
fn json_values_numbers_escapes_nested() {
    let m = Masker::default();
    let (out, r) = mask_json_str(
        &m,
        r#"{"a": 4111111111111111, "b": "\u0034111111111111111", "n": 12}"#,
    );
    assert_eq!(
        out,
        r#"{"a": "************1111", "b": "************1111", "n": 12}"#
    );
    assert_eq!(r.total(), 2);
    serde_json::from_str::<serde_json::Value>(&out).unwrap();
    // JSON inside an MCP text content item.
    let body = r#"{"result":{"content":[{"type":"text","text":"{\"card\":4111111111111111,\"cvv\":\"123\"}"}]}}"#;
    let (out, r) = mask_json_str(&m, body);
    assert_eq!(
        out,
        r#"{"result":{"content":[{"type":"text","text":"{\"card\":\"************1111\",\"cvv\":\"***\"}"}]}}"#
    );
    assert_eq!((r.total(), r.detector_total()), (1, 1));
    assert_eq!(r.findings[0].offset, body.find("4111").unwrap());
    assert_eq!(r.findings[0].masked, "************1111");
    // Double-escaped digits inside a string are still digits.
    let (out, _) = mask_json_str(&m, r#"["\\u0034111111111111111"]"#);
    assert_eq!(out, r#"["************1111"]"#);
    serde_json::from_str::<serde_json::Value>(&out).unwrap();
    // Keys are masked too; unchanged documents are byte-identical.
    let (out, _) = mask_json_str(&m, r#"{"4111111111111111":1}"#);
    assert_eq!(out, r#"{"************1111":1}"#);
    let doc = "{\n  \"x\" : [1, 2.5e3, true, null, \"caf\\u00e9 1700000000000\"]\n}";
    assert_eq!(mask_json_str(&m, doc).0, doc);
}

#[test]
fn cvv_by_key() {
    let m = Masker::default();
    let (out, r) = mask_json_str(
        &m,
        r#"{"CVV":"123","card_cvc":456,"security_code":"7890","cvvNote":"abc"}"#,
    );
    assert_eq!(
        out,
        r#"{"CVV":"***","card_cvc":456,"security_code":"****","cvvNote":"abc"}"#
    );
    assert_eq!(r.by_detector.get("cvv"), Some(&2));
    assert_eq!(mask("exp 12/27 CVV: 123 ok").0, "exp 12/27 CVV: *** ok");
    // Right after a digit, right before a letter, and back to back.
    assert_eq!(mask("exp 12/27cvv 123").0, "exp 12/27cvv ***");
    assert_eq!(mask("cvv 123exp 12/27").0, "cvv ***exp 12/27");
    assert_eq!(mask("cvv 123;cvc 4567").0, "cvv ***;cvc ****");
    assert_eq!(mask("cvv:123cvc:456").0, "cvv:***cvc:***");
    // Inside a word it is not a keyword; a longer number is not a code.
    assert_eq!(mask("acid 123 and cvv 12345").0, "acid 123 and cvv 12345");
    let off = Masker::new(MaskConfig {
        cvv_keys: vec![],
        ..MaskConfig::default()
    })
    .unwrap();
    assert_eq!(
        mask_json_str(&off, r#"{"cvv":"123"}"#).0,
        r#"{"cvv":"123"}"#
    );
}

#[test]
fn track_data_and_custom() {
    let (out, _) = mask(";4111111111111111=25121011234567890?");
    assert_eq!(out, ";************1111=*****************?");
    let (out, _) = mask("%B4111111111111111^DOE/JOHN^2512101123400000?");
    assert_eq!(out, "%B************1111^DOE/JOHN^****************?");
    let cfg: MaskConfig = serde_json::from_str(
        r#"{"customPatterns":[{"name":"ssn","regex":"\\b(\\d{3}-\\d{2}-\\d{4})\\b"}]}"#,
    )
    .unwrap();
    let m = Masker::new(cfg).unwrap();
    let mut r = MaskReport::default();
    assert_eq!(
        m.mask_body(b"ssn 123-45-6789.", &mut r),
        b"ssn ***-**-****."
    );
    assert_eq!(r.by_detector.get("ssn"), Some(&1));
}

/// Track data whose discretionary part holds fullwidth digits (a card, read as one): neither the
/// text nor a finding shows a digit of it, in any display.
#[test]
fn track_data_in_fullwidth_digits_is_masked_in_the_text_and_in_its_finding() {
    let input = "%B4000000000006^^4000000000006\u{ff14}\u{ff10}\u{ff10}\u{ff10}\u{ff10}\u{ff10}\
                 \u{ff10}\u{ff10}\u{ff10}\u{ff10}\u{ff10}\u{ff10}\u{ff16}";
    for display in [r#"{}"#, r#"{"display":"binLastFour"}"#] {
        let m = Masker::new(serde_json::from_str(display).unwrap()).unwrap();
        let mut r = MaskReport::detailed();
        let out = String::from_utf8(m.mask_body(input.as_bytes(), &mut r)).unwrap();
        assert!(
            !out.chars().any(|c| c.is_numeric() && !c.is_ascii()),
            "{out}"
        );
        let track = r.findings.iter().find(|f| f.kind == "track1").unwrap();
        assert!(
            !track
                .masked
                .chars()
                .any(|c| c.is_numeric() && !c.is_ascii()),
            "{display}: {}",
            track.masked
        );
        for finding in &r.findings {
            let longest = finding
                .masked
                .split(|c: char| !c.is_ascii_digit())
                .map(str::len)
                .max()
                .unwrap_or(0);
            assert!(longest <= 6, "{display}: {}", finding.masked);
        }
    }
}

#[test]
fn content_types() {
    let m = Masker::default();
    let mut r = MaskReport::default();
    // Invalid JSON claimed as JSON is masked as text, escapes included.
    let out = m.mask_content(
        Some("application/json"),
        br#"{"a":"\u0034111111111111111" oops"#,
        &mut r,
    );
    assert_eq!(out, br#"{"a":"\u002a***********1111" oops"#);
    let out = m.mask_content(
        Some("application/json; charset=utf-8"),
        br#"{"a":4111111111111111}"#,
        &mut r,
    );
    assert_eq!(out, br#"{"a":"************1111"}"#);
    let out = m.mask_content(Some("text/plain"), b"4111111111111111", &mut r);
    assert_eq!(out, b"************1111");
    let out = m.mask_content(
        Some("text/event-stream"),
        b"data: {\"a\":4111111111111111}\n\n",
        &mut r,
    );
    assert_eq!(out, b"data: {\"a\":\"************1111\"}\n\n");
}

#[test]
fn idempotent_on_examples() {
    let m = Masker::default();
    for s in [
        "4111 1111 1111 1111 4111 1111 1111 1111",
        "3782 822463 10005 1234 5678 9012",
        "x 5555555555554444 y",
    ] {
        let mut r = MaskReport::default();
        let once = m.mask_body(s.as_bytes(), &mut r);
        let twice = m.mask_body(&once, &mut r);
        assert_eq!(once, twice, "{s}");
    }
}

#[test]
fn stream_catches_split_pan() {
    let masker = Masker::default();
    let mut stream = StreamMasker::default();
    let mut report = MaskReport::default();
    let mut out = stream.push(&masker, b"data: {\"pan\":\"41111111", &mut report);
    out.extend(stream.push(&masker, b"11111111\"}\n\n", &mut report));
    out.extend(stream.finish(&masker, &mut report));
    assert_eq!(out, b"data: {\"pan\":\"************1111\"}\n\n");
    assert_eq!(report.total(), 1);
}

#[test]
fn stream_releases_complete_events_and_bounds_memory() {
    let cfg = MaskConfig {
        max_event_bytes: 4096,
        ..MaskConfig::default()
    };
    let m = Masker::new(cfg).unwrap();
    let mut s = StreamMasker::default();
    let mut r = MaskReport::default();
    let out = s.push(
        &m,
        b"event: message\ndata: {\"x\":1}\n\ndata: {\"y\":",
        &mut r,
    );
    assert_eq!(out, b"event: message\ndata: {\"x\":1}\n\n");
    // An event that never ends: released as text, holding only open digit groups.
    let mut total = out.len();
    for _ in 0..2000 {
        let o = s.push(&m, b"lorem ipsum 4111 1111 1111 1111 dolor ", &mut r);
        total += o.len();
        assert!(s.held() < 8192, "held {}", s.held());
        assert!(!String::from_utf8_lossy(&o).contains("4111 1111"));
    }
    total += s.finish(&m, &mut r).len();
    assert!(total > 70_000);
    assert_eq!(r.total(), 2000);
}

#[test]
fn escaped_surrogate_pair_digits() {
    let m = Masker::default();
    // Raw readers see lone surrogates then a card; decoded readers see a longer digit run.
    let (out, _) = mask_json_str(&m, r#"{"a":"\ud835\udfd22221000000000009 "}"#);
    assert_eq!(out, r#"{"a":"***************** "}"#);
    let (out, _) = mask(r"\ud835\udfd22221000000000009 ");
    assert_eq!(out, r"\ud835\udfd2************0009 ");
    // Only the ambiguous run is starred; look-alikes elsewhere in the string stay as they were.
    let (out, _) = mask_json_str(
        &m,
        r#"{"a":"IMEI 356938035643809\n\ud835\udfd22221000000000009 order 1000000000000008"}"#,
    );
    assert_eq!(
        out,
        r#"{"a":"IMEI 356938035643809\n***************** order 1000000000000008"}"#
    );
}

#[test]
fn handling_by_headers() {
    let m = Masker::default();
    assert_eq!(
        m.handling(Some("application/json; charset=utf-8"), None),
        Handling::Json
    );
    assert_eq!(
        m.handling(Some("text/event-stream"), Some("identity")),
        Handling::EventStream
    );
    assert_eq!(m.handling(Some("text/plain"), None), Handling::Text);
    assert_eq!(m.handling(None, None), Handling::Text);
    assert_eq!(
        m.handling(Some("application/x-www-form-urlencoded"), None),
        Handling::Text
    );
    assert_eq!(
        m.handling(Some("application/json"), Some("gzip")),
        Handling::Block
    );
    assert_eq!(m.handling(Some("image/png"), None), Handling::Block);
    let pass: MaskConfig = serde_json::from_str(r#"{"binary":"pass"}"#).unwrap();
    assert_eq!(
        Masker::new(pass)
            .unwrap()
            .handling(Some("application/pdf"), None),
        Handling::Pass
    );
    let mask: MaskConfig = serde_json::from_str(r#"{"binary":"mask"}"#).unwrap();
    assert_eq!(
        Masker::new(mask)
            .unwrap()
            .handling(Some("application/octet-stream"), None),
        Handling::Text
    );
}

#[test]
fn stream_catches_pan_split_across_events() {
    let m = Masker::default();
    let ev = |t: &str| {
        format!(
            "data: {}\n\n",
            serde_json::json!({"jsonrpc": "2.0", "method": "notifications/message", "params": {"level": "info", "data": t}})
        )
    };
    let input = [
        ev("paid with 4111 1111"),
        ev(" 1111 1111 today"),
        ev("done 7"),
    ]
    .concat();
    let mut r = MaskReport::default();
    let mut s = StreamMasker::default();
    let mut out = Vec::new();
    for c in input.as_bytes().chunks(7) {
        out.extend(s.push(&m, c, &mut r));
    }
    out.extend(s.finish(&m, &mut r));
    let out = String::from_utf8(out).unwrap();
    assert!(out.contains(r#""data":"paid with **** ****""#), "{out}");
    assert!(out.contains(r#""data":" **** 1111 today""#), "{out}");
    assert_eq!(r.total(), 1);
    // Plain text data, and a held event is released at the end of the stream.
    let mut s = StreamMasker::default();
    let mut out = s.push(&m, b"data: 5555 5555\n\ndata: 5555 4444\n\n", &mut r);
    // The first event is released once the second arrived; the second waits for a third.
    assert_eq!(out, b"data: **** ****\n\n");
    out.extend(s.finish(&m, &mut r));
    assert_eq!(out, b"data: **** ****\n\ndata: **** 4444\n\n");
}

#[test]
fn extra_detectors_never_expose_a_card() {
    // Track data glued to an escaped letter is not track data; the card before it stays hidden.
    let m = Masker::default();
    // (The first number touches the escaped `P`: a card all the same.)
    let input = r"4000000000006\u005060990000000008=4000000000006";
    let (out, _) = mask(input);
    assert_eq!(out, r"*********0006\u005060990000000008=*********0006");
    let mut r = MaskReport::default();
    assert_eq!(m.mask_body(out.as_bytes(), &mut r), out.as_bytes());
}

#[test]
fn a_multi_round_trip_request_state_passes_unchanged_and_only_there() {
    let m = Masker::default();
    let answer = r#"{"jsonrpc":"2.0","id":1,"result":{"resultType":"input_required","requestState":"st-4111111111111111","inputRequests":{"q":{"method":"elicitation/create","params":{"message":"card 4111111111111111","requestState":"4111111111111111"}}}}}"#;
    let (out, report) = mask_json_str(&m, answer);
    assert!(
        out.contains(r#""requestState":"st-4111111111111111""#),
        "{out}"
    );
    assert!(
        out.contains(r#""message":"card ************1111""#),
        "{out}"
    );
    assert!(
        out.contains(
            r#""params":{"message":"card ************1111","requestState":"************1111"}"#
        ),
        "{out}"
    );
    assert_eq!(report.total(), 2);
    // In a batch item too; but never a member of something else, nor JSON inside a string.
    let (out, _) = mask_json_str(&m, &format!("[{answer}]"));
    assert!(
        out.contains(r#""requestState":"st-4111111111111111""#),
        "{out}"
    );
    let elsewhere = r#"{"jsonrpc":"2.0","id":1,"error":{"requestState":"4111111111111111"},"params":{"requestState":"4111111111111111"}}"#;
    assert!(!mask_json_str(&m, elsewhere).0.contains("4111111111111111"));
    let nested = r#"{"result":{"content":"{\"result\":{\"requestState\":\"4111111111111111\"}}"}}"#;
    assert!(!mask_json_str(&m, nested).0.contains("4111111111111111"));
}
