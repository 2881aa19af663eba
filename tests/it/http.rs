//! The HTTP API over loopback with a real client: every endpoint (answers equal to the
//! library's), a corpus of malformed requests (all 4xx, the server keeps serving), slow
//! clients cut off by the header timeout, load shedding, and authentication.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use fsdb::http::{ServeConfig, serve_until};
use fsdb::time::ManualClock;
use fsdb::{Db, Options};
use serde_json::{Value as J, json};

const DEFS: &str = r#"
[[stream]]
name = "tx"
entity = "card"
time = "ts"
id = "id"
[stream.fields]
amount = "float"
city = "string"

[[feature]]
name = "n_1h"
stream = "tx"
agg = "count"
window = "1h"
[[feature]]
name = "sum_1d"
stream = "tx"
agg = "sum"
field = "amount"
window = "1d"
[[feature]]
name = "last_city"
stream = "tx"
agg = "last"
field = "city"
"#;

/// A server on an ephemeral loopback port, stopped (gracefully) when dropped.
struct Server {
    addr: SocketAddr,
    db: Arc<Db>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
    _dir: tempfile::TempDir,
}

impl Server {
    fn start(config: ServeConfig) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let options = Options {
            clock: Arc::new(ManualClock::new(10_000_000)),
            ..Options::default()
        };
        let db = Arc::new(Db::open(dir.path(), options).unwrap());
        db.apply(DEFS).unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let server_db = Arc::clone(&db);
        let thread = std::thread::spawn(move || {
            serve_until(
                server_db,
                config,
                move |addr| ready_tx.send(addr).unwrap(),
                async {
                    let _ = stopped.await;
                },
            )
            .unwrap();
        });
        let addr = ready_rx.recv_timeout(Duration::from_secs(10)).unwrap();
        Server {
            addr,
            db,
            stop: Some(stop),
            thread: Some(thread),
            _dir: dir,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.stop.take().unwrap().send(());
        self.thread.take().unwrap().join().unwrap();
    }
}

fn loopback() -> ServeConfig {
    ServeConfig {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        ..ServeConfig::default()
    }
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(20)))
        .build()
        .into()
}

/// Status and JSON body of a response.
fn answer(response: Result<ureq::http::Response<ureq::Body>, ureq::Error>) -> (u16, J) {
    let mut response = response.unwrap();
    let status = response.status().as_u16();
    let text = response.body_mut().read_to_string().unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(J::String(text)),
    )
}

/// Send raw bytes; returns the status line's code (0 if the server closed without one).
fn raw(addr: SocketAddr, request: &[u8]) -> u16 {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let _ = stream.write_all(request);
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response);
    let text = String::from_utf8_lossy(&response);
    text.split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0)
}

#[test]
fn every_endpoint_answers_like_the_library() {
    let server = Server::start(loopback());
    let http = agent();
    let events = json!([
        {"id": "a", "card": "c1", "ts": 9_000_000, "amount": 2.5, "city": "Lyon"},
        {"id": "b", "card": "c1", "ts": 9_500_000, "amount": 1.25, "city": "Oslo"},
        {"id": "c", "card": "c2", "ts": 9_600_000, "amount": 4.0},
    ]);
    let (status, body) = answer(
        http.post(server.url("/v1/streams/tx/events"))
            .send_json(&events),
    );
    assert_eq!(
        (status, body),
        (200, json!({"accepted": 3, "duplicates": 0}))
    );
    // NDJSON, with a duplicate id.
    let ndjson = "{\"id\": \"a\", \"card\": \"c1\", \"ts\": 1}\n{\"id\": \"d\", \"card\": \"c1\", \"ts\": 9_900_000, \"amount\": 0.5}\n".replace('_', "");
    let (status, body) = answer(
        http.post(server.url("/v1/streams/tx/events"))
            .header("content-type", "application/x-ndjson")
            .send(&ndjson),
    );
    assert_eq!(
        (status, body),
        (200, json!({"accepted": 1, "duplicates": 1}))
    );

    let names = ["n_1h", "sum_1d", "last_city"];
    let library = server.db.latest("c1", &names).unwrap().to_json();
    let (status, body) = answer(
        http.get(server.url("/v1/features?entity=c1&names=n_1h,sum_1d,last_city"))
            .call(),
    );
    assert_eq!((status, &body), (200, &library));
    let library = server.db.as_of("c1", &names, 9_600_000).unwrap().to_json();
    let (_, body) = answer(
        http.get(server.url("/v1/features?entity=c1&names=n_1h,sum_1d,last_city&as_of=9600000"))
            .call(),
    );
    assert_eq!(body, library);
    let (_, body) = answer(
        http.get(server.url("/v1/features?entity=c1&as_of=1970-01-01T02:40:00Z"))
            .call(),
    );
    assert_eq!(body["as_of"], 9_600_000);

    let (status, body) = answer(http.post(server.url("/v1/features/query")).send_json(
        json!({"entities": ["c1", "c2", "nobody"], "features": names, "as_of": 9_600_000}),
    ));
    assert_eq!(status, 200);
    for (row, entity) in body["rows"]
        .as_array()
        .unwrap()
        .iter()
        .zip(["c1", "c2", "nobody"])
    {
        assert_eq!(
            row["features"],
            server
                .db
                .as_of(entity, &names, 9_600_000)
                .unwrap()
                .to_json()["features"]
        );
    }

    let spine = json!({"features": names, "spine": [{"entity": "c1", "ts": 9_600_000, "label": 1}, {"entity": "c2", "ts": "1970-01-01T02:50:00Z", "label": 0}]});
    let mut response = http
        .post(server.url("/v1/training-set"))
        .send_json(&spine)
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let text = response.body_mut().read_to_string().unwrap();
    let rows: Vec<J> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0]["label"], 1, "passthrough keeps its JSON type");
    for (row, (entity, t)) in rows.iter().zip([("c1", 9_600_000), ("c2", 10_200_000)]) {
        let expected = server.db.as_of(entity, &names, t).unwrap().to_json();
        for name in names {
            assert_eq!(row[name], expected["features"][name], "{entity} {name}");
        }
    }
    let mut response = http
        .post(server.url("/v1/training-set"))
        .header("accept", "text/csv")
        .send_json(&spine)
        .unwrap();
    assert_eq!(response.headers()["content-type"], "text/csv");
    assert!(
        response
            .body_mut()
            .read_to_string()
            .unwrap()
            .starts_with("entity,ts,label,n_1h,sum_1d,last_city\n")
    );
    let mut response = http
        .post(server.url("/v1/training-set"))
        .header("accept", "application/vnd.apache.parquet")
        .send_json(&spine)
        .unwrap();
    let bytes = response.body_mut().read_to_vec().unwrap();
    assert_eq!(&bytes[..4], b"PAR1");

    let (status, body) = answer(http.get(server.url("/v1/registry")).call());
    assert_eq!(status, 200);
    assert_eq!(body["features"].as_array().unwrap().len(), 3);
    assert_eq!(body["features"][0]["status"], "ready");
    let more = "[[feature]]\nname = \"n_1d\"\nstream = \"tx\"\nagg = \"count\"\nwindow = \"1d\"\n";
    let (status, body) = answer(
        http.post(server.url("/v1/registry"))
            .header("content-type", "application/toml")
            .send(more),
    );
    assert_eq!((status, &body["added_features"]), (200, &json!(["n_1d"])));
    let as_json =
        json!({"feature": [{"name": "n_2d", "stream": "tx", "agg": "count", "window": "2d"}]});
    let (status, body) = answer(http.post(server.url("/v1/registry")).send_json(&as_json));
    assert_eq!((status, &body["added_features"]), (200, &json!(["n_2d"])));
    let (_, body) = answer(
        http.get(server.url("/v1/features?entity=c1&names=n_2d"))
            .call(),
    );
    assert_eq!(
        body["features"]["n_2d"], 3,
        "a feature added later covers history at once"
    );

    // Removing a feature: gone from queries and the registry; its name is free again.
    let (status, body) = answer(http.delete(server.url("/v1/registry/features/n_2d")).call());
    assert_eq!((status, body), (200, json!({"removed": ["n_2d"]})));
    let (status, body) = answer(
        http.get(server.url("/v1/features?entity=c1&names=n_2d"))
            .call(),
    );
    assert_eq!(
        (status, &body["error"]["code"]),
        (400, &json!("unknown_feature"))
    );
    let (status, body) = answer(http.delete(server.url("/v1/registry/features/n_2d")).call());
    assert_eq!(
        (status, &body["error"]["code"]),
        (404, &json!("unknown_feature"))
    );
    let (_, body) = answer(http.get(server.url("/v1/registry")).call());
    assert!(
        body["features"]
            .as_array()
            .unwrap()
            .iter()
            .all(|f| f["name"] != "n_2d")
    );
    let redefined =
        json!({"feature": [{"name": "n_2d", "stream": "tx", "agg": "max", "field": "amount"}]});
    let (status, body) = answer(http.post(server.url("/v1/registry")).send_json(&redefined));
    assert_eq!((status, &body["added_features"]), (200, &json!(["n_2d"])));
    let (_, body) = answer(
        http.get(server.url("/v1/features?entity=c1&names=n_2d"))
            .call(),
    );
    assert_eq!(body["features"]["n_2d"], 2.5);

    let (status, body) = answer(http.get(server.url("/healthz")).call());
    assert_eq!((status, &body["status"]), (200, &json!("ok")));
    assert_eq!(body["applied_lsn"], body["last_lsn"]);
    let (status, metrics) = answer(http.get(server.url("/metrics")).call());
    let metrics = metrics.as_str().unwrap().to_owned();
    assert_eq!(status, 200);
    assert!(
        metrics.contains("fsdb_events_accepted_total 4"),
        "{metrics}"
    );
    assert!(
        metrics.contains("# TYPE fsdb_materialized_values_total counter"),
        "{metrics}"
    );
    for gauge in [
        "fsdb_event_ids",
        "fsdb_event_ids_bytes",
        "fsdb_state_store_memory_bytes",
    ] {
        assert!(
            metrics.contains(&format!("# TYPE {gauge} gauge")),
            "{metrics}"
        );
    }
    assert!(
        metrics.contains("fsdb_http_request_duration_seconds_bucket{route=\"GET /v1/features\""),
        "{metrics}"
    );
    let (status, spec) = answer(http.get(server.url("/openapi.json")).call());
    assert_eq!(status, 200);
    for path in [
        "/v1/streams/{stream}/events",
        "/v1/features",
        "/v1/features/query",
        "/v1/training-set",
        "/v1/registry",
        "/v1/registry/features/{feature}",
        "/healthz",
        "/metrics",
        "/openapi.json",
    ] {
        assert!(spec["paths"][path].is_object(), "the spec documents {path}");
    }
}

/// Every malformed request gets a 4xx JSON error, and the server keeps serving.
/// An ingest body is read without a JSON object per event while every event is good, and
/// the general way otherwise: a bad event still refuses its whole body, named by index and
/// field, in either format, and nothing of the body is appended.
#[test]
fn a_bad_event_refuses_its_whole_body_and_is_named() {
    let server = Server::start(loopback());
    let http = agent();
    let good = r#"{"id": "g", "card": "c9", "ts": 9000000, "amount": 1.5}"#;
    let bad = r#"{"id": "h", "card": "c9", "ts": 9100000, "amount": "12"}"#;
    let post = |content_type: &str, body: &str| {
        answer(
            http.post(server.url("/v1/streams/tx/events"))
                .header("content-type", content_type)
                .send(body),
        )
    };
    for (content_type, body) in [
        ("application/json", format!("[{good}, {bad}]")),
        ("application/x-ndjson", format!("{good}\n\n{bad}\n")),
    ] {
        let (status, json) = post(content_type, &body);
        assert_eq!(status, 400, "{content_type}: {json}");
        let error = &json["error"];
        assert_eq!(
            (&error["code"], &error["index"], &error["field"]),
            (&json!("invalid_event"), &json!(1), &json!("amount")),
            "{content_type}: {json}"
        );
        assert_eq!(
            error["message"],
            "event 1, field \"amount\": expected float, found a string"
        );
    }
    let none = server
        .db
        .as_of("c9", &["n_1h"], 9_200_000)
        .unwrap()
        .to_json();
    assert_eq!(
        none["features"]["n_1h"], 0,
        "nothing of a refused body is appended"
    );
    let (status, json) = post("application/json", &format!("[{good}]"));
    assert_eq!(
        (status, json),
        (200, json!({"accepted": 1, "duplicates": 0})),
        "the good event was not taken before"
    );
}

#[test]
fn malformed_input_is_always_a_4xx() {
    let server = Server::start(ServeConfig {
        body_bytes_max: 64 << 10,
        ..loopback()
    });
    let http = agent();
    let deep = format!("{}{}", "[".repeat(5000), "]".repeat(5000));
    let huge_string = format!(
        "[{{\"card\": \"c\", \"ts\": 1, \"city\": \"{}\"}}]",
        "x".repeat(10_000)
    );
    let bodies: Vec<(&str, String)> = vec![
        (
            "/v1/streams/tx/events",
            "[{\"card\": \"c\", \"ts\": 1".into(),
        ),
        ("/v1/streams/tx/events", deep.clone()),
        (
            "/v1/streams/tx/events",
            "[{\"card\": \"c\", \"ts\": 1e999}]".into(),
        ),
        (
            "/v1/streams/tx/events",
            "[{\"card\": \"c\", \"ts\": 1, \"amount\": 123456789012345678901234567890e300}]".into(),
        ),
        (
            "/v1/streams/tx/events",
            "[{\"card\": \"c\", \"ts\": 1, \"amount\": NaN}]".into(),
        ),
        (
            "/v1/streams/tx/events",
            "[{\"card\": \"c\", \"ts\": 1, \"amount\": \"12\"}]".into(),
        ),
        (
            "/v1/streams/tx/events",
            "[{\"card\": 1.5, \"ts\": 1}]".into(),
        ),
        (
            "/v1/streams/tx/events",
            "{\"card\": \"c\", \"ts\": 1}".into(),
        ),
        ("/v1/streams/tx/events", "[]".into()),
        ("/v1/streams/tx/events", huge_string),
        (
            "/v1/streams/nope/events",
            "[{\"card\": \"c\", \"ts\": 1}]".into(),
        ),
        ("/v1/streams/nope/events", "[]".into()),
        (
            "/v1/features/query",
            "{\"entities\": \"c1\", \"features\": []}".into(),
        ),
        (
            "/v1/features/query",
            "{\"entities\": [\"c1\"], \"features\": [\"nope\"]}".into(),
        ),
        (
            "/v1/features/query",
            "{\"entities\": [\"c1\"], \"features\": [\"n_1h\"], \"as_of\": \"tomorrow\"}".into(),
        ),
        (
            "/v1/features/query",
            "{\"entities\": [], \"features\": [], \"extra\": 1}".into(),
        ),
        (
            "/v1/training-set",
            "{\"features\": [\"n_1h\"], \"spine\": [{\"ts\": 1}]}".into(),
        ),
        (
            "/v1/training-set",
            "{\"features\": [\"n_1h\"], \"spine\": [{\"entity\": \"c\", \"ts\": [1]}]}".into(),
        ),
        ("/v1/training-set", deep),
        (
            "/v1/registry",
            "[[feature]]\nname = \"bad\"\nagg = \"median\"\n".into(),
        ),
        ("/v1/registry", "not toml at all [[[".into()),
        (
            "/v1/registry",
            "[[feature]]\nname = \"n_1h\"\nstream = \"tx\"\nagg = \"count\"\nwindow = \"2h\"\n"
                .into(),
        ),
    ];
    let mut answered = 0;
    for (path, body) in &bodies {
        let (status, json) = answer(
            http.post(server.url(path))
                .header("content-type", "application/json")
                .send(body.as_str()),
        );
        assert!(
            (400..500).contains(&status),
            "{path} {}: {status} {json}",
            &body[..body.len().min(60)]
        );
        assert!(
            json["error"]["code"].is_string() && json["error"]["message"].is_string(),
            "{path}: {json}"
        );
        answered += 1;
    }
    for query in [
        "/v1/features",
        "/v1/features?names=n_1h",
        "/v1/features?entity=c1&names=nope",
        "/v1/features?entity=c1&features=n_1h",
        "/v1/features?entity=c1&as_of=yesterday",
        "/v1/features?entity=c1&as_of=99999999999999999999",
        "/nope",
        "/v1/streams/tx/events",
    ] {
        let (status, json) = answer(http.get(server.url(query)).call());
        assert!((400..500).contains(&status), "{query}: {status} {json}");
        assert!(json["error"]["code"].is_string(), "{query}: {json}");
        answered += 1;
    }
    // The path is resolved before the body is read: an unknown stream is a 404 whatever
    // the body holds.
    for body in ["[]", "not json"] {
        let (status, json) = answer(http.post(server.url("/v1/streams/nope/events")).send(body));
        assert_eq!(
            (status, json["error"]["code"].as_str()),
            (404, Some("unknown_stream"))
        );
    }
    // A misspelt query parameter is named, not ignored.
    let (status, json) = answer(
        http.get(server.url("/v1/features?entity=c1&feature=n_1h"))
            .call(),
    );
    assert_eq!(status, 400, "{json}");
    assert!(
        json["error"]["message"]
            .as_str()
            .unwrap()
            .contains("feature"),
        "{json}"
    );
    // Raw requests: invalid UTF-8, oversized bodies with and without Content-Length.
    let addr = server.addr;
    let invalid_utf8 = [&b"POST /v1/streams/tx/events HTTP/1.1\r\nhost: x\r\ncontent-type: application/x-ndjson\r\ncontent-length: 4\r\nconnection: close\r\n\r\n"[..], &[0xff, 0xfe, 0x7b, 0x0a]].concat();
    assert_eq!(raw(addr, &invalid_utf8), 400);
    let declared = b"POST /v1/streams/tx/events HTTP/1.1\r\nhost: x\r\ncontent-length: 100000000\r\nconnection: close\r\n\r\n[";
    assert_eq!(
        raw(addr, declared),
        413,
        "refused from Content-Length, before the body"
    );
    let mut chunked = b"POST /v1/streams/tx/events HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n".to_vec();
    for _ in 0..40 {
        chunked.extend_from_slice(b"1000\r\n");
        chunked.extend_from_slice(&[b' '; 4096]);
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    assert_eq!(raw(addr, &chunked), 413, "a streamed body over the limit");
    assert_eq!(raw(addr, b"GARBAGE\r\n\r\n"), 400);
    answered += 4;
    // Still serving, and nothing of the bad batches was applied.
    let (status, body) = answer(
        http.get(server.url("/v1/features?entity=c&names=n_1h"))
            .call(),
    );
    assert_eq!((status, &body["features"]["n_1h"]), (200, &json!(0)));
    assert!(answered >= 30);
}

/// A client trickling its headers is cut off by the header timeout, while normal requests
/// are served meanwhile; past the concurrency limit, requests are shed with 503.
#[test]
fn slow_headers_are_cut_and_overload_is_shed() {
    let server = Server::start(ServeConfig {
        header_read_timeout_ms: 500,
        concurrency_max: 1,
        ..loopback()
    });
    let addr = server.addr;
    let slow = std::thread::spawn(move || {
        let mut stream = TcpStream::connect(addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let started = std::time::Instant::now();
        let mut closed = false;
        for byte in b"GET /healthz HTTP/1.1\r\nhost: x\r\nx-slow: "
            .iter()
            .chain([b'a'; 40].iter())
        {
            if stream.write_all(&[*byte]).is_err() {
                closed = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let mut rest = Vec::new();
        let _ = stream.read_to_end(&mut rest);
        (
            closed || !String::from_utf8_lossy(&rest).contains("200 OK"),
            started.elapsed(),
        )
    });
    let http = agent();
    for _ in 0..5 {
        let (status, _) = answer(http.get(server.url("/healthz")).call());
        assert_eq!(
            status, 200,
            "normal requests are served while a slow client trickles"
        );
    }
    let (cut, took) = slow.join().unwrap();
    assert!(cut, "the slow client got no answer");
    assert!(took < Duration::from_secs(5), "cut off after {took:?}");

    // Concurrency 1: hold the only slot with a training set, then ask again.
    let spine: Vec<J> = (0..200_000)
        .map(|i| json!({"entity": format!("e{}", i % 1000), "ts": i}))
        .collect();
    let body = json!({"features": ["n_1h", "sum_1d", "last_city"], "spine": spine}).to_string();
    let url = server.url("/v1/training-set");
    let busy = std::thread::spawn(move || {
        // A /healthz below may hold the slot when this arrives: then this one is shed
        // (503, or a broken pipe, the server answering before the body is read); retry.
        for _ in 0..100 {
            match agent().post(&url).send(body.as_str()) {
                Ok(response) if response.status().as_u16() != 503 => {
                    let status = response.status().as_u16();
                    std::io::copy(
                        &mut response.into_body().into_reader(),
                        &mut std::io::sink(),
                    )
                    .unwrap();
                    return status;
                }
                _ => std::thread::sleep(Duration::from_millis(20)),
            }
        }
        panic!("the training set was shed 100 times");
    });
    let mut shed = 0;
    for _ in 0..2000 {
        let mut response = http.get(server.url("/healthz")).call().unwrap();
        if response.status().as_u16() == 503 {
            assert_eq!(response.headers()["retry-after"], "1");
            let body: J =
                serde_json::from_str(&response.body_mut().read_to_string().unwrap()).unwrap();
            assert_eq!(body["error"]["code"], "overloaded");
            shed += 1;
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(busy.join().unwrap(), 200);
    assert_eq!(
        shed, 1,
        "a request over the concurrency limit was shed with 503"
    );
}

#[test]
fn tokens_are_required_and_checked() {
    let refused = fsdb::http::serve(
        Arc::new(Db::open(tempfile::tempdir().unwrap().path(), Options::default()).unwrap()),
        ServeConfig {
            listen: SocketAddr::from(([0, 0, 0, 0], 0)),
            ..ServeConfig::default()
        },
        |_| {},
    );
    assert!(
        refused
            .unwrap_err()
            .to_string()
            .contains("needs a bearer token")
    );

    let server = Server::start(ServeConfig {
        token: Some("s3cret".into()),
        ..loopback()
    });
    let http = agent();
    let (status, body) = answer(http.get(server.url("/v1/registry")).call());
    assert_eq!(
        (status, &body["error"]["code"]),
        (401, &json!("unauthorized"))
    );
    let (status, _) = answer(
        http.get(server.url("/v1/registry"))
            .header("authorization", "Bearer wrong")
            .call(),
    );
    assert_eq!(status, 401);
    let (status, _) = answer(
        http.get(server.url("/v1/registry"))
            .header("authorization", "Bearer s3cret")
            .call(),
    );
    assert_eq!(status, 200);
    let (status, _) = answer(http.get(server.url("/healthz")).call());
    assert_eq!(status, 200, "health checks need no token");
}

/// A feature applied to a running server under continuous ingest is exact from the moment
/// the apply returns: as of a time before the ingest started it holds still, its latest
/// value only grows while events arrive, and once they stop it equals the library's.
#[test]
fn a_feature_applied_under_ingest_is_exact_during_and_after() {
    const BEFORE: i64 = 500;
    const BATCHES: i64 = 40;
    const PER_BATCH: i64 = 50;
    let server = Server::start(loopback());
    let http = agent();
    let event =
        |i: i64| json!({"id": format!("e{i}"), "card": "k", "ts": 1_000_000 + i, "amount": 1.0});
    let first: Vec<J> = (0..BEFORE).map(event).collect();
    let (status, _) = answer(
        http.post(server.url("/v1/streams/tx/events"))
            .send_json(&first),
    );
    assert_eq!(status, 200);

    let addr = server.addr;
    let ingest = std::thread::spawn(move || {
        let http = agent();
        for batch in 0..BATCHES {
            let events: Vec<J> = (0..PER_BATCH)
                .map(|j| event(BEFORE + batch * PER_BATCH + j))
                .collect();
            let (status, body) = answer(
                http.post(format!("http://{addr}/v1/streams/tx/events"))
                    .send_json(&events),
            );
            assert_eq!((status, &body["accepted"]), (200, &json!(PER_BATCH)));
        }
    });

    let defs = "[[feature]]\nname = \"k_all\"\nstream = \"tx\"\nagg = \"count\"\n";
    let (status, body) = answer(
        http.post(server.url("/v1/registry"))
            .header("content-type", "application/toml")
            .send(defs),
    );
    assert_eq!((status, &body["added_features"]), (200, &json!(["k_all"])));
    let last_before = 1_000_000 + BEFORE - 1;
    let mut seen = BEFORE;
    for _ in 0..50 {
        let (status, body) = answer(
            http.get(server.url(&format!(
                "/v1/features?entity=k&names=k_all&as_of={last_before}"
            )))
            .call(),
        );
        assert_eq!((status, &body["features"]["k_all"]), (200, &json!(BEFORE)));
        let (_, body) = answer(
            http.get(server.url("/v1/features?entity=k&names=k_all"))
                .call(),
        );
        let now = body["features"]["k_all"].as_i64().unwrap();
        assert!(
            (seen..=BEFORE + BATCHES * PER_BATCH).contains(&now),
            "latest went from {seen} to {now}"
        );
        seen = now;
    }
    ingest.join().unwrap();
    let (_, body) = answer(
        http.get(server.url("/v1/features?entity=k&names=k_all"))
            .call(),
    );
    assert_eq!(body["features"]["k_all"], BEFORE + BATCHES * PER_BATCH);
    assert_eq!(body, server.db.latest("k", &["k_all"]).unwrap().to_json());
}
