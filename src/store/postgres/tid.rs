//! PostgreSQL's `tid` (a row's `ctid`) and `xid` (its `xmin`) in their
//! binary wire forms, which sqlx does not know, for the flush's [`Tid`] and
//! [`Xid`]: the flush reads a row's
//! version and hands it back to the write as it came, with no text on
//! either side (formatting and parsing them as text, and an allocation per
//! row for each, showed in the flush's profile; docs/BENCHMARKS.md, "Tenth
//! round").
//!
//! Both are built-in types with fixed OIDs (`pg_type.dat`): `tid` 27 and
//! its array 1010, `xid` 28 and its array 1011. On the wire `tid` is the
//! block number (4 bytes) then the offset (2 bytes), `xid` 4 bytes, all
//! big-endian (`tidsend`, `xidsend`).

use sqlx::encode::IsNull;
use sqlx::error::BoxDynError;
use sqlx::postgres::types::Oid;
use sqlx::postgres::{PgArgumentBuffer, PgHasArrayType, PgTypeInfo, PgValueFormat, PgValueRef};
use sqlx::{Decode, Encode, Postgres, Type};

use crate::store::flush::{Tid, Xid};

const TID: u32 = 27;
const TID_ARRAY: u32 = 1010;
const XID: u32 = 28;
const XID_ARRAY: u32 = 1011;

/// The bytes of a binary value, or why there are none.
fn binary<'r>(value: &PgValueRef<'r>, what: &str) -> Result<&'r [u8], BoxDynError> {
    match value.format() {
        PgValueFormat::Binary => Ok(value.as_bytes()?),
        PgValueFormat::Text => Err(format!("a {what} came as text, not in binary").into()),
    }
}

impl Type<Postgres> for Tid {
    fn type_info() -> PgTypeInfo {
        PgTypeInfo::with_oid(Oid(TID))
    }
}

impl PgHasArrayType for Tid {
    fn array_type_info() -> PgTypeInfo {
        PgTypeInfo::with_oid(Oid(TID_ARRAY))
    }
}

impl Encode<'_, Postgres> for Tid {
    fn encode_by_ref(&self, buf: &mut PgArgumentBuffer) -> Result<IsNull, BoxDynError> {
        buf.extend_from_slice(&self.block.to_be_bytes());
        buf.extend_from_slice(&self.offset.to_be_bytes());
        Ok(IsNull::No)
    }

    fn size_hint(&self) -> usize {
        6
    }
}

impl Decode<'_, Postgres> for Tid {
    fn decode(value: PgValueRef<'_>) -> Result<Self, BoxDynError> {
        match *binary(&value, "tid")? {
            [b0, b1, b2, b3, o0, o1] => Ok(Tid {
                block: u32::from_be_bytes([b0, b1, b2, b3]),
                offset: u16::from_be_bytes([o0, o1]),
            }),
            ref other => Err(format!("a tid of {} bytes, not 6", other.len()).into()),
        }
    }
}

impl Type<Postgres> for Xid {
    fn type_info() -> PgTypeInfo {
        PgTypeInfo::with_oid(Oid(XID))
    }
}

impl PgHasArrayType for Xid {
    fn array_type_info() -> PgTypeInfo {
        PgTypeInfo::with_oid(Oid(XID_ARRAY))
    }
}

impl Encode<'_, Postgres> for Xid {
    fn encode_by_ref(&self, buf: &mut PgArgumentBuffer) -> Result<IsNull, BoxDynError> {
        buf.extend_from_slice(&self.0.to_be_bytes());
        Ok(IsNull::No)
    }

    fn size_hint(&self) -> usize {
        4
    }
}

impl Decode<'_, Postgres> for Xid {
    fn decode(value: PgValueRef<'_>) -> Result<Self, BoxDynError> {
        match *binary(&value, "xid")? {
            [a, b, c, d] => Ok(Xid(u32::from_be_bytes([a, b, c, d]))),
            ref other => Err(format!("an xid of {} bytes, not 4", other.len()).into()),
        }
    }
}
