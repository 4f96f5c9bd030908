//! The routes in-process, through the router with
//! `tower::ServiceExt::oneshot`: authentication, the mapping of errors to
//! statuses and codes, and bad input. The scenario tests (real processes,
//! real sockets) remain the end-to-end check.

use super::error::status_and_code;
use super::router;
use crate::error::{Entity, Error};
use crate::testing::TestState;
use axum::body::Body;
use axum::http::{header, Method, Request, StatusCode};
use cascade_protocol::{ErrorBody, MAX_CONTROL_BODY};
use serde_json::{json, Value};
use tower::ServiceExt;

/// One request through a fresh router: the status and the JSON answer.
async fn call(
    site: &TestState,
    method: Method,
    uri: &str,
    token: Option<&str>,
    body: Option<String>,
) -> (StatusCode, Value) {
    let mut request = Request::builder().method(method).uri(uri);
    if let Some(token) = token {
        request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
    }
    let request = match body {
        Some(body) => request
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(body)),
        None => request.body(Body::empty()),
    }
    .unwrap();
    let response = router(site.state.clone()).oneshot(request).await.unwrap();
    let status = response.status();
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .unwrap();
    let value = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes)
            .unwrap_or_else(|err| panic!("{uri} answered {status} with no JSON ({err}): {bytes:?}"))
    };
    (status, value)
}

/// The stable code of an error answer (its body parses as [`ErrorBody`]).
fn code(answer: &Value) -> String {
    let body: ErrorBody = serde_json::from_value(answer.clone())
        .unwrap_or_else(|err| panic!("not an error body ({err}): {answer}"));
    body.error.code
}

/// A DP enrolled through the route; its credential.
async fn dp(site: &TestState, name: &str) -> String {
    let body = json!({ "name": name, "join_token": site.report.dp_join_token }).to_string();
    let (status, answer) = call(site, Method::POST, "/api/v1/dps/enroll", None, Some(body)).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    answer["credential"].as_str().unwrap().to_owned()
}

/// An agent enrolled through the route; its credential.
async fn agent(site: &TestState, name: &str) -> String {
    let body = json!({
        "name": name,
        "join_token": site.report.join_token,
        "report": { "os": "linux", "arch": "x86_64", "hostname": name },
    })
    .to_string();
    let (status, answer) = call(
        site,
        Method::POST,
        "/api/v1/agents/enroll",
        None,
        Some(body),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    answer["credential"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn who_the_site_is_needs_no_credential() {
    let site = TestState::open().await;
    let (status, answer) = call(&site, Method::GET, "/api/v1/site", None, None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(answer["code"], "CEN");
    assert_eq!(answer["kind"], "central");
}

#[tokio::test]
async fn a_request_without_a_valid_credential_is_unauthorized() {
    let site = TestState::open().await;
    let admin = site.report.admin_token.as_str();
    let (status, answer) = call(&site, Method::GET, "/api/v1/packages", None, None).await;
    assert_eq!(
        (status, code(&answer)),
        (StatusCode::UNAUTHORIZED, "unauthorized".into())
    );
    let (status, answer) = call(
        &site,
        Method::GET,
        "/api/v1/packages",
        Some("cas_admin_0000"),
        None,
    )
    .await;
    assert_eq!(
        (status, code(&answer)),
        (StatusCode::UNAUTHORIZED, "unauthorized".into())
    );
    assert!(answer["error"]["message"]
        .as_str()
        .unwrap()
        .contains("unknown credential"));
    // Not a bearer token.
    let request = Request::get("/api/v1/packages")
        .header(header::AUTHORIZATION, format!("Basic {admin}"))
        .body(Body::empty())
        .unwrap();
    let response = router(site.state.clone()).oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    // The join token enrolls; it is no credential for the API.
    let join = site.report.join_token.clone();
    let (status, answer) = call(&site, Method::GET, "/api/v1/packages", Some(&join), None).await;
    assert_eq!(
        (status, code(&answer)),
        (StatusCode::UNAUTHORIZED, "unauthorized".into())
    );
    let (status, _) = call(&site, Method::GET, "/api/v1/packages", Some(admin), None).await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn each_credential_reaches_only_its_own_routes() {
    let site = TestState::open().await;
    let admin = site.report.admin_token.clone();
    let dp = dp(&site, "dp1").await;
    let agent = agent(&site, "ws1").await;
    for (token, uri) in [
        (&dp, "/api/v1/packages"),
        (&agent, "/api/v1/agents"),
        (&admin, "/api/v1/dp/assignments"),
        (&agent, "/api/v1/dp/assignments"),
        (&dp, "/api/v1/agent/policy"),
        (&admin, "/api/v1/site/instructions"),
        (&dp, "/api/v1/site/queues"),
    ] {
        let (status, answer) = call(&site, Method::GET, uri, Some(token), None).await;
        assert_eq!(
            (status, code(&answer)),
            (StatusCode::FORBIDDEN, "forbidden".into()),
            "{uri}: {answer}"
        );
    }
    // Status messages come from DPs and agents only.
    let (status, answer) = call(
        &site,
        Method::POST,
        "/api/v1/status",
        Some(&admin),
        Some(json!({ "messages": [] }).to_string()),
    )
    .await;
    assert_eq!(
        (status, code(&answer)),
        (StatusCode::FORBIDDEN, "forbidden".into())
    );
}

#[tokio::test]
async fn unknown_names_answer_404_with_the_kind_in_the_code() {
    let site = TestState::open().await;
    let admin = Some(site.report.admin_token.as_str());
    for (method, uri, expected) in [
        (Method::GET, "/api/v1/packages/nope", "unknown_package"),
        (
            Method::GET,
            "/api/v1/packages/nope/status",
            "unknown_package",
        ),
        (Method::GET, "/api/v1/jobs/41/status", "unknown_job"),
        (Method::POST, "/api/v1/jobs/41/cancel", "unknown_job"),
        (
            Method::GET,
            "/api/v1/collections/nope",
            "unknown_collection",
        ),
        (Method::POST, "/api/v1/agents/nope/approve", "unknown_agent"),
        (Method::GET, "/api/v1/nothing/here", "no_such_route"),
    ] {
        let (status, answer) = call(&site, method, uri, admin, None).await;
        assert_eq!(
            (status, code(&answer)),
            (StatusCode::NOT_FOUND, expected.into()),
            "{uri}: {answer}"
        );
    }
    let (status, answer) = call(
        &site,
        Method::PUT,
        "/api/v1/sites/NOPE/link",
        admin,
        Some(json!({ "max_rate": 1000 }).to_string()),
    )
    .await;
    assert_eq!(
        (status, code(&answer)),
        (StatusCode::NOT_FOUND, "unknown_site".into())
    );
    let (status, answer) = call(
        &site,
        Method::POST,
        "/api/v1/packages/tools/distribute",
        admin,
        Some(json!({ "dps": ["dp1"] }).to_string()),
    )
    .await;
    assert_eq!(
        (status, code(&answer)),
        (StatusCode::NOT_FOUND, "unknown_package".into())
    );
    let (status, answer) = call(&site, Method::DELETE, "/api/v1/packages", admin, None).await;
    assert_eq!(
        (status, code(&answer)),
        (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed".into())
    );
}

#[tokio::test]
async fn bad_input_is_refused_with_a_stable_code() {
    let site = TestState::open().await;
    let admin = Some(site.report.admin_token.as_str());
    let dp = dp(&site, "dp1").await;
    // Not JSON, the wrong shape, too large.
    for body in ["{not json".to_owned(), json!({ "name": 3 }).to_string()] {
        let (status, answer) = call(
            &site,
            Method::POST,
            "/api/v1/collections",
            admin,
            Some(body),
        )
        .await;
        assert_eq!(
            (status, code(&answer)),
            (StatusCode::BAD_REQUEST, "malformed_request".into()),
            "{answer}"
        );
    }
    let huge = format!("{{\"name\": \"{}\"}}", "x".repeat(MAX_CONTROL_BODY + 1));
    let (status, answer) = call(
        &site,
        Method::POST,
        "/api/v1/collections",
        admin,
        Some(huge),
    )
    .await;
    assert_eq!(
        (status, code(&answer)),
        (StatusCode::PAYLOAD_TOO_LARGE, "too_large".into())
    );
    // A query that does not parse.
    let (status, answer) = call(
        &site,
        Method::GET,
        "/api/v1/dp/assignments?after=x",
        Some(&dp),
        None,
    )
    .await;
    assert_eq!(
        (status, code(&answer)),
        (StatusCode::BAD_REQUEST, "malformed_request".into())
    );
    // Names, commands, members.
    let bad_name = json!({ "name": "no spaces please", "join_token": site.report.join_token });
    let (status, answer) = call(
        &site,
        Method::POST,
        "/api/v1/dps/enroll",
        None,
        Some(bad_name.to_string()),
    )
    .await;
    assert_eq!(
        (status, code(&answer)),
        (StatusCode::BAD_REQUEST, "invalid_name".into())
    );
    let job = json!({ "package": "tools", "collection": "all", "command": "  " });
    let (status, answer) = call(
        &site,
        Method::POST,
        "/api/v1/jobs",
        admin,
        Some(job.to_string()),
    )
    .await;
    assert_eq!(
        (status, code(&answer)),
        (StatusCode::BAD_REQUEST, "invalid_command".into())
    );
    let collection = json!({ "name": "kiosks", "machines": ["ws9"] });
    let (status, answer) = call(
        &site,
        Method::POST,
        "/api/v1/collections",
        admin,
        Some(collection.to_string()),
    )
    .await;
    assert_eq!(
        (status, code(&answer)),
        (StatusCode::BAD_REQUEST, "unknown_machines".into())
    );
    // Enrolling twice, or with the wrong token (the workstations' join
    // token does not enroll a DP).
    let workstations = json!({ "name": "dp7", "join_token": site.report.join_token });
    let (status, answer) = call(
        &site,
        Method::POST,
        "/api/v1/dps/enroll",
        None,
        Some(workstations.to_string()),
    )
    .await;
    assert_eq!(
        (status, code(&answer)),
        (StatusCode::UNAUTHORIZED, "unauthorized".into())
    );
    let again = json!({ "name": "dp1", "join_token": site.report.dp_join_token });
    let (status, answer) = call(
        &site,
        Method::POST,
        "/api/v1/dps/enroll",
        None,
        Some(again.to_string()),
    )
    .await;
    assert_eq!(
        (status, code(&answer)),
        (StatusCode::CONFLICT, "conflict".into())
    );
    let wrong = json!({ "name": "dp2", "join_token": site.report.admin_token });
    let (status, answer) = call(
        &site,
        Method::POST,
        "/api/v1/dps/enroll",
        None,
        Some(wrong.to_string()),
    )
    .await;
    assert_eq!(
        (status, code(&answer)),
        (StatusCode::UNAUTHORIZED, "unauthorized".into())
    );
    // Nothing of the refused requests was stored.
    let (status, answer) = call(&site, Method::GET, "/api/v1/dps", admin, None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(answer.as_array().unwrap().len(), 1, "{answer}");
    let (_, answer) = call(&site, Method::GET, "/api/v1/collections", admin, None).await;
    assert_eq!(answer, json!([]));
}

#[test]
fn every_error_kind_has_one_status_and_code() {
    let io = || std::io::Error::other("disk");
    let cases: Vec<(Error, StatusCode, &str, bool)> = vec![
        (
            Error::Unauthorized("x".into()),
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            true,
        ),
        (
            Error::Forbidden("x".into()),
            StatusCode::FORBIDDEN,
            "forbidden",
            true,
        ),
        (
            Error::not_found(Entity::DpGroup, "g"),
            StatusCode::NOT_FOUND,
            "unknown_dp_group",
            true,
        ),
        (
            Error::not_found(Entity::Version, "p v2"),
            StatusCode::NOT_FOUND,
            "unknown_version",
            true,
        ),
        (
            Error::not_found(Entity::Dp, "dp1"),
            StatusCode::NOT_FOUND,
            "unknown_dp",
            true,
        ),
        (
            Error::not_found(Entity::Chunk, "ab"),
            StatusCode::NOT_FOUND,
            "not_found",
            true,
        ),
        (
            Error::Conflict("x".into()),
            StatusCode::CONFLICT,
            "conflict",
            true,
        ),
        (
            Error::invalid("invalid_rule", "x"),
            StatusCode::BAD_REQUEST,
            "invalid_rule",
            true,
        ),
        (
            Error::TooLarge("x".into()),
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            true,
        ),
        (
            Error::Unavailable {
                code: "parent_unreachable",
                message: "x".into(),
            },
            StatusCode::SERVICE_UNAVAILABLE,
            "parent_unreachable",
            false,
        ),
        (
            Error::io("reading")(io()),
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            false,
        ),
        (
            Error::json("decoding")(serde_json::from_str::<u8>("x").unwrap_err()),
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            false,
        ),
        (
            Error::Internal("x".into()),
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            false,
        ),
    ];
    for (err, status, code, never) in cases {
        assert_eq!(status_and_code(&err), (status, code), "{err:?}");
        assert_eq!(err.can_never_apply(), never, "{err:?}");
    }
    // The not-found message names the kind and the name.
    assert_eq!(
        Error::not_found(Entity::DpGroup, "g").to_string(),
        "unknown dp group \"g\""
    );
    // Internal errors keep their source for the log's chain.
    let err = Error::io("reading site.key")(io());
    assert_eq!(cascade_protocol::chain(&err), "reading site.key: disk");
}

/// Issue 12: a DP announces the URL and TLS certificate it serves with.
/// Agents are told to pin that certificate, so the announcement is
/// checked: an `http://` URL and a fingerprint that is not 64 hex digits
/// are refused with their codes, and nothing is recorded; a good one is
/// shown in `dp list`, normalised to lowercase hex.
#[tokio::test]
async fn a_dp_announcement_is_checked_before_agents_pin_it() {
    let site = TestState::open().await;
    let dp = dp(&site, "dp1").await;
    let admin = Some(site.report.admin_token.as_str());
    let hello = |url: &str, certificate: &str| {
        Some(json!({ "url": url, "certificate": certificate }).to_string())
    };
    let good = "AB".repeat(32);
    for (body, expected) in [
        (hello("http://127.0.0.1:9", &good), "invalid_url"),
        (hello("https://127.0.0.1:9", "abc"), "invalid_certificate"),
        (
            hello("https://127.0.0.1:9", &"zz".repeat(32)),
            "invalid_certificate",
        ),
    ] {
        let (status, answer) = call(&site, Method::POST, "/api/v1/dp/hello", Some(&dp), body).await;
        assert_eq!(
            (status, code(&answer)),
            (StatusCode::BAD_REQUEST, expected.into()),
            "{answer}"
        );
    }
    let (_, listed) = call(&site, Method::GET, "/api/v1/dps", admin, None).await;
    assert_eq!(listed[0]["announced_url"], Value::Null, "{listed}");
    assert_eq!(listed[0]["certificate"], Value::Null, "{listed}");
    let body = hello("https://127.0.0.1:9", &good);
    let (status, answer) = call(&site, Method::POST, "/api/v1/dp/hello", Some(&dp), body).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let (_, listed) = call(&site, Method::GET, "/api/v1/dps", admin, None).await;
    assert_eq!(listed[0]["certificate"], "ab".repeat(32), "{listed}");
}

/// Issue 13: a receiver says chunks this site sent it were damaged. Only an
/// admitted DP or a child site may say so; the site verifies each chunk it
/// is told of, and removes only those whose stored bytes do not match
/// their name (an intact chunk stays, whatever the receiver claims).
#[tokio::test]
async fn a_damage_report_is_checked_against_the_library() {
    use std::os::unix::fs::FileExt;
    let site = TestState::open().await;
    let admin = site.report.admin_token.clone();
    let dp = dp(&site, "dp1").await;
    let store = site.state.store.clone();
    let chunks: Vec<cascade_content::ChunkHash> = (0..2u8)
        .map(|i| {
            let data = vec![i; 10_000];
            let hash = cascade_content::ChunkHash::of(&data);
            store.put(&hash, &data).unwrap();
            hash
        })
        .collect();
    let report = json!({ "hashes": chunks }).to_string();
    let uri = "/api/v1/content/damaged";
    let (status, answer) = call(&site, Method::POST, uri, Some(&dp), Some(report.clone())).await;
    assert_eq!(
        (status, code(&answer)),
        (StatusCode::FORBIDDEN, "forbidden".into()),
        "a DP waiting for approval: {answer}"
    );
    let (status, answer) = call(&site, Method::POST, uri, Some(&admin), Some(report.clone())).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{answer}");
    let approval = json!({ "url": "https://dp1.example:7443" }).to_string();
    let (status, answer) = call(
        &site,
        Method::POST,
        "/api/v1/dps/dp1/approve",
        Some(&admin),
        Some(approval),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{answer}");

    // Both intact: nothing removed.
    let (status, answer) = call(&site, Method::POST, uri, Some(&dp), Some(report.clone())).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(
        (answer["checked"].as_u64(), answer["damaged"].as_u64()),
        (Some(2), Some(0))
    );
    assert!(store.contains(&chunks[0]) && store.contains(&chunks[1]));

    // The first damaged on disk: removed; the second stays.
    let at = store.location(&chunks[0]).unwrap();
    let pack = std::fs::OpenOptions::new()
        .write(true)
        .open(&at.pack)
        .unwrap();
    pack.write_all_at(b"\xff\xff", at.offset + at.len / 2)
        .unwrap();
    let (status, answer) = call(&site, Method::POST, uri, Some(&dp), Some(report)).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["damaged"], 1, "{answer}");
    assert!(!store.contains(&chunks[0]) && store.contains(&chunks[1]));

    let agent = agent(&site, "ws1").await;
    let (status, _) = call(
        &site,
        Method::POST,
        uri,
        Some(&agent),
        Some(json!({ "hashes": [chunks[1]] }).to_string()),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let too_many: Vec<cascade_content::ChunkHash> = (0..=crate::service::repair::MAX_REPORTED
        as u8)
        .map(|i| cascade_content::ChunkHash::of(&[i]))
        .collect();
    let too_many = json!({ "hashes": too_many });
    let (status, answer) = call(
        &site,
        Method::POST,
        uri,
        Some(&dp),
        Some(too_many.to_string()),
    )
    .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{answer}");
}
