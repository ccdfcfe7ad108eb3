//! Records are hashed as the sender sent them: `Append` refuses, with InvalidArgument and a
//! message naming the problem and where it is, a record with a duplicate member name or an
//! integer outside ±2^53 (I-JSON, RFC 7493), instead of chaining one of the values or a rounded
//! number. Starts the real `tollgate serve` and appends through gRPC as the gateway does.

mod common;

use common::{json_of, list, Server};
use tollgate_proto::pb;

fn append(json: &[u8]) -> pb::AppendRequest {
    pb::AppendRequest {
        record_json: json.to_vec(),
        session: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_names_and_inexact_integers_are_refused_and_nothing_is_stored() {
    let home = tempfile::tempdir().unwrap();
    let server = Server::start(home.path());
    let mut client = server.client().await;

    let before = client
        .append(append(br#"{"event":"test","n":1}"#))
        .await
        .unwrap()
        .into_inner();

    for (record, message) in [
        (
            &br#"{"event":"test","client":"a","client":"b"}"#[..],
            "record has a duplicate member name (line 1, column 37): refused rather than keep \
             one of the values",
        ),
        (
            br#"{"event":"test","deep":[{"k":1},{"k":1,"\u006b":2}]}"#,
            "record has a duplicate member name (line 1, column 47): refused rather than keep \
             one of the values",
        ),
        (
            br#"{"event":"test","client":12345678901234567890}"#,
            "record has an integer outside ±2^53 (line 1, column 45): I-JSON (RFC 7493) cannot \
             carry it exactly; send it as a string",
        ),
        (
            br#"{"event":"test","messages":[{"id":9007199254740993}]}"#,
            "record has an integer outside ±2^53 (line 1, column 50): I-JSON (RFC 7493) cannot \
             carry it exactly; send it as a string",
        ),
        (
            br#"{"event":"test","amount":1e300}"#,
            "record has an integer outside ±2^53 (line 1, column 30): I-JSON (RFC 7493) cannot \
             carry it exactly; send it as a string",
        ),
    ] {
        let status = client.append(append(record)).await.unwrap_err();
        let sent = String::from_utf8_lossy(record);
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{sent}");
        assert_eq!(status.message(), message, "{sent}");
    }

    // The limits themselves, and the big number as a string, are taken.
    let exact = br#"{"event":"test","client":"12345678901234567890","max":9007199254740991,"min":-9007199254740991,"half":0.5}"#;
    let after = client.append(append(exact)).await.unwrap().into_inner();
    assert_eq!(
        after.seq,
        before.seq + 1,
        "nothing was chained between the two accepted records"
    );

    let records = json_of(&list(&server).await);
    let stored = &records[after.seq as usize];
    assert_eq!(stored["client"], "12345678901234567890");
    assert_eq!(stored["max"], 9_007_199_254_740_991u64);
    assert_eq!(stored["min"], -9_007_199_254_740_991i64);
    for record in &records {
        let text = record.to_string();
        assert!(
            !text.contains("\"b\"") && !text.contains("12345678901234567000"),
            "a refused record reached the chain: {text}"
        );
    }
}
