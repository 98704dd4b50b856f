//! Health bodies and the error body.
use serde::Serialize;
use utoipa::ToSchema;

/// Every error: a stable machine-readable `code` (see `crate::error`) and a message for people.
#[derive(Clone, Debug, Serialize, ToSchema)]
#[schema(example = json!({"code": "dimension_mismatch", "message": "document \"a\": token 3 has 127 values, expected 128"}))]
pub struct ErrorBody {
    /// Stable machine-readable error code, e.g. `invalid_argument` or `collection_not_found`.
    pub code: &'static str,
    /// Human-readable description (a 500 or 507 gives no server details: those go to the server log).
    pub message: String,
}

/// `GET /healthz`.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct Liveness {
    /// Always "ok".
    pub status: &'static str,
}

/// `GET /readyz`.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct Readiness {
    /// "ready" or "not_ready".
    pub status: &'static str,
    /// Why not ready (null when ready).
    pub reason: Option<String>,
    /// Collections that cannot serve, with the reason (damaged ones do not make the server unready).
    pub unavailable_collections: Vec<CollectionReason>,
    /// Collections whose writes fail for lack of disk space.
    pub storage_full: Vec<CollectionReason>,
}

/// A collection and a reason.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct CollectionReason {
    /// Collection name.
    pub collection: String,
    /// Why (a damaged collection's reason names the file; a full disk's, the error).
    pub reason: String,
}

impl Readiness {
    /// The core's health as the `/readyz` body.
    pub fn from_core(h: crate::core::Health) -> Self {
        let pairs = |v: Vec<(String, String)>| {
            v.into_iter()
                .map(|(collection, reason)| CollectionReason { collection, reason })
                .collect()
        };
        Readiness {
            status: if h.ready { "ready" } else { "not_ready" },
            reason: h.reason,
            unavailable_collections: pairs(h.unavailable),
            storage_full: pairs(h.storage_full),
        }
    }
}
