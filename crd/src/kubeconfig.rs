//! Accepting a registration kubeconfig.
//!
//! A registration Secret is written by whoever may create Secrets in the controller's
//! namespace (a GitOps role, a secret-sync operator), so its kubeconfig is untrusted input:
//! kube's loader would run `exec` plugins and gcp `cmd-path`s, read `tokenFile`s and
//! certificate paths, honour `insecure-skip-tls-verify` and proxies, and fall back to
//! `HTTPS_PROXY` and the platform's trust store. [`accept`] reads the text as plain YAML
//! (nothing is executed, read or resolved), checks it against an allow-list, and
//! [`AcceptedKubeconfig::config`] builds the `kube::Config` by hand from the accepted fields
//! only, so nothing of the controller's environment reaches the member client.
//!
//! Accepted, everywhere in the document: `apiVersion: v1`, `kind: Config`, `clusters`,
//! `users`, `contexts`, `current-context`, `preferences` and `extensions` (both ignored);
//! in a cluster `server` (`https://` only), `certificate-authority-data` (required),
//! `tls-server-name`, `insecure-skip-tls-verify: false`, `disable-compression` and
//! `extensions` (ignored); in a user either `token` or `client-certificate-data` with
//! `client-key-data`, and `extensions`; in a context `cluster`, `user`, `namespace` (ignored)
//! and `extensions`. Anything else is refused with the path of the field, never its value.

use std::fmt;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use kube::Client;
use kube::config::AuthInfo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use secrecy::{ExposeSecret, SecretString};
use serde_yaml_ng::{Mapping, Value};

/// How long a member client waits for a TCP connection to its API server.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// What is wrong with a field. The text never carries the field's value: kubeconfigs hold
/// credentials, and the reason ends up in logs and in `MemberCluster` status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    /// Not one valid YAML document; the position when known.
    NotYaml {
        /// 1-based line.
        line: Option<usize>,
        /// 1-based column.
        column: Option<usize>,
    },
    /// The value has the wrong type; says which type is expected.
    WrongType(&'static str),
    /// The value is not the one accepted; says which one is.
    WrongValue(&'static str),
    /// A key outside the allow-list.
    NotAllowed,
    /// `exec`: a credential plugin is a command the controller would run.
    Exec,
    /// `auth-provider`: runs a command (gcp `cmd-path`) or refreshes tokens with secrets.
    AuthProvider,
    /// A file path; names the inline field to use instead.
    FilePath(&'static str),
    /// `insecure-skip-tls-verify: true`.
    InsecureSkipTlsVerify,
    /// `proxy-url`.
    Proxy,
    /// `username`/`password`.
    BasicAuth,
    /// `as`, `as-uid`, `as-groups`, `as-user-extra`.
    Impersonation,
    /// A server URL that is not `https://`.
    NotHttps,
    /// A server URL with user information, a query or no host.
    BadUrl,
    /// A required field is missing.
    Missing,
    /// A required field is empty.
    Empty,
    /// Not valid base64.
    NotBase64,
    /// No usable PEM certificate in the data.
    NoCertificate,
    /// No usable PEM private key in the data.
    NoPrivateKey,
    /// A token with characters an HTTP header cannot carry.
    BadToken,
    /// A `tls-server-name` that is neither a DNS name nor an IP address.
    BadServerName,
    /// Both a token and a client certificate.
    TwoCredentials,
    /// Neither a token nor a client certificate.
    NoCredential,
    /// A name used by two entries of the same list.
    Duplicate,
    /// A reference to a cluster or user that is not in the document.
    Dangling,
    /// More than one context and no `meridian.io/context` annotation.
    AmbiguousContext(usize),
    /// The `meridian.io/context` annotation names a context that is not in the document.
    NoSuchContext,
    /// `current-context` names a context that is not in the document.
    CurrentContextElsewhere,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::NotYaml { line, column } => {
                f.write_str("not one valid YAML document")?;
                if let (Some(l), Some(c)) = (line, column) {
                    write!(f, " (line {l}, column {c})")?;
                }
                Ok(())
            }
            Problem::WrongType(want) => write!(f, "must be {want}"),
            Problem::WrongValue(want) => write!(f, "must be {want}"),
            Problem::NotAllowed => f.write_str("not accepted in a registration kubeconfig"),
            Problem::Exec => f.write_str(
                "exec credential plugins are refused (the controller runs no commands); \
                 use token or client-certificate-data and client-key-data",
            ),
            Problem::AuthProvider => f.write_str(
                "auth-provider plugins are refused (they run commands or refresh tokens); \
                 use token or client-certificate-data and client-key-data",
            ),
            Problem::FilePath(instead) => write!(
                f,
                "file paths are refused (the controller reads no files); use {instead}"
            ),
            Problem::InsecureSkipTlsVerify => f.write_str(
                "TLS verification cannot be turned off; give certificate-authority-data",
            ),
            Problem::Proxy => f.write_str(
                "proxies are refused (the controller connects to the API server directly)",
            ),
            Problem::BasicAuth => f.write_str(
                "basic authentication is refused (removed in Kubernetes 1.19); use token",
            ),
            Problem::Impersonation => f.write_str(
                "impersonation is refused; register the identity the controller acts as",
            ),
            Problem::NotHttps => f.write_str("must be an https:// URL"),
            Problem::BadUrl => {
                f.write_str("must be an https:// URL with a host and no user information or query")
            }
            Problem::Missing => f.write_str("required"),
            Problem::Empty => f.write_str("must not be empty"),
            Problem::NotBase64 => f.write_str("not valid base64"),
            Problem::NoCertificate => f.write_str("holds no valid PEM certificate"),
            Problem::NoPrivateKey => f.write_str("holds no valid PEM private key"),
            Problem::BadToken => {
                f.write_str("holds characters a bearer token cannot carry (whitespace, non-ASCII)")
            }
            Problem::BadServerName => f.write_str("must be a DNS name or an IP address"),
            Problem::TwoCredentials => {
                f.write_str("gives both token and client-certificate-data; keep one of them")
            }
            Problem::NoCredential => {
                f.write_str("needs token, or client-certificate-data and client-key-data")
            }
            Problem::Duplicate => f.write_str("the name is used twice"),
            Problem::Dangling => f.write_str("names no entry of the document"),
            Problem::AmbiguousContext(n) => write!(
                f,
                "{n} contexts: name the one to use with the Secret annotation meridian.io/context"
            ),
            Problem::NoSuchContext => {
                f.write_str("none is named as the Secret annotation meridian.io/context says")
            }
            Problem::CurrentContextElsewhere => f.write_str(
                "names a context that is not in contexts (name the one to use with the Secret \
                 annotation meridian.io/context)",
            ),
        }
    }
}

/// Why a registration kubeconfig was refused: the path of the offending field (e.g.
/// `users[0].user.exec`) and the problem, never a value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {problem}")]
pub struct KubeconfigError {
    /// Path of the field, `clusters[0].cluster.server` style; `(document)` for the whole.
    pub field: String,
    /// What is wrong with it.
    pub problem: Problem,
}

fn refuse<T>(field: impl Into<String>, problem: Problem) -> Result<T, KubeconfigError> {
    Err(KubeconfigError {
        field: field.into(),
        problem,
    })
}

/// The credential a member client presents.
#[derive(Clone)]
enum Credential {
    Token(SecretString),
    /// Client certificate chain and key, both PEM.
    Certificate {
        chain: Vec<u8>,
        key: SecretString,
    },
}

/// A kubeconfig that passed [`accept`]: one server, its CA, one credential.
#[derive(Clone)]
pub struct AcceptedKubeconfig {
    context: String,
    server: http::Uri,
    roots: Vec<Vec<u8>>,
    tls_server_name: Option<String>,
    credential: Credential,
}

impl AcceptedKubeconfig {
    /// Name of the context in use.
    pub fn context(&self) -> &str {
        &self.context
    }

    /// The API server URL.
    pub fn server(&self) -> String {
        self.server.to_string()
    }

    /// The client configuration, built field by field: the CA from the document only (no
    /// platform trust store), no proxy (kube's loader would read `HTTPS_PROXY`), no files,
    /// no plugins, no debug overrides.
    pub fn config(&self) -> kube::Config {
        let mut config = kube::Config::new(self.server.clone());
        config.root_cert = Some(self.roots.clone());
        config.root_cert_file = None;
        config.accept_invalid_certs = false;
        config.proxy_url = None;
        config.tls_server_name = self.tls_server_name.clone();
        config.headers = Vec::new();
        config.connect_timeout = Some(CONNECT_TIMEOUT);
        config.auth_info = match &self.credential {
            Credential::Token(token) => AuthInfo {
                token: Some(token.clone()),
                ..AuthInfo::default()
            },
            // kube takes the data base64-encoded, as in a kubeconfig.
            Credential::Certificate { chain, key } => AuthInfo {
                client_certificate_data: Some(STANDARD.encode(chain)),
                client_key_data: Some(SecretString::from(
                    STANDARD.encode(key.expose_secret().as_bytes()),
                )),
                ..AuthInfo::default()
            },
        };
        config
    }

    /// A client for the member.
    pub fn client(&self) -> kube::Result<Client> {
        Client::try_from(self.config())
    }
}

impl PartialEq for AcceptedKubeconfig {
    /// Field by field, credentials included: a rotated credential restarts the member.
    fn eq(&self, other: &Self) -> bool {
        let same_credential = match (&self.credential, &other.credential) {
            (Credential::Token(a), Credential::Token(b)) => a.expose_secret() == b.expose_secret(),
            (
                Credential::Certificate { chain: a, key: ka },
                Credential::Certificate { chain: b, key: kb },
            ) => a == b && ka.expose_secret() == kb.expose_secret(),
            _ => false,
        };
        same_credential
            && self.context == other.context
            && self.server == other.server
            && self.roots == other.roots
            && self.tls_server_name == other.tls_server_name
    }
}

impl Eq for AcceptedKubeconfig {}

impl fmt::Debug for AcceptedKubeconfig {
    /// Never prints the credential.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AcceptedKubeconfig")
            .field("context", &self.context)
            .field("server", &self.server)
            .field(
                "credential",
                &match self.credential {
                    Credential::Token(_) => "token(<redacted>)",
                    Credential::Certificate { .. } => "client-certificate(<redacted>)",
                },
            )
            .finish()
    }
}

/// Allowed keys of each part of the document. Keys listed in [`forbidden`] are refused with
/// their own reason; any other key is [`Problem::NotAllowed`].
const TOP_KEYS: &[&str] = &[
    "apiVersion",
    "kind",
    "clusters",
    "users",
    "contexts",
    "current-context",
    "preferences",
    "extensions",
];
const CLUSTER_KEYS: &[&str] = &[
    "server",
    "certificate-authority-data",
    "tls-server-name",
    "insecure-skip-tls-verify",
    "disable-compression",
    "extensions",
];
const USER_KEYS: &[&str] = &[
    "token",
    "client-certificate-data",
    "client-key-data",
    "extensions",
];
const CONTEXT_KEYS: &[&str] = &["cluster", "user", "namespace", "extensions"];

/// The reason a key is refused whatever its (set) value, if it is one of those.
fn forbidden(key: &str) -> Option<Problem> {
    Some(match key {
        "exec" => Problem::Exec,
        "auth-provider" => Problem::AuthProvider,
        "tokenFile" => Problem::FilePath("token"),
        "certificate-authority" => Problem::FilePath("certificate-authority-data"),
        "client-certificate" => Problem::FilePath("client-certificate-data"),
        "client-key" => Problem::FilePath("client-key-data"),
        "proxy-url" => Problem::Proxy,
        "username" | "password" => Problem::BasicAuth,
        "as" | "as-uid" | "as-groups" | "as-user-extra" => Problem::Impersonation,
        _ => return None,
    })
}

/// Null, `""` and empty collections configure nothing in any client: treated as absent.
fn is_unset(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::String(s) => s.is_empty(),
        Value::Sequence(s) => s.is_empty(),
        Value::Mapping(m) => m.is_empty(),
        _ => false,
    }
}

/// `path.key`, or `key` at the top.
fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

/// Checks every key of `m` (at `path`) against `allowed`, in document order.
fn check_keys(m: &Mapping, path: &str, allowed: &[&str]) -> Result<(), KubeconfigError> {
    for (k, v) in m {
        let Some(key) = k.as_str() else {
            return refuse(join(path, "<non-string key>"), Problem::NotAllowed);
        };
        let field = join(path, key);
        if let Some(problem) = forbidden(key) {
            if is_unset(v) {
                continue;
            }
            return refuse(field, problem);
        }
        if !allowed.contains(&key) {
            return refuse(field, Problem::NotAllowed);
        }
    }
    Ok(())
}

fn mapping<'a>(v: &'a Value, field: &str) -> Result<&'a Mapping, KubeconfigError> {
    v.as_mapping()
        .map_or_else(|| refuse(field, Problem::WrongType("a mapping")), Ok)
}

fn opt_str<'a>(m: &'a Mapping, path: &str, key: &str) -> Result<Option<&'a str>, KubeconfigError> {
    match m.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.is_empty() => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => refuse(join(path, key), Problem::WrongType("a string")),
    }
}

fn req_str<'a>(m: &'a Mapping, path: &str, key: &str) -> Result<&'a str, KubeconfigError> {
    opt_str(m, path, key)?.map_or_else(|| refuse(join(path, key), Problem::Missing), Ok)
}

/// One entry of `clusters`, `users` or `contexts`: its name and its body.
struct Entry<'a> {
    name: &'a str,
    path: String,
    body: &'a Mapping,
}

/// Reads the list `list` (whose entries carry their body under `body_key`), checking every
/// entry's keys with `allowed`, whether or not it is used.
fn entries<'a>(
    top: &'a Mapping,
    list: &str,
    body_key: &str,
    allowed: &[&str],
) -> Result<Vec<Entry<'a>>, KubeconfigError> {
    let items = match top.get(list) {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Sequence(items)) => items,
        Some(_) => return refuse(list, Problem::WrongType("a list")),
    };
    let mut out: Vec<Entry<'a>> = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let path = format!("{list}[{i}]");
        let item = mapping(item, &path)?;
        check_keys(item, &path, &["name", body_key])?;
        let name = req_str(item, &path, "name")?;
        if out.iter().any(|e| e.name == name) {
            return refuse(format!("{path}.name"), Problem::Duplicate);
        }
        let body_path = format!("{path}.{body_key}");
        let body = match item.get(body_key) {
            None | Some(Value::Null) => return refuse(body_path, Problem::Missing),
            Some(b) => mapping(b, &body_path)?,
        };
        check_keys(body, &body_path, allowed)?;
        out.push(Entry {
            name,
            path: body_path,
            body,
        });
    }
    Ok(out)
}

/// Decodes a `*-data` field: base64 of PEM.
fn base64_field(m: &Mapping, path: &str, key: &str) -> Result<Option<Vec<u8>>, KubeconfigError> {
    let Some(text) = opt_str(m, path, key)? else {
        return Ok(None);
    };
    // Line breaks inside the base64 are harmless (some tools wrap at 76 columns).
    let compact: String = text.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    match STANDARD.decode(compact) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(_) => refuse(format!("{path}.{key}"), Problem::NotBase64),
    }
}

/// PEM certificates, each parsed as a trust anchor would be.
fn certificates(pem: &[u8], field: &str) -> Result<Vec<Vec<u8>>, KubeconfigError> {
    let mut ders = Vec::new();
    for cert in CertificateDer::pem_slice_iter(pem) {
        let Ok(cert) = cert else {
            return refuse(field, Problem::NoCertificate);
        };
        let mut store = rustls::RootCertStore::empty();
        if store.add(cert.clone()).is_err() {
            return refuse(field, Problem::NoCertificate);
        }
        ders.push(cert.to_vec());
    }
    if ders.is_empty() {
        return refuse(field, Problem::NoCertificate);
    }
    Ok(ders)
}

/// Whether `token` can go into an `Authorization: Bearer` header as is.
fn is_token(token: &str) -> bool {
    token.bytes().all(|b| b.is_ascii_graphic())
}

/// Parses `text` and checks it against the allow-list; `context` is the Secret's
/// `meridian.io/context` annotation, required when the document has more than one context.
/// Pure: runs nothing, reads nothing, and the error never carries a value of the document.
pub fn accept(text: &str, context: Option<&str>) -> Result<AcceptedKubeconfig, KubeconfigError> {
    let doc = parse(text)?;
    let top = mapping(&doc, DOC)?;
    check_keys(top, "", TOP_KEYS)?;
    if opt_str(top, "", "apiVersion")?.is_some_and(|v| v != "v1") {
        return refuse("apiVersion", Problem::WrongValue("v1"));
    }
    if opt_str(top, "", "kind")?.is_some_and(|v| v != "Config") {
        return refuse("kind", Problem::WrongValue("Config"));
    }
    // Every entry is checked, used or not: the Secret may hold nothing the controller must
    // refuse.
    let clusters = entries(top, "clusters", "cluster", CLUSTER_KEYS)?;
    let users = entries(top, "users", "user", USER_KEYS)?;
    let contexts = entries(top, "contexts", "context", CONTEXT_KEYS)?;
    for c in &clusters {
        check_tls_verified(c)?;
    }
    let current = opt_str(top, "", "current-context")?;
    let ctx = select_context(&contexts, current, context)?;
    let lookup = |list: &'_ [Entry<'_>], key: &str| -> Result<usize, KubeconfigError> {
        let name = req_str(ctx.body, &ctx.path, key)?;
        list.iter().position(|e| e.name == name).map_or_else(
            || refuse(format!("{}.{key}", ctx.path), Problem::Dangling),
            Ok,
        )
    };
    let cluster = &clusters[lookup(&clusters, "cluster")?];
    let user = &users[lookup(&users, "user")?];
    let server = server(cluster)?;
    let (roots, tls_server_name) = cluster_tls(cluster)?;
    let credential = credential(user)?;
    Ok(AcceptedKubeconfig {
        context: ctx.name.to_owned(),
        server,
        roots,
        tls_server_name,
        credential,
    })
}

/// The field path of the document as a whole.
const DOC: &str = "(document)";

/// The document as YAML; a refusal names only the position of a syntax error.
fn parse(text: &str) -> Result<Value, KubeconfigError> {
    serde_yaml_ng::from_str(text).or_else(|e| {
        let at = e.location();
        refuse(
            DOC,
            Problem::NotYaml {
                line: at.as_ref().map(|l| l.line()),
                column: at.as_ref().map(|l| l.column()),
            },
        )
    })
}

/// `insecure-skip-tls-verify` written out as false is fine; true is not, and neither is
/// anything else.
fn check_tls_verified(c: &Entry<'_>) -> Result<(), KubeconfigError> {
    match c.body.get("insecure-skip-tls-verify") {
        None | Some(Value::Null) | Some(Value::Bool(false)) => Ok(()),
        Some(Value::Bool(true)) => refuse(
            format!("{}.insecure-skip-tls-verify", c.path),
            Problem::InsecureSkipTlsVerify,
        ),
        Some(_) => refuse(
            format!("{}.insecure-skip-tls-verify", c.path),
            Problem::WrongType("a boolean"),
        ),
    }
}

/// The context: the annotation's, else the only one. `current-context` is what kubectl
/// would use: without the annotation it must be unset or name that one context.
fn select_context<'e, 'a>(
    contexts: &'e [Entry<'a>],
    current: Option<&str>,
    annotated: Option<&str>,
) -> Result<&'e Entry<'a>, KubeconfigError> {
    if let Some(name) = annotated {
        return contexts
            .iter()
            .find(|c| c.name == name)
            .map_or_else(|| refuse("contexts", Problem::NoSuchContext), Ok);
    }
    let [only] = contexts else {
        return match contexts.len() {
            0 => refuse("contexts", Problem::Missing),
            n => refuse("contexts", Problem::AmbiguousContext(n)),
        };
    };
    if current.is_some_and(|c| c != only.name) {
        return refuse("current-context", Problem::CurrentContextElsewhere);
    }
    Ok(only)
}

/// The server: https only, no credentials or query in the URL.
fn server(cluster: &Entry<'_>) -> Result<http::Uri, KubeconfigError> {
    let field = format!("{}.server", cluster.path);
    let server = req_str(cluster.body, &cluster.path, "server")?;
    let Ok(uri) = server.parse::<http::Uri>() else {
        return refuse(field, Problem::BadUrl);
    };
    if uri.scheme_str() != Some("https") {
        return refuse(field, Problem::NotHttps);
    }
    match uri.authority() {
        Some(a) if !a.as_str().contains('@') && !a.host().is_empty() => {}
        _ => return refuse(field, Problem::BadUrl),
    }
    if uri.query().is_some() {
        return refuse(field, Problem::BadUrl);
    }
    Ok(uri)
}

/// The CA (required, so neither the platform trust store nor `SSL_CERT_FILE` decides) and
/// the optional TLS server name.
fn cluster_tls(cluster: &Entry<'_>) -> Result<(Vec<Vec<u8>>, Option<String>), KubeconfigError> {
    let ca_field = format!("{}.certificate-authority-data", cluster.path);
    let Some(ca_pem) = base64_field(cluster.body, &cluster.path, "certificate-authority-data")?
    else {
        return refuse(ca_field, Problem::Missing);
    };
    let roots = certificates(&ca_pem, &ca_field)?;
    let tls_server_name = match opt_str(cluster.body, &cluster.path, "tls-server-name")? {
        Some(name) if ServerName::try_from(name).is_ok() => Some(name.to_owned()),
        Some(_) => {
            return refuse(
                format!("{}.tls-server-name", cluster.path),
                Problem::BadServerName,
            );
        }
        None => None,
    };
    if let Some(v) = cluster.body.get("disable-compression")
        && !matches!(v, Value::Bool(_) | Value::Null)
    {
        return refuse(
            format!("{}.disable-compression", cluster.path),
            Problem::WrongType("a boolean"),
        );
    }
    Ok((roots, tls_server_name))
}

/// The credential: a token or a client certificate, inline.
fn credential(user: &Entry<'_>) -> Result<Credential, KubeconfigError> {
    let token = opt_str(user.body, &user.path, "token")?;
    let cert = base64_field(user.body, &user.path, "client-certificate-data")?;
    let key = base64_field(user.body, &user.path, "client-key-data")?;
    match (token, cert, key) {
        (Some(_), Some(_), _) | (Some(_), _, Some(_)) => {
            refuse(user.path.clone(), Problem::TwoCredentials)
        }
        (Some(token), None, None) => {
            if !is_token(token) {
                return refuse(format!("{}.token", user.path), Problem::BadToken);
            }
            Ok(Credential::Token(SecretString::from(token.to_owned())))
        }
        (None, Some(chain), Some(key)) => {
            certificates(&chain, &format!("{}.client-certificate-data", user.path))?;
            let key_field = format!("{}.client-key-data", user.path);
            if PrivateKeyDer::from_pem_slice(&key).is_err() {
                return refuse(key_field, Problem::NoPrivateKey);
            }
            let Ok(key) = String::from_utf8(key) else {
                return refuse(key_field, Problem::NoPrivateKey);
            };
            Ok(Credential::Certificate {
                chain,
                key: SecretString::from(key),
            })
        }
        (None, Some(_), None) => refuse(format!("{}.client-key-data", user.path), Problem::Missing),
        (None, None, Some(_)) => refuse(
            format!("{}.client-certificate-data", user.path),
            Problem::Missing,
        ),
        (None, None, None) => refuse(user.path.clone(), Problem::NoCredential),
    }
}

/// Kubeconfigs for tests: a valid one, and the same with one field changed.
#[cfg(any(test, feature = "testing"))]
pub mod testing {
    use base64::Engine as _;
    use base64::engine::general_purpose::STANDARD;
    use serde_yaml_ng::Value;

    /// A token no error message may ever contain.
    pub const TOKEN: &str = "s3cr3t-t0ken-DO-NOT-LEAK";

    /// A self-signed certificate and its key, PEM, minted once per process.
    pub fn cert() -> &'static (String, String) {
        static CERT: std::sync::OnceLock<(String, String)> = std::sync::OnceLock::new();
        CERT.get_or_init(|| {
            let ck = rcgen::generate_simple_self_signed(vec!["member.example".to_owned()])
                .expect("self-signed certificate");
            (ck.cert.pem(), ck.signing_key.serialize_pem())
        })
    }

    /// A valid registration kubeconfig with a bearer `token`.
    pub fn kubeconfig(token: &str) -> String {
        format!(
            "apiVersion: v1
kind: Config
clusters:
- name: member
  cluster:
    server: https://member.example:6443
    certificate-authority-data: {ca}
users:
- name: reader
  user:
    token: {token}
contexts:
- name: member
  context:
    cluster: member
    user: reader
current-context: member
",
            ca = STANDARD.encode(&cert().0)
        )
    }

    /// [`kubeconfig`] with `edit` applied to its parsed form.
    pub fn edited(edit: impl FnOnce(&mut Value)) -> String {
        let mut v: Value = serde_yaml_ng::from_str(&kubeconfig(TOKEN)).expect("valid YAML");
        edit(&mut v);
        serde_yaml_ng::to_string(&v).expect("YAML")
    }

    /// Sets `key` of the mapping at `v` to `value` (given as YAML).
    pub fn set(v: &mut Value, key: &str, value: &str) {
        let value: Value = serde_yaml_ng::from_str(value).expect("valid YAML value");
        v.as_mapping_mut()
            .expect("a mapping")
            .insert(Value::from(key), value);
    }
}

#[cfg(test)]
mod tests {
    use super::testing::*;
    use super::*;

    fn refused(text: &str, context: Option<&str>) -> KubeconfigError {
        let e = accept(text, context).expect_err("refused");
        let shown = e.to_string();
        assert!(
            !shown.contains(TOKEN),
            "the reason echoes the token: {shown}"
        );
        e
    }

    fn problem(field: &str, problem: Problem) -> KubeconfigError {
        KubeconfigError {
            field: field.into(),
            problem,
        }
    }

    /// The user with `yaml` added.
    fn user_with(key: &str, yaml: &str) -> String {
        edited(|v| set(&mut v["users"][0]["user"], key, yaml))
    }

    fn cluster_with(key: &str, yaml: &str) -> String {
        edited(|v| set(&mut v["clusters"][0]["cluster"], key, yaml))
    }

    #[tokio::test]
    async fn a_plain_kubeconfig_is_accepted_and_built_by_hand() {
        let kc = accept(&kubeconfig(TOKEN), None).unwrap();
        assert_eq!(kc.context(), "member");
        assert_eq!(kc.server(), "https://member.example:6443/");
        let c = kc.config();
        assert_eq!(c.proxy_url, None, "no proxy, HTTPS_PROXY or not");
        assert_eq!(c.root_cert_file, None);
        assert_eq!(c.root_cert.as_ref().map(Vec::len), Some(1));
        assert!(!c.accept_invalid_certs);
        assert!(c.headers.is_empty());
        let a = &c.auth_info;
        assert_eq!(a.token.as_ref().map(|t| t.expose_secret()), Some(TOKEN));
        assert!(a.exec.is_none() && a.auth_provider.is_none() && a.token_file.is_none());
        assert!(a.client_certificate.is_none() && a.client_key.is_none());
        assert!(a.username.is_none() && a.impersonate.is_none());
        let shown = format!("{kc:?}");
        assert!(!shown.contains(TOKEN), "{shown}");
        kc.client().expect("a client");
    }

    #[tokio::test]
    async fn a_client_certificate_is_accepted() {
        let (cert, key) = cert();
        let text = edited(|v| {
            let user = v["users"][0]["user"].as_mapping_mut().unwrap();
            user.clear();
            user.insert(
                "client-certificate-data".into(),
                STANDARD.encode(cert).into(),
            );
            user.insert("client-key-data".into(), STANDARD.encode(key).into());
        });
        let kc = accept(&text, None).unwrap();
        let a = kc.config().auth_info;
        assert!(a.token.is_none());
        assert!(a.client_certificate_data.is_some() && a.client_key_data.is_some());
        kc.client().expect("a client");
        assert_ne!(kc, accept(&kubeconfig(TOKEN), None).unwrap());
    }

    #[test]
    fn harmless_fields_are_accepted() {
        let text = edited(|v| {
            let c = &mut v["clusters"][0]["cluster"];
            set(c, "tls-server-name", "kubernetes.default.svc");
            set(c, "insecure-skip-tls-verify", "false");
            set(c, "disable-compression", "true");
            set(c, "extensions", "[{name: x, extension: {provider: kind}}]");
            set(&mut v["contexts"][0]["context"], "namespace", "default");
            set(&mut v["users"][0]["user"], "exec", "null");
            set(v, "preferences", "{}");
        });
        let kc = accept(&text, None).unwrap();
        assert_eq!(
            kc.config().tls_server_name.as_deref(),
            Some("kubernetes.default.svc")
        );
    }

    // One case per refused field, each with its exact reason.

    #[test]
    fn exec_is_refused() {
        let text = user_with(
            "exec",
            "{apiVersion: client.authentication.k8s.io/v1, command: /bin/touch, args: [/tmp/x]}",
        );
        // Alone (without the token, which kube would prefer).
        let text = text.replace(&format!("token: {TOKEN}"), "");
        assert_eq!(
            refused(&text, None),
            problem("users[0].user.exec", Problem::Exec)
        );
    }

    #[test]
    fn auth_provider_is_refused() {
        let text = user_with(
            "auth-provider",
            "{name: gcp, config: {cmd-path: /usr/bin/gcloud, cmd-args: config config-helper}}",
        );
        assert_eq!(
            refused(&text, None),
            problem("users[0].user.auth-provider", Problem::AuthProvider)
        );
    }

    #[test]
    fn token_file_is_refused() {
        let text = user_with(
            "tokenFile",
            "/var/run/secrets/kubernetes.io/serviceaccount/token",
        );
        assert_eq!(
            refused(&text, None),
            problem("users[0].user.tokenFile", Problem::FilePath("token"))
        );
    }

    #[test]
    fn certificate_authority_path_is_refused() {
        let text = cluster_with(
            "certificate-authority",
            "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt",
        );
        assert_eq!(
            refused(&text, None),
            problem(
                "clusters[0].cluster.certificate-authority",
                Problem::FilePath("certificate-authority-data")
            )
        );
    }

    #[test]
    fn client_certificate_path_is_refused() {
        let text = user_with("client-certificate", "/etc/kubernetes/pki/admin.crt");
        assert_eq!(
            refused(&text, None),
            problem(
                "users[0].user.client-certificate",
                Problem::FilePath("client-certificate-data")
            )
        );
    }

    #[test]
    fn client_key_path_is_refused() {
        let text = user_with("client-key", "/etc/kubernetes/pki/admin.key");
        assert_eq!(
            refused(&text, None),
            problem(
                "users[0].user.client-key",
                Problem::FilePath("client-key-data")
            )
        );
    }

    #[test]
    fn insecure_skip_tls_verify_is_refused() {
        let text = cluster_with("insecure-skip-tls-verify", "true");
        assert_eq!(
            refused(&text, None),
            problem(
                "clusters[0].cluster.insecure-skip-tls-verify",
                Problem::InsecureSkipTlsVerify
            )
        );
        let text = cluster_with("insecure-skip-tls-verify", "yes please");
        assert_eq!(
            refused(&text, None),
            problem(
                "clusters[0].cluster.insecure-skip-tls-verify",
                Problem::WrongType("a boolean")
            )
        );
    }

    #[test]
    fn proxy_url_is_refused() {
        let text = cluster_with("proxy-url", "http://attacker.example:3128");
        assert_eq!(
            refused(&text, None),
            problem("clusters[0].cluster.proxy-url", Problem::Proxy)
        );
    }

    #[test]
    fn http_servers_are_refused() {
        let text = cluster_with("server", "http://member.example:8080");
        assert_eq!(
            refused(&text, None),
            problem("clusters[0].cluster.server", Problem::NotHttps)
        );
        let text = cluster_with("server", &format!("https://u:{TOKEN}@member.example"));
        assert_eq!(
            refused(&text, None),
            problem("clusters[0].cluster.server", Problem::BadUrl)
        );
        let text = cluster_with("server", "https://member.example/?x=1");
        assert_eq!(
            refused(&text, None),
            problem("clusters[0].cluster.server", Problem::BadUrl)
        );
    }

    #[test]
    fn basic_auth_is_refused() {
        let text = user_with("password", TOKEN);
        assert_eq!(
            refused(&text, None),
            problem("users[0].user.password", Problem::BasicAuth)
        );
        let text = user_with("username", "admin");
        assert_eq!(
            refused(&text, None),
            problem("users[0].user.username", Problem::BasicAuth)
        );
    }

    #[test]
    fn impersonation_is_refused() {
        for (key, value) in [
            ("as", "system:admin"),
            ("as-uid", "0"),
            ("as-groups", "[system:masters]"),
            ("as-user-extra", "{scopes: [all]}"),
        ] {
            let text = user_with(key, value);
            assert_eq!(
                refused(&text, None),
                problem(&format!("users[0].user.{key}"), Problem::Impersonation)
            );
        }
    }

    #[test]
    fn unknown_fields_are_refused() {
        let text = user_with("token-file", "/tmp/x");
        assert_eq!(
            refused(&text, None),
            problem("users[0].user.token-file", Problem::NotAllowed)
        );
        let text = edited(|v| set(v, "exec", "{command: sh}"));
        assert_eq!(refused(&text, None), problem("exec", Problem::Exec));
        let text = edited(|v| set(v, "<<", "{}"));
        assert_eq!(refused(&text, None), problem("<<", Problem::NotAllowed));
    }

    #[test]
    fn forbidden_fields_of_unused_entries_are_refused_too() {
        let text = edited(|v| {
            let users = v["users"].as_sequence_mut().unwrap();
            users.push(
                serde_yaml_ng::from_str("{name: other, user: {exec: {command: sh}}}").unwrap(),
            );
        });
        assert_eq!(
            refused(&text, None),
            problem("users[1].user.exec", Problem::Exec)
        );
    }

    #[test]
    fn several_contexts_need_the_annotation() {
        let text = edited(|v| {
            let contexts = v["contexts"].as_sequence_mut().unwrap();
            contexts.push(
                serde_yaml_ng::from_str("{name: other, context: {cluster: member, user: reader}}")
                    .unwrap(),
            );
        });
        assert_eq!(
            refused(&text, None),
            problem("contexts", Problem::AmbiguousContext(2))
        );
        assert_eq!(accept(&text, Some("other")).unwrap().context(), "other");
        assert_eq!(
            refused(&text, Some("nope")),
            problem("contexts", Problem::NoSuchContext)
        );
    }

    #[test]
    fn current_context_must_not_point_elsewhere() {
        let text = edited(|v| set(v, "current-context", "elsewhere"));
        assert_eq!(
            refused(&text, None),
            problem("current-context", Problem::CurrentContextElsewhere)
        );
        // The annotation is explicit and wins, as kubectl's --context does.
        assert!(accept(&text, Some("member")).is_ok());
    }

    #[test]
    fn the_ca_must_be_inline_and_valid() {
        let text = edited(|v| {
            v["clusters"][0]["cluster"]
                .as_mapping_mut()
                .unwrap()
                .remove("certificate-authority-data");
        });
        let field = "clusters[0].cluster.certificate-authority-data";
        assert_eq!(refused(&text, None), problem(field, Problem::Missing));
        let text = cluster_with("certificate-authority-data", "'%%%'");
        assert_eq!(refused(&text, None), problem(field, Problem::NotBase64));
        let text = cluster_with("certificate-authority-data", &STANDARD.encode("hello"));
        assert_eq!(refused(&text, None), problem(field, Problem::NoCertificate));
        let garbage = "-----BEGIN CERTIFICATE-----\naGVsbG8=\n-----END CERTIFICATE-----\n";
        let text = cluster_with("certificate-authority-data", &STANDARD.encode(garbage));
        assert_eq!(refused(&text, None), problem(field, Problem::NoCertificate));
    }

    #[test]
    fn exactly_one_inline_credential() {
        let (cert, key) = cert();
        let path = "users[0].user";
        let text = user_with("client-certificate-data", &STANDARD.encode(cert));
        assert_eq!(refused(&text, None), problem(path, Problem::TwoCredentials));
        let text = edited(|v| {
            let user = v["users"][0]["user"].as_mapping_mut().unwrap();
            user.clear();
            user.insert(
                "client-certificate-data".into(),
                STANDARD.encode(cert).into(),
            );
        });
        assert_eq!(
            refused(&text, None),
            problem("users[0].user.client-key-data", Problem::Missing)
        );
        let text = edited(|v| {
            let user = v["users"][0]["user"].as_mapping_mut().unwrap();
            user.clear();
            user.insert(
                "client-certificate-data".into(),
                STANDARD.encode(cert).into(),
            );
            user.insert("client-key-data".into(), STANDARD.encode(cert).into());
        });
        assert_eq!(
            refused(&text, None),
            problem("users[0].user.client-key-data", Problem::NoPrivateKey)
        );
        let _ = key;
        let text = edited(|v| v["users"][0]["user"].as_mapping_mut().unwrap().clear());
        assert_eq!(refused(&text, None), problem(path, Problem::NoCredential));
        let text = kubeconfig("two words").replace("token: two words", "token: 'two words'");
        assert_eq!(
            refused(&text, None),
            problem("users[0].user.token", Problem::BadToken)
        );
    }

    #[test]
    fn references_must_resolve() {
        let text = edited(|v| set(&mut v["contexts"][0]["context"], "user", "ghost"));
        assert_eq!(
            refused(&text, None),
            problem("contexts[0].context.user", Problem::Dangling)
        );
        let text = edited(|v| {
            let clusters = v["clusters"].as_sequence_mut().unwrap();
            let again = clusters[0].clone();
            clusters.push(again);
        });
        assert_eq!(
            refused(&text, None),
            problem("clusters[1].name", Problem::Duplicate)
        );
    }

    #[test]
    fn garbage_is_refused_without_echo() {
        let e = refused(&format!("users: [{TOKEN}\n  - :"), None);
        assert_eq!(e.field, "(document)");
        assert!(
            matches!(e.problem, Problem::NotYaml { line: Some(_), .. }),
            "{e}"
        );
        assert_eq!(
            refused(&format!("users: {TOKEN}"), None),
            problem("users", Problem::WrongType("a list"))
        );
        assert_eq!(
            refused(TOKEN, None),
            problem("(document)", Problem::WrongType("a mapping"))
        );
        let e = refused("a: 1\n---\nb: 2\n", None);
        assert!(matches!(e.problem, Problem::NotYaml { .. }), "{e}");
        assert_eq!(
            refused("kind: Secret\n", None),
            problem("kind", Problem::WrongValue("Config"))
        );
    }
}
