//! Client commands (the first byte of a packet with sequence id 0).
//!
//! Only what the proxy must look inside is decoded; everything else keeps the
//! raw payload so it can be forwarded untouched.

use bytes::Bytes;

pub const COM_QUIT: u8 = 0x01;
pub const COM_INIT_DB: u8 = 0x02;
pub const COM_QUERY: u8 = 0x03;
pub const COM_FIELD_LIST: u8 = 0x04;
pub const COM_STATISTICS: u8 = 0x09;
pub const COM_PROCESS_KILL: u8 = 0x0C;
pub const COM_PING: u8 = 0x0E;
pub const COM_CHANGE_USER: u8 = 0x11;
pub const COM_STMT_PREPARE: u8 = 0x16;
pub const COM_STMT_EXECUTE: u8 = 0x17;
pub const COM_STMT_SEND_LONG_DATA: u8 = 0x18;
pub const COM_STMT_CLOSE: u8 = 0x19;
pub const COM_STMT_RESET: u8 = 0x1A;
pub const COM_SET_OPTION: u8 = 0x1B;
pub const COM_STMT_FETCH: u8 = 0x1C;
pub const COM_RESET_CONNECTION: u8 = 0x1F;

/// A decoded client command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Quit,
    InitDb(String),
    /// SQL text (one or more statements), in the session's character set:
    /// the router reads it from the payload.
    Query,
    FieldList,
    Statistics,
    Ping,
    /// The statement text stays in the payload, like `Query`'s.
    StmtPrepare,
    /// `COM_STMT_EXECUTE`; the statement id and the cursor flags are decoded,
    /// the rest stays in the raw payload.
    StmtExecute {
        stmt_id: u32,
        flags: u8,
    },
    StmtSendLongData {
        stmt_id: u32,
    },
    StmtClose {
        stmt_id: u32,
    },
    StmtReset {
        stmt_id: u32,
    },
    /// `COM_SET_OPTION`: 0 = multi-statements on, 1 = off.
    SetOption(u16),
    StmtFetch {
        stmt_id: u32,
    },
    ResetConnection,
    /// `COM_PROCESS_KILL`: the same as `KILL CONNECTION id`.
    ProcessKill(u32),
    /// `COM_CHANGE_USER`: decoded by the session, which knows the capabilities.
    ChangeUser,
    /// Anything else: answered with an "unknown command" error.
    Unsupported(u8),
}

/// Why a payload could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    #[error("empty command packet")]
    Empty,
    #[error("command 0x{0:02x} is truncated")]
    Truncated(u8),
}

fn stmt_id(code: u8, p: &[u8]) -> Result<u32, CommandError> {
    p.get(1..5)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .ok_or(CommandError::Truncated(code))
}

impl Command {
    pub fn parse(payload: &Bytes) -> Result<Command, CommandError> {
        let code = *payload.first().ok_or(CommandError::Empty)?;
        let text = || String::from_utf8_lossy(&payload[1..]).into_owned();
        Ok(match code {
            COM_QUIT => Command::Quit,
            COM_INIT_DB => Command::InitDb(text()),
            COM_QUERY => Command::Query,
            COM_FIELD_LIST => Command::FieldList,
            COM_STATISTICS => Command::Statistics,
            COM_PING => Command::Ping,
            COM_STMT_PREPARE => Command::StmtPrepare,
            COM_PROCESS_KILL => Command::ProcessKill(stmt_id(code, payload)?),
            COM_STMT_EXECUTE => Command::StmtExecute {
                stmt_id: stmt_id(code, payload)?,
                flags: *payload.get(5).ok_or(CommandError::Truncated(code))?,
            },
            COM_STMT_SEND_LONG_DATA => Command::StmtSendLongData {
                stmt_id: stmt_id(code, payload)?,
            },
            COM_STMT_CLOSE => Command::StmtClose {
                stmt_id: stmt_id(code, payload)?,
            },
            COM_STMT_RESET => Command::StmtReset {
                stmt_id: stmt_id(code, payload)?,
            },
            COM_SET_OPTION => {
                let b = payload.get(1..3).ok_or(CommandError::Truncated(code))?;
                Command::SetOption(u16::from_le_bytes([b[0], b[1]]))
            }
            COM_STMT_FETCH => Command::StmtFetch {
                stmt_id: stmt_id(code, payload)?,
            },
            COM_RESET_CONNECTION => Command::ResetConnection,
            COM_CHANGE_USER => Command::ChangeUser,
            other => Command::Unsupported(other),
        })
    }

    /// A short name for logs and metrics labels.
    pub fn name(&self) -> &'static str {
        match self {
            Command::Quit => "quit",
            Command::InitDb(_) => "init_db",
            Command::Query => "query",
            Command::FieldList => "field_list",
            Command::Statistics => "statistics",
            Command::Ping => "ping",
            Command::StmtPrepare => "stmt_prepare",
            Command::ProcessKill(_) => "process_kill",
            Command::StmtExecute { .. } => "stmt_execute",
            Command::StmtSendLongData { .. } => "stmt_send_long_data",
            Command::StmtClose { .. } => "stmt_close",
            Command::StmtReset { .. } => "stmt_reset",
            Command::SetOption(_) => "set_option",
            Command::StmtFetch { .. } => "stmt_fetch",
            Command::ResetConnection => "reset_connection",
            Command::ChangeUser => "change_user",
            Command::Unsupported(_) => "unsupported",
        }
    }
}

/// Rewrites the statement id (bytes 1..5) of a `COM_STMT_*` payload.
pub fn with_stmt_id(payload: &[u8], id: u32) -> Vec<u8> {
    let mut p = payload.to_vec();
    if p.len() >= 5 {
        p[1..5].copy_from_slice(&id.to_le_bytes());
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_commands() {
        let q = Bytes::from_static(b"\x03SELECT 1");
        assert_eq!(Command::parse(&q).unwrap(), Command::Query);
        assert_eq!(
            Command::parse(&Bytes::from_static(b"\x0c\x07\x00\x00\x00")).unwrap(),
            Command::ProcessKill(7)
        );
        let e = Bytes::from_static(b"\x17\x05\x00\x00\x00\x00\x01\x00\x00\x00");
        assert_eq!(
            Command::parse(&e).unwrap(),
            Command::StmtExecute { stmt_id: 5, flags: 0 }
        );
        assert_eq!(
            Command::parse(&Bytes::from_static(b"\x19\x01")),
            Err(CommandError::Truncated(0x19))
        );
        assert_eq!(Command::parse(&Bytes::new()), Err(CommandError::Empty));
        assert_eq!(
            Command::parse(&Bytes::from_static(b"\x12")).unwrap(),
            Command::Unsupported(0x12)
        );
        assert_eq!(with_stmt_id(&e, 9)[1..5], [9, 0, 0, 0]);
    }
}
