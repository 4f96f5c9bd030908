//! The schema: migrations applied in order.

/// Schema migrations, applied in order; `PRAGMA user_version` records how
/// many have run. Never edit a released migration: add one.
pub const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE site (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    code TEXT NOT NULL,
    kind TEXT NOT NULL,
    created_at_ms INTEGER NOT NULL
);
-- Credentials are stored as BLAKE3 hashes; the tokens themselves never are.
CREATE TABLE credentials (
    token_hash BLOB PRIMARY KEY,
    role TEXT NOT NULL CHECK (role IN ('admin', 'join', 'dp')),
    principal TEXT NOT NULL,
    created_at_ms INTEGER NOT NULL
);
CREATE TABLE packages (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    all_dps INTEGER NOT NULL DEFAULT 0,
    created_at_ms INTEGER NOT NULL
);
CREATE TABLE package_versions (
    package_id INTEGER NOT NULL REFERENCES packages(id),
    version INTEGER NOT NULL CHECK (version > 0),
    manifest BLOB NOT NULL,
    signature BLOB NOT NULL,
    total_size INTEGER NOT NULL,
    file_count INTEGER NOT NULL,
    chunk_count INTEGER NOT NULL,
    created_at_ms INTEGER NOT NULL,
    PRIMARY KEY (package_id, version)
);
CREATE TABLE dps (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    url TEXT,
    enrolled_at_ms INTEGER NOT NULL,
    last_seen_ms INTEGER,
    revision INTEGER NOT NULL DEFAULT 0
);
-- The distribution queue: one entry per (package, DP) saying which version
-- the DP must hold. A newer version supersedes the entry in place, so there
-- is never a stale entry for an older version left to process.
CREATE TABLE distributions (
    package_id INTEGER NOT NULL REFERENCES packages(id),
    dp_id INTEGER NOT NULL REFERENCES dps(id),
    version INTEGER NOT NULL,
    refresh INTEGER NOT NULL DEFAULT 0,
    updated_at_ms INTEGER NOT NULL,
    PRIMARY KEY (package_id, dp_id)
);
-- Status messages, immutable, one row per (source, seq).
CREATE TABLE status_messages (
    id INTEGER PRIMARY KEY,
    source TEXT NOT NULL,
    seq INTEGER NOT NULL,
    at_ms INTEGER NOT NULL,
    received_at_ms INTEGER NOT NULL,
    kind TEXT NOT NULL,
    package TEXT,
    dp TEXT,
    body TEXT NOT NULL,
    UNIQUE (source, seq)
);
CREATE INDEX status_messages_by_package ON status_messages (package, id);
-- Per source: the highest sequence number stored (for acks), and for the
-- site's own messages the last number handed out.
CREATE TABLE status_sources (
    source TEXT PRIMARY KEY,
    last_seq INTEGER NOT NULL
);
"#,
    r#"
-- Agents: one per managed workstation.
CREATE TABLE credentials_v2 (
    token_hash BLOB PRIMARY KEY,
    role TEXT NOT NULL CHECK (role IN ('admin', 'join', 'dp', 'agent')),
    principal TEXT NOT NULL,
    created_at_ms INTEGER NOT NULL
);
INSERT INTO credentials_v2 SELECT token_hash, role, principal, created_at_ms FROM credentials;
DROP TABLE credentials;
ALTER TABLE credentials_v2 RENAME TO credentials;
CREATE TABLE agents (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    os TEXT NOT NULL,
    arch TEXT NOT NULL,
    hostname TEXT NOT NULL,
    tags TEXT NOT NULL,
    approved INTEGER NOT NULL,
    enrolled_at_ms INTEGER NOT NULL,
    last_seen_ms INTEGER,
    revision INTEGER NOT NULL DEFAULT 1
);
CREATE TABLE settings (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
-- A collection is either a list of workstation names or a rule.
CREATE TABLE collections (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    machines TEXT,
    rule TEXT,
    created_at_ms INTEGER NOT NULL,
    CHECK ((machines IS NULL) <> (rule IS NULL))
);
"#,
    r#"
-- Jobs: run a command from a package version on a collection.
CREATE TABLE jobs (
    id INTEGER PRIMARY KEY,
    package_id INTEGER NOT NULL REFERENCES packages(id),
    version INTEGER NOT NULL,
    collection_id INTEGER NOT NULL REFERENCES collections(id),
    command TEXT NOT NULL,
    offer_at_ms INTEGER NOT NULL,
    expires_at_ms INTEGER,
    optional INTEGER NOT NULL,
    retries INTEGER NOT NULL,
    retry_delay_ms INTEGER NOT NULL,
    timeout_ms INTEGER,
    success_codes TEXT NOT NULL,
    created_at_ms INTEGER NOT NULL,
    canceled_at_ms INTEGER,
    -- Bookkeeping of the expiry worker: the job_expired message is recorded.
    expiry_recorded INTEGER NOT NULL DEFAULT 0
);
ALTER TABLE status_messages ADD COLUMN job INTEGER;
ALTER TABLE status_messages ADD COLUMN agent TEXT;
CREATE INDEX status_messages_by_job ON status_messages (job, id);
"#,
    r#"
-- The hierarchy. The parent and central codes are NULL at a central site.
ALTER TABLE site ADD COLUMN parent_code TEXT;
ALTER TABLE site ADD COLUMN central_code TEXT;
CREATE TABLE credentials_v3 (
    token_hash BLOB PRIMARY KEY,
    role TEXT NOT NULL CHECK (role IN ('admin', 'join', 'dp', 'agent', 'site', 'site_join')),
    principal TEXT NOT NULL,
    created_at_ms INTEGER NOT NULL
);
INSERT INTO credentials_v3 SELECT token_hash, role, principal, created_at_ms FROM credentials;
DROP TABLE credentials;
ALTER TABLE credentials_v3 RENAME TO credentials;
-- Every site below this one. Direct children (parent = this site) also
-- carry their link: when last seen and the rate limit of content sent.
CREATE TABLE sites (
    code TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    parent TEXT NOT NULL,
    registered_at_ms INTEGER NOT NULL,
    last_seen_ms INTEGER,
    max_rate INTEGER
);
-- A child site holds a version's manifest at once and its content only
-- once every chunk is in its library (complete = 1).
ALTER TABLE package_versions ADD COLUMN complete INTEGER NOT NULL DEFAULT 1;
-- The site a message's source belongs to.
ALTER TABLE status_messages ADD COLUMN site TEXT;
UPDATE status_messages SET site = (SELECT code FROM site WHERE id = 1);
-- Instructions waiting for a child site to fetch them (the durable outbox
-- of the send phase), in order per child.
CREATE TABLE site_outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    child TEXT NOT NULL,
    kind TEXT NOT NULL,
    package TEXT,
    body TEXT NOT NULL,
    created_at_ms INTEGER NOT NULL
);
CREATE INDEX site_outbox_by_child ON site_outbox (child, seq);
-- Instructions received from the parent, applied in order and removed once
-- applied (or refused, which is reported as a status message).
CREATE TABLE site_inbox (
    seq INTEGER PRIMARY KEY,
    kind TEXT NOT NULL,
    package TEXT,
    body TEXT NOT NULL,
    received_at_ms INTEGER NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    last_error TEXT
);
-- Package versions whose content a child site (or a site below it) needs.
CREATE TABLE child_wants (
    child TEXT NOT NULL,
    package TEXT NOT NULL,
    version INTEGER NOT NULL,
    PRIMARY KEY (child, package, version)
);
-- DP groups: DPs named SITE/DP, as a JSON list.
CREATE TABLE dp_groups (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    dps TEXT NOT NULL,
    created_at_ms INTEGER NOT NULL
);
-- Packages placed on the DPs of a group, in every later version too.
CREATE TABLE group_distributions (
    package_id INTEGER NOT NULL REFERENCES packages(id),
    group_id INTEGER NOT NULL REFERENCES dp_groups(id),
    created_at_ms INTEGER NOT NULL,
    PRIMARY KEY (package_id, group_id)
);
ALTER TABLE jobs ADD COLUMN dp_group TEXT;
-- Workstations of this site the job targeted when it arrived.
ALTER TABLE jobs ADD COLUMN local_targets INTEGER NOT NULL DEFAULT 0;
-- Durable positions: the last instruction received from the parent, the
-- last status message relayed to it.
CREATE TABLE cursors (
    name TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
"#,
    r#"
-- Which DPs and workstations are enrolled at sites below, for the checks of
-- DP group members and listed collection members (db::dp_known,
-- db::agent_known). Partial indexes: only enrollment messages are indexed,
-- so storing the stream of other messages costs nothing more.
CREATE INDEX status_messages_dp_enrolled ON status_messages (site, dp)
    WHERE kind = 'dp_enrolled';
CREATE INDEX status_messages_agent_enrolled ON status_messages (json_extract(body, '$.agent'))
    WHERE kind = 'agent_enrolled';
"#,
    r#"
-- The central site's signed intent of each job and of its cancellation
-- (protocol::intent), stored and passed on byte for byte: agents run only
-- what it says.
ALTER TABLE jobs ADD COLUMN intent TEXT;
ALTER TABLE jobs ADD COLUMN intent_signature TEXT;
ALTER TABLE jobs ADD COLUMN cancel_intent TEXT;
ALTER TABLE jobs ADD COLUMN cancel_signature TEXT;
"#,
    r#"
-- DPs are admitted (issue 12): a join token of their own, and approval
-- with the URL agents download from, set or confirmed by an administrator
-- (`url`); `announced_url` is what the DP says. DPs enrolled before that
-- had announced a URL stay admitted at it (an administrator reviews them in
-- `dp list`); one that never did waits for approval.
CREATE TABLE credentials_v4 (
    token_hash BLOB PRIMARY KEY,
    role TEXT NOT NULL CHECK (role IN ('admin', 'join', 'dp', 'agent', 'site', 'site_join', 'dp_join')),
    principal TEXT NOT NULL,
    created_at_ms INTEGER NOT NULL
);
INSERT INTO credentials_v4 SELECT token_hash, role, principal, created_at_ms FROM credentials;
DROP TABLE credentials;
ALTER TABLE credentials_v4 RENAME TO credentials;
ALTER TABLE dps ADD COLUMN announced_url TEXT;
ALTER TABLE dps ADD COLUMN approved_at_ms INTEGER;
UPDATE dps SET announced_url = url;
UPDATE dps SET approved_at_ms = enrolled_at_ms WHERE url IS NOT NULL;
"#,
    r#"
-- Secrets of the site that are not credentials: the content-ticket key
-- (protocol::ticket), as hex.
CREATE TABLE secrets (
    name TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
"#,
    r#"
-- The public key each agent and DP signs its status messages with (hex),
-- given at enrollment; none for one enrolled before issue 12.
ALTER TABLE agents ADD COLUMN public_key TEXT;
ALTER TABLE dps ADD COLUMN public_key TEXT;
"#,
    r#"
-- The SHA-256 fingerprint (hex) of the TLS certificate each DP serves
-- with, as it announced it: agents pin it (protocol::tls).
ALTER TABLE dps ADD COLUMN certificate TEXT;
"#,
    r#"
-- Retention (service::retention): when a version stopped being kept; its
-- manifest stays, its chunks go.
ALTER TABLE package_versions ADD COLUMN retired_at_ms INTEGER;
"#,
    r#"
-- The local ingest's quick check (service::local_ingest): the files it
-- read for a package's newest version, from which directory, and when the
-- scan started; a file found again with the same stamp is not read again.
CREATE TABLE local_ingest_scans (
    package_id INTEGER PRIMARY KEY REFERENCES packages(id),
    version INTEGER NOT NULL,
    root TEXT NOT NULL,
    started_at_ns INTEGER NOT NULL
);
CREATE TABLE local_ingest_files (
    package_id INTEGER NOT NULL REFERENCES packages(id),
    path TEXT NOT NULL,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    ctime_ns INTEGER NOT NULL,
    ino INTEGER NOT NULL,
    dev INTEGER NOT NULL,
    PRIMARY KEY (package_id, path)
) WITHOUT ROWID;
"#,
    r#"
-- Rerun rules (issue 14): whether a job runs a program that already ran on
-- a workstation. Jobs made before signed none and ran regardless.
ALTER TABLE jobs ADD COLUMN rerun TEXT NOT NULL DEFAULT 'always';
"#,
    r#"
-- Health after the run (issue 14): a check command run after the command
-- succeeded, and the exit codes that mean "succeeded, reboot needed".
ALTER TABLE jobs ADD COLUMN check_command TEXT;
ALTER TABLE jobs ADD COLUMN reboot_codes TEXT NOT NULL DEFAULT '[]';
"#,
    r#"
-- Maintenance windows (issue 14): a collection's (JSON list of WindowSpec,
-- kept at the central site), and the ones a job carries in its intent.
ALTER TABLE collections ADD COLUMN windows TEXT NOT NULL DEFAULT '[]';
ALTER TABLE jobs ADD COLUMN windows TEXT NOT NULL DEFAULT '[]';
ALTER TABLE jobs ADD COLUMN any_time INTEGER NOT NULL DEFAULT 0;
"#,
    r#"
-- Removal jobs (issue 14): the command uninstalls the package and the
-- agent then deletes what it holds of it.
ALTER TABLE jobs ADD COLUMN remove INTEGER NOT NULL DEFAULT 0;
"#,
    r#"
-- A version's uninstall command (issue 14), kept at the central site.
ALTER TABLE package_versions ADD COLUMN uninstall_command TEXT;
"#,
];
