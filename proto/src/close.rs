//! WebSocket close codes of the contract (section 4) and their reasons.

/// A close the server initiates: the code and the reason text sent with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CloseCause {
    pub code: u16,
    pub reason: &'static str,
}

pub const NORMAL: CloseCause = CloseCause { code: 1000, reason: "normal closure" };
pub const GOING_AWAY: CloseCause = CloseCause { code: 1001, reason: "server shutting down" };
pub const POLICY_RATE: CloseCause = CloseCause { code: 1008, reason: "request rate exceeded" };
pub const POLICY_ERRORS: CloseCause = CloseCause { code: 1008, reason: "error budget exceeded" };
pub const MESSAGE_TOO_BIG: CloseCause = CloseCause { code: 1009, reason: "message too big" };
/// RFC 6455: the client broke the framing rules (not in the contract's list: a client that
/// does this is not speaking WebSocket).
pub const PROTOCOL_ERROR: CloseCause = CloseCause { code: 1002, reason: "protocol error" };
/// RFC 6455: a text frame that is not UTF-8.
pub const INVALID_PAYLOAD: CloseCause = CloseCause { code: 1007, reason: "invalid UTF-8" };
pub const INTERNAL: CloseCause = CloseCause { code: 1011, reason: "internal error" };
pub const HEARTBEAT_TIMEOUT: CloseCause = CloseCause { code: 4000, reason: "heartbeat timeout" };
/// The session's JWT reached its `exp` (reconnect with a fresh token, and resume).
pub const TOKEN_EXPIRED: CloseCause = CloseCause { code: 4001, reason: "token expired" };
/// A reload (SIGHUP) removed the session's token, or its JWT no longer verifies.
pub const TOKEN_REVOKED: CloseCause = CloseCause { code: 4001, reason: "token revoked" };
pub const SLOW_CONSUMER: CloseCause = CloseCause { code: 4008, reason: "slow consumer" };
