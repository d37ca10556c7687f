//! Authentication of the controller's gRPC callers (Discovery `Watch`, Certificates
//! `SignCertificate`), as istiod authenticates its xDS and CA clients.
//!
//! A caller sends its ServiceAccount token (`authorization: Bearer …`), a projected token
//! whose audience is the controller's ([`DEFAULT_AUDIENCE`], `meridian-controller`). The
//! own API server reviews it (TokenReview with `spec.audiences` set to that audience) and
//! the answer must list the audience in `status.audiences`: a token minted for the API
//! server or for anything else (the default audience) is refused, so a token that leaks
//! from another workload's mount cannot be replayed here, and a token sent here cannot be
//! replayed against the API server.
//!
//! The split of refusals follows istiod: no token, a token the API server rejects, or one
//! for another audience is `UNAUTHENTICATED`; a valid token of a ServiceAccount that may
//! not call the service is `PERMISSION_DENIED`; an API server that cannot be asked is
//! `UNAVAILABLE` (the caller retries). The token is never logged or echoed.

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec, TokenReviewStatus};
use kube::Client;
use kube::api::{Api, PostParams};
use tonic::Status;
use tonic::metadata::MetadataMap;
use tracing::warn;

/// The audience callers' tokens must be minted for (the projected token's `audience`).
pub(crate) const DEFAULT_AUDIENCE: &str = "meridian-controller";

/// Longest token accepted for review: projected tokens are about 1 KiB; anything much
/// larger is refused without bothering the API server.
const MAX_TOKEN_BYTES: usize = 16 * 1024;

/// Why a caller was refused: the label of `meridian_grpc_refusals_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// No token, or one the API server does not accept for the audience.
    Unauthenticated,
    /// A valid token of a ServiceAccount that may not call the service.
    PermissionDenied,
    /// The API server could not review the token.
    ReviewFailed,
}

impl Refusal {
    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Refusal::Unauthenticated => "unauthenticated",
            Refusal::PermissionDenied => "permission_denied",
            Refusal::ReviewFailed => "review_failed",
        }
    }
}

/// A refused caller: the reason (for metrics) and the status sent back.
#[derive(Debug)]
pub struct Refused {
    /// Why.
    pub reason: Refusal,
    /// The gRPC status for the caller.
    pub status: Status,
}

impl From<Refused> for Status {
    fn from(r: Refused) -> Status {
        r.status
    }
}

/// Who may call a service.
#[derive(Clone)]
pub enum CallerAuth {
    /// The caller sends a token that the own API server accepts (TokenReview) for
    /// `audience`, and that belongs to one of the ServiceAccounts `<namespace>/<name>`.
    ServiceAccounts {
        /// Own cluster client (creates TokenReviews).
        client: Client,
        /// Namespace of the ServiceAccounts.
        namespace: String,
        /// Names of the ServiceAccounts allowed.
        names: Vec<String>,
        /// The audience the token must be valid for.
        audience: String,
    },
    /// Anyone who reaches the port (development only).
    Unauthenticated,
}

impl CallerAuth {
    /// Checks the caller's credentials in `metadata` for `service` (named in refusals);
    /// returns the caller's user name (`system:serviceaccount:…`, empty when
    /// unauthenticated access is configured).
    pub async fn check(&self, service: &str, metadata: &MetadataMap) -> Result<String, Refused> {
        let CallerAuth::ServiceAccounts {
            client,
            namespace,
            names,
            audience,
        } = self
        else {
            return Ok(String::new());
        };
        let token = bearer_token(metadata, service, audience)?;
        let status = review(client, token, audience).await?;
        let user = reviewed_user(status, service, audience)?;
        let allowed: Vec<String> = names
            .iter()
            .map(|n| format!("system:serviceaccount:{namespace}:{n}"))
            .collect();
        if !allowed.contains(&user) {
            warn!(service, %user, "caller refused: token of another identity");
            return Err(Refused {
                reason: Refusal::PermissionDenied,
                status: Status::permission_denied(format!(
                    "{user} may not call {service} (only {})",
                    allowed.join(", ")
                )),
            });
        }
        Ok(user)
    }
}

fn unauthenticated(message: String) -> Refused {
    Refused {
        reason: Refusal::Unauthenticated,
        status: Status::unauthenticated(message),
    }
}

/// The caller's `authorization: Bearer` token, if it sent one of a sane size.
fn bearer_token<'m>(
    metadata: &'m MetadataMap,
    service: &str,
    audience: &str,
) -> Result<&'m str, Refused> {
    let token = metadata
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| {
            unauthenticated(format!(
                "{service} needs a ServiceAccount token with audience {audience:?} \
                 (authorization: Bearer …; flag --token-file)"
            ))
        })?;
    if token.len() > MAX_TOKEN_BYTES {
        warn!(service, "caller refused: oversized token");
        return Err(unauthenticated("the token is too large".into()));
    }
    Ok(token)
}

/// The own API server's review of `token` for `audience`.
async fn review(
    client: &Client,
    token: &str,
    audience: &str,
) -> Result<TokenReviewStatus, Refused> {
    let review = TokenReview {
        spec: TokenReviewSpec {
            token: Some(token.to_owned()),
            audiences: Some(vec![audience.to_owned()]),
        },
        ..TokenReview::default()
    };
    let reviewed = Api::<TokenReview>::all(client.clone())
        .create(&PostParams::default(), &review)
        .await
        .map_err(|e| Refused {
            reason: Refusal::ReviewFailed,
            status: Status::unavailable(format!("reviewing the caller's token: {e}")),
        })?;
    Ok(reviewed.status.unwrap_or_default())
}

/// The user of a review that accepted the token for `audience` and said so.
fn reviewed_user(
    status: TokenReviewStatus,
    service: &str,
    audience: &str,
) -> Result<String, Refused> {
    if status.authenticated != Some(true) {
        // The API server's error says why (expired, wrong audience, unknown signer)
        // without echoing the token.
        warn!(
            service,
            "caller refused: token not accepted for the audience"
        );
        return Err(unauthenticated(format!(
            "the token was not accepted by the API server for audience {audience:?}{}",
            status.error.map(|e| format!(": {e}")).unwrap_or_default()
        )));
    }
    // An authenticator that ignores audiences answers without them: not good enough.
    if !status
        .audiences
        .as_ref()
        .is_some_and(|a| a.iter().any(|a| a == audience))
    {
        warn!(
            service,
            "caller refused: the review did not confirm the audience"
        );
        return Err(unauthenticated(format!(
            "the API server did not confirm the token's audience {audience:?}"
        )));
    }
    Ok(status.user.and_then(|u| u.username).unwrap_or_default())
}
