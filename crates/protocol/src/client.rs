//! The HTTP client for a site server's API, used by the CLI, DPs and (later)
//! agents and child sites.

use crate::error::{Error, Result};
use crate::frames::{Frame, FrameDecoder};
use crate::sites::*;
use crate::tls::Fingerprint;
use crate::types::*;
use crate::API;
use cascade_content::ChunkHash;
use futures_util::StreamExt;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::time::Duration;

/// Longest JSON answer read (a job's status for 200,000 workstations is
/// about 50 MiB); a longer one is refused, never buffered whole.
pub const MAX_JSON_ANSWER: usize = 128 * 1024 * 1024;

/// Longest error answer read; the rest is ignored.
const MAX_ERROR_ANSWER: usize = 64 * 1024;

/// Deadline of a request with a JSON answer, from sending to the end of
/// the answer (long polls are held at most 60 s). Chunk streams have none
/// of their own (a transfer may take long at a link's rate limit): each of
/// their reads has the client's read timeout, and every frame is bounded
/// and checked as it arrives.
pub const JSON_DEADLINE: Duration = Duration::from_secs(300);

enum Limited {
    Read(reqwest::Error),
    TooLong,
}

/// Reads an answer's body, at most `limit` bytes of it.
async fn read_limited(
    mut response: reqwest::Response,
    limit: usize,
) -> std::result::Result<Vec<u8>, Limited> {
    if response
        .content_length()
        .is_some_and(|length| length > limit as u64)
    {
        return Err(Limited::TooLong);
    }
    let mut bytes = Vec::new();
    while let Some(piece) = response.chunk().await.map_err(Limited::Read)? {
        if bytes.len() + piece.len() > limit {
            return Err(Limited::TooLong);
        }
        bytes.extend_from_slice(&piece);
    }
    Ok(bytes)
}

/// How long a pooled connection may sit unused before the client drops it:
/// shorter than a server's [`crate::serve::DEFAULT_HEADER_TIMEOUT`], so the
/// client never sends on a connection the server is closing.
pub const POOL_IDLE: Duration = Duration::from_secs(10);

/// A client of one site server, with one credential (admin token or a DP's
/// credential) or none.
#[derive(Clone, Debug)]
pub struct Client {
    base: String,
    token: Option<String>,
    pin: Option<Fingerprint>,
    http: reqwest::Client,
}

/// Checks that `base` is a URL a client can talk to.
pub(crate) fn check_base(base: &str) -> Result<()> {
    let refuse = |problem: String| {
        Err(Error::BadUrl {
            url: base.to_owned(),
            problem,
        })
    };
    let no_scheme = || format!("has no scheme; use https://{base}");
    // `localhost:7400` parses as scheme `localhost`: no `://`, no scheme.
    if !base.contains("://") {
        return refuse(no_scheme());
    }
    match reqwest::Url::parse(base) {
        Ok(url) if url.scheme() == "http" => refuse(format!(
            "is plain HTTP, which Cascade servers do not speak: use https://{}",
            &base["http://".len()..]
        )),
        Ok(url) if url.scheme() != "https" => {
            refuse(format!("has scheme {}; use https://", url.scheme()))
        }
        Ok(url) if !url.has_host() => refuse("names no host".into()),
        Ok(_) => Ok(()),
        Err(err) => refuse(format!("is not a URL: {err}")),
    }
}

impl Client {
    /// A client of the server at `base` (e.g. `https://127.0.0.1:7400`),
    /// accepting only the certificate `pin` names (with none, one the
    /// web's roots vouch for: [`crate::tls::client_builder`]).
    /// Refuses a `base` that is not an `https://` URL, naming the fix
    /// (`127.0.0.1:7400` has no scheme: `https://127.0.0.1:7400`).
    pub fn new(base: &str, token: Option<&str>, pin: Option<Fingerprint>) -> Result<Client> {
        check_base(base)?;
        let http = crate::tls::client_builder(pin)
            .connect_timeout(Duration::from_secs(5))
            .read_timeout(Duration::from_secs(90))
            .pool_idle_timeout(POOL_IDLE)
            .build()
            .map_err(|source| Error::Unreachable {
                url: base.to_owned(),
                source: source.without_url(),
            })?;
        Ok(Client {
            base: base.trim_end_matches('/').to_owned(),
            token: token.map(str::to_owned),
            pin,
            http,
        })
    }

    /// The certificate this client pins, if it pins one.
    pub fn pin(&self) -> Option<Fingerprint> {
        self.pin
    }

    /// The same server with another credential, sharing this client's
    /// connection pool (cheap: one pool serves many simulated agents).
    pub fn with_token(&self, token: &str) -> Client {
        Client {
            base: self.base.clone(),
            token: Some(token.to_owned()),
            pin: self.pin,
            http: self.http.clone(),
        }
    }

    /// The server's base URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    fn url(&self, path: &str) -> String {
        format!("{}{API}{path}", self.base)
    }

    fn request(&self, method: reqwest::Method, url: &str) -> reqwest::RequestBuilder {
        let builder = self.http.request(method, url);
        match &self.token {
            Some(token) => builder.bearer_auth(token),
            None => builder,
        }
    }

    async fn send(&self, url: &str, builder: reqwest::RequestBuilder) -> Result<reqwest::Response> {
        let response = builder.send().await.map_err(|source| Error::Unreachable {
            url: url.to_owned(),
            source: source.without_url(),
        })?;
        if response.status().is_success() {
            return Ok(response);
        }
        let status = response.status().as_u16();
        let text = read_limited(response, MAX_ERROR_ANSWER)
            .await
            .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
            .unwrap_or_default();
        let (code, message) = match serde_json::from_str::<ErrorBody>(&text) {
            Ok(body) => (body.error.code, body.error.message),
            Err(_) => ("http_error".to_owned(), text.trim().to_owned()),
        };
        Err(Error::Refused {
            url: url.to_owned(),
            status,
            code,
            message,
        })
    }

    async fn json<T: DeserializeOwned>(url: &str, response: reqwest::Response) -> Result<T> {
        let bytes = read_limited(response, MAX_JSON_ANSWER)
            .await
            .map_err(|err| match err {
                Limited::Read(source) => Error::Unreachable {
                    url: url.to_owned(),
                    source: source.without_url(),
                },
                Limited::TooLong => Error::BadAnswer {
                    url: url.to_owned(),
                    reason: format!("the answer is longer than {MAX_JSON_ANSWER} bytes"),
                },
            })?;
        serde_json::from_slice(&bytes).map_err(|err| Error::BadAnswer {
            url: url.to_owned(),
            reason: err.to_string(),
        })
    }

    async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        let url = self.url(path);
        let response = self
            .send(
                &url,
                self.request(reqwest::Method::GET, &url)
                    .timeout(JSON_DEADLINE),
            )
            .await?;
        Self::json(&url, response).await
    }

    async fn post<B: Serialize, T: DeserializeOwned>(&self, path: &str, body: &B) -> Result<T> {
        let url = self.url(path);
        let response = self
            .send(
                &url,
                self.request(reqwest::Method::POST, &url)
                    .timeout(JSON_DEADLINE)
                    .json(body),
            )
            .await?;
        Self::json(&url, response).await
    }

    async fn delete<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        let url = self.url(path);
        let response = self
            .send(
                &url,
                self.request(reqwest::Method::DELETE, &url)
                    .timeout(JSON_DEADLINE),
            )
            .await?;
        Self::json(&url, response).await
    }

    async fn put<B: Serialize, T: DeserializeOwned>(&self, path: &str, body: &B) -> Result<T> {
        let url = self.url(path);
        let response = self
            .send(
                &url,
                self.request(reqwest::Method::PUT, &url)
                    .timeout(JSON_DEADLINE)
                    .json(body),
            )
            .await?;
        Self::json(&url, response).await
    }

    /// Who the site is. Needs no credential.
    pub async fn site_info(&self) -> Result<SiteInfo> {
        self.get("/site").await
    }

    /// Which of `hashes` the site's library lacks.
    pub async fn missing_chunks(&self, hashes: &[ChunkHash]) -> Result<Vec<ChunkHash>> {
        let list: ChunkList = self
            .post("/content/missing", &ChunkList::of(hashes.to_vec()))
            .await?;
        Ok(list.hashes)
    }

    /// Tells the site the chunks it sent were damaged (they did not match
    /// their names here): it verifies them and repairs what is damaged on
    /// its side.
    pub async fn report_damaged(&self, hashes: &[ChunkHash]) -> Result<DamageCheck> {
        self.post("/content/damaged", &ChunkList::of(hashes.to_vec()))
            .await
    }

    /// Uploads chunk frames (see [`crate::frames`]) into the site's library.
    pub async fn upload_chunks(&self, frames: bytes::Bytes) -> Result<UploadReport> {
        let url = self.url("/content/chunks");
        let response = self
            .send(
                &url,
                self.request(reqwest::Method::POST, &url)
                    .header("content-type", "application/octet-stream")
                    .body(frames),
            )
            .await?;
        Self::json(&url, response).await
    }

    /// Commits a new package version from chunks already uploaded.
    pub async fn new_version(&self, request: &NewVersionRequest) -> Result<VersionInfo> {
        self.post("/packages", request).await
    }

    /// Has the site read a directory of its own machine as a new version
    /// (refused with `local_ingest_off` or `outside_local_ingest_root`
    /// when it may not).
    pub async fn ingest_local(&self, request: &LocalIngestRequest) -> Result<LocalIngestReport> {
        self.post("/ingest/local", request).await
    }

    /// Every package.
    pub async fn packages(&self) -> Result<Vec<PackageSummary>> {
        self.get("/packages").await
    }

    /// One package in detail.
    pub async fn package(&self, name: &str) -> Result<PackageDetail> {
        self.get(&format!("/packages/{name}")).await
    }

    /// The signed manifest of one version.
    pub async fn manifest(&self, name: &str, version: u64) -> Result<SignedManifestWire> {
        self.get(&format!("/packages/{name}/versions/{version}/manifest"))
            .await
    }

    /// Places a package on DPs.
    pub async fn distribute(
        &self,
        name: &str,
        request: &DistributeRequest,
    ) -> Result<TargetReport> {
        self.post(&format!("/packages/{name}/distribute"), request)
            .await
    }

    /// Asks DPs to re-verify and repair a package they hold.
    pub async fn refresh(&self, name: &str, request: &RefreshRequest) -> Result<TargetReport> {
        self.post(&format!("/packages/{name}/refresh"), request)
            .await
    }

    /// Per-DP status of a package.
    pub async fn package_status(&self, name: &str) -> Result<PackageStatus> {
        self.get(&format!("/packages/{name}/status")).await
    }

    /// Every status message about a package, in arrival order.
    pub async fn package_messages(&self, name: &str) -> Result<Vec<StatusRecord>> {
        self.get(&format!("/packages/{name}/messages")).await
    }

    /// Every DP of the site.
    pub async fn dps(&self) -> Result<Vec<DpInfo>> {
        self.get("/dps").await
    }

    /// Enrolls a DP with the join token.
    pub async fn enroll_dp(&self, request: &EnrollRequest) -> Result<EnrollResponse> {
        self.post("/dps/enroll", request).await
    }

    /// A DP announces its content URL.
    pub async fn dp_hello(&self, hello: &DpHello) -> Result<()> {
        let _: serde_json::Value = self.post("/dp/hello", hello).await?;
        Ok(())
    }

    /// Long poll for a DP's assignments: answers at once if the set changed
    /// since `after`, otherwise after a change or `wait`.
    pub async fn assignments(&self, after: u64, wait: Duration) -> Result<Assignments> {
        let path = format!("/dp/assignments?after={after}&wait_ms={}", wait.as_millis());
        self.get(&path).await
    }

    /// Fetches chunks as frames, calling `on_frame` for each as it arrives.
    /// Returns the bytes received on the wire.
    pub async fn fetch_chunks(
        &self,
        list: &ChunkList,
        mut on_frame: impl FnMut(Frame) -> Result<()>,
    ) -> Result<u64> {
        let url = self.url("/content/fetch");
        let response = self
            .send(&url, self.request(reqwest::Method::POST, &url).json(list))
            .await?;
        let mut decoder = FrameDecoder::default();
        let mut received = 0u64;
        let mut stream = response.bytes_stream();
        while let Some(piece) = stream.next().await {
            let piece = piece.map_err(|source| Error::Unreachable {
                url: url.clone(),
                source: source.without_url(),
            })?;
            received += piece.len() as u64;
            decoder.push(&piece);
            while let Some(frame) = decoder.next_frame().map_err(Error::Frame)? {
                on_frame(frame)?;
            }
        }
        decoder.finish().map_err(Error::Frame)?;
        Ok(received)
    }

    /// Opens a chunk fetch and returns the frames as they arrive (a child
    /// site stores each one as it comes, so an interrupted transfer loses
    /// at most the frames in flight).
    pub async fn open_chunks(&self, list: &ChunkList) -> Result<ChunkStream> {
        let url = self.url("/content/fetch");
        let response = self
            .send(&url, self.request(reqwest::Method::POST, &url).json(list))
            .await?;
        Ok(ChunkStream {
            url,
            response,
            decoder: FrameDecoder::default(),
            received: 0,
        })
    }

    /// Delivers a batch of status messages.
    pub async fn post_status(&self, batch: &StatusBatch) -> Result<StatusAck> {
        self.post("/status", batch).await
    }

    /// Enrolls an agent with the join token.
    pub async fn enroll_agent(&self, request: &AgentEnrollRequest) -> Result<AgentEnrollResponse> {
        self.post("/agents/enroll", request).await
    }

    /// An agent reports its current attributes.
    pub async fn agent_hello(&self, report: &AgentReport) -> Result<()> {
        let _: serde_json::Value = self.post("/agent/hello", report).await?;
        Ok(())
    }

    /// Long poll for an agent's policy.
    pub async fn agent_policy(&self, after: u64, wait: Duration) -> Result<AgentPolicy> {
        self.get(&format!(
            "/agent/policy?after={after}&wait_ms={}",
            wait.as_millis()
        ))
        .await
    }

    /// Every agent of the site.
    pub async fn agents(&self) -> Result<Vec<AgentInfo>> {
        self.get("/agents").await
    }

    /// A content ticket for the administrator, valid for `valid` (at most
    /// a day).
    pub async fn content_ticket(&self, valid: Option<Duration>) -> Result<ContentTicket> {
        self.post(
            "/content/ticket",
            &ContentTicketRequest {
                valid_ms: valid.map(|valid| valid.as_millis() as u64),
            },
        )
        .await
    }

    /// Admits a DP, at `url` or at the URL it announced.
    pub async fn approve_dp(&self, name: &str, url: Option<&str>) -> Result<DpInfo> {
        self.post(
            &format!("/dps/{name}/approve"),
            &DpApproval {
                url: url.map(str::to_owned),
            },
        )
        .await
    }

    /// Approves an agent waiting for approval.
    pub async fn approve_agent(&self, name: &str) -> Result<AgentInfo> {
        self.post(&format!("/agents/{name}/approve"), &serde_json::json!({}))
            .await
    }

    /// Creates a collection.
    pub async fn create_collection(&self, request: &CollectionRequest) -> Result<CollectionInfo> {
        self.post("/collections", request).await
    }

    /// Changes a collection's definition (`request.name` names it).
    pub async fn edit_collection(&self, request: &CollectionRequest) -> Result<CollectionInfo> {
        self.post(&format!("/collections/{}/edit", request.name), request)
            .await
    }

    /// Every collection with its members.
    pub async fn collections(&self) -> Result<Vec<CollectionInfo>> {
        self.get("/collections").await
    }

    /// One collection with its members.
    pub async fn collection(&self, name: &str) -> Result<CollectionInfo> {
        self.get(&format!("/collections/{name}")).await
    }

    /// Adds a maintenance window to a collection.
    pub async fn add_collection_window(
        &self,
        name: &str,
        window: &WindowSpec,
    ) -> Result<CollectionInfo> {
        self.post(&format!("/collections/{name}/windows"), window)
            .await
    }

    /// Removes every maintenance window of a collection.
    pub async fn clear_collection_windows(&self, name: &str) -> Result<CollectionInfo> {
        self.delete(&format!("/collections/{name}/windows")).await
    }

    /// The site's settings.
    pub async fn settings(&self) -> Result<SiteSettings> {
        self.get("/settings").await
    }

    /// Changes the site's settings.
    pub async fn put_settings(&self, settings: &SiteSettings) -> Result<SiteSettings> {
        self.put("/settings", settings).await
    }

    /// Creates a job.
    pub async fn create_job(&self, request: &JobRequest) -> Result<JobInfo> {
        self.post("/jobs", request).await
    }

    /// Every job.
    pub async fn jobs(&self) -> Result<Vec<JobInfo>> {
        self.get("/jobs").await
    }

    /// Cancels a job.
    pub async fn edit_job(&self, id: u64, request: &JobEditRequest) -> Result<JobInfo> {
        self.post(&format!("/jobs/{id}/edit"), request).await
    }

    /// Cancels a job everywhere.
    pub async fn cancel_job(&self, id: u64) -> Result<JobInfo> {
        self.post(&format!("/jobs/{id}/cancel"), &serde_json::json!({}))
            .await
    }

    /// A job's status, per site, per workstation and per DP.
    pub async fn job_status(&self, id: u64) -> Result<JobStatus> {
        self.get(&format!("/jobs/{id}/status")).await
    }

    /// A child site joins this site with its join token.
    pub async fn enroll_site(&self, request: &SiteEnrollRequest) -> Result<SiteEnrollResponse> {
        self.post("/sites/enroll", request).await
    }

    /// A site registers a site that joined below it.
    pub async fn register_site(&self, registration: &SiteRegistration) -> Result<()> {
        let _: serde_json::Value = self.post("/sites/register", registration).await?;
        Ok(())
    }

    /// This site and every site below it.
    pub async fn sites(&self) -> Result<Vec<SiteSummary>> {
        self.get("/sites").await
    }

    /// Sets the rate limit of the link to a direct child.
    pub async fn set_link(&self, child: &str, request: &LinkRequest) -> Result<SiteSummary> {
        self.put(&format!("/sites/{child}/link"), request).await
    }

    /// Long poll of a child site for its instructions after `after`.
    pub async fn instructions(
        &self,
        after: u64,
        wait: Duration,
        timestamp_ms: Option<i64>,
    ) -> Result<Instructions> {
        let timestamp = timestamp_ms.map_or(String::new(), |ms| format!("&timestamp_ms={ms}"));
        self.get(&format!(
            "/site/instructions?after={after}&wait_ms={}{timestamp}",
            wait.as_millis()
        ))
        .await
    }

    /// A child site tells its parent which content it needs.
    pub async fn put_wants(&self, wants: &ContentWants) -> Result<()> {
        let _: serde_json::Value = self.put("/site/wants", wants).await?;
        Ok(())
    }

    /// A child site relays status messages up.
    pub async fn relay_status(&self, batch: &RelayBatch) -> Result<RelayAck> {
        self.post("/site/status", batch).await
    }

    /// What waits at the site, and why.
    pub async fn queues(&self) -> Result<SiteQueues> {
        self.get("/site/queues").await
    }

    /// Every DP group.
    pub async fn dp_groups(&self) -> Result<Vec<DpGroupInfo>> {
        self.get("/dp-groups").await
    }

    /// Creates a DP group.
    pub async fn create_dp_group(&self, request: &DpGroupRequest) -> Result<DpGroupInfo> {
        self.post("/dp-groups", request).await
    }
}

/// Chunk frames arriving from `/content/fetch`.
pub struct ChunkStream {
    url: String,
    response: reqwest::Response,
    decoder: FrameDecoder,
    received: u64,
}

impl ChunkStream {
    /// The next frame, or none at the end of the answer.
    pub async fn next_frame(&mut self) -> Result<Option<Frame>> {
        loop {
            if let Some(frame) = self.decoder.next_frame().map_err(Error::Frame)? {
                return Ok(Some(frame));
            }
            let piece = self
                .response
                .chunk()
                .await
                .map_err(|source| Error::Unreachable {
                    url: self.url.clone(),
                    source: source.without_url(),
                })?;
            match piece {
                Some(piece) => {
                    self.received += piece.len() as u64;
                    self.decoder.push(&piece);
                }
                None => {
                    self.decoder.finish().map_err(Error::Frame)?;
                    return Ok(None);
                }
            }
        }
    }

    /// Bytes received on the wire so far.
    pub fn received(&self) -> u64 {
        self.received
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// [`crate::testing::endless_server`], with a client pinning it.
    async fn endless_server(head: &'static str) -> (String, reqwest::Client, Fingerprint) {
        let (url, pin) = crate::testing::endless_server(head).await;
        let http = crate::tls::client_builder(Some(pin)).build().unwrap();
        (url, http, pin)
    }

    /// Issue 12: a hostile server's answer was buffered whole
    /// (`response.bytes()`); now no more than the limit is read.
    #[tokio::test]
    async fn an_endless_answer_is_cut_at_the_limit() {
        let (url, http, _) =
            endless_server("HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\r\n").await;
        let response = http.get(&url).send().await.unwrap();
        assert!(matches!(
            read_limited(response, 1024 * 1024).await,
            Err(Limited::TooLong)
        ));
        // One that announces too much is refused before reading.
        let (url, http, _) =
            endless_server("HTTP/1.1 200 OK\r\ncontent-length: 999999999999\r\n\r\n").await;
        let response = http.get(&url).send().await.unwrap();
        assert!(matches!(
            read_limited(response, 1024).await,
            Err(Limited::TooLong)
        ));
        // Through the client: a clear error, not an exhausted process.
        let (url, _, pin) =
            endless_server("HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\r\n").await;
        let err = Client::new(&url, None, Some(pin))
            .unwrap()
            .site_info()
            .await
            .unwrap_err();
        assert!(err.to_string().contains("longer than"), "{err}");
    }

    /// Issue 12: a client pinning one certificate refuses a server that
    /// presents another, naming both.
    #[tokio::test]
    async fn a_server_with_another_certificate_is_refused() {
        let (url, _, _) = endless_server("HTTP/1.1 200 OK\r\n\r\n").await;
        let other = Fingerprint::of(b"another certificate");
        let err = Client::new(&url, None, Some(other))
            .unwrap()
            .site_info()
            .await
            .unwrap_err();
        let text = crate::chain(&err);
        assert!(
            text.contains("not the pinned") && text.contains(&other.to_string()),
            "{text}"
        );
    }

    #[test]
    fn a_server_url_without_a_scheme_names_the_fix() {
        for bare in ["127.0.0.1:7400", "localhost:7400", "site.example"] {
            let err = Client::new(bare, None, None).err().unwrap().to_string();
            assert_eq!(
                err,
                format!("server URL {bare} has no scheme; use https://{bare}")
            );
        }
        let err = Client::new("ftp://host", None, None)
            .err()
            .unwrap()
            .to_string();
        assert_eq!(err, "server URL ftp://host has scheme ftp; use https://");
        // Issue 12: plain HTTP is refused before anything is sent.
        let err = Client::new("http://127.0.0.1:7400/", None, None)
            .err()
            .unwrap()
            .to_string();
        assert_eq!(
            err,
            "server URL http://127.0.0.1:7400/ is plain HTTP, which Cascade servers do not speak: use https://127.0.0.1:7400/"
        );
        assert!(Client::new("https://site.example", None, None).is_ok());
    }
}
