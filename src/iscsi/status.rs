//! Login status class and detail (RFC 7143 §11.13.5): what a Login Response answers. Its own
//! module because the login machine, the authenticator and the connection all answer with
//! them, and none of them should have to import another for it.

pub type Status = (u8, u8);
pub const SUCCESS: Status = (0x00, 0x00);
/// Redirection: the target is reached at the TargetAddress the response carries.
pub const TARGET_MOVED_TEMPORARILY: Status = (0x01, 0x01);
pub const INITIATOR_ERROR: Status = (0x02, 0x00);
pub const AUTHENTICATION_FAILED: Status = (0x02, 0x01);
pub const AUTHORIZATION_FAILED: Status = (0x02, 0x02);
pub const NOT_FOUND: Status = (0x02, 0x03);
pub const TARGET_REMOVED: Status = (0x02, 0x04);
pub const UNSUPPORTED_VERSION: Status = (0x02, 0x05);
pub const TOO_MANY_CONNECTIONS: Status = (0x02, 0x06);
pub const MISSING_PARAMETER: Status = (0x02, 0x07);
pub const CANT_INCLUDE_IN_SESSION: Status = (0x02, 0x08);
pub const SESSION_TYPE_NOT_SUPPORTED: Status = (0x02, 0x09);
pub const SESSION_DOES_NOT_EXIST: Status = (0x02, 0x0a);
pub const INVALID_DURING_LOGIN: Status = (0x02, 0x0b);
pub const TARGET_ERROR: Status = (0x03, 0x00);
pub const SERVICE_UNAVAILABLE: Status = (0x03, 0x01);
pub const OUT_OF_RESOURCES: Status = (0x03, 0x02);
